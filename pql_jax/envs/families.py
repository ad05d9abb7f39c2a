"""The env families (the prefix of `env.name`: brax, playground, dmc, test): which tasks each has,
the options each takes (`env.options`), and how each builds its raw simulator.

Everything that is true of one family lives here or in the family's own package
(pql_jax.envs.dmc); the adapter (pql_jax.envs) and the run config name no family's settings.
"""

from __future__ import annotations

import functools
import importlib.metadata
import typing
import warnings
from dataclasses import dataclass, fields
from typing import Literal

import jax
import numpy as np

from pql_jax.config import EnvConfig
from pql_jax.envs import dmc
from pql_jax.envs.dmc import TASKS as DMC_TASKS
from pql_jax.envs.dmc import DmcOptions
from pql_jax.envs.pointmass import TASKS as TEST_TASKS
from pql_jax.errors import UserError
from pql_jax.values import coerce

BRAX_ENVS = ("ant", "halfcheetah", "hopper", "humanoid", "humanoidstandup", "inverted_pendulum",
             "inverted_double_pendulum", "pusher", "reacher", "swimmer", "walker2d")

DMC_ENVS = tuple(DMC_TASKS)
"""dm_control tasks ported to MJX here (pql_jax.envs.dmc), named `dmc:<task>`."""

TEST_ENVS = tuple(TEST_TASKS)
"""Pure-JAX test tasks (pql_jax.envs.pointmass): `_nan` injects non-finite steps, `_spike` huge
finite ones, `unit_reward` pays 1 per step."""


@dataclass(frozen=True)
class BraxOptions:
    """`env.options` of `brax:` envs."""

    backend: Literal["generalized", "positional", "spring", "mjx"] = "positional"
    """Brax physics backend."""

    def check(self, task: str) -> None:
        """Nothing beyond the allowed values."""


@dataclass(frozen=True)
class PlaygroundOptions:
    """`env.options` of `playground:` envs."""

    impl: Literal["jax", "warp"] = "jax"
    """MJX implementation: jax (CPU and GPU) or warp (GPU only)."""

    def check(self, task: str) -> None:
        """Nothing beyond the allowed values."""


@dataclass(frozen=True)
class NoOptions:
    """`test:` envs take no options."""

    def check(self, task: str) -> None:
        """Nothing to check."""


FAMILIES: dict[str, type] = {"brax": BraxOptions, "playground": PlaygroundOptions, "dmc": DmcOptions,
                             "test": NoOptions}
"""Each family's options class: its fields are the keys `env.options` takes, with their defaults."""


def family_options(config: EnvConfig):
    """`env.options` read by the env's family: its options class with every key type-checked and
    validated for the task (one-line UserError naming a key the family does not take)."""
    family, _, task = config.name.partition(":")
    cls = FAMILIES.get(family)
    if cls is None:
        raise UserError(f"unknown env {config.name!r}; env names start with {', '.join(f + ':' for f in FAMILIES)}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    values = {}
    for key, value in config.options.items():
        if key not in known:
            takes = f"it takes {', '.join(known)}" if known else "it takes none"
            raise UserError(f"env.options.{key} is not an option of {family}: envs ({takes})")
        values[key] = coerce(f"env.options.{key}", value, hints[key])
    options = cls(**values)
    options.check(task)
    return options


def known_envs(include_playground: bool = True) -> list[str]:
    """Every env name this build accepts (importing Playground's registry takes seconds)."""
    names = ["test:pointmass"] + [f"brax:{n}" for n in BRAX_ENVS] + list(TEST_ENVS[1:])
    names += [f"dmc:{n}" for n in DMC_ENVS]
    if not include_playground:
        return names
    try:
        from mujoco_playground import registry  # seconds to import: only when Playground's names are asked for

        names += [f"playground:{n}" for n in registry.dm_control_suite.ALL_ENVS]
        names += [f"playground:{n}" for n in registry.locomotion.ALL_ENVS]
        names += [f"playground:{n}" for n in registry.manipulation.ALL_ENVS]
    except Exception:  # noqa: BLE001 - playground optional at listing time
        pass
    return names


def check_env_name(name: str) -> None:
    """Raise UserError (listing the known envs) unless `name` is a known env."""
    if name in known_envs(include_playground=False):
        return
    known = known_envs()
    if name not in known:
        raise UserError(f"unknown env {name!r}; known envs: {', '.join(known)}")


def _dm_control_suite(task: str) -> bool:
    """Whether a `playground:` task is one of Playground's DM Control suite."""
    try:
        from mujoco_playground import registry  # seconds to import: only for playground: tasks

        return task in registry.dm_control_suite.ALL_ENVS
    except Exception:  # noqa: BLE001 - playground optional
        return False


def reward_range(name: str) -> tuple[float, float] | None:
    """Bounds of one env step's reward where they are known, else None: the test tasks,
    Playground's DM Control suite and the `dmc:` ports give rewards in [0, 1] (dm_control builds
    them from `rewards.tolerance` values in [0, 1])."""
    kind, _, task = name.partition(":")
    if name == "test:pointmass_spike":
        return None
    if name in TEST_ENVS or (kind == "dmc" and task in DMC_ENVS):
        return 0.0, 1.0
    if kind == "playground" and _dm_control_suite(task):
        return 0.0, 1.0
    return None


def cpu_loops(name: str) -> bool:
    """Whether the env declares that its programs need the CPU workarounds of the `auto` settings
    (`env.batching`, `env.cpu_fusion`): a port's `cpu_loops` (pql_jax.envs.dmc.TASKS)."""
    kind, _, task = name.partition(":")
    return kind == "dmc" and task in DMC_TASKS and DMC_TASKS[task].cpu_loops


def load_sim(config: EnvConfig):
    """The raw single-env simulator of `config.name` built with its family's options."""
    options = family_options(config)
    if config.name.startswith(("playground:", "dmc:")) or getattr(options, "backend", None) == "mjx":
        warn_deadlocking_jaxlib()
    return _build(config.name, options)


@functools.lru_cache(maxsize=None)
def _build(name: str, options):
    """Instantiate the raw simulator (cached: building an env parses its model)."""
    kind, _, task = name.partition(":")
    if name in TEST_ENVS:
        return TEST_TASKS[name]()
    if kind == "brax":
        from brax import envs as brax_envs  # imports Brax's physics: only for brax: tasks

        return brax_envs.get_environment(task, backend=options.backend)
    if kind == "playground":
        from mujoco_playground import registry  # seconds to import: only for playground: tasks

        return registry.load(task, config_overrides={"impl": options.impl})
    if kind == "dmc":
        return dmc.load(task, solver_caps=(options.solver_iterations, options.solver_ls_iterations),
                        contacts=options.contacts)
    raise UserError(f"unknown env {name!r}")


DEADLOCKING_JAXLIB = ("0.10.", "0.11.0")
"""jaxlib releases whose CPU LAPACK kernels can deadlock concurrent batched calls (pyproject.toml)."""


def warn_deadlocking_jaxlib() -> str | None:
    """Warn (and return the message) where the installed jaxlib is one that pyproject.toml
    excludes because batched LAPACK calls on the CPU can hang (MJX's constraint solver makes them:
    the families that step MJX call this)."""
    v = importlib.metadata.version("jaxlib")  # looked up at call time: tests stand in another version
    if not v.startswith(DEADLOCKING_JAXLIB) or jax.default_backend() != "cpu":
        return None
    msg = (f"jaxlib {v} can deadlock batched LAPACK calls on the CPU (MJX's constraint solver at 256+ envs "
           "hung forever); install jaxlib 0.9.2 or >= 0.11.1 (pyproject.toml's pins)")
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return msg


def control_range(name: str, sim) -> tuple | None:
    """(low, high) per action entry where the env passes its action to actuators with a finite
    control range other than [-1, 1] (None: nothing to map). Read from the MuJoCo model the
    simulator was built from; Playground's locomotion and manipulation tasks define their own
    action scaling, so they get none."""
    kind, _, task = name.partition(":")
    if kind == "test" or (kind == "playground" and not _dm_control_suite(task)):
        return None
    model = getattr(sim, "mj_model", None) or getattr(sim, "_mj_model", None)
    if model is None and hasattr(sim, "sys"):
        model = getattr(sim.sys, "mj_model", None)
    if model is None:
        return None
    low, high = np.asarray(model.actuator_ctrlrange, np.float64).T
    limited = np.asarray(model.actuator_ctrllimited, bool) & np.isfinite(low) & np.isfinite(high) & (high > low)
    low, high = np.where(limited, low, -1.0), np.where(limited, high, 1.0)
    if (low == -1.0).all() and (high == 1.0).all():
        return None
    return low, high
