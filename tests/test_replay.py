"""Replay ring buffer: FIFO wrap-around, sampleable windows, n-step targets across terminals/truncations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pql_jax.learner import replay


_insert = jax.jit(replay.insert)
_window = jax.jit(replay.nstep_window, static_argnums=(3,))


def _fill(rows, num_envs, rewards, terminal, truncated, obs=None, next_obs=None, action=None):
    """Insert T vector steps given as [T, num_envs] arrays (obs/next_obs [T, E, O], action [T, E, A])."""
    T = rewards.shape[0]
    next_obs = np.zeros((T, num_envs, 1), np.float32) if next_obs is None else next_obs
    obs = np.zeros_like(next_obs) if obs is None else obs
    action = np.zeros((T, num_envs, 1), np.float32) if action is None else action
    buf = replay.init_buffer(rows, num_envs, obs.shape[-1], action.shape[-1])
    for t in range(T):
        buf = _insert(buf, jnp.asarray(obs[t]), jnp.asarray(action[t]), jnp.asarray(rewards[t]),
                            jnp.asarray(terminal[t]), jnp.asarray(truncated[t]), jnp.asarray(next_obs[t]))
    return buf


# ----------------------------------------------------------------------------------------------
# Hand-computed n-step targets: 1 transition window per env, n=3, gamma=0.5, rewards 1, 2, 4, 8.
# Each env is one scenario; the window starts at row 0. Columns: terminal flags of steps 0..3,
# truncated flags of steps 0..3, expected return / reward_scale, expected last step used,
# expected discount.
G = 0.5
R = [1.0, 2.0, 4.0, 8.0]
CASES = {
    #                 terminal      truncated     return          last discount
    "none":         ((0, 0, 0, 0), (0, 0, 0, 0), 1 + 0.5 * 2 + 0.25 * 4, 2, 0.125),
    "term_mid":     ((0, 1, 0, 0), (0, 0, 0, 0), 1 + 0.5 * 2, 1, 0.0),
    "trunc_mid":    ((0, 0, 0, 0), (0, 1, 0, 0), 1 + 0.5 * 2, 1, 0.25),
    "term_first":   ((1, 0, 0, 0), (0, 0, 0, 0), 1.0, 0, 0.0),
    "trunc_first":  ((0, 0, 0, 0), (1, 0, 0, 0), 1.0, 0, 0.5),
    "term_last":    ((0, 0, 1, 0), (0, 0, 0, 0), 1 + 0.5 * 2 + 0.25 * 4, 2, 0.0),
    "trunc_last":   ((0, 0, 0, 0), (0, 0, 1, 0), 1 + 0.5 * 2 + 0.25 * 4, 2, 0.125),
    "after_window": ((0, 0, 0, 1), (0, 0, 0, 1), 1 + 0.5 * 2 + 0.25 * 4, 2, 0.125),
    "term_then_trunc": ((1, 0, 0, 0), (0, 1, 0, 0), 1.0, 0, 0.0),
    "trunc_then_term": ((0, 1, 0, 0), (1, 0, 0, 0), 1.0, 0, 0.5),
    "both_mid":     ((0, 1, 0, 0), (0, 1, 0, 0), 1 + 0.5 * 2, 1, 0.0),
    "trunc_mid_term_last": ((0, 0, 1, 0), (0, 1, 0, 0), 1 + 0.5 * 2, 1, 0.25),
}


@pytest.mark.parametrize("reward_scale", [1.0, 0.1])
def test_nstep_hand_computed_cases(reward_scale):
    names = list(CASES)
    E = len(names)
    terminal = np.array([CASES[k][0] for k in names], bool).T  # [4, E]
    truncated = np.array([CASES[k][1] for k in names], bool).T
    rewards = np.tile(np.array(R, np.float32)[:, None], (1, E))
    # next_obs of step t in env e encodes (t, e) so we can tell which step bootstraps.
    next_obs = np.array([[[100.0 * t + e] for e in range(E)] for t in range(4)], np.float32)
    buf = _fill(8, E, rewards, terminal, truncated, next_obs=next_obs)
    ret, boot, disc = _window(buf, jnp.zeros(E, jnp.int32), jnp.arange(E), 3, G, reward_scale)
    for e, name in enumerate(names):
        _, _, want_ret, last, want_disc = CASES[name]
        assert float(ret[e]) == pytest.approx(reward_scale * want_ret, rel=1e-6), name
        assert float(disc[e]) == pytest.approx(want_disc, rel=1e-6, abs=0), name
        assert float(boot[e, 0]) == 100.0 * last + e, name


def test_nstep_one_step_is_plain_transition():
    rewards = np.array([[3.0], [5.0]], np.float32)
    terminal = np.array([[False], [True]])
    truncated = np.array([[True], [False]])
    buf = _fill(4, 1, rewards, terminal, truncated)
    ret, _, disc = _window(buf, jnp.array([0, 1]), jnp.array([0, 0]), 1, 0.9, 2.0)
    np.testing.assert_allclose(np.asarray(ret), [6.0, 10.0])
    np.testing.assert_allclose(np.asarray(disc), [0.9, 0.0])  # truncation bootstraps, terminal does not


def _reference_window(rew, term, trunc, next_obs, row, env, n, gamma, scale):
    """Straight from the definition, one Python loop per (row, env)."""
    rows = rew.shape[0]
    total, m, last = 0.0, 0, row
    for k in range(n):
        r = (row + k) % rows
        total += gamma**k * scale * float(rew[r, env])
        m, last = k + 1, r
        if term[r, env] or trunc[r, env]:
            break
    disc = 0.0 if term[last, env] else gamma**m
    return total, next_obs[last, env], disc


@pytest.mark.parametrize("n", [1, 3, 5])
def test_nstep_window_matches_loop_reference(n):
    rng = np.random.default_rng(n)
    rows, E, T = 16, 5, 23  # wraps: rows 0..6 overwritten
    rewards = rng.normal(size=(T, E)).astype(np.float32)
    terminal = rng.random((T, E)) < 0.2
    truncated = rng.random((T, E)) < 0.15
    next_obs = rng.normal(size=(T, E, 2)).astype(np.float32)
    buf = _fill(rows, E, rewards, terminal, truncated, next_obs=next_obs)
    rew, term, trunc, nob = (np.asarray(x) for x in (buf.reward, buf.terminal, buf.truncated, buf.next_obs))
    gamma, scale = 0.9, 0.3
    # Every (row, env) pair, twice in shuffled order, windows wrapping past the last row included.
    pairs = np.array([(r, e) for r in range(rows) for e in range(E)] * 2)
    pairs = pairs[rng.permutation(len(pairs))]
    ret, boot, disc = _window(buf, jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1]), n, gamma, scale)
    ret, boot, disc = np.asarray(ret), np.asarray(boot), np.asarray(disc)
    for i, (r, e) in enumerate(pairs):
        want_ret, want_boot, want_disc = _reference_window(rew, term, trunc, nob, r, e, n, gamma, scale)
        assert ret[i] == pytest.approx(want_ret, rel=1e-5, abs=1e-6), (r, e)
        np.testing.assert_array_equal(boot[i], want_boot)
        assert disc[i] == pytest.approx(want_disc, rel=1e-6, abs=0), (r, e)


# ----------------------------------------------------------------------------------------------
# Ring buffer wrap-around. Observation = (time, env), next_obs = (time + 1, env), action = time.

def _timed(rows, E, T, terminal=None):
    t = np.arange(T, dtype=np.float32)
    e = np.arange(E, dtype=np.float32)
    obs = np.stack(np.broadcast_arrays(t[:, None], e[None, :]), -1).astype(np.float32)
    next_obs = np.stack(np.broadcast_arrays(t[:, None] + 1, e[None, :]), -1).astype(np.float32)
    action = np.broadcast_to(t[:, None, None], (T, E, 1)).astype(np.float32)
    terminal = np.zeros((T, E), bool) if terminal is None else terminal
    return _fill(rows, E, np.ones((T, E), np.float32), terminal, np.zeros((T, E), bool), obs, next_obs, action)


@pytest.mark.parametrize("T, head, size", [(0, 0, 0), (3, 3, 3), (5, 0, 5), (7, 2, 5), (12, 2, 5), (15, 0, 5)])
def test_wraparound_fifo_contents_head_size(T, head, size):
    rows, E = 5, 3
    buf = _timed(rows, E, T)
    assert int(buf.head) == head and int(buf.size) == size
    # Row i holds the newest insertion time t < T with t % rows == i (the oldest were overwritten).
    times = np.asarray(buf.obs[..., 0])
    for i in range(size):
        want = max(t for t in range(T) if t % rows == i)
        assert np.all(times[i] == want), (i, times[i])
        assert np.all(np.asarray(buf.next_obs[i, :, 0]) == want + 1)
        np.testing.assert_array_equal(np.asarray(buf.obs[i, :, 1]), np.arange(E))
    # Kept times are exactly the last `size` insertions.
    assert sorted(set(times[:size, 0].tolist())) == list(range(T - size, T))


_sample = jax.jit(replay.sample, static_argnums=(2, 3))


@pytest.mark.parametrize("T", [4, 5, 6, 7, 8, 9, 10, 11, 13])
def test_sample_only_fully_written_windows(T):
    rows, E, n, B = 6, 3, 3, 2048
    buf = _timed(rows, E, T)
    assert int(replay.sampleable_rows(buf, n)) == min(T, rows) - (n - 1)
    batch = _sample(buf, jax.random.PRNGKey(T), B, n, 0.5, 1.0)
    t0 = np.asarray(batch.obs[:, 0])
    env = np.asarray(batch.obs[:, 1])
    oldest, newest = T - min(T, rows), T - 1
    # Start times are in the window-complete range, never reaching into the newest n-1 rows.
    assert t0.min() >= oldest and t0.max() <= newest - (n - 1)
    # No terminals: the bootstrap obs is exactly n steps later in the same env (no straddling the head).
    np.testing.assert_array_equal(np.asarray(batch.next_obs[:, 0]), t0 + n)
    np.testing.assert_array_equal(np.asarray(batch.next_obs[:, 1]), env)
    np.testing.assert_array_equal(np.asarray(batch.action[:, 0]), t0)
    np.testing.assert_allclose(np.asarray(batch.nstep_return), 1 + 0.5 + 0.25)
    np.testing.assert_allclose(np.asarray(batch.discount), 0.125)
    # Uniform with replacement: every sampleable (time, env) pair shows up.
    seen = set(zip(t0.tolist(), env.tolist()))
    assert seen == {(float(t), float(e)) for t in range(oldest, newest - n + 2) for e in range(E)}


def test_sample_with_terminals_respects_window_and_episode_end():
    rows, E, n, T, B = 6, 3, 3, 19, 2048  # same shapes as above: reuses the compiled sampler
    rng = np.random.default_rng(0)
    terminal = rng.random((T, E)) < 0.3
    buf = _timed(rows, E, T, terminal)
    batch = _sample(buf, jax.random.PRNGKey(1), B, n, 0.5, 2.0)
    t0 = np.asarray(batch.obs[:, 0]).astype(int)
    env = np.asarray(batch.obs[:, 1]).astype(int)
    boot_t, boot_env = np.asarray(batch.next_obs[:, 0]), np.asarray(batch.next_obs[:, 1])
    ret, disc = np.asarray(batch.nstep_return), np.asarray(batch.discount)
    assert t0.min() >= T - rows and t0.max() <= T - n
    for i in range(B):
        m = next((k + 1 for k in range(n) if terminal[t0[i] + k, env[i]]), n)
        ended = terminal[t0[i] + m - 1, env[i]]
        assert boot_t[i] == t0[i] + m and boot_env[i] == env[i]
        assert ret[i] == pytest.approx(2.0 * sum(0.5**k for k in range(m)))
        assert disc[i] == (0.0 if ended else 0.5**m)


@pytest.mark.parametrize("dtype, episode_steps", [("float32", None), ("bfloat16", None), ("float32", 3),
                                                   ("bfloat16", 2)])
def test_buffer_bytes_matches_arrays(dtype, episode_steps):
    rows, E, O, A = 7, 3, 5, 2
    buf = replay.init_buffer(rows, E, O, A, dtype, episode_steps)
    arrays = jax.tree.leaves(buf)  # every array the buffer holds
    assert replay.buffer_bytes(rows, E, O, A, dtype, episode_steps) == sum(x.nbytes for x in arrays)
