"""Observations stored once: the ring of observations plus the final-observation FIFOs give the
same n-step samples as separate obs / next_obs arrays (wrap-around, newest row, FIFO overflow),
bfloat16 storage, and invalid (non-finite) transitions that are never sampled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pql_jax.learner import replay

_insert = jax.jit(replay.insert)
_window = jax.jit(replay.nstep_window, static_argnums=(3,))
_sample = jax.jit(replay.sample, static_argnums=(2, 3))


def _episodes(T, E, L, p_term, seed, O=3):
    """Env-like streams: obs[t+1] = next_obs[t] within an episode, a fresh reset obs after an end;
    truncation every L steps (random phases), terminals with probability p_term."""
    rng = np.random.default_rng(seed)
    obs, next_obs = np.zeros((T, E, O), np.float32), np.zeros((T, E, O), np.float32)
    term, trunc = np.zeros((T, E), bool), np.zeros((T, E), bool)
    cur = rng.normal(size=(E, O)).astype(np.float32)
    step = rng.integers(0, L, E)
    for t in range(T):
        obs[t] = cur
        next_obs[t] = rng.normal(size=(E, O))
        term[t] = rng.random(E) < p_term
        trunc[t] = (step + 1 >= L) & ~term[t]
        ended = term[t] | trunc[t]
        step = np.where(ended, 0, step + 1)
        cur = np.where(ended[:, None], rng.normal(size=(E, O)).astype(np.float32), next_obs[t])
    return obs, next_obs, rng.normal(size=(T, E)).astype(np.float32), term, trunc


def _fill(rows, data, episode_steps=None, dtype="float32", invalid=None):
    obs, next_obs, rew, term, trunc = data
    T, E, O = obs.shape
    buf = replay.init_buffer(rows, E, O, 1, dtype, episode_steps)
    invalid = np.zeros((T, E), bool) if invalid is None else invalid
    for t in range(T):
        buf = _insert(buf, jnp.asarray(obs[t]), jnp.asarray(_action(obs[t])), jnp.asarray(rew[t]), jnp.asarray(term[t]),
                      jnp.asarray(trunc[t]), jnp.asarray(next_obs[t]), jnp.asarray(invalid[t]))
    return buf


def _action(obs):
    """The action stored with `obs` in `_fill`: in (-1, 1), not exactly representable in bfloat16."""
    return np.tanh(obs[:, :1] + 0.1234567).astype(np.float32)


def _reference(data, s, e, n, gamma):
    """n-step target pieces from the time-indexed arrays, straight from the definition."""
    _, next_obs, rew, term, trunc = data
    total, m, last = 0.0, 0, s
    for k in range(n):
        t = s + k
        total += gamma**k * float(rew[t, e])
        m, last = k + 1, t
        if term[t, e] or trunc[t, e]:
            break
    return total, next_obs[last, e], 0.0 if term[last, e] else gamma**m, bool(term[last, e])


def _all_windows(buf, T, rows, E, n, gamma):
    size = min(T, rows)
    times = np.arange(T - size, T - n + 1)  # the sampleable start times
    pairs = np.array([(s, e) for s in times for e in range(E)])
    ret, boot, disc = _window(buf, jnp.asarray(pairs[:, 0] % rows), jnp.asarray(pairs[:, 1]), n, gamma, 1.0)
    return pairs, np.asarray(ret), np.asarray(boot), np.asarray(disc)


@pytest.mark.parametrize("T", [9, 16, 17, 40, 61])
@pytest.mark.parametrize("n", [1, 3])
def test_stored_once_equals_separate_next_obs(T, n):
    """Sized as the learner sizes it (truncation FIFO = ceil(rows / episode length)); terminals rare
    enough that no entry is pushed out: every sample equals the one from full obs / next_obs arrays,
    across wrap-around and for the newest row (n = 1 samples it; its successor is not a row yet)."""
    rows, E, L, gamma = 16, 6, 5, 0.9
    data = _episodes(T, E, L, p_term=0.03, seed=T + 100 * n)
    buf = _fill(rows, data, episode_steps=L)
    assert buf.trunc_obs.shape[0] == 4 and buf.obs_ring.shape[0] == rows + 1
    pairs, ret, boot, disc = _all_windows(buf, T, rows, E, n, gamma)
    for i, (s, e) in enumerate(pairs):
        want_ret, want_boot, want_disc, _ = _reference(data, s, e, n, gamma)
        assert ret[i] == pytest.approx(want_ret, rel=1e-5, abs=1e-6), (s, e)
        np.testing.assert_array_equal(boot[i], want_boot, err_msg=str((s, e)))
        assert disc[i] == pytest.approx(want_disc, rel=1e-6, abs=0), (s, e)
    # the views used by the tests of test_replay.py: each row's obs and next obs
    size = min(T, rows)
    for t in range(T - size, T):
        np.testing.assert_array_equal(np.asarray(buf.obs[t % rows]), data[0][t])
        np.testing.assert_array_equal(np.asarray(buf.next_obs[t % rows]), data[1][t])


def test_terminal_fifo_overflow_keeps_truncations_exact():
    """Terminals far more often than the FIFO holds: truncation bootstraps stay exact; a terminal
    whose entry was pushed out bootstraps from the reset observation, with discount 0."""
    rows, E, L, n, gamma, T = 16, 6, 5, 3, 0.9, 45
    data = _episodes(T, E, L, p_term=0.5, seed=7)
    buf = _fill(rows, data, episode_steps=L)
    pairs, ret, boot, disc = _all_windows(buf, T, rows, E, n, gamma)
    fallbacks = 0
    for i, (s, e) in enumerate(pairs):
        want_ret, want_boot, want_disc, terminal = _reference(data, s, e, n, gamma)
        assert ret[i] == pytest.approx(want_ret, rel=1e-5, abs=1e-6)
        assert disc[i] == pytest.approx(want_disc, rel=1e-6, abs=0)
        if terminal and not np.array_equal(boot[i], want_boot):
            last = next(s + k for k in range(n) if data[3][s + k, e] or data[4][s + k, e])
            np.testing.assert_array_equal(boot[i], data[0][last + 1, e])  # the reset observation
            fallbacks += 1
        else:
            np.testing.assert_array_equal(boot[i], want_boot)
    assert fallbacks > 0  # the case is exercised


def _bf16(x):
    return np.asarray(x, np.float32).astype(jnp.bfloat16).astype(np.float32)


def _bf16_stored(data, buf):
    """(obs, next obs) per time that bfloat16 storage must give back, from numpy: x as
    bfloat16(x - offset) + offset with the float32 offset of its ring slot, the mean over envs of the
    next observations written into it (slot 0: of the reset observations). The offsets of the slots
    still held are read from the buffer (XLA and numpy may sum in different orders) and checked
    against numpy's means."""
    obs, next_obs, _, term, trunc = data
    T, S = len(obs), buf.rows + 1
    offset = np.asarray(buf.obs_offset)
    held = range(max(T - buf.rows, 0), T + 1)  # times whose slot is held: the kept rows and the successor
    for t in held:
        np.testing.assert_allclose(offset[t % S], (obs[0] if t == 0 else next_obs[t - 1]).mean(0), rtol=1e-6, atol=1e-7)
    enc = lambda x, t: offset[t % S] + _bf16(x - offset[t % S])
    want_next = {t: enc(next_obs[t], t + 1) for t in held if t < T}
    starts = lambda t: np.ones(obs.shape[1], bool) if t == 0 else term[t - 1] | trunc[t - 1]
    want_obs = {t: np.where(starts(t)[:, None] | (t - 1 not in want_next), enc(obs[t], t), want_next.get(t - 1, 0))
                for t in held if t < T}
    return want_obs, want_next


def test_bfloat16_storage_rounds_observations_and_actions_once():
    """bfloat16 observations relative to their slot's offset (bit-exact against numpy, also the final
    observations of the FIFOs across wrap-around and in n-step windows); actions rounded once."""
    rows, E, L, n, T = 8, 4, 3, 2, 13
    data = _episodes(T, E, L, p_term=0.1, seed=3)
    buf = _fill(rows, data, episode_steps=L, dtype="bfloat16")
    assert buf.obs_ring.dtype == jnp.uint16 and buf.trunc_obs.dtype == jnp.uint16
    assert buf.obs_offset.shape == (rows + 1, 3) and buf.obs_offset.dtype == jnp.float32
    want_obs, want_next = _bf16_stored(data, buf)
    pairs, ret, boot, disc = _all_windows(buf, T, rows, E, n, 0.5)
    for i, (s, e) in enumerate(pairs):
        want_ret, _, want_disc, _ = _reference(data, s, e, n, 0.5)
        last = next((s + k for k in range(n - 1) if data[3][s + k, e] or data[4][s + k, e]), s + n - 1)
        np.testing.assert_array_equal(boot[i], want_next[last][e], err_msg=str((s, e)))
        assert ret[i] == pytest.approx(want_ret, rel=1e-5, abs=1e-6) and disc[i] == pytest.approx(want_disc, rel=1e-6)
    size = min(T, rows)
    for t in range(T - size, T):
        np.testing.assert_array_equal(np.asarray(buf.obs[t % rows]), want_obs[t])
        np.testing.assert_array_equal(np.asarray(buf.next_obs[t % rows]), want_next[t])
    assert any(not np.array_equal(want_next[t], _bf16(data[1][t])) for t in want_next)  # not the raw rounding
    batch = _sample(buf, jax.random.PRNGKey(0), 64, n, 0.5, 1.0)
    assert batch.obs.dtype == jnp.float32 and batch.next_obs.dtype == jnp.float32
    kept = np.concatenate([want_obs[t] for t in range(T - size, T - n + 1)])
    assert all((kept == row).all(1).any() for row in np.asarray(batch.obs))
    assert buf.action.dtype == jnp.uint16 and batch.action.dtype == jnp.float32
    stored = np.asarray(jax.lax.bitcast_convert_type(buf.action, jnp.bfloat16).astype(jnp.float32))
    assert stored.shape[:2] == (rows, E)
    for t in range(T - size, T):  # every kept action, rounded to bfloat16 once, at its ring row
        np.testing.assert_array_equal(stored[t % rows], _bf16(_action(data[0][t])))
    assert not np.array_equal(stored[(T - 1) % rows], _action(data[0][T - 1]))  # really rounded


def _invalid_data(T=12, E=3):
    """Steady episodes (no ends) with env 1's step 6 non-finite; the adapter hands the replay a
    finite transition (reward 0, next_obs = obs) and resets the env."""
    data = list(_episodes(T, E, 1000, p_term=0.0, seed=5))
    invalid = np.zeros((T, E), bool)
    invalid[6, 1] = True
    data[1][6, 1] = data[0][6, 1]
    data[2][6, 1] = np.nan  # what the replay must never return
    data[0][7, 1] = [9.0, 9.0, 9.0]  # the reset observation
    data[1][7:, 1] += 100.0  # the new episode
    data[0][8:, 1] = data[1][7:-1, 1]
    return data, invalid


def test_invalid_transition_never_sampled_and_cuts_windows():
    rows, n, gamma = 16, 3, 0.5
    data, invalid = _invalid_data()
    buf = _fill(rows, data, invalid=invalid)
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(buf))
    # Windows of env 1 reaching step 6 stop before it and bootstrap from the observation it started
    # from, as a truncation would; the window from step 7 sees the reset observation.
    starts = np.array([4, 5, 6, 7])
    ret, boot, disc = _window(buf, jnp.asarray(starts), jnp.ones(4, jnp.int32), n, gamma, 1.0)
    r = data[2][:, 1]
    np.testing.assert_allclose(np.asarray(ret)[:2], [r[4] + gamma * r[5], r[5]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(disc)[:2], [gamma**2, gamma])
    np.testing.assert_array_equal(np.asarray(boot)[:2], [data[0][6, 1]] * 2)
    np.testing.assert_array_equal(np.asarray(buf.obs)[7, 1], [9.0, 9.0, 9.0])
    assert float(ret[3]) == pytest.approx(r[7] + gamma * r[8] + gamma**2 * r[9], rel=1e-6)
    # Sampling redraws (row 6, env 1): never returned, the others all are.
    batch = _sample(buf, jax.random.PRNGKey(0), 4096, n, gamma, 1.0)
    obs = np.asarray(batch.obs)
    assert not (obs == data[0][6, 1]).all(1).any()
    assert np.isfinite(np.asarray(batch.nstep_return)).all()
    seen = {tuple(o) for o in obs}
    want = {tuple(data[0][t, e]) for t in range(12 - n + 1) for e in range(3) if not invalid[t, e]}
    assert seen == want


def test_all_invalid_buffer_still_samples_finite_values():
    """More invalid transitions than redraws can avoid: a harmless zero-length window (return 0,
    discount 1, bootstrap = the transition's own observation), never NaN."""
    data, _ = _invalid_data()
    buf = _fill(8, data, invalid=np.ones((12, 3), bool))
    batch = _sample(buf, jax.random.PRNGKey(0), 256, 2, 0.5, 1.0)
    np.testing.assert_array_equal(np.asarray(batch.nstep_return), 0.0)
    np.testing.assert_array_equal(np.asarray(batch.discount), 1.0)
    np.testing.assert_array_equal(np.asarray(batch.next_obs), np.asarray(batch.obs))


@pytest.mark.parametrize("obs_size, action_size", [(5, 2), (17, 6), (67, 21)])
def test_bytes_per_transition_halved(obs_size, action_size):
    """The PQL regime (4096 envs, 5M transitions, 1000-step episodes): at most obs + action + reward
    + flags once, plus < 1% for the final-observation FIFOs; the old layout stored obs twice."""
    rows, E = 5_000_000 // 4096, 4096
    old = 4 * (2 * obs_size + action_size + 1) + 2
    once = lambda item: (obs_size + action_size) * item + 4 + 1
    for dtype, item in (("float32", 4), ("bfloat16", 2)):
        per = replay.buffer_bytes(rows, E, obs_size, action_size, dtype, 1000) / (rows * E)
        assert once(item) <= per <= once(item) * 1.01
        assert per < old / (1.5 if dtype == "float32" else 2.8)
