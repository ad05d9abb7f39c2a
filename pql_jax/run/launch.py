"""The entry points of the host side: plan, then train one config or a sweep file into a run
directory. `pql-jax train`, `pql-jax plan`, `pql-jax sweep` and the workflow's sweep stages all come
through here; everything below is the same path (a single run is a sweep of one member).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from pql_jax import config as cfg_mod
from pql_jax.config import Config
from pql_jax.errors import UserError
from pql_jax.plan import parts
from pql_jax.run import loop
from pql_jax.envs import check_trainable
from pql_jax.plan.memory import sweep_memory
from pql_jax.run.distributed import barrier, is_primary
from pql_jax.plan.costs import check_memory, memory_limit, plan_text, sweep_costs
from pql_jax.run.program import resolve_batching
from pql_jax.plan.sweep import Sweep, load_sweep, single

CONFIG_FILE = "config.yaml"
SWEEP_FILE, MEMBERS_FILE = "sweep.yaml", "members.yaml"


def plan(sweep: Sweep, batching: str = "auto") -> tuple[dict, list[str]]:
    """(costs per member, plan lines); UserError if a group cannot fit the device.

    Every group's chunk is compiled ahead of time for its abstract state (nothing is allocated)
    and checked by its compiled peak; training then reuses the compiled chunk."""
    for group in sweep.groups:  # before building any env: refusals cost nothing
        check_trainable(group.config.env)
    costs = sweep_costs(sweep)
    memory = sweep_memory(sweep.groups, batching, limit=memory_limit(sweep.base))
    return costs, plan_text(sweep, costs, check_memory(sweep, memory), memory, batching)


def plan_sweep(sweep_file: str | Path, overrides: list[str] = (), batching: str = "auto"
               ) -> tuple[Sweep, dict, list[str]]:
    """Load a sweep file and plan it: (sweep, costs, plan lines)."""
    spec = load_sweep(sweep_file, overrides)
    return (spec, *plan(spec, batching))


def open_run_dir(out: Path, files: dict[str, str], resume: bool, same=None, what: str = "run",
                 check_only: bool = False) -> None:
    """Create `out` holding `files` (each written atomically), or, with `resume`, check that it holds
    them already and, when `same` is given, that `same(text of the first file)` says it is this run.
    UserError otherwise, with nothing written. `check_only`: the checks, nothing written (run before
    the plan's compile, so a wrong --out fails at once). With several processes only process 0
    writes (every process checks)."""
    out = Path(out)
    if not check_only and not is_primary():
        return  # process 0 writes; every process ran the checks before (check_only), as process 0 does now
    if resume:
        missing = [name for name in files if not (out / name).is_file()]
        if missing:
            raise UserError(f"{out} holds no {what} to resume (no {missing[0]})")
        if same is not None and not same((out / next(iter(files))).read_text()):
            raise UserError(f"{out} holds a different {what}; choose another --out (or resume it with its own files)")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already holds files; use --resume or choose another --out")
    if check_only:
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_atomic(out / name, text)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename: a crash never leaves it half-written."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def train_sweep_file(sweep_file: str | Path, out: str | Path, overrides: list[str] = (), resume: bool = False,
                     progress: bool = True, batching: str = "auto", log=print,
                     part: tuple[int, int] | None = None, queue_workers: int | None = None) -> list[dict]:
    """Train every member of a sweep file into `out` (resuming when asked); the last row per member.

    `part` (I, N): only the I-th of N job-array shares (`pql_jax.plan.parts`), merged later by
    `pql-jax merge`; with `queue_workers` W, the I-th of the N pieces of `parts.queue` for W
    local workers instead. Bad input (sweep file, overrides, memory, an `out` holding something
    else) raises UserError before anything is written.
    """
    spec = load_sweep(sweep_file, overrides)
    out = Path(out)
    record = yaml.safe_dump({"name": spec.name, "members": [m.name for m in spec.members]}, sort_keys=False)
    files = {MEMBERS_FILE: record, SWEEP_FILE: Path(sweep_file).read_text()}
    if part is not None:
        whole = spec
        lockstep = resolve_batching(batching) == "vmap"  # vmapped members pay the costliest member's updates
        shares = (parts.queue(whole, sweep_costs(whole), queue_workers) if queue_workers else
                  parts.split(whole, sweep_costs(whole), part[1], lockstep=lockstep))
        if len(shares) != part[1]:
            raise UserError(f"--part {part[0]}/{part[1]}: this sweep has {len(shares)} queue pieces")
        spec = shares[part[0] - 1]
        record = parts.part_record(whole, spec, *part, files[SWEEP_FILE], overrides)
        files = {parts.PART_FILE: record, **files}
        log(f"part {part[0]}/{part[1]}: {len(spec.members)} of {len(whole.members)} members in "
            f"{len(spec.groups)} program(s)")
    open_run_dir(out, files, resume, same=lambda saved: saved == record, what="sweep", check_only=True)
    barrier("pql_jax: run directory checked")  # by every process, before process 0 writes it
    if not spec.members:
        open_run_dir(out, files, resume, same=lambda saved: saved == record, what="sweep")
        return []
    costs, lines = plan(spec, batching)
    log("\n".join(lines))
    open_run_dir(out, files, resume, same=lambda saved: saved == record, what="sweep")
    barrier("pql_jax: run directory written")
    return loop.train(spec, out, costs, loop.SWEEP, resume=resume, progress=progress, batching=batching, log=log)


def resume_config(out: Path, overrides: list[str]) -> Config:
    """The config of the run in `out`; only run.total_env_steps may be overridden (to extend it)."""
    if not (out / CONFIG_FILE).is_file():
        raise UserError(f"{out} holds no run to resume (no {CONFIG_FILE})")  # before the config is read
    bad = [o for o in overrides if not o.startswith("run.total_env_steps=")]
    if bad:
        raise UserError(f"--resume only accepts run.total_env_steps=... overrides, not {bad[0]!r}")
    return cfg_mod.load(out / CONFIG_FILE, overrides)


def train_config(config: Config, out: str | Path, resume: bool = False, progress: bool = True, log=print) -> dict:
    """Train (or resume) one run into `out`; returns its last row (empty if nothing was left to do).

    A NaN/Inf stops it with DivergedError; the last good checkpoint stays the latest.
    """
    out = Path(out)
    spec = single(config)
    open_run_dir(out, {CONFIG_FILE: cfg_mod.dump(config)}, resume, check_only=True)
    costs, lines = plan(spec)
    log("\n".join(lines))
    open_run_dir(out, {CONFIG_FILE: cfg_mod.dump(config)}, resume)
    if resume:
        write_atomic(out / CONFIG_FILE, cfg_mod.dump(config))  # keep an extended run.total_env_steps
    rows = loop.train(spec, out, costs, loop.SINGLE, resume=resume, progress=progress, log=log)
    return rows[0] if rows else {}
