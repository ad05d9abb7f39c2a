"""Ports to MJX of dm_control suite tasks that no MuJoCo Playground release has, named `dmc:<Task>`.

`dmc:QuadrupedWalk` and `dmc:QuadrupedRun` (pql_jax.envs.dmc.quadruped) and `dmc:DogStand` and
`dmc:DogWalk` (pql_jax.envs.dmc.dog: solver and contacts adapted to MJX) follow dm_control's own
model files and task code; they expose the Playground `MjxEnv` API, so the env adapter
(pql_jax.envs) drives them like `playground:` tasks. dm_control itself is not needed to run them;
it is the reference they are validated against (scripts/validate_dmc_ports.py,
tests/test_dmc_ports.py; `pip install -e ".[dmc]"`).
"""

from __future__ import annotations

from typing import NamedTuple


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
    and the fused step recomputes MJX's kinematic chain (benchmarks/RESULTS.md, "The Dog without
    XLA's CPU fusion"). Training it there is refused (`pql_jax.envs.check_trainable`)."""


TASKS: dict[str, Port] = {
    "QuadrupedWalk": Port(("quadruped", "walk"), "quadruped", "WALK_SPEED"),
    "QuadrupedRun": Port(("quadruped", "run"), "quadruped", "RUN_SPEED"),
    "DogStand": Port(("dog", "stand"), "dog", None, cpu_loops=True),
    "DogWalk": Port(("dog", "walk"), "dog", "WALK_SPEED", cpu_loops=True),
}
"""The one list of ported tasks (named `dmc:<task>`); env names, the scripts' reference tasks and
`load` all read it."""


def check_options(task: str | None, contacts: str, solver_caps: tuple[int, int], name: str = "") -> None:
    """UserError naming the option env `name` does not take (`env.dog_contacts` other than floor
    off the Dog; solver caps off the ports); `task`: its port's task, None when not a port."""
    from pql_jax.errors import UserError

    port = TASKS.get(task) if task else None
    if contacts != "floor" and (port is None or port.family != "dog"):
        raise UserError(f"env.dog_contacts applies to the dmc:Dog tasks only, not {name or task}")
    if any(solver_caps) and port is None:
        raise UserError(f"env.solver_iterations / solver_ls_iterations apply to dmc: tasks only, not {name or task}")


def load(task: str, impl: str = "jax", solver_caps: tuple[int, int] = (0, 0), contacts: str = "floor"):
    """The raw MJX env of one of `TASKS`; `solver_caps`: (iterations, line-search iterations) of
    the constraint solver, 0 keeping the model's own (see `quadruped.cap_solver`); `contacts`:
    the Dog's contact set (`floor` or `self`, see `dog`; Quadruped keeps dm_control's)."""
    import importlib

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
