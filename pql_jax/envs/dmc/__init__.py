"""Ports to MJX of dm_control suite tasks that no MuJoCo Playground release has, named `dmc:<Task>`.

`dmc:QuadrupedWalk` and `dmc:QuadrupedRun` (pql_jax.envs.dmc.quadruped) and `dmc:DogStand` and
`dmc:DogWalk` (pql_jax.envs.dmc.dog: solver and contacts adapted to MJX) follow dm_control's own
model files and task code; they expose the Playground `MjxEnv` API, so the env adapter
(pql_jax.envs) drives them like `playground:` tasks. dm_control itself is not needed to run them;
it is the reference they are validated against (scripts/validate_dmc_ports.py,
tests/test_dmc_ports.py; `pip install -e ".[dmc]"`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal, NamedTuple

from pql_jax.errors import UserError


class Port(NamedTuple):
    """One ported task: which dm_control task it reproduces and how it is built."""

    dm_name: tuple[str, str]
    """dm_control's (domain, task)."""
    family: str
    """The module that builds it: `quadruped` or `dog`."""
    speed: str | None
    """The module's target-speed constant for the task (None: standing)."""
    cpu_loops: bool = False
    """On the CPU, loop its env copies (`env.batching: auto` -> map) and compile without XLA's
    fusion (`env.cpu_fusion: auto` -> off): its vmapped program does not compile in useful time
    and the fused step recomputes MJX's kinematic chain (benchmarks/RESULTS.md#dog-cpu-fusion).
    Training it there is refused (`pql_jax.envs.check_trainable`)."""


TASKS: dict[str, Port] = {
    "QuadrupedWalk": Port(("quadruped", "walk"), "quadruped", "WALK_SPEED"),
    "QuadrupedRun": Port(("quadruped", "run"), "quadruped", "RUN_SPEED"),
    "DogStand": Port(("dog", "stand"), "dog", None, cpu_loops=True),
    "DogWalk": Port(("dog", "walk"), "dog", "WALK_SPEED", cpu_loops=True),
}
"""The one list of ported tasks (named `dmc:<task>`); env names, the scripts' reference tasks and
`load` all read it."""


@dataclass(frozen=True)
class DmcOptions:
    """`env.options` of the `dmc:` ports."""

    solver_iterations: int = 0
    """Cap on the constraint solver's Newton iterations per physics step (0: the model's own,
    dm_control's 100), as Playground caps its DM Control models (walker 2, humanoid 4). The solve
    stops once converged (a few iterations), so a cap only changes results, and at 4 or fewer it
    moves both ports far from dm_control (benchmarks/RESULTS.md#capped-solver)."""
    solver_ls_iterations: int = 0
    """Cap on the solver's line-search steps per Newton iteration (0: the model's own, dm_control's
    50). Vmapped, MJX evaluates every one of them, so this is the cap that buys speed; 8 (the
    ports' configs) leaves their trajectories unchanged (same section)."""
    contacts: Literal["floor", "self"] = "floor"
    """The Dog's contact set: `floor` (geom-floor pairs only) or `self` (also dm_control's self
    pairs, culled as Playground culls its DM Control models); see pql_jax/envs/dmc/dog.py. The
    Quadruped keeps dm_control's own."""

    def check(self, task: str) -> None:
        """UserError naming an option value this port does not take."""
        if min(self.solver_iterations, self.solver_ls_iterations) < 0:
            raise UserError("env.options.solver_iterations and solver_ls_iterations must be >= 0 (0: the model's own)")
        if self.contacts != "floor" and (task not in TASKS or TASKS[task].family != "dog"):
            raise UserError(f"env.options.contacts applies to the dmc:Dog tasks only, not dmc:{task}")


def load(task: str, impl: str = "jax", solver_caps: tuple[int, int] = (0, 0), contacts: str = "floor"):
    """The raw MJX env of one of `TASKS`; `solver_caps`: (iterations, line-search iterations) of
    the constraint solver, 0 keeping the model's own (see `quadruped.cap_solver`); `contacts`:
    the Dog's contact set (`floor` or `self`, see `dog`; Quadruped keeps dm_control's)."""
    if task not in TASKS:
        raise ValueError(f"unknown dmc task {task!r}; known: {', '.join(TASKS)}")
    port = TASKS[task]
    module = importlib.import_module(f"pql_jax.envs.dmc.{port.family}")
    speed = getattr(module, port.speed) if port.speed else None
    overrides = {"impl": impl, "solver_iterations": int(solver_caps[0]), "solver_ls_iterations": int(solver_caps[1])}
    if port.family == "dog":
        return module.Dog(speed, contacts=contacts, config_overrides=overrides)
    if contacts != "floor":
        raise ValueError(f"contacts={contacts!r} applies to the Dog tasks only, not {task}")
    return module.QuadrupedMove(speed, config_overrides=overrides)
