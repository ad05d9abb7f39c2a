"""`pql-jax plan --calibrate`: compile each group, run a few chunks on this device, and project the
wall time of the whole sweep (or workflow) from the measured speeds.

Per group: compile time (the chunk, ahead of time, plus the init program), then from a fresh state a
warm-up chunk (not timed: it may hold the warm-up steps), then `chunks` chunks without and `chunks`
with evaluation, alternating (medians). Projection of a group:

    compile + init + chunks x steady chunk time + evaluated chunks x eval time

where eval time = median(chunk with eval) - median(chunk without). Checkpoint writes, TensorBoard and table
writes are not modelled (the host loop spends ~0.01% of its time outside the chunks); the process
start-up is the one measured here (imports, device). A workflow's later stages depend on fits, so
they are projected from its declared grid sizes (see `project_workflow`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pql_jax.counts import eval_due
from pql_jax.run.compiled import eval_share
from pql_jax.run.sweep import Group, Sweep


@dataclass(frozen=True)
class GroupSpeed:
    """Measured speeds of one group on the present device."""

    group: int
    members: int
    compile_seconds: float
    """Chunk (ahead of time) and init compile."""
    chunk_seconds: float
    """Steady chunk without evaluation (median of the timed chunks)."""
    eval_seconds: float
    """Extra time of a chunk with its evaluation episode."""
    env_steps_per_s: float
    """All members together."""
    updates_per_s: float
    """Critic updates done per second, all members together."""
    chunks: int
    eval_chunks: int
    eval_share: float

    @property
    def projected_seconds(self) -> float:
        return self.compile_seconds + self.chunks * self.chunk_seconds + self.eval_chunks * self.eval_seconds


def calibrate_group(group: Group, batching: str = "auto", chunks: int = 2) -> GroupSpeed:
    """Compile `group`, run a warm-up chunk, then `chunks` chunks without and `chunks` with
    evaluation (alternating); its speeds from the medians."""
    import jax  # noqa: PLC0415

    from pql_jax.run.program import GroupProgram  # noqa: PLC0415

    config = group.config
    steps = config.run.chunk_steps
    program = GroupProgram.build(group, batching)
    tick = time.perf_counter()
    compiled_before = program.program._compiled is not None
    program.compile()
    states = jax.block_until_ready(program.initial_state())
    compile_seconds = time.perf_counter() - tick
    if compiled_before:  # compiled by the plan already: count its compile time once
        compile_seconds += program.program.compile_seconds
    plain, evaluated, updates = [], [], []
    previous = 0
    for index in range(2 * chunks + 1):  # a warm-up chunk, then chunks without and with evaluation, alternating
        evaluate = index > 0 and index % 2 == 0
        tick = time.perf_counter()
        states, metrics = program.step(states, index * steps, evaluate=evaluate)
        elapsed = time.perf_counter() - tick
        done = int(np.sum(metrics["critic_updates"]))
        if index > 0:
            (evaluated if evaluate else plain).append(elapsed)
            updates.append(done - previous)
        previous = done
    steady, with_eval = statistics.median(plain), statistics.median(evaluated)
    share = eval_share(config)
    return GroupSpeed(group.index, len(group.members), compile_seconds, steady, max(with_eval - steady, 0.0),
                      len(group.members) * steps * config.env.num_envs / steady,
                      float(np.mean(updates)) / steady, share.chunks, share.eval_chunks, share.share)


def calibrate(sweep: Sweep, batching: str = "auto", chunks: int = 2) -> dict[int, GroupSpeed]:
    """`calibrate_group` of every group, by group index."""
    return {g.index: calibrate_group(g, batching, chunks) for g in sweep.groups}


def startup_seconds() -> float:
    """Seconds since this process started (imports, device start-up): a sweep process pays them too."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = float(Path("/proc/uptime").read_text().split()[0])
        import os  # noqa: PLC0415

        return max(boot - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def calibration_text(sweep: Sweep, speeds: dict[int, GroupSpeed], startup: float) -> list[str]:
    """Lines: compile time, steady speeds, projection per group, then the whole sweep's."""
    lines = [f"calibration on this device ({len(sweep.groups)} group(s)):"]
    for s in speeds.values():
        lines.append(f"  group {s.group}: compile {s.compile_seconds:.1f} s; steady {s.env_steps_per_s:,.0f} env steps/s, "
                     f"{s.updates_per_s:,.1f} updates/s ({s.members} members; {s.chunk_seconds:.3f} s per chunk, "
                     f"+{s.eval_seconds:.3f} s per evaluation); {s.chunks} chunks, {s.eval_chunks} evaluated "
                     f"(share {100 * s.eval_share:.1f}% of sequential steps): projected "
                     f"{format_seconds(s.projected_seconds)}")
    total = startup + sum(s.projected_seconds for s in speeds.values())
    evals = sum(s.eval_chunks * s.eval_seconds for s in speeds.values())
    lines.append(f"projected wall time of the sweep: {format_seconds(total)} (start-up {startup:.1f} s; evaluation "
                 f"{100 * evals / max(total, 1e-9):.1f}% of the time)")
    return lines


def project_workflow(wf, hparam: Sweep, speeds: dict[int, GroupSpeed] | None) -> list[str]:
    """Lines projecting a workflow's later stages from its declared grid sizes.

    Assumed: the utd_sweep runs every declared UTD x critic width x seed at the base run length,
    with one compiled program per (UTD, width) (the fitted batch sizes may all differ); verify runs
    one member per seed for verify.utd and three (sigma*, sigma*/2, 2 sigma*) for verify.budget, at
    the base run length. Time per
    member-chunk and compile time per program are the hparam sweep's means (the real ones depend on
    the fitted batch sizes, UTDs and widths); the fit and report stages take seconds and are not
    counted."""
    seeds = len({m.config.run.seed for m in hparam.members})
    widths = max(1, len(wf.utd["critic_width"]))
    utd_members = len(wf.utd["utd"]) * widths * seeds
    utd_programs = len(wf.utd["utd"]) * widths
    # a held-out UTD: one run per seed; a budget: sigma*, sigma*/2 and 2 sigma* per seed
    verify_members = len(wf.verify["seeds"]) * ((wf.verify["utd"] is not None) + 3 * (wf.verify["budget"] is not None))
    lines = [f"workflow {wf.name}: hparam_sweep {len(hparam.members)} members in {len(hparam.groups)} program(s) "
             f"(planned above); utd_sweep {utd_members} members in up to {utd_programs} program(s) and verify "
             f"{verify_members} member(s) are projected (their batch sizes and learning rates come from fits)"]
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


def eval_schedule(total: int, every: int) -> list[int]:
    """The chunks (0-based) that evaluate."""
    return [i for i in range(total) if eval_due(i, total, every)]


def plan_file(path: str | Path, overrides: list[str] = (), batching: str = "auto", calibrate_chunks: int | None = None,
              log=print) -> None:
    """`pql-jax plan FILE [--calibrate]` for a sweep file or a workflow file (told apart by its keys)."""
    import tempfile  # noqa: PLC0415

    from pql_jax import values  # noqa: PLC0415
    from pql_jax.run import launch  # noqa: PLC0415

    start = startup_seconds()
    spec = values.read_yaml(path, "sweep or workflow file")
    wf = None
    if isinstance(spec, dict) and "hparam_sweep" in spec:
        from pql_jax.workflow.spec import load_workflow  # noqa: PLC0415
        from pql_jax.workflow.sweeps import hparam_grid, write_sweep  # noqa: PLC0415

        wf = load_workflow(path)
        if wf.spec.get("batching") and batching == "auto":
            batching = wf.spec["batching"]
        tmp = Path(tempfile.mkdtemp(prefix="pql_plan_"))
        sweep_path = tmp / "hparam_sweep" / "sweep.yaml"
        sweep_path.parent.mkdir()
        write_sweep(wf, sweep_path, {}, *hparam_grid(wf), wf.spec.get("seeds"))  # the stage's own grid
        path = sweep_path
        log(f"workflow {wf.name}: its first stage, hparam_sweep:")
    try:
        sweep, _, lines = launch.plan_sweep(path, overrides, batching)
    finally:
        if wf is not None:
            import shutil  # noqa: PLC0415

            shutil.rmtree(tmp, ignore_errors=True)
    log("\n".join(lines))
    speeds = None
    if calibrate_chunks is not None:
        speeds = calibrate(sweep, batching, calibrate_chunks)
        log("\n".join(calibration_text(sweep, speeds, start)))
    if wf is not None:
        log("\n".join(project_workflow(wf, sweep, speeds)))
