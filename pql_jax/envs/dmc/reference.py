"""dm_control, the reference the `dmc:` ports are checked against (optional: `pip install -e ".[dmc]"`).

dm_control 1.0.50 (the newest release) indexes a few flex fields of MjModel/MjData that
MuJoCo 4 removed; `load` drops those names from dm_control's size table so that its named
indexing works with the MuJoCo this project runs (nothing the suite tasks read is affected).
"""

from __future__ import annotations

import mujoco
import numpy as np

from pql_jax.envs.dmc import TASKS


DM_NAMES = {task: port.dm_name for task, port in TASKS.items()}
"""dm_control's (domain, task) that each port reproduces (from the one list, `dmc.TASKS`)."""


def available() -> str | None:
    """None when dm_control can be imported, else why not."""
    try:
        import dm_control.suite  # noqa: F401 - dm_control is an optional extra: probe it
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        return f"dm_control not importable ({type(err).__name__}: {err}); pip install -e '.[dmc]'"
    return None


def _drop_missing_fields() -> None:
    from dm_control.mujoco.wrapper.mjbindings import sizes  # dm_control: an optional extra

    model = mujoco.MjModel.from_xml_string("<mujoco/>")
    structs = {"mjmodel": model, "mjdata": mujoco.MjData(model)}
    for struct, obj in structs.items():
        for field in [f for f in sizes.array_sizes[struct] if not hasattr(obj, f)]:
            del sizes.array_sizes[struct][field]


def load(domain: str, task: str, seed: int | None = None):
    """dm_control.suite.load(domain, task) with its task RNG seeded."""
    _drop_missing_fields()
    from dm_control import suite  # an optional extra; imported after the patch above

    return suite.load(domain, task, task_kwargs={"random": seed})


def flat_obs(observation) -> np.ndarray:
    """dm_control's observation dict flattened in its own order (control.flatten_observation)."""
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in observation.values()])


def state(env) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(qpos, qvel, act) of a dm_control env's physics, copied."""
    data = env.physics.data
    return data.qpos.copy(), data.qvel.copy(), data.act.copy()
