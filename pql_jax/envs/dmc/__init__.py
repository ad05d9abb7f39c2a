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


TASKS: dict[str, Port] = {
    "QuadrupedWalk": Port(("quadruped", "walk"), "quadruped", "WALK_SPEED"),
    "QuadrupedRun": Port(("quadruped", "run"), "quadruped", "RUN_SPEED"),
    "DogStand": Port(("dog", "stand"), "dog", None),
    "DogWalk": Port(("dog", "walk"), "dog", "WALK_SPEED"),
}
"""The one list of ported tasks (named `dmc:<task>`); env names, the scripts' reference tasks and
`load` all read it."""


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
