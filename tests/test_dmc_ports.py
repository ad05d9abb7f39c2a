"""The `dmc:` MJX ports against dm_control itself: same model, same reset heights, same first steps.

The long checks (100+ steps, random-policy statistics, speed) are scripts/validate_dmc_ports.py.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
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


def test_options_belong_to_their_family():
    """Each family takes only its own `env.options` keys (one-line error naming the key and what the
    family takes); old top-level keys name their new place; YAML and command-line spellings of a
    value are equal."""
    import yaml

    from pql_jax.config import Config, EnvConfig, apply_overrides, dump, from_dict, load
    from pql_jax.envs import check_options
    from pql_jax.envs.families import family_options

    with pytest.raises(UserError, match=r"env.options.impl is not an option of dmc: envs \(it takes solver_iterations"):
        check_options(EnvConfig(name="dmc:QuadrupedWalk", options={"impl": "warp"}))
    with pytest.raises(UserError, match=r"not an option of test: envs \(it takes none\)"):
        check_options(EnvConfig(name="test:pointmass", options={"backend": "spring"}))
    with pytest.raises(UserError, match=r"env.options.backend must be .*spring or mjx \(got 'springy'\)"):
        check_options(EnvConfig(name="brax:ant", options={"backend": "springy"}))
    with pytest.raises(UserError, match="'env.brax_backend' is now env.options.backend"):
        apply_overrides(Config(), ["env.brax_backend=spring"])
    cli = apply_overrides(Config(), ["env.name=dmc:QuadrupedRun", "env.options.solver_ls_iterations=8"])
    yml = from_dict({"env": {"name": "dmc:QuadrupedRun", "options": {"solver_ls_iterations": 8}}})
    assert cli == yml and hash(cli) == hash(yml)
    assert family_options(cli.env).solver_ls_iterations == 8 and family_options(cli.env).contacts == "floor"
    merged = apply_overrides(yml, ["env.options.solver_iterations=4"])  # merges into the file's options
    assert dict(merged.env.options) == {"solver_iterations": 4, "solver_ls_iterations": 8}
    assert family_options(EnvConfig(name="brax:ant")).backend == "positional"  # the family's default
    spring = load(None, ["env.name=brax:ant", "env.options.backend=spring"])
    assert from_dict(yaml.safe_load(dump(spring))) == spring  # written and read back


@pytest.fixture(scope="module")
def script():
    """scripts/validate_dmc_ports.py, imported as a module (scripts/ is on pytest's pythonpath)."""
    import validate_dmc_ports

    return validate_dmc_ports


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


# Tolerances of the first 5 steps in float32, per field: 10x the largest |port - dm_control| over
# steps 1-5 of the same 5 seeds (validate_dmc_ports' `steps` part, "max_5", 2026-12-07, JAX 0.12.1),
# rounded up to one significant digit. The float64 run of the same comparison agrees to <= 4e-9 on
# all 78 entries over 200 steps (benchmarks/RESULTS.md#float64-quadruped), so with the physics
# identical these float32 differences are rounding, amplified most in the acceleration-stage sensors.
FIRST_STEPS_TOL = {"reward": 2e-5, "hinge_qpos": 8e-6, "hinge_qvel": 7e-4, "act": 4e-7, "torso_velocity": 2e-5,
                   "torso_upright": 3e-6, "accelerometer": 2e-3, "gyro": 6e-5, "force_torque": 3e-3}


@needs_dm_control
@pytest.mark.long  # compiling the MJX step takes ~1-2 min on 2 cores: opt-in (--long), beyond the suite budget
def test_first_steps_match_dm_control(script):
    """From 5 dm_control reset states, 5 random control steps (the script's `steps` part, its seeds):
    same observations, all 78 entries, and rewards within FIRST_STEPS_TOL."""
    out = script.compare_steps("QuadrupedWalk", seeds=5, steps=5, x64=False)
    assert out["initial_obs_max"] < 7e-5  # 10x the measured 6.8e-6
    got = {"reward": out["reward"]["max_5"]} | {name: f["max_5"] for name, f in out["fields"].items()}
    assert set(got) == set(FIRST_STEPS_TOL)  # every field of the observation, sensors included
    assert all(got[name] < FIRST_STEPS_TOL[name] for name in got), got


@pytest.fixture(scope="module")
def dog_stand():
    from pql_jax.envs import dmc

    return dmc.load("DogStand"), reference.load("dog", "stand", seed=0)


@needs_dm_control
def test_dog_model_matches_dm_control(dog_stand):
    """Without its mesh geoms (visual only) but with dm_control's compiled inertials, the dog has
    dm_control's bodies, masses, joints, actuators, tendons, sensors and colliding geoms."""
    env, ref = dog_stand
    ours, theirs = env.mj_model, ref.physics.model._model
    for kind, count in (("body", "nbody"), ("sensor", "nsensor"), ("actuator", "nu"), ("joint", "njnt"),
                        ("tendon", "ntendon"), ("site", "nsite")):
        n = getattr(theirs, count)
        assert getattr(ours, count) == n, kind
        assert [getattr(ours, kind)(i).name for i in range(n)] == [getattr(theirs, kind)(i).name for i in range(n)]
    for field in ("body_mass", "body_ipos", "body_iquat", "body_inertia", "body_subtreemass", "dof_damping",
                  "dof_armature", "jnt_stiffness", "jnt_range", "qpos0", "actuator_gainprm", "actuator_ctrlrange",
                  "actuator_dynprm", "tendon_length0"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field), err_msg=field)
    assert ours.nmesh == 0 and theirs.nmesh == 162
    colliding = [i for i in range(theirs.ngeom) if theirs.geom_contype[i] | theirs.geom_conaffinity[i]]
    names = [theirs.geom(i).name for i in colliding]
    ids = [ours.geom(n).id for n in names]
    for field in ("geom_type", "geom_size", "geom_pos", "geom_quat", "geom_friction", "geom_solref", "geom_solimp",
                  "geom_condim", "geom_priority"):
        np.testing.assert_array_equal(getattr(ours, field)[ids], getattr(theirs, field)[colliding], err_msg=field)
    for field in ("timestep", "solver", "iterations", "ls_iterations", "tolerance", "cone", "integrator",
                  "disableflags", "enableflags"):
        assert getattr(ours.opt, field) == getattr(theirs.opt, field), field
    assert (ours.opt.noslip_iterations, theirs.opt.noslip_iterations) == (0, 4)  # MJX has no noslip solver


@needs_dm_control
def test_dog_mesh_free_model_steps_like_dm_control():
    """In MuJoCo, the mesh-free model with noslip put back and dm_control's contacts steps
    bit-identically to dm_control's dog: dropping the meshes changes nothing."""
    import xml.etree.ElementTree as ET

    import mujoco
    from mujoco_playground._src.dm_control_suite import common

    from pql_jax.envs.dmc import dog

    root = ET.fromstring(dog.model_xml())
    root.find("option").set("noslip_iterations", "4")
    model = mujoco.MjModel.from_xml_string(ET.tostring(root, encoding="unicode"), common.get_assets())
    ref = reference.load("dog", "stand", seed=3)
    ref.reset()
    data = mujoco.MjData(model)
    data.qpos[:], data.qvel[:], data.act[:] = reference.state(ref)
    rng = np.random.default_rng(0)
    for _ in range(40):
        action = rng.uniform(-1, 1, model.nu)
        ref.step(action)
        data.ctrl[:] = action
        mujoco.mj_step(model, data, nstep=3)
    np.testing.assert_array_equal(data.qpos, ref.physics.data.qpos)
    np.testing.assert_array_equal(data.qvel, ref.physics.data.qvel)


@needs_dm_control
def test_dog_contact_sets():
    """"floor": only geom-floor pairs; "self": all of dm_control's pairs but the ellipsoid-box ones
    (no MJX collision function)."""
    import mujoco
    from mujoco.mjx._src import collision_driver

    from pql_jax.envs.dmc import dog

    theirs = reference.load("dog", "stand").physics.model._model

    def pairs(m):
        return {tuple(sorted((m.geom(a).name, m.geom(b).name))) for a, b, _ in collision_driver.geom_pairs(m)}

    full = pairs(theirs)
    floor = pairs(dog.Dog(None).mj_model)
    assert floor == {p for p in full if "floor" in p} and len(floor) == 119
    kept = pairs(dog.Dog(None, contacts="self").mj_model)
    types = {int(mujoco.mjtGeom.mjGEOM_ELLIPSOID), int(mujoco.mjtGeom.mjGEOM_BOX)}
    assert full - kept == {p for p in full if {int(theirs.geom(n).type[0]) for n in p} == types}
    assert len(full - kept) == 181


@needs_dm_control
@pytest.mark.parametrize("task", ["DogStand", "DogWalk"])
def test_dog_observation_and_reward_match_dm_control(task):
    """On dm_control's own states (its task on the adapted model, 30 random steps), the port's
    observation and reward functions give dm_control's: 223 floats in its order, rewards in [0, 1]."""
    import jax
    from mujoco import mjx

    from pql_jax.envs import dmc
    from pql_jax.envs.dmc import dog

    env, ref = dmc.load(task), dog.dm_control_adapted(task, seed=4)
    ts, rng = ref.reset(), np.random.default_rng(5)
    assert sum(v.size for v in ts.observation.values()) == 223 == env.observation_size
    assert [k for k in ts.observation] == ["joint_angles", "joint_velocites", "torso_pelvis_height", "z_projection",
                                           "torso_com_velocity", "inertial_sensors", "foot_forces", "touch_sensors",
                                           "actuator_state"]
    np.testing.assert_allclose(env.stand_height, ref._task._stand_height, rtol=1e-12)
    np.testing.assert_allclose(env.body_weight, ref._task._body_weight, rtol=1e-12)
    rewards, obs_reward = [], jax.jit(lambda d: (env._obs(d), env._reward(d)))
    for _ in range(15):
        ts = ref.step(rng.uniform(-1, 1, env.action_size))
        data = mjx.put_data(ref.physics.model._model, ref.physics.data._data, impl="jax")
        obs, rew = obs_reward(data)
        np.testing.assert_allclose(np.asarray(obs), reference.flat_obs(ts.observation), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(float(rew), ts.reward, atol=1e-5)
        rewards.append(float(rew))
    assert 0.0 <= min(rewards) and max(rewards) <= 1.0 and max(rewards) > 0.0


@needs_dm_control
@pytest.mark.long  # compiling the dog's MJX step takes ~2-3 min on 2 cores: opt-in (--long)
def test_dog_first_steps_match_dm_control_on_the_adapted_model():
    """From a dm_control reset state, 3 random control steps of the port and of dm_control's task
    on the adapted model (no noslip, floor contacts): same observations and rewards to float32
    rounding (see benchmarks/RESULTS.md#mjx-ports)."""
    import jax
    import jax.numpy as jnp

    from pql_jax.envs import dmc
    from pql_jax.envs.dmc import dog

    env, ref = dmc.load("DogStand"), dog.dm_control_adapted("DogStand", seed=0)
    ts = ref.reset()
    state = jax.jit(env.reset_from)(*(jnp.asarray(x, jnp.float32) for x in reference.state(ref)))
    np.testing.assert_allclose(np.asarray(state.obs), reference.flat_obs(ts.observation), rtol=1e-4, atol=1e-4)
    step, rng = jax.jit(env.step), np.random.default_rng(0)
    for _ in range(3):
        action = rng.uniform(-1, 1, env.action_size)
        ts, state = ref.step(action), step(state, jnp.asarray(action, jnp.float32))
        obs = reference.flat_obs(ts.observation)
        np.testing.assert_allclose(float(state.reward), ts.reward, atol=1e-3)
        np.testing.assert_allclose(np.asarray(state.obs[:160]), obs[:160], atol=1e-2)  # positions, velocities
        np.testing.assert_allclose(np.asarray(state.obs[160:]), obs[160:], rtol=1e-2, atol=0.5)  # sensors


@needs_dm_control
def test_adaptation_variants_split_the_dog_model(script):
    """scripts/validate_dmc_ports.py --parts adaptations: each variant of dm_control's Dog changes
    exactly its own adaptation (noslip iterations, the geoms that can collide), and from one state
    and action sequence a 1e-9 velocity nudge stays far below either adaptation's drift."""
    variants = script._dm_variants("DogStand", seed=0)
    dm = reference.load("dog", "stand").physics.model
    assert dm.opt.noslip_iterations > 0
    expect = {"nudge_1e-9": (dm.opt.noslip_iterations, dm.ngeom), "no_noslip": (0, dm.ngeom),
              "floor_contacts": (dm.opt.noslip_iterations, variants["both"].physics.model.ngeom),
              "both": (0, variants["both"].physics.model.ngeom)}
    for name, env in variants.items():
        assert (env.physics.model.opt.noslip_iterations, env.physics.model.ngeom) == expect[name], name
    assert variants["both"].physics.model.ngeom < dm.ngeom
    drift = script.adaptation_drift("DogStand", seeds=1, steps=20)["variants"]
    angles = {name: v["fields"]["joint_angles"]["max_100"] for name, v in drift.items()}
    assert angles["nudge_1e-9"] < 1e-3 < min(angles["no_noslip"], angles["floor_contacts"], angles["both"]), angles


def test_solver_caps_reach_the_mjx_model():
    """`env.options.solver_iterations` / `solver_ls_iterations` cap the ports' solver (never raise it); 0
    keeps the model's own, which for Quadruped is MuJoCo's parse of dm_control's file."""
    import mujoco
    from mujoco_playground._src.dm_control_suite import common

    from pql_jax.config import EnvConfig
    from pql_jax.envs import dmc
    from pql_jax.envs.dmc import quadruped
    from pql_jax.envs.families import load_sim

    own = mujoco.MjModel.from_xml_string(quadruped.model_xml(10.0), common.get_assets()).opt
    cases = {(0, 0): (own.iterations, own.ls_iterations), (4, 8): (4, 8), (4, 0): (4, own.ls_iterations),
             (10**6, 10**6): (own.iterations, own.ls_iterations)}
    for caps, expected in cases.items():
        env = dmc.load("QuadrupedWalk", solver_caps=caps)
        assert (env.mj_model.opt.iterations, env.mj_model.opt.ls_iterations) == expected, caps
        assert (int(env.mjx_model.opt.iterations), int(env.mjx_model.opt.ls_iterations)) == expected, caps
    sim = load_sim(EnvConfig(name="dmc:QuadrupedRun", options={"solver_iterations": 2, "solver_ls_iterations": 5}))
    assert (int(sim.mjx_model.opt.iterations), int(sim.mjx_model.opt.ls_iterations)) == (2, 5)


def test_solver_caps_are_validated():
    from pql_jax.config import EnvConfig
    from pql_jax.envs import check_options

    with pytest.raises(UserError, match="not an option of playground: envs"):  # the family validates its options
        check_options(EnvConfig(name="playground:CartpoleBalance", options={"solver_iterations": 4}))
    with pytest.raises(UserError, match="must be >= 0"):
        check_options(EnvConfig(name="dmc:QuadrupedWalk", options={"solver_ls_iterations": -1}))
    check_options(EnvConfig(name="dmc:QuadrupedWalk", options={"solver_iterations": 4, "solver_ls_iterations": 8}))


def test_dog_contacts_reach_the_model_and_are_validated():
    """`env.options.contacts: self` builds the Dog with its self pairs (body geoms accept contacts; in the
    floor-only model only the floor does); other values and other tasks are one-line errors."""
    from pql_jax.config import EnvConfig
    from pql_jax.envs.dmc import dog
    from pql_jax.envs.families import load_sim

    for contacts in ("floor", "self"):
        sim = load_sim(EnvConfig(name="dmc:DogStand", options={"contacts": contacts}))
        expected = dog.Dog(None, contacts=contacts).mj_model
        np.testing.assert_array_equal(sim.mj_model.geom_contype, expected.geom_contype)
        np.testing.assert_array_equal(sim.mj_model.geom_conaffinity, expected.geom_conaffinity)
    floor, self_ = (dog.Dog(None, contacts=c).mj_model for c in ("floor", "self"))
    assert np.count_nonzero(floor.geom_conaffinity) == 1 < np.count_nonzero(self_.geom_conaffinity)  # floor only
    from pql_jax.envs import check_options

    check_options(EnvConfig(name="dmc:DogWalk", options={"contacts": "self"}))
    with pytest.raises(UserError, match="must be floor or self"):
        check_options(EnvConfig(name="dmc:DogStand", options={"contacts": "all"}))
    with pytest.raises(UserError, match="dmc:Dog tasks only"):
        check_options(EnvConfig(name="dmc:QuadrupedWalk", options={"contacts": "self"}))


@needs_dm_control
def test_solver_part_measures_caps_against_the_uncapped_model(script):
    """scripts/validate_dmc_ports.py --parts solver: a cap the solve never reaches (100: dm_control's
    own) leaves the trajectory bit-identical; a 1-iteration Newton solve moves it far beyond the
    1e-9 nudge floor, and a blow-up is recorded, not raised."""
    assert script._parse_caps(["4/8", "1/4"]) == [(4, 8), (1, 4)]
    assert script._parse_caps(["4"]) is None and script._parse_caps(["0/8"]) is None
    drift = script.solver_drift("QuadrupedWalk", seeds=2, steps=30, caps=[(100, 50), (1, 4)])["variants"]
    angles = {name: v["fields"]["hinge_qpos"]["max_100"] for name, v in drift.items()}
    assert angles["solver_100/50"] == 0.0 and drift["solver_100/50"]["reward_max_100"] == 0.0
    assert angles["nudge_1e-9"] < 1e-4 < angles["solver_1/4"], angles
    assert all(len(v["blowups"]) == 2 for v in drift.values())


class _Ends:
    """A stand-in generator whose every uniform draw is `value` (the canonical ends, -1 or 1)."""

    def __init__(self, value):
        self.value = value

    def uniform(self, low, high, size):
        assert (low, high) == (-1.0, 1.0)  # canonical draws, mapped afterwards
        return np.full(size, self.value)


def _recording(env, log: list):
    """`env` with its step recording each action it receives (as float64)."""
    step = env.step
    env.step = lambda action: (log.append(np.array(action, np.float64)), step(action))[1]
    return env


@needs_dm_control
def test_random_actions_are_canonical_draws_mapped_as_training_maps_them(script):
    """The validation draws u ~ U[-1, 1] and maps it with to_control onto the action spec, as the
    adapter maps the learner's actions: the lift actuators' [-1, 1.1] and the extend ones'
    [-0.8, 0.8] are reached exactly at u = -1 and u = 1."""
    from pql_jax.envs import to_control

    spec = reference.load("quadruped", "walk", seed=0).action_spec()
    assert (spec.maximum == 1.1).any() and (spec.minimum == -0.8).any()  # not [-1, 1]: the mapping matters
    u = np.random.default_rng(7).uniform(-1.0, 1.0, spec.shape)
    np.testing.assert_array_equal(script.random_action(np.random.default_rng(7), spec),
                                  to_control(u, spec.minimum, spec.maximum))
    np.testing.assert_array_equal(script.random_action(_Ends(-1.0), spec), spec.minimum)
    np.testing.assert_array_equal(script.random_action(_Ends(1.0), spec), spec.maximum)
    np.testing.assert_array_equal(np.float32(script.random_action(_Ends(1.0), spec)),
                                  np.float32(spec.maximum))  # what the float32 port receives


@needs_dm_control
def test_drift_parts_give_every_side_the_mapped_action(script):
    """The MuJoCo-only parts (adaptations, solver): the reference and each variant receive the
    same action, to_control of the canonical draw of the part's seeded generator."""
    from pql_jax.envs import to_control

    got = {"ref": [], "variant": []}
    ref = _recording(reference.load("quadruped", "walk", seed=0), got["ref"])
    variant = _recording(reference.load("quadruped", "walk", seed=0), got["variant"])
    script._drift("QuadrupedWalk", ref, {"variant": variant}, seeds=1, steps=3)
    spec, rng = ref.action_spec(), np.random.default_rng(1000)
    expect = [to_control(rng.uniform(-1.0, 1.0, spec.shape), spec.minimum, spec.maximum) for _ in range(3)]
    np.testing.assert_array_equal(got["ref"], expect)
    np.testing.assert_array_equal(got["variant"], expect)


class _PortState(NamedTuple):
    obs: jax.Array
    reward: jax.Array


@needs_dm_control
def test_steps_part_gives_dm_control_and_the_port_the_same_mapped_action(script, monkeypatch):
    """The `steps` part: dm_control's task and the port (a stand-in that records what its jitted
    step receives) get the same mapped action, the port as float32."""
    from pql_jax.envs import dmc, to_control

    received = {"dm_control": [], "port": []}

    class Port:
        @staticmethod
        def reset_from(qpos, qvel, act):
            return _PortState(jnp.zeros(78, qpos.dtype), jnp.zeros((), qpos.dtype))

        @staticmethod
        def step(state, action):
            jax.debug.callback(lambda a: received["port"].append(np.asarray(a)), action)
            return state

    load = reference.load
    monkeypatch.setattr(dmc, "load", lambda task, **kw: Port)
    monkeypatch.setattr(reference, "load", lambda *a, **kw: _recording(load(*a, **kw), received["dm_control"]))
    script.compare_steps("QuadrupedWalk", seeds=1, steps=3, x64=False)
    spec, rng = load("quadruped", "walk", seed=0).action_spec(), np.random.default_rng(1000)
    expect = [to_control(rng.uniform(-1.0, 1.0, spec.shape), spec.minimum, spec.maximum) for _ in range(3)]
    np.testing.assert_array_equal(received["dm_control"], expect)
    assert all(a.dtype == np.float32 for a in received["port"])
    np.testing.assert_array_equal(received["port"], np.float32(expect))
