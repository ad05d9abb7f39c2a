"""The env adapter at its edges (pql_jax.envs): the [-1, 1] -> control-range action mapping,
`action_repeat` stopping at an episode's end, non-finite physics behind a finite observation,
and huge finite blow-ups treated as non-finite ones. Each checked against a brute-force loop over
the raw simulator or a hand count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from helpers import small
from pql_jax.config import EnvConfig
from pql_jax.envs import adapt, control_range, to_control
from pql_jax.envs.families import load_sim
from pql_jax.envs.pointmass import PointMass


def test_to_control_maps_the_unit_interval_onto_each_range():
    low, high = np.array([-1.0, -1.0, -0.8, 0.0]), np.array([1.0, 1.1, 0.8, 3.0])
    u = np.array([[-1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1e-9, 0.5, -0.5, 0.25]])
    got = to_control(u, low, high)
    np.testing.assert_array_equal(got[0], low)
    np.testing.assert_array_equal(got[1], high)  # the ends exactly, in float64 and (below) float32
    np.testing.assert_allclose(got[2], (low + high) / 2, atol=1e-15)
    np.testing.assert_allclose(got[3, 1:], [0.575, -0.4, 1.875], rtol=1e-12)  # by hand
    assert got[3, 0] == 1e-9  # a [-1, 1] entry passes bit for bit ((1e-9 + 1) - 1 would not)
    jax_got = to_control(jnp.asarray(u, jnp.float32), jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32))
    np.testing.assert_allclose(np.asarray(jax_got), got, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(jax_got[:2]), np.asarray([low, high], np.float32))


def test_quadruped_control_range_is_dm_control_action_spec():
    from pql_jax.envs.dmc import reference

    spec = reference.load(*reference.DM_NAMES["QuadrupedWalk"], seed=0).action_spec()
    low, high = control_range("dmc:QuadrupedWalk", load_sim(EnvConfig(name="dmc:QuadrupedWalk")))
    np.testing.assert_array_equal(low, spec.minimum)
    np.testing.assert_array_equal(high, spec.maximum)
    assert (high == 1.1).any() and (high == 0.8).any()  # lift and extend: not [-1, 1]


def test_only_envs_that_pass_actions_to_controls_are_mapped():
    humanoid = control_range("brax:humanoid", load_sim(EnvConfig(name="brax:humanoid")))
    assert humanoid is not None and np.allclose(humanoid[0], -0.4) and np.allclose(humanoid[1], 0.4)
    assert control_range("brax:ant", load_sim(EnvConfig(name="brax:ant"))) is None  # [-1, 1]
    assert control_range("test:pointmass", PointMass()) is None


class _Recorder(PointMass):
    """PointMass that reports the action it received as its observation."""

    observation_size = 2

    def _obs(self, s):
        return jnp.zeros(2)

    def step(self, state, action):
        new = super().step(state, action)
        return new.replace(obs=action)


def test_the_adapter_hands_the_mapped_action_to_the_simulator(monkeypatch):
    sim = _Recorder()
    ranges = (np.array([-1.0, -0.8]), np.array([1.1, 0.8]))
    monkeypatch.setattr("pql_jax.envs.control_range", lambda name, s: ranges)
    env = adapt(sim, small().env)
    state = env.reset(jax.random.PRNGKey(0), 3)
    action = jnp.array([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.5]])
    _, out = jax.jit(env.step)(state, action)
    np.testing.assert_allclose(np.asarray(out.next_obs), [[-1.0, -0.8], [1.1, 0.8], [0.05, 0.4]], rtol=1e-6)


def _brute_force_repeat(sim, state, action, repeat):
    """One env's `repeat` sub-steps by hand: stop after the first that ends or is not finite."""
    total, done, bad = 0.0, False, False
    for _ in range(repeat):
        state = sim.step(state, action)
        r = float(state.reward)
        total += r
        bad = not np.isfinite(r) or not np.isfinite(np.asarray(state.obs)).all()
        done = float(state.done) > 0.5
        if bad or done:
            break
    return state, total, done and not bad, bad


class _Count(struct.PyTreeNode):
    c: jax.Array


class _Blink:
    """A simulator with reward 1 per sub-step whose episode ends at one sub-step only: `done` at
    count 5 (and nowhere after), or a NaN observation at count 5 (finite again after), so a step
    that kept sub-stepping past it would hide it."""

    observation_size, action_size = 2, 1

    def __init__(self, nan: bool):
        self.nan = nan

    def reset(self, key):
        return _State(_Count(jnp.zeros((), jnp.int32)), jnp.zeros(2), jnp.zeros(()), jnp.zeros(()))

    def step(self, state, action):
        c = state.pipeline_state.c + 1
        at = c == 5
        obs = jnp.stack([c.astype(jnp.float32), jnp.where(at & self.nan, jnp.nan, 0.0)])
        return _State(_Count(c), obs, jnp.ones(()), (at & (not self.nan)).astype(jnp.float32))


@pytest.mark.parametrize("nan", [False, True])
def test_action_repeat_stops_at_the_first_sub_step_that_ends(nan):
    repeat = 3
    sim = _Blink(nan)
    env = adapt(sim, small(["env.action_repeat=3", "env.episode_length=400"]).env)
    state = env.reset(jax.random.PRNGKey(3), 2)
    raw = jax.tree.map(lambda x: x[0], state.sim)
    got, want = [], []
    for _ in range(4):
        state, out = env.step(state, jnp.zeros((2, 1)))
        ref, total, terminal, bad = _brute_force_repeat(sim, raw, jnp.zeros(1), repeat)
        got.append((float(out.reward[0]), bool(out.terminal[0]), bool(out.nonfinite[0])))
        want.append((0.0 if bad else total, terminal, bad))
        raw = jax.tree.map(lambda x: x[0], state.sim) if (terminal or bad) else ref
    assert got == want
    # by hand: counts 1-3, then 4-5 (the episode ends at 5: reset), 1-3, 4-5
    end = (0.0, False, True) if nan else (2.0, True, False)
    assert want == [(3.0, False, False), end, (3.0, False, False), end]


class _Physics(struct.PyTreeNode):
    q: jax.Array


class _State(struct.PyTreeNode):
    pipeline_state: _Physics
    obs: jax.Array
    reward: jax.Array
    done: jax.Array


class _HiddenNaN:
    """A simulator whose positions become NaN at step 3 while its observation stays finite, with
    `done` set (as Playground signals NaN qpos/qvel)."""

    observation_size, action_size = 2, 1

    def reset(self, key):
        return _State(_Physics(jnp.zeros(3)), jnp.zeros(2), jnp.zeros(()), jnp.zeros(()))

    def step(self, state, action):
        q = state.pipeline_state.q + 1.0
        q = jnp.where(q[0] == 3.0, jnp.nan, q)
        nan = jnp.isnan(q).any()
        return _State(_Physics(q), jnp.ones(2), jnp.ones(()), nan.astype(jnp.float32))


def test_a_done_from_non_finite_physics_is_not_terminal():
    env = adapt(_HiddenNaN(), small().env)
    state = env.reset(jax.random.PRNGKey(0), 2)
    flags = []
    for _ in range(4):
        state, out = env.step(state, jnp.zeros((2, 1)))
        flags.append((bool(out.terminal[0]), bool(out.nonfinite[0])))
    assert flags == [(False, False), (False, False), (False, True), (False, False)]


def test_blowup_bound_is_validated():
    from pql_jax.errors import UserError

    for bad in ("-1", "inf", "nan"):
        with pytest.raises(UserError, match="env.blowup_bound"):
            small([f"env.blowup_bound={bad}"])


SHRUNK = ["env.num_envs=8", "env.eval_envs=2", "env.episode_length=100", "agent.batch_size=64",
          "agent.buffer_capacity=4096", "agent.critic_width=64", "agent.actor_width=64", "agent.utd=1/8",
          "run.total_env_steps=1024", "run.chunk_steps=32", "run.eval_mode=sequential", "run.eval_cohorts=1",
          "agent.warmup_steps=8"]
"""A ported task's shipped config shrunk to a few chunks of a few envs (issue 29's Dog command)."""


def test_the_dog_refuses_to_train_on_the_cpu_in_one_line(tmp_path, capsys):
    from helpers import ROOT
    from pql_jax.cli import main

    out = tmp_path / "dog"
    code = main(["train", "--config", str(ROOT / "configs" / "dog_stand.yaml"), "--out", str(out), "--no-progress",
                 *SHRUNK])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not train on the CPU" in err[0], err
    assert not (out / "metrics.csv").exists()


@pytest.mark.long
@pytest.mark.parametrize("config", ["quadruped_walk", "quadruped_run"])
def test_each_ported_task_trains_through_the_cli(config, tmp_path):
    """The shipped config, shrunk: 4 chunks through `pql-jax train` (minutes on the CPU: the
    vmapped Quadruped's training program compiles for a few minutes)."""
    import csv

    from helpers import ROOT
    from pql_jax.cli import main

    out = tmp_path / config
    assert main(["train", "--config", str(ROOT / "configs" / f"{config}.yaml"), "--out", str(out), "--no-progress",
                 *SHRUNK]) == 0
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["env_steps"]) for r in rows] == [256, 512, 768, 1024]
    assert all(np.isfinite(float(r["eval_return"])) for r in rows)
