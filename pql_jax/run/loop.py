"""THE host loop: trains every group of a sweep, one compiled chunk after another, with the results
table, TensorBoard, checkpoints, progress and resume. A single run is a sweep of one member; the
two differ only in their `Layout` (file names, and what a divergence does). With several
processes (pql_jax.run.distributed) every process runs this loop on its share of the members'
devices and sees every member's metrics; only process 0 writes the table and TensorBoard.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pql_jax import config as cfg_mod
from pql_jax.errors import UserError
from pql_jax.counts import eval_due, num_chunks
from pql_jax.run.checkpoint import Checkpointer
from pql_jax.run.early_stop import EarlyStop
from pql_jax.run.distributed import is_primary
from pql_jax.plan.costs import Costs
from pql_jax.run.program import GroupProgram
from pql_jax.plan.sweep import Group, Member, Sweep
from pql_jax.run.tables import MetricsTable, host_row, member_columns
from pql_jax.run.tensorboard import TensorBoard, attached_hparams, run_name

STOP, FREEZE = "stop", "freeze"


class DivergedError(UserError):
    """A loss or parameter became NaN/Inf; the run stopped before saving anything bad."""


@dataclass(frozen=True)
class Layout:
    """Where a run directory keeps its outputs, and what a member's divergence does."""

    table: str
    """File name of the results table."""
    per_member_tb: bool
    """TensorBoard run per member under tb/<run name>/ (a sweep; `tensorboard.run_name`, short:
    `m000 utd=1:16 B=32 lr=1e-3 s0`), or tb/ itself (a single run)."""
    per_group_checkpoints: bool
    """Checkpoints under checkpoints/group<i>/ (a sweep), or checkpoints/ itself (a single run)."""
    on_diverge: str
    """`stop`: raise DivergedError naming the quantity (the last good checkpoint stays the latest);
    `freeze`: flag the member (`diverged` = 1), keep its last good state, train the others on."""

    def tb_dir(self, out: Path, member: Member) -> Path:
        """A member's TensorBoard run directory. A run directory written before the short names
        (tb/<member.name>/) keeps that directory on resume, so its curves stay one run."""
        if not self.per_member_tb:
            return out / "tb"
        written = out / "tb" / member.name
        return written if written.is_dir() else out / "tb" / run_name(member)

    def checkpoint_dir(self, out: Path, group: Group) -> Path:
        return out / "checkpoints" / f"group{group.index}" if self.per_group_checkpoints else out / "checkpoints"


SINGLE = Layout("metrics.csv", per_member_tb=False, per_group_checkpoints=False, on_diverge=STOP)
SWEEP = Layout("results.csv", per_member_tb=True, per_group_checkpoints=True, on_diverge=FREEZE)


def train(sweep: Sweep, out: Path, costs: dict[int, Costs], layout: Layout = SWEEP, resume: bool = False,
          progress: bool = True, batching: str = "auto", log=print) -> list[dict]:
    """Train (or resume) every group of `sweep` into `out`; returns the last row of each member.
    An interruption (Ctrl-C, a kill) between chunks leaves the rows and checkpoints written so far."""
    total = sum(num_chunks(g.config) * g.config.run.chunk_steps * g.config.env.num_envs * len(g.members)
                for g in sweep.groups)
    bar = tqdm(total=total, unit="step", unit_scale=True, disable=not (progress and is_primary()), dynamic_ncols=True,
               desc=sweep.name if len(sweep.members) > 1 else "train")
    last: list[dict] = []
    try:
        for group in sweep.groups:
            last += _train_group(sweep, group, out, costs, layout, resume, bar, batching, log)
    finally:
        bar.close()
    return last


def _train_group(sweep: Sweep, group: Group, out: Path, costs: dict[int, Costs], layout: Layout, resume: bool,
                 bar, batching: str, log) -> list[dict]:
    config = group.config
    chunk_steps, num_envs = config.run.chunk_steps, config.env.num_envs
    total = num_chunks(config)
    ckpt = Checkpointer(layout.checkpoint_dir(out, group), config.run.keep_checkpoints, config.run.checkpoint_buffer,
                        config.run.checkpoint_async)
    program = GroupProgram.build(group, batching)
    states, start, meta = program.initial_state(), 0, {}
    if resume and ckpt.latest_step() is not None:
        states, meta = ckpt.restore(states)
        start = meta["chunk"]
        program.eval_phase = meta.get("eval_phase", program.eval_phase)
        log(f"group {group.index}: resumed from chunk {start} (env step {start * chunk_steps * num_envs:,})")
    bar.update(start * chunk_steps * num_envs * len(group.members))
    writes = is_primary()
    table = MetricsTable(out / layout.table, start * chunk_steps if resume else None,
                         keep=lambda row: int(row["group"]) != group.index) if writes else Discard()
    stop = EarlyStop(config.run, len(group.members), meta)
    if start >= total or stop.all_stopped():
        ckpt.close()
        return []
    columns = {m.index: member_columns(m, group.index, costs[m.index]) for m in group.members}
    purge = start * chunk_steps * num_envs if resume else None
    boards = {m.index: TensorBoard(layout.tb_dir(out, m), purge_step=purge) if writes else Discard()
              for m in group.members}
    for m in group.members:
        boards[m.index].start(attached_hparams(m.config, costs[m.index].critic_params, sweep.axes),
                              cfg_mod.dump(m.config))
    prev: dict[int, dict] = {}
    started = time.perf_counter() - meta.get("wall_time", 0.0)
    try:
        program.shared.compiled_chunk(states, program.schedule(start * chunk_steps))
        for index in range(start, total):
            tick = time.perf_counter()
            live = [not s for s in stop.stopped]  # members still training at this chunk's start
            states, metrics = program.step(states, index * chunk_steps, stopped=stop.mask(program.shared.size),
                                           evaluate=eval_due(index, total, config.run.eval_every))
            elapsed = time.perf_counter() - tick
            rows, earlier = _rows(group, metrics, columns, costs, num_envs, time.perf_counter() - started,
                                  elapsed, prev)
            if layout.on_diverge == STOP:
                _stop_if_diverged(group, rows, ckpt, out, num_envs)
            if stop.on:
                _mark_stops(stop, rows, earlier)
            table.append([r for member_rows, row, on in zip(earlier, rows, live) if on for r in (*member_rows, row)])
            speeds = group_speeds(rows)
            for member, member_rows, row, on in zip(group.members, earlier, rows, live):
                if not on:
                    continue
                for r in member_rows:
                    boards[member.index].scalars(r, r["env_steps"], eval_step=r["eval_env_steps"])
                boards[member.index].scalars({**row, **speeds}, row["env_steps"], eval_step=row["eval_env_steps"])
                prev[member.index] = row
            bar.update(chunk_steps * num_envs * len(group.members))
            bar.set_postfix(_postfix(rows, group))
            done = index + 1 == total or stop.all_stopped()
            every = config.run.checkpoint_every
            if done or (every and (index + 1) % every == 0):
                ckpt.save((index + 1) * chunk_steps, states, {"chunk": index + 1, "vector_steps": (index + 1) * chunk_steps,
                                                              "env_steps": (index + 1) * chunk_steps * num_envs,
                                                              "wall_time": rows[-1]["wall_time"],
                                                              "eval_phase": program.eval_phase, **stop.state()})
            if done:
                bar.update((total - index - 1) * chunk_steps * num_envs * len(group.members))
                break
    finally:
        for board in boards.values():
            board.close()
        ckpt.close()
        if ckpt.pauses:
            log(f"group {group.index}: {len(ckpt.pauses)} checkpoint(s), training paused {np.mean(ckpt.pauses):.3f} s "
                f"per save (max {max(ckpt.pauses):.3f} s)")
    return list(prev.values())


def _mark_stops(stop: EarlyStop, rows: list[dict], earlier: list[list[dict]]) -> None:
    """Add the `stopped` column (1 on the row of the chunk that stops a member, else 0)."""
    for i, (member_rows, row) in enumerate(zip(earlier, rows)):
        for r in member_rows:
            r["stopped"] = 0
        row["stopped"] = int(stop.see(i, [r["return"] for r in (*member_rows, row)]))


class Discard:
    """Stands in for the results table and TensorBoard on processes other than process 0: takes
    every call, writes nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


EVAL_STATS = ("eval_return_std", "eval_episode_length")
"""A result's statistics besides its mean return (columns after `eval_env_steps`; pql_jax.learner.evaluate)."""


def _rows(group: Group, metrics: dict, columns: dict, costs: dict, num_envs: int, wall: float, elapsed,
          prev: dict) -> tuple[list[dict], list[list[dict]]]:
    """The chunk's rows: one per member (hyperparameter columns, `step` and `return` of its latest
    evaluation result, then the chunk's metrics, then the result's `EVAL_STATS`), and per member
    the rows of its earlier results of this chunk (parallel evaluation finishes several), in step
    order, metrics NaN."""
    rows, earlier = [], []
    for i, member in enumerate(group.members):
        mine = {k: v[i] for k, v in metrics.items()}
        returns = mine.pop("eval_return")
        stats = [mine.pop(k, np.full(np.shape(returns), np.nan)) for k in EVAL_STATS]
        results = eval_results(returns, mine.pop("eval_env_steps"), *stats)
        row = host_row(mine, costs[member.index], num_envs, wall, elapsed, prev.get(member.index))
        nan = float("nan")
        step, ret, *rest = results[-1] if results else (row["env_steps"], nan, *[nan] * len(stats))
        rows.append({**columns[member.index], "step": step, "return": ret, **row, "eval_return": ret,
                     "eval_env_steps": step, **dict(zip(EVAL_STATS, rest))})
        keep = {*columns[member.index], "env_steps", "vector_steps", "wall_time", "diverged"}
        blank = {k: (v if k in keep else float("nan")) for k, v in rows[-1].items()}
        earlier.append([{**blank, "step": s, "return": r, "eval_return": r, "eval_env_steps": s,
                         **dict(zip(EVAL_STATS, more))} for s, r, *more in results[:-1]])
    return rows, earlier


def eval_results(returns, env_steps, *stats) -> list[tuple]:
    """A chunk's evaluation results of one member as (env step of the policy, return, *one value
    of each of `stats`), in step order (slots with env step -1 hold none)."""
    columns = zip(np.ravel(env_steps), np.ravel(returns), *(np.ravel(s) for s in stats))
    return sorted((int(s), float(r), *map(float, more)) for s, r, *more in columns if s >= 0)


def group_speeds(rows: list[dict]) -> dict:
    """A group's throughput, for TensorBoard only: env steps and critic updates per second of all
    its members together (a member's own `env_steps_per_s` is its share: the group's / members)."""
    return {"group_env_steps_per_s": sum(r["env_steps_per_s"] for r in rows),
            "group_updates_per_s": sum(r["updates_per_s"] for r in rows)}


def _stop_if_diverged(group: Group, rows: list[dict], ckpt: Checkpointer, out: Path, num_envs: int) -> None:
    """DivergedError naming the first non-finite quantity, before the row is written."""
    for member, row in zip(group.members, rows):
        if row["nonfinite"]:
            ckpt.wait()  # name the last checkpoint that is really on disk
            who = f"member {member.name}: " if len(group.members) > 1 else ""
            raise DivergedError(
                f"{who}{nonfinite_quantity(row)} became NaN/Inf in the chunk ending at env step {row['env_steps']:,}"
                f" (vector step {row['vector_steps']:,}); last good checkpoint: step "
                f"{(ckpt.latest_step() or 0) * num_envs:,} in {ckpt.directory}")


def nonfinite_quantity(row: dict) -> str:
    """Name of the first quantity that is NaN/Inf in a metrics row."""
    for name in ("critic_loss", "actor_loss", "critic_param_norm", "actor_param_norm", "q_mean"):
        if not np.isfinite(row.get(name, 0.0)):
            return name
    return "parameters"


def _postfix(rows: list[dict], group: Group) -> dict:
    speed = rows[0]["env_steps_per_s"] * len(rows)
    post = {"steps_s": f"{speed:.0f}" if np.isfinite(speed) else "-",
            "upd_s": f"{sum(r['updates_per_s'] for r in rows):.0f}" if np.isfinite(speed) else "-",
            "ret": f"{np.nanmean([r['return'] for r in rows]):.1f}" if np.isfinite([r["return"] for r in rows]).any()
            else "nan"}
    if len(rows) > 1:
        post.update(group=group.index, diverged=int(sum(r["diverged"] for r in rows)))
    return post
