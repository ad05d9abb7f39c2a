"""`pql-jax plan --calibrate`: compile each group, run a few chunks on this device, and project the
wall time of the whole sweep (or workflow) from the measured speeds.

Per group: compile time (the chunk, ahead of time, plus the init program), then from a fresh state a
warm-up chunk (not timed: it may hold the warm-up steps), then `chunks` chunks without and `chunks`
with evaluation, alternating (medians). Projection of a group:

    compile + init + chunks x steady chunk time + evaluated chunks x eval time

where eval time = median(chunk with eval) - median(chunk without). Checkpoint writes, TensorBoard and table
writes are not modelled (the host loop spends ~0.01% of its time outside the chunks); the process
start-up is the one measured here (imports, device). A workflow's later stages are projected in
pql_jax.workflow.plan.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from pql_jax.counts import eval_due
from pql_jax.plan.memory import eval_share
from pql_jax.plan.sweep import Group, Sweep
from pql_jax.run.program import GroupProgram


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
    config = group.config
    steps = config.run.chunk_steps
    program = GroupProgram.build(group, batching)
    tick = time.perf_counter()
    compiled_before = program.shared.is_compiled
    program.compile()
    states = jax.block_until_ready(program.initial_state())
    compile_seconds = time.perf_counter() - tick
    if compiled_before:  # compiled by the plan already: count its compile time once
        compile_seconds += program.shared.compile_seconds
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


def eval_schedule(total: int, every: int) -> list[int]:
    """The chunks (0-based) that evaluate."""
    return [i for i in range(total) if eval_due(i, total, every)]
