"""`pql-jax plan FILE [--calibrate]` for a sweep file or a workflow file: a workflow's first stage is
planned (and calibrated) as a sweep; its later stages, whose settings come from fits, are projected
from its declared grid sizes and the first stage's measured speeds."""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path

from pql_jax import values
from pql_jax.plan.calibrate import GroupSpeed, calibrate, calibration_text, format_seconds, startup_seconds
from pql_jax.plan.memory import eval_share
from pql_jax.plan.sweep import Sweep
from pql_jax.run import launch
from pql_jax.workflow.spec import Workflow, load_workflow, seed_count
from pql_jax.workflow.sweeps import hparam_grid, write_sweep
from pql_jax.workflow.widen import max_added_members


def project_workflow(wf: Workflow, hparam: Sweep, speeds: dict[int, GroupSpeed] | None) -> list[str]:
    """Lines projecting a workflow's later stages from its declared grid sizes.

    Assumed: the utd_sweep runs every declared UTD x critic width x seed at the base run length,
    with one compiled program per (UTD, width) (the fitted batch sizes may all differ); verify runs
    one member per seed for verify.utd and three (sigma*, sigma*/2, 2 sigma*) for verify.budget, at
    the base run length. Time per
    member-chunk and compile time per program are the hparam sweep's means (the real ones depend on
    the fitted batch sizes, UTDs and widths); the fit and report stages take seconds and are not
    counted."""
    seeds = len({m.config.run.seed for m in hparam.members})
    widths = max(1, len(wf.utd_sweep.critic_width))
    utd_members = len(wf.utd_sweep.utd) * widths * seeds
    utd_programs = len(wf.utd_sweep.utd) * widths
    # a held-out UTD: one run per seed; a budget: sigma*, sigma*/2 and 2 sigma* per seed
    verify_members = seed_count(wf.verify.seeds) * ((wf.verify.utd is not None) + 3 * (wf.verify.budget is not None))
    lines = [f"workflow {wf.name}: hparam_sweep {len(hparam.members)} members in {len(hparam.groups)} program(s) "
             f"(planned above); utd_sweep {utd_members} members in up to {utd_programs} program(s) and verify "
             f"{verify_members} member(s) are projected (their batch sizes and learning rates come from fits)"]
    if wf.refine.widen:  # rounds are decided by the grid's results: only their most is known here
        one, both = max_added_members(wf, seeds)
        lines.append(f"refine.widen = {wf.refine.widen}: widening the hparam grid where a best value lies on its "
                     f"edge may add up to {one} members ({both} if both edges of an axis are widened at a UTD), "
                     "not in the projections")
    if speeds:
        member_chunk = statistics.mean(s.chunk_seconds / s.members for s in speeds.values())
        eval_cost = statistics.mean(s.eval_seconds / s.members for s in speeds.values())
        compile_s = statistics.mean(s.compile_seconds for s in speeds.values())
        base = hparam.groups[0].config
        share = eval_share(base)
        per_member = share.chunks * member_chunk + share.eval_chunks * eval_cost
        utd = utd_programs * compile_s + utd_members * per_member
        verify = compile_s * min(verify_members, 2) + verify_members * per_member
        hp = sum(s.projected_seconds for s in speeds.values())
        lines.append(f"projected: hparam_sweep {format_seconds(hp)}, utd_sweep {format_seconds(utd)}, verify "
                     f"{format_seconds(verify)}; whole workflow {format_seconds(hp + utd + verify)}, evaluation share "
                     f"{100 * share.share:.1f}% of sequential steps. Assumed: {_ASSUMED}"
                     f"; per member-chunk and compile times are the hparam sweep's means")
    return lines


_ASSUMED = " ".join(project_workflow.__doc__.split("Assumed: ")[1].split(". Time")[0].split())


def plan_file(path: str | Path, overrides: list[str] = (), batching: str = "auto", calibrate_chunks: int | None = None,
              log=print) -> None:
    """`pql-jax plan FILE [--calibrate]` for a sweep file or a workflow file (told apart by its keys)."""
    start = startup_seconds()
    spec = values.read_yaml(path, "sweep or workflow file")
    wf = None
    if isinstance(spec, dict) and "hparam_sweep" in spec:
        wf = load_workflow(path)
        if batching == "auto":
            batching = wf.batching
        tmp = Path(tempfile.mkdtemp(prefix="pql_plan_"))
        sweep_path = tmp / "hparam_sweep" / "sweep.yaml"
        sweep_path.parent.mkdir()
        write_sweep(wf, sweep_path, {}, *hparam_grid(wf), wf.seeds)  # the stage's own grid
        path = sweep_path
        log(f"workflow {wf.name}: its first stage, hparam_sweep:")
    try:
        sweep, _, lines = launch.plan_sweep(path, overrides, batching)
    finally:
        if wf is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    log("\n".join(lines))
    speeds = None
    if calibrate_chunks is not None:
        speeds = calibrate(sweep, batching, calibrate_chunks)
        log("\n".join(calibration_text(sweep, speeds, start)))
    if wf is not None:
        log("\n".join(project_workflow(wf, sweep, speeds)))
