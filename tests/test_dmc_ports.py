"""The `dmc:` MJX ports against dm_control itself: same model, same reset heights, same first steps.

The long checks (100+ steps, random-policy statistics, speed) are scripts/validate_dmc_ports.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from pql_jax.envs import DMC_ENVS, check_env_name, known_envs, reward_range
from pql_jax.envs.dmc import reference
from pql_jax.errors import UserError

needs_dm_control = pytest.mark.skipif(reference.available() is not None,
                                      reason=f"{reference.available()}: the ports are checked against it")


def test_names_listed_and_rewards_bounded():
    for task in DMC_ENVS:
        check_env_name(f"dmc:{task}")
        assert f"dmc:{task}" in known_envs(include_playground=False)
        assert reward_range(f"dmc:{task}") == (0.0, 1.0)


def test_warp_impl_is_a_user_error():
    from pql_jax.envs import _load_sim

    with pytest.raises(UserError, match="jax implementation only"):
        _load_sim("dmc:QuadrupedWalk", "positional", "warp", 1000)


@pytest.fixture(scope="module")
def walk():
    from pql_jax.envs import dmc

    return dmc.load("QuadrupedWalk"), reference.load("quadruped", "walk", seed=0)


@needs_dm_control
def test_model_matches_dm_control(walk):
    env, ref = walk
    ours, theirs = env.mj_model, ref.physics.model._model
    for kind, count in (("geom", "ngeom"), ("body", "nbody"), ("sensor", "nsensor"), ("actuator", "nu"),
                        ("joint", "njnt"), ("tendon", "ntendon"), ("equality", "neq")):
        n = getattr(theirs, count)
        assert getattr(ours, count) == n, kind
        assert [getattr(ours, kind)(i).name for i in range(n)] == [getattr(theirs, kind)(i).name for i in range(n)]
    for field in ("timestep", "solver", "iterations", "ls_iterations", "tolerance", "cone", "integrator",
                  "disableflags", "enableflags"):
        assert getattr(ours.opt, field) == getattr(theirs.opt, field), field
    np.testing.assert_array_equal(ours.geom_size, theirs.geom_size)
    np.testing.assert_array_equal(ours.actuator_ctrlrange, theirs.actuator_ctrlrange)


@needs_dm_control
def test_reset_height_matches_dm_control(walk):
    """dm_control drops the randomly oriented torso from the first 1 cm step clear of the floor."""
    env, ref = walk
    for _ in range(20):
        ref.reset()
        qpos = ref.physics.data.qpos.copy()
        ours = np.asarray(env.initial_qpos(qpos[3:7]))
        np.testing.assert_allclose(ours, qpos, atol=1e-6)


@needs_dm_control
@pytest.mark.long  # compiling the MJX step takes ~1-2 min on 2 cores: opt-in (--long), beyond the suite budget
def test_first_steps_match_dm_control(walk):
    """From dm_control's reset state, 5 random control steps: same observations and rewards
    (float32 tolerances: see benchmarks/RESULTS.md, MJX ports of Quadruped and Dog)."""
    import jax
    import jax.numpy as jnp
    from mujoco_playground._src import mjx_env

    env, ref = walk
    ref.reset()
    qpos, qvel, act = (jnp.asarray(x, jnp.float32) for x in reference.state(ref))
    data = mjx_env.make_data(env.mj_model, qpos=qpos, qvel=qvel, act=act, impl="jax")
    state = mjx_env.State(data, jnp.zeros(78), jnp.zeros(()), jnp.zeros(()), {}, {})
    step = jax.jit(env.step)  # mjx.step recomputes everything from qpos/qvel/act first
    spec, rng = ref.action_spec(), np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(spec.minimum, spec.maximum)
        ts, state = ref.step(action), step(state, jnp.asarray(action, jnp.float32))
        obs = reference.flat_obs(ts.observation)
        assert state.obs.shape == obs.shape == (78,)
        np.testing.assert_allclose(float(state.reward), ts.reward, atol=1e-4)
        np.testing.assert_allclose(np.asarray(state.obs[:48]), obs[:48], atol=1e-3, rtol=1e-3)  # state, velocity, upright
        np.testing.assert_allclose(np.asarray(state.obs[48:]), obs[48:], atol=2e-2, rtol=1e-3)  # acc-stage sensors
