"""Ports to MJX of dm_control suite tasks that no MuJoCo Playground release has, named `dmc:<Task>`.

`dmc:QuadrupedWalk` and `dmc:QuadrupedRun` (pql_jax.envs.dmc.quadruped) and `dmc:DogStand` and
`dmc:DogWalk` (pql_jax.envs.dmc.dog: solver and contacts adapted to MJX) follow dm_control's own
model files and task code; they expose the Playground `MjxEnv` API, so the env adapter
(pql_jax.envs) drives them like `playground:` tasks. dm_control itself is not needed to run them;
it is the reference they are validated against (scripts/validate_dmc_ports.py,
tests/test_dmc_ports.py; `pip install -e ".[dmc]"`).
"""

from __future__ import annotations

from pql_jax.envs import DMC_ENVS as ENVS


def load(task: str, impl: str = "jax", solver_caps: tuple[int, int] = (0, 0), contacts: str = "floor"):
    """The raw MJX env for one of `ENVS`; `solver_caps`: (iterations, line-search iterations) of
    the constraint solver, 0 keeping the model's own (see `quadruped.cap_solver`); `contacts`:
    the Dog's contact set (`floor` or `self`, see `dog`; Quadruped keeps dm_control's)."""
    from pql_jax.envs.dmc import dog, quadruped

    overrides = {"impl": impl, "solver_iterations": int(solver_caps[0]), "solver_ls_iterations": int(solver_caps[1])}
    if task in ("DogStand", "DogWalk"):
        return dog.Dog(None if task == "DogStand" else dog.WALK_SPEED, contacts=contacts, config_overrides=overrides)
    if contacts != "floor":
        raise ValueError(f"contacts={contacts!r} applies to the Dog tasks only, not {task}")
    speeds = {"QuadrupedWalk": quadruped.WALK_SPEED, "QuadrupedRun": quadruped.RUN_SPEED}
    if task not in speeds:
        raise ValueError(f"unknown dmc task {task!r}; known: {', '.join(ENVS)}")
    return quadruped.QuadrupedMove(speeds[task], config_overrides=overrides)
