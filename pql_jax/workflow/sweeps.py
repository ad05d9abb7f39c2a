"""The sweep stages: write a stage's ``sweep.yaml``, train it, copy its ``results.csv``.

``hparam_sweep`` trains the UTD x batch size x learning rate grid; ``utd_sweep`` trains the UTD
list at the settings ``fit_hparams`` fitted (times the critic widths when given). ``verify`` runs
its plan through the same two functions (``write_sweep``, ``run_sweep_stage``). Under several
processes (pql_jax.run.distributed) only process 0 writes the stage's files; every process trains.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import yaml

from pql_jax.errors import UserError
from pql_jax.plan import parts
from pql_jax.plan.sweep import Seeds
from pql_jax.run.distributed import barrier, is_primary, process_count
from pql_jax.run.local_parts import default_workers, launch_local
from pql_jax.run.program import resolve_batching
from pql_jax.run.launch import train_sweep_file
from pql_jax.run.submit import launch_parts
from pql_jax.run.tables import read_rows
from pql_jax.values import format_utd
from pql_jax.workflow.spec import Overrides, Workflow, read_settings, seeds_value


def write_sweep(wf: Workflow, path: Path, overrides: Mapping | Overrides, grid: dict, zipped: dict,
                seeds: Seeds) -> None:
    """Write the sweep file of a stage (the workflow's base and overrides plus ``overrides``);
    UserError when the stage already holds a different one (its run would not match)."""
    spec = {"name": f"{wf.name}_{path.parent.name}", "base": str(wf.base_path),
            "overrides": {**dict(wf.overrides), **dict(overrides), **stop_overrides(wf)},
            "seeds": seeds_value(seeds) if seeds is not None else 1, "grid": grid}
    if "run.seed" in zipped:  # each zipped run has its own seed (refinement rounds)
        del spec["seeds"]
    if zipped:
        spec["zip"] = zipped
    text = yaml.safe_dump(spec, sort_keys=False)
    if path.is_file() and path.read_text() != text:
        raise UserError(f"{path} holds a different sweep; rerun this stage with --from {path.parent.name}")
    if is_primary():
        path.write_text(text)
    barrier("pql_jax: stage sweep written")


def stop_overrides(wf: Workflow) -> dict:
    """`refine.stop_after`'s config overrides: stop a member once it holds the highest threshold
    (raw return = J * max_return / 1000); none when the workflow trains every member to full length."""
    if not wf.refine.stop_after or not wf.thresholds:  # auto thresholds: full length (early_stop_note)
        return {}
    return {"run.stop_after": wf.refine.stop_after,
            "run.stop_return": float(max(wf.thresholds)) * float(wf.max_return) / 1000.0}


class PartsPending(Exception):
    """This machine's part of a sweep stage is done; other parts are not (yet) finished."""


def run_sweep_stage(wf: Workflow, stage_dir: Path, progress: bool, log) -> dict:
    """Train ``stage_dir/sweep.yaml`` into ``stage_dir/run`` (resuming a partial run), then copy
    its results to ``stage_dir/results.csv``.

    With ``wf.part`` (I, N) only that job-array share is trained, into ``stage_dir/part<I>of<N>``;
    when every part's directory holds its finished share (a shared file system), they are merged
    into ``stage_dir/run`` and the stage finishes; otherwise PartsPending. With ``wf.launch``
    (submitit options) the stage's parts are submitted, waited for and merged into ``stage_dir/run``."""
    if wf.launch:
        return _launch_stage(wf, stage_dir, wf.launch, log)
    workers = _local_workers(wf, stage_dir)
    if workers > 1:
        return _local_stage(wf, stage_dir, workers, progress, log)
    part = wf.part
    run = stage_dir / (f"part{part[0]}of{part[1]}" if part else "run")
    resume = (run / "members.yaml").is_file()
    if run.exists() and not resume and is_primary():  # a run that died before it wrote its members: start over
        shutil.rmtree(run)
    barrier("pql_jax: stage run directory cleared")
    if resume:
        log(f"  resuming {run}")
    rows = train_sweep_file(stage_dir / "sweep.yaml", run, resume=resume, progress=progress,
                            batching=wf.batching, log=lambda text: log(_indent(text)), part=part)
    if part:
        rows = _merge_parts(stage_dir, part[1])  # concurrent merges are safe (parts.merge)
    if is_primary():
        shutil.copyfile(stage_dir / "run" / "results.csv", stage_dir / "results.csv")
    return {"members": len(rows)}


def _launch_stage(wf: Workflow, stage_dir: Path, launched: dict, log) -> dict:
    """Submit the stage's sweep as job-array parts (``pql_jax.run.submit``), wait, merge into ``run``."""
    run = stage_dir / "run"
    table = launch_parts(stage_dir / "sweep.yaml", run, resume=run.exists(), batching=wf.batching,
                         log=lambda text: log(_indent(text)), **launched)
    shutil.copyfile(table, stage_dir / "results.csv")
    return {"members": len({r["member"] for r in read_rows(table)})}


def _local_workers(wf: Workflow, stage_dir: Path) -> int:
    """How many local worker processes train this stage: 1 (this process) under several processes,
    a job-array part, vmap batching (one process owns an accelerator), or a stage this process
    started training in (it resumes as it started); else ``wf.workers`` (None: one per core)."""
    run = stage_dir / "run"
    if wf.workers == 1 or wf.part or process_count() > 1 or resolve_batching(wf.batching) != "map":
        return 1
    if run.exists() and not (run / "parts").exists():
        return 1
    return wf.workers or default_workers(stage_dir / "sweep.yaml")


def _local_stage(wf: Workflow, stage_dir: Path, workers: int, progress: bool, log) -> dict:
    """Train the stage's sweep in ``workers`` local processes, merged into ``stage_dir/run`` (every
    number as one process gives it: members are mapped, each alone in its program)."""
    run = stage_dir / "run"
    table = launch_local(stage_dir / "sweep.yaml", run, count=workers, resume=run.exists(), batching=wf.batching,
                         progress=progress, log=lambda text: log(_indent(text)))
    shutil.copyfile(table, stage_dir / "results.csv")
    return {"members": len({r["member"] for r in read_rows(table)}), "workers": workers}


def _merge_parts(stage_dir: Path, parts_total: int) -> list:
    """Merge every part of a stage into ``stage_dir/run`` (once), or PartsPending."""
    merged = stage_dir / "run"
    if not (merged / "results.csv").is_file():
        dirs = [stage_dir / f"part{i}of{parts_total}" for i in range(1, parts_total + 1)]
        waiting = [d.name for d in dirs if not (d / parts.PART_FILE).is_file()]
        if waiting:
            raise PartsPending(f"{stage_dir.name}: waiting for {', '.join(waiting)}")
        try:
            parts.merge(dirs, merged)
        except UserError as error:  # an unfinished part: wait for it; anything else is bad input
            if "unfinished" not in str(error):
                raise
            raise PartsPending(f"{stage_dir.name}: {error}") from None
    return list(dict.fromkeys(r["member"] for r in read_rows(merged / "results.csv")))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in str(text).splitlines())


def hparam_grid(wf: Workflow) -> tuple[dict, dict]:
    """(grid, zipped) of the hparam sweep: UTD x batch size (x critic width) with critic and actor
    learning rates zipped (``pql-jax plan`` of a workflow plans this same sweep)."""
    h = wf.hparam_sweep
    grid = {"agent.utd": [format_utd(u) for u in h.utd], "agent.batch_size": list(h.batch_size)}
    if h.critic_width:
        grid["agent.critic_width"] = list(h.critic_width)
    lr = list(h.lr)  # one list for both keys: YAML writes it once with an alias, as existing stage files hold it
    return grid, {"agent.critic_lr": lr, "agent.actor_lr": lr}


def stage_utd_sweep(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Step 5: the UTD list at the fitted B*, eta*, times the critic widths when given."""
    d = out / "utd_sweep"
    s = read_settings(out)
    widths = list(wf.utd_sweep.critic_width)
    s = s[s["utd_value"].apply(lambda u: any(abs(u - v) <= 1e-12 * v for v in wf.utd_sweep.utd))]
    per_width = "critic_width" in s.columns and s["critic_width"].notna().any()
    if per_width:  # B*(sigma, N): one setting per (UTD, width)
        s = s[s["critic_width"].isin(widths)]
    grid = {"agent.critic_width": widths} if widths and not per_width else {}
    zipped = {"agent.utd": list(s["utd"]), "agent.batch_size": [int(b) for b in s["batch_size"]],
              "agent.critic_lr": [float(x) for x in s["lr"]], "agent.actor_lr": [float(x) for x in s["lr"]]}
    if per_width:
        zipped["agent.critic_width"] = [int(w) for w in s["critic_width"]]
    write_sweep(wf, d / "sweep.yaml", wf.utd_sweep.overrides, grid, zipped, wf.seeds)
    return run_sweep_stage(wf, d, progress, log)
