"""dm_control's Dog Stand and Walk on MJX: `dmc:DogStand`, `dmc:DogWalk`.

Same as `dm_control.suite.dog.stand` / `.walk` (dm_control 1.0.50) except where marked ADAPTED
(MJX lacks a feature; the drift each causes is measured in benchmarks/RESULTS.md#mjx-ports):
- model: dm_control's dog.xml (vendored in xmls/, Apache 2.0) with dm_control's own `make_model`
  edits (floor half-size 15 m, no ball, target, walls or ball/head cameras). The 162 bone mesh
  geoms (contype/conaffinity 0: they never collide, but their density gives most of the mass)
  and the skin are dropped, and every body gets an explicit inertial equal to dm_control's
  compiled one (xmls/dog_inertials.json, from `inertials`): the compiled MjModel has exactly
  dm_control's masses, inertias, joints, actuators, tendons, sensors and colliding geoms, and in
  MuJoCo it steps bit-identically to dm_control's model (tests/test_dmc_ports.py), without the
  20 MB of STL;
- ADAPTED solver: no noslip pass (dm_control sets `noslip_iterations=4`; MJX has none). Newton,
  100 iterations, 50 line-search steps, pyramidal cone, Euler with implicit damping: dm_control's;
- ADAPTED contacts (`contacts="floor"`, the default): only geom-floor contacts. dm_control's model
  has 5557 candidate geom pairs (5438 self pairs), which MJX's jax implementation evaluates every
  physics step with no mid-phase (and it has no ellipsoid-box function for 181 of them);
  `contacts="self"` keeps all of dm_control's pairs except those 181, culled the way Playground
  culls its DM Control models (`max_geom_pairs`, `max_contact_points`: `SELF_CULL`).
  One MJX contact detail is set to MuJoCo's, as for Quadruped: plane-capsule friction frames;
- 3 physics steps of 5 ms per 15 ms control step, the action written to `ctrl` (clamped by
  MuJoCo to ctrlrange [-1, 1], as in dm_control);
- observation: dm_control's flattened `OrderedDict`, 223 floats: joint_angles (73 hinges),
  joint_velocites (73), torso_pelvis_height (2), z_projection (world-z row of the skull, torso
  and pelvis frames, 9), torso_com_velocity (torso subtree linear velocity in the torso frame, 3),
  inertial_sensors (accelerometer, velocimeter, gyro at the head, 9), foot_forces (force sensors
  at the foot and hand anchors, 12), touch_sensors (palms, soles, 4), actuator_state (38).
  Timing as dm_control's `mj_step1` (see quadruped.py): positions and velocity sensors after the
  last physics step, accelerometer/force/touch from the last physics step;
- reward (Stand): torso and pelvis height >= 0.9 x their height in the default pose (gaussian
  tolerance, margin = that height) x skull, torso and pelvis upright within 30 degrees (linear)
  x touch-sensor sum >= body weight (linear, 0.9 at 0). Walk multiplies by (4 f + 1) / 5, f the
  linear tolerance of the torso-frame forward subtree velocity in [1, 2] m/s, margin 1;
- initial state: default pose, heading uniform in [0, 2 pi), root x, y and yaw velocities
  N(0, 2^2), each actuator state uniform in its ctrlrange; the first observation from a forward
  pass with actuation disabled, as dm_control's `after_reset`;
- no termination; dm_control's 15 s time limit is the adapter's `episode_length: 1000`.
`done` is 1 only when the state is not finite (Playground's convention): the adapter resets the
env. dm_control itself raises PhysicsError there (it does, rarely, under a random policy).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from ml_collections import config_dict
from mujoco import mjx
from mujoco_playground._src import mjx_env, reward
from mujoco_playground._src.dm_control_suite import common

from pql_jax.envs.dmc.quadruped import QuadrupedMove, cap_solver
from pql_jax.envs.dmc import reference

XML_PATH = Path(__file__).parent / "xmls" / "dog.xml"
INERTIALS_PATH = Path(__file__).parent / "xmls" / "dog_inertials.json"
TIME_LIMIT = 15.0
WALK_SPEED = 1.0
FLOOR_SIZE = WALK_SPEED * TIME_LIMIT
"""dm_control sizes the floor for the walk speed in both Stand and Walk."""
STAND_HEIGHT_FRACTION = 0.9
MIN_UPRIGHT_COSINE = float(np.cos(np.deg2rad(30)))
SELF_CULL = {"max_geom_pairs": 8, "max_contact_points": 32}
"""`contacts="self"`: per collision function, the 8 geom pairs nearest by bounding sphere are
tested; per condim, the 32 deepest contacts are kept (Playground's humanoid: 8 and 8)."""

_REMOVED = {"body": {"ball"}, "geom": {"target", "wall_px", "wall_py", "wall_nx", "wall_ny"},
            "camera": {"ball", "head"}, "texture": {"skin", "tennis_ball"}, "material": {"skin", "tennis_ball"}}


def inertials(model: mujoco.MjModel) -> dict[str, list]:
    """Each body's compiled (mass, com position, inertia-frame quaternion, diagonal inertia)."""
    return {model.body(i).name: [float(model.body_mass[i]), model.body_ipos[i].tolist(), model.body_iquat[i].tolist(),
                                 model.body_inertia[i].tolist()] for i in range(1, model.nbody)}


def model_xml(contacts: str = "floor") -> str:
    """dm_control's dog.xml after `dog.make_model(15, remove_ball=True)`, without meshes, skin and
    the noslip pass, with explicit inertials and the `contacts` set (see the module docstring)."""
    if contacts not in ("floor", "self"):
        raise ValueError(f"contacts must be 'floor' or 'self', not {contacts!r}")
    root = ET.fromstring(XML_PATH.read_text())
    root.remove(root.find("compiler"))  # mesh and texture directories
    root.find("option").attrib.pop("noslip_iterations")
    for parent in root.iter():
        for child in list(parent):
            if child.get("name") in _REMOVED.get(child.tag, ()) or child.tag in ("mesh", "skin") or \
                    (child.tag == "geom" and child.get("mesh") is not None):
                parent.remove(child)
            elif child.tag == "geom" and child.get("name") == "floor":
                child.set("size", f"{FLOOR_SIZE} {FLOOR_SIZE} .1")
    table = json.loads(INERTIALS_PATH.read_text())
    for body in root.iter("body"):
        for old in body.findall("inertial"):
            body.remove(old)
        mass, pos, quat, inertia = table[body.get("name")]
        body.insert(0, ET.Element("inertial", mass=repr(mass), pos=" ".join(map(repr, pos)),
                                  quat=" ".join(map(repr, quat)), diaginertia=" ".join(map(repr, inertia))))
    if contacts == "self":
        custom = ET.SubElement(root, "custom")
        for name, value in SELF_CULL.items():
            ET.SubElement(custom, "numeric", name=name, data=str(value))
    return ET.tostring(root, encoding="unicode")


def restrict_contacts(model: mujoco.MjModel, contacts: str) -> None:
    """Set contype/conaffinity bits (in place) so that MJX collides only the `contacts` set:
    "floor": geom-floor pairs; "self": dm_control's pairs less ellipsoid-box ones."""
    floor = model.geom("floor").id
    body = (model.geom_contype | model.geom_conaffinity) > 0
    body[floor] = False
    if contacts == "floor":
        model.geom_contype[body], model.geom_conaffinity[body] = 2, 0
        model.geom_conaffinity[floor] |= 2
        return
    t = mujoco.mjtGeom
    box = body & (model.geom_type == t.mjGEOM_BOX)
    if np.any(model.geom_contype[box] != 1) or np.any(model.geom_conaffinity[box] != 1):
        raise ValueError("expected dm_control's boxes to have contype = conaffinity = 1")
    other = body & ~box & (model.geom_type != t.mjGEOM_ELLIPSOID)
    model.geom_contype[other] |= 2  # boxes accept bit 2: non-ellipsoids still touch them
    model.geom_contype[box], model.geom_conaffinity[box] = 4, 6
    model.geom_conaffinity[floor] |= 4


def default_config() -> config_dict.ConfigDict:
    return config_dict.create(ctrl_dt=0.015, sim_dt=0.005, episode_length=1000, action_repeat=1, impl="jax",
                              solver_iterations=0, solver_ls_iterations=0)


class Dog(mjx_env.MjxEnv):
    """dm_control's dog `Stand` (move_speed None) or `Move` task at `move_speed` (1: walk)."""

    _forward = QuadrupedMove._forward  # mjx.forward with MuJoCo's plane-capsule contact frames
    _capsule_frames = QuadrupedMove._capsule_frames
    _sync = QuadrupedMove._sync  # dm_control's mj_step1 after the last physics step
    step = QuadrupedMove.step  # n_substeps Euler steps, then _sync, _obs, _reward and a non-finite flag

    def __init__(self, move_speed: float | None = None, contacts: str = "floor",
                 config: config_dict.ConfigDict | None = None, config_overrides: dict[str, Any] | None = None):
        super().__init__(config or default_config(), config_overrides)
        if self._config.impl != "jax":
            raise ValueError("the dmc: ports run on MJX's jax implementation only (impl: jax)")
        self._speed = move_speed
        self._mj_model = mujoco.MjModel.from_xml_string(model_xml(contacts), common.get_assets())
        restrict_contacts(self._mj_model, contacts)
        self._mj_model.opt.timestep = self.sim_dt
        cap_solver(self._mj_model, self._config.solver_iterations, self._config.solver_ls_iterations)
        self._mjx_model = mjx.put_model(self._mj_model, impl="jax")
        m = self._mjx_model
        self._reset_model = m.replace(opt=m.opt.replace(
            disableflags=m.opt.disableflags | mujoco.mjtDisableBit.mjDSBL_ACTUATION))
        m = self._mj_model
        hinges = np.flatnonzero(m.jnt_type == mujoco.mjtJoint.mjJNT_HINGE)
        self._hinge_qpos, self._hinge_qvel = m.jnt_qposadr[hinges], m.jnt_dofadr[hinges]
        self._torso, self._pelvis, self._skull = (m.body(n).id for n in ("torso", "pelvis", "skull"))

        def sensors(*names):
            return np.concatenate([m.sensor_adr[m.sensor(n).id] + np.arange(m.sensor_dim[m.sensor(n).id])
                                   for n in names])

        self._linvel = sensors("torso_linvel")
        self._inertial = sensors("accelerometer", "velocimeter", "gyro")
        self._touch = sensors("palm_L", "palm_R", "sole_L", "sole_R")
        self._feet = sensors("foot_L", "foot_R", "hand_L", "hand_R")
        self._geom_type = jnp.asarray(m.geom_type)
        data = mujoco.MjData(m)
        mujoco.mj_kinematics(m, data)
        self.stand_height = STAND_HEIGHT_FRACTION * data.xpos[[self._torso, self._pelvis], 2]
        self.body_weight = -float(m.opt.gravity[2]) * float(m.body_subtreemass[self._torso])

    def reset_from(self, qpos: jax.Array, qvel: jax.Array | None = None, act: jax.Array | None = None) -> mjx_env.State:
        """The state at a given configuration (used by reset and by the dm_control comparison)."""
        data = mjx_env.make_data(self._mj_model, qpos=qpos, qvel=qvel, act=act, impl="jax")
        data = mjx.forward(self._reset_model, data)
        return mjx_env.State(data, self._obs(data), jnp.zeros(()), jnp.zeros(()), {}, {})

    def reset(self, rng: jax.Array) -> mjx_env.State:
        k_yaw, k_vel, k_act = jax.random.split(rng, 3)
        yaw = jax.random.uniform(k_yaw, (), maxval=2 * jnp.pi)
        qpos = jnp.asarray(self._mj_model.qpos0, jnp.float32).at[3:7].set(
            jnp.stack([jnp.cos(yaw / 2), 0.0, 0.0, jnp.sin(yaw / 2)]))
        qvel = jnp.zeros(self._mj_model.nv).at[jnp.array([0, 1, 5])].set(2 * jax.random.normal(k_vel, (3,)))
        lo, hi = (jnp.asarray(x, jnp.float32) for x in self._mj_model.actuator_ctrlrange.T)
        act = jax.random.uniform(k_act, lo.shape, minval=lo, maxval=hi)
        return self.reset_from(qpos, qvel, act)

    def _com_velocity(self, data: mjx.Data) -> jax.Array:
        return data.sensordata[self._linvel] @ data.xmat[self._torso]

    def _obs(self, data: mjx.Data) -> jax.Array:
        bodies = jnp.array([self._torso, self._pelvis])
        return jnp.concatenate([
            data.qpos[self._hinge_qpos], data.qvel[self._hinge_qvel], data.xpos[bodies, 2],
            data.xmat[jnp.array([self._skull, self._torso, self._pelvis]), 2].ravel(), self._com_velocity(data),
            data.sensordata[self._inertial], data.sensordata[self._feet], data.sensordata[self._touch], data.act])

    def _reward(self, data: mjx.Data) -> jax.Array:
        h = self.stand_height
        torso = reward.tolerance(data.xpos[self._torso, 2], bounds=(h[0], float("inf")), margin=h[0])
        pelvis = reward.tolerance(data.xpos[self._pelvis, 2], bounds=(h[1], float("inf")), margin=h[1])
        upright = reward.tolerance(data.xmat[jnp.array([self._skull, self._torso, self._pelvis]), 2, 2],
                                   bounds=(MIN_UPRIGHT_COSINE, float("inf")), sigmoid="linear",
                                   margin=MIN_UPRIGHT_COSINE + 1, value_at_margin=0.0)
        touch = reward.tolerance(jnp.sum(data.sensordata[self._touch]), bounds=(self.body_weight, float("inf")),
                                 margin=self.body_weight, sigmoid="linear", value_at_margin=0.9)
        total = torso * pelvis * jnp.prod(upright) * touch
        if self._speed is None:
            return total
        forward = reward.tolerance(self._com_velocity(data)[0], bounds=(self._speed, 2 * self._speed),
                                   margin=max(1.0, self._speed), value_at_margin=0.0, sigmoid="linear")
        return total * (4 * forward + 1) / 5

    @property
    def xml_path(self) -> str:
        return XML_PATH.as_posix()

    action_size, mj_model, mjx_model = QuadrupedMove.action_size, QuadrupedMove.mj_model, QuadrupedMove.mjx_model


def dm_control_adapted(task: str, seed: int | None = None, contacts: str = "floor"):
    """dm_control's own task (`dog.stand` / `dog.walk`) on this port's adapted model: isolates
    the adaptations' drift (this vs dm_control) from MJX's (the port vs this)."""
    from dm_control.rl import control  # dm_control: an optional extra, the reference only
    from dm_control.suite import dog as dm_dog

    reference.load("dog", "stand")  # patches dm_control for MuJoCo 4
    physics = dm_dog.Physics.from_xml_string(model_xml(contacts), common.get_assets())
    restrict_contacts(physics.model._model, contacts)
    task_ = dm_dog.Stand(random=seed) if task == "DogStand" else dm_dog.Move(WALK_SPEED, random=seed)
    return control.Environment(physics, task_, time_limit=TIME_LIMIT, control_timestep=0.015)
