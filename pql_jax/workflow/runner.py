"""``run_workflow``: run every unfinished stage of a workflow in order (or every stage from one on)."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

from pql_jax.errors import UserError
from pql_jax.run.distributed import barrier, is_primary
from pql_jax.workflow.fits import stage_fit_hparams, stage_fit_laws
from pql_jax.workflow.refine_stage import stage_refine
from pql_jax.workflow.report import stage_report
from pql_jax.workflow.spec import STAGES, is_done, load_workflow, mark_done, prepare_out
from pql_jax.workflow.sweeps import PartsPending, stage_utd_sweep
from pql_jax.workflow.widen import stage_hparam_sweep
from pql_jax.workflow.verify import stage_verify

#: Stage name -> stage function(wf, out, progress=, log=) -> info for its done.json.
STAGE_FUNCTIONS = {"hparam_sweep": stage_hparam_sweep, "fit_hparams": stage_fit_hparams,
                   "utd_sweep": stage_utd_sweep, "refine": stage_refine, "fit_laws": stage_fit_laws,
                   "verify": stage_verify, "report": stage_report}
assert tuple(STAGE_FUNCTIONS) == STAGES


def run_workflow(path: str | Path, out: str | Path, start: str | None = None, progress: bool = True,
                 log=print, fail_after: str | None = None, part: tuple[int, int] | None = None,
                 launch: dict | None = None, workers: int | None = 1) -> Path | None:
    """Run every unfinished stage (or every stage from ``start`` on); returns OUT/report.md (None when
    ``part`` (I, N) trained its share of a sweep stage and waits for the other parts). ``launch``
    (``pql_jax.run.submit.launch_parts`` options: count, cluster, slurm) runs each sweep stage as
    that many submitit parts, waits for them and merges them. ``workers`` (None: one per core) runs
    each sweep stage that starts afresh in that many local processes (`pql_jax.run.local_parts`).

    Bad input raises UserError before anything is written. ``fail_after`` (tests) raises
    RuntimeError right after that stage is marked done.
    """
    if start is not None and start not in STAGES:
        raise UserError(f"unknown stage {start!r}; stages: {', '.join(STAGES)}")
    wf = replace(load_workflow(path), part=part, launch=launch, workers=workers)
    if part and launch:
        raise UserError("give --part I/N (this machine's share) or --parts N --launch submitit, not both")
    out = Path(out)
    if start is not None and not (out / "workflow.yaml").is_file():
        raise UserError(f"--from {start}: {out} holds no workflow run")
    prepare_out(wf, out)
    if wf.refine.early_stop_note(wf.thresholds):
        log(wf.refine.early_stop_note(wf.thresholds))
    if start is not None:
        if is_primary():
            _clear_from(out, start)
        barrier("pql_jax: workflow --from cleared")
    for stage in STAGES:
        if is_done(out, stage):
            log(f"[{stage}] done already, skipped")
            continue
        log(f"[{stage}] running")
        t0 = time.perf_counter()
        if is_primary():
            (out / stage).mkdir(parents=True, exist_ok=True)
        barrier(f"pql_jax: workflow {stage} started")
        try:
            info = _run_stage(wf, out, stage, progress, log)
        except PartsPending as pending:  # a job-array part: the stage finishes once every part has
            log(f"[{stage}] part {part[0]}/{part[1]} done; {pending}. Rerun this command (any part) "
                "after they finish to merge and go on")
            return None
        if is_primary():
            mark_done(out, stage, {"seconds": round(time.perf_counter() - t0, 2), **info})
        barrier(f"pql_jax: workflow {stage} done")  # the next stage reads what this one wrote
        log(f"[{stage}] finished in {time.perf_counter() - t0:.1f} s")
        if fail_after == stage:
            raise RuntimeError(f"injected failure after stage {stage}")
    return out / "report.md"


#: Stages that train: under several processes (pql_jax.run.distributed) every process runs them;
#: the fitting and report stages run on process 0 alone, the others wait for them.
TRAINING_STAGES = ("hparam_sweep", "utd_sweep", "refine", "verify")


def _run_stage(wf, out: Path, stage: str, progress: bool, log) -> dict:
    if stage in TRAINING_STAGES or is_primary():
        return STAGE_FUNCTIONS[stage](wf, out, progress=progress, log=log) or {}
    return {}


def _clear_from(out: Path, start: str) -> None:
    """--from: remove the outputs of ``start`` and every later stage (earlier ones must be done)."""
    first = STAGES.index(start)
    missing = [s for s in STAGES[:first] if not is_done(out, s)]
    if missing:
        raise UserError(f"--from {start}: earlier stage {missing[0]} is not finished")
    for stage in STAGES[first:]:
        if (out / stage).exists():
            shutil.rmtree(out / stage)
    if start != "report" and (out / "report.md").exists():
        (out / "report.md").unlink()
