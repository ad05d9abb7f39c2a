"""dm_control's Quadruped Walk and Run on MJX: `dmc:QuadrupedWalk`, `dmc:QuadrupedRun`.

Same as `dm_control.suite.quadruped.walk` / `.run` (dm_control 1.0.50):
- model: dm_control's quadruped.xml (vendored in xmls/, Apache 2.0) with dm_control's own
  `make_model` edits (no walls, ball, target, terrain or rangefinders; floor half-size
  20 s x desired speed), MuJoCo's default solver unchanged (Newton, 100 iterations, pyramidal
  cone, Euler with implicit joint damping): MJX supports everything this model uses, so none
  of Playground's solver or contact cuts are applied; one MJX contact detail is set to MuJoCo's
  (plane-capsule friction frames, see `QuadrupedMove._forward`);
- 4 physics steps of 5 ms per 20 ms control step, the action written to `ctrl` (MuJoCo clamps
  it to each actuator's ctrlrange, as in dm_control, which does not clip either);
- observation: dm_control's flattened `OrderedDict`, 78 floats: egocentric_state (16 hinge
  angles, 16 hinge velocities, 12 actuator activations), torso_velocity (velocimeter, 3),
  torso_upright (1), imu (accelerometer then gyro, 6), force_torque (arcsinh of the 4 toe force
  then 4 toe torque sensors, 24). Position- and velocity-dependent fields are refreshed after
  the last physics step, as dm_control's `mj_step1` does; acceleration-dependent sensors
  (accelerometer, force, torque) come from the last physics step, as in dm_control;
- reward: upright (linear, 1 when the torso z-axis is vertical, 0 upside down) x move (linear
  in forward torso velocity, 1 at >= desired speed 0.5 or 5 m/s, 0.5 at 0);
- initial state: torso orientation uniform on the rotation group (a normalised Gaussian
  quaternion), all hinges at 0, at rest, dropped from the lowest height in 1 cm steps from 0
  at which no geom touches the floor (computed in closed form from the geoms' shapes rather
  than dm_control's loop over collision checks; self-contacts cannot change with height);
- no termination; dm_control's 20 s time limit is the adapter's `episode_length: 1000`.
`done` is 1 only when the state is not finite (Playground's convention), which the adapter
treats as a blow-up. Runs on the `jax` MJX implementation only.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from brax import math as brax_math
from ml_collections import config_dict
from mujoco import mjx
from mujoco_playground._src import mjx_env, reward
from mujoco_playground._src.dm_control_suite import common

XML_PATH = Path(__file__).parent / "xmls" / "quadruped.xml"
TIME_LIMIT = 20.0
WALK_SPEED = 0.5
RUN_SPEED = 5.0
HEIGHT_STEP = 0.01
"""dm_control raises the dropped torso in 1 cm steps until nothing touches the floor."""

_REMOVED_GEOMS = ("wall_px", "wall_py", "wall_nx", "wall_ny", "terrain")


def model_xml(floor_size: float) -> str:
    """dm_control's quadruped.xml after `quadruped.make_model(floor_size)` (no terrain,
    rangefinders, walls or ball)."""
    root = ET.fromstring(XML_PATH.read_text())
    for parent in root.iter():
        for child in list(parent):
            name = child.get("name")
            if (child.tag == "geom" and name in _REMOVED_GEOMS) or child.tag == "rangefinder" \
                    or (child.tag == "body" and name == "ball") or (child.tag == "site" and name == "target"):
                parent.remove(child)
            elif child.tag == "geom" and name == "floor":
                child.set("size", f"{floor_size} {floor_size} .5")
    return ET.tostring(root, encoding="unicode")


def default_config() -> config_dict.ConfigDict:
    return config_dict.create(ctrl_dt=0.02, sim_dt=0.005, episode_length=1000, action_repeat=1, impl="jax",
                              solver_iterations=0, solver_ls_iterations=0)


def cap_solver(model: mujoco.MjModel, iterations: int, ls_iterations: int) -> None:
    """Cap the constraint solver's iterations and line-search iterations (in place) where the
    caps are > 0, as Playground caps its DM Control models; 0 keeps the model's own (dm_control's
    100 and 50)."""
    if iterations > 0:
        model.opt.iterations = min(model.opt.iterations, iterations)
    if ls_iterations > 0:
        model.opt.ls_iterations = min(model.opt.ls_iterations, ls_iterations)


class _Geoms:
    """Each floor-colliding geom's placement in the torso frame at the reset pose (hinges 0),
    for the closed-form drop height."""

    def __init__(self, model: mujoco.MjModel):
        data = mujoco.MjData(model)
        data.qpos[:] = model.qpos0
        data.qpos[:7] = [0, 0, 0, 1, 0, 0, 0]
        mujoco.mj_kinematics(model, data)
        floor = model.geom("floor").id
        hits = ((model.geom_contype & model.geom_conaffinity[floor]) | (model.geom_contype[floor] & model.geom_conaffinity)) > 0
        ids = [g for g in range(model.ngeom) if g != floor and hits[g] and model.geom_bodyid[g] != 0]
        types = model.geom_type[ids]
        known = (mujoco.mjtGeom.mjGEOM_SPHERE, mujoco.mjtGeom.mjGEOM_CAPSULE, mujoco.mjtGeom.mjGEOM_ELLIPSOID,
                 mujoco.mjtGeom.mjGEOM_CYLINDER, mujoco.mjtGeom.mjGEOM_BOX)
        if not np.all(np.isin(types, known)):
            raise ValueError(f"drop height: geom types {sorted(set(types.tolist()))} not all handled")
        self.pos = jnp.asarray(data.geom_xpos[ids], jnp.float32)
        self.mat = jnp.asarray(data.geom_xmat[ids].reshape(-1, 3, 3), jnp.float32)
        self.size = jnp.asarray(model.geom_size[ids], jnp.float32)
        self.type = np.asarray(types)

    def drop_height(self, quat: jax.Array) -> jax.Array:
        """dm_control's `_find_non_contacting_height`: the first multiple of 1 cm at which every
        geom is above the floor with the torso at orientation `quat`."""
        rot = brax_math.quat_to_3x3(quat)
        centre_z = (self.pos @ rot.T)[:, 2]
        row = jnp.einsum("j,gjk->gk", rot[2], self.mat)  # world z row of each geom's frame
        r, h = self.size[:, 0], self.size[:, 1]
        az = jnp.abs(row[:, 2])
        t = mujoco.mjtGeom
        depth = jnp.select(
            [self.type == t.mjGEOM_SPHERE, self.type == t.mjGEOM_CAPSULE, self.type == t.mjGEOM_ELLIPSOID,
             self.type == t.mjGEOM_CYLINDER],
            [r, r + h * az, jnp.sqrt(jnp.sum((row * self.size) ** 2, axis=1)),
             h * az + r * jnp.sqrt(jnp.maximum(1 - az**2, 0.0))],
            jnp.sum(jnp.abs(row) * self.size, axis=1))  # box
        lowest = jnp.min(centre_z - depth)
        return HEIGHT_STEP * (jnp.floor(-lowest / HEIGHT_STEP) + 1)


class QuadrupedMove(mjx_env.MjxEnv):
    """dm_control's quadruped `Move` task at `desired_speed` (0.5: walk, 5: run)."""

    def __init__(self, desired_speed: float, config: config_dict.ConfigDict | None = None,
                 config_overrides: dict[str, Any] | None = None):
        super().__init__(config or default_config(), config_overrides)
        if self._config.impl != "jax":
            raise ValueError("the dmc: ports run on MJX's jax implementation only (impl: jax)")
        self._speed = float(desired_speed)
        self._mj_model = mujoco.MjModel.from_xml_string(model_xml(TIME_LIMIT * self._speed), common.get_assets())
        self._mj_model.opt.timestep = self.sim_dt
        cap_solver(self._mj_model, self._config.solver_iterations, self._config.solver_ls_iterations)
        self._mjx_model = mjx.put_model(self._mj_model, impl="jax")
        m = self._mj_model
        hinges = np.flatnonzero(m.jnt_type == mujoco.mjtJoint.mjJNT_HINGE)
        self._hinge_qpos = m.jnt_qposadr[hinges]
        self._hinge_qvel = m.jnt_dofadr[hinges]
        self._torso = m.body("torso").id

        def sensor_adr(*types):
            ids = np.flatnonzero(np.isin(m.sensor_type, types))
            return np.concatenate([m.sensor_adr[i] + np.arange(m.sensor_dim[i]) for i in ids])

        s = mujoco.mjtSensor
        self._velocimeter = sensor_adr(s.mjSENS_VELOCIMETER)
        self._imu = sensor_adr(s.mjSENS_GYRO, s.mjSENS_ACCELEROMETER)
        self._force_torque = sensor_adr(s.mjSENS_FORCE, s.mjSENS_TORQUE)
        self._geoms = _Geoms(m)
        self._geom_type = jnp.asarray(m.geom_type)

    def initial_qpos(self, quat: jax.Array) -> jax.Array:
        """Reset pose for a unit torso quaternion: origin x-y, drop height, hinges at 0."""
        z = self._geoms.drop_height(quat)
        return jnp.asarray(self._mj_model.qpos0, jnp.float32).at[:7].set(
            jnp.concatenate([jnp.zeros(2), z[None], quat]))

    def reset_from(self, qpos: jax.Array, qvel: jax.Array | None = None, act: jax.Array | None = None) -> mjx_env.State:
        """The state at a given configuration (used by reset and by the dm_control comparison)."""
        data = mjx_env.make_data(self._mj_model, qpos=qpos, qvel=qvel, act=act, impl="jax")
        data = mjx.forward(self._mjx_model, data)
        return mjx_env.State(data, self._obs(data), jnp.zeros(()), jnp.zeros(()), {}, {})

    def reset(self, rng: jax.Array) -> mjx_env.State:
        quat = jax.random.normal(rng, (4,))
        return self.reset_from(self.initial_qpos(quat / jnp.linalg.norm(quat)))

    def step(self, state: mjx_env.State, action: jax.Array) -> mjx_env.State:
        def physics_step(data, _):
            return mjx.euler(self._mjx_model, self._forward(data.replace(ctrl=action))), None

        data, _ = jax.lax.scan(physics_step, state.data, None, length=self.n_substeps)
        data = self._sync(data)
        done = (~jnp.all(jnp.isfinite(data.qpos)) | ~jnp.all(jnp.isfinite(data.qvel))).astype(jnp.float32)
        return mjx_env.State(data, self._obs(data), self._reward(data), done, state.metrics, state.info)

    def _forward(self, data: mjx.Data) -> mjx.Data:
        """`mjx.forward` (jax implementation) with MuJoCo's plane-capsule contact frames.

        MuJoCo aligns a plane-capsule contact's first tangent with the capsule axis projected on
        the plane; MJX does so only when that projection is longer than 0.5 (axis more than 30
        degrees from the normal) and otherwise uses a fixed world axis. The tangents orient the
        4-edge friction pyramid (pyramidal cone, condim 3), so a steep shin or foot sliding on
        the floor gets a different friction force in MJX; here the frames are MuJoCo's."""
        m = self._mjx_model
        for stage in (mjx.kinematics, mjx.com_pos, mjx.camlight, mjx.tendon, mjx.crb, mjx.tendon_armature,
                      mjx.factor_m, mjx.collision):
            data = stage(m, data)
        data = self._capsule_frames(data)
        for stage in (mjx.make_constraint, mjx.transmission, mjx.sensor_pos, mjx.fwd_velocity, mjx.sensor_vel,
                      mjx.fwd_actuation, mjx.fwd_acceleration, mjx.solve, mjx.sensor_acc):
            data = stage(m, data)
        return data

    def _capsule_frames(self, data: mjx.Data) -> mjx.Data:
        contact = data._impl.contact
        if contact.dist.shape[0] == 0:
            return data
        geom = contact.geom
        plane_capsule = (self._geom_type[geom[:, 0]] == int(mujoco.mjtGeom.mjGEOM_PLANE)) & \
            (self._geom_type[geom[:, 1]] == int(mujoco.mjtGeom.mjGEOM_CAPSULE))
        normal = contact.frame[:, 0]
        axis = data.geom_xmat[geom[:, 1], :, 2]
        tangent = axis - normal * jnp.sum(normal * axis, axis=1, keepdims=True)
        norm = jnp.linalg.norm(tangent, axis=1, keepdims=True)
        keep = plane_capsule[:, None] & (norm > 1e-9)
        tangent = jnp.where(keep, tangent / jnp.where(keep, norm, 1.0), contact.frame[:, 1])
        frame = jnp.stack([normal, tangent, jnp.cross(normal, tangent)], axis=1)
        return data.tree_replace({"_impl.contact.frame": frame})

    def _sync(self, data: mjx.Data) -> mjx.Data:
        """dm_control's `mj_step1` after the last physics step: position and velocity stages
        (what the observation reads: body frames and the velocity sensors) at the new state."""
        m = self._mjx_model
        data = mjx.com_vel(m, mjx.com_pos(m, mjx.kinematics(m, data)))
        return mjx.sensor_vel(m, data)

    def _obs(self, data: mjx.Data) -> jax.Array:
        return jnp.concatenate([
            data.qpos[self._hinge_qpos], data.qvel[self._hinge_qvel], data.act,
            data.sensordata[self._velocimeter], data.xmat[self._torso, 2, 2][None],
            data.sensordata[self._imu], jnp.arcsinh(data.sensordata[self._force_torque])])

    def _reward(self, data: mjx.Data) -> jax.Array:
        upright = reward.tolerance(data.xmat[self._torso, 2, 2], bounds=(1.0, float("inf")),
                                   sigmoid="linear", margin=2.0, value_at_margin=0.0)
        move = reward.tolerance(data.sensordata[self._velocimeter][0], bounds=(self._speed, float("inf")),
                                margin=self._speed, value_at_margin=0.5, sigmoid="linear")
        return upright * move

    @property
    def xml_path(self) -> str:
        return XML_PATH.as_posix()

    @property
    def action_size(self) -> int:
        return self._mjx_model.nu

    @property
    def mj_model(self) -> mujoco.MjModel:
        return self._mj_model

    @property
    def mjx_model(self) -> mjx.Model:
        return self._mjx_model
