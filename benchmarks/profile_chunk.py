"""Where a training chunk's time goes: per-op time from the JAX/XLA profiler, grouped by idea.

Builds pql_jax's learner at the settings of `bench_vs_sac.py` (Playground task, 128 envs,
batch 512, 8 critic updates per vector step, 2 x 256 relu MLPs with LayerNorm, 8,192-step
random prefill), runs chunks until the prefill is over and the program is compiled, then traces
`--chunks` training chunks with `jax.profiler` and reads the trace back with
`jax.profiler.ProfileData` (no TensorBoard needed). Every traced op (an XLA thunk: a fusion, a
matmul, a copy, a loop or conditional) is charged its exclusive time (its own duration minus
the ops nested in it on the same thread) to the innermost named scope of its HLO metadata: the
learner's `jax.named_scope`s (sample, td_target, critic_grad, critic_adam, polyak, member_mask,
actor_update, act, obs_norm, obs_stats, env_step, replay_insert, evaluate, diagnostics); ops
outside them are "loop/cond control" (while, conditional: the copies XLA makes for them) or
"other".

    python benchmarks/profile_chunk.py                          # CheetahRun, 2 chunks of 64 vector steps
    python benchmarks/profile_chunk.py --task playground:WalkerWalk --no-eval --out runs/profile.json

Thread times add up over XLA's worker threads, so shares are of the summed op time, not of wall
time; the wall time of the traced chunks is printed beside them.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

SCOPES = ("sample", "td_target", "critic_grad", "critic_adam", "polyak", "member_mask", "actor_update",
          "act", "obs_norm", "obs_stats", "env_step", "replay_insert", "evaluate", "diagnostics")
CONTROL = ("while", "conditional", "call")  # HLO ops whose own time is loop/branch bookkeeping


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="playground:CheetahRun")
    p.add_argument("--chunk-steps", type=int, default=64, help="vector steps per chunk (one chunk = the prefill)")
    p.add_argument("--chunks", type=int, default=2, help="training chunks traced")
    p.add_argument("--no-eval", action="store_true", help="trace chunks without their evaluation episode")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="more pql_jax overrides")
    p.add_argument("--top", type=int, default=15, help="list the N ops with the most time")
    p.add_argument("--scope", default=None, help="list the top ops of this scope only (e.g. other)")
    p.add_argument("--out", default=None, metavar="FILE.json", help="also write the table as JSON")
    return p.parse_args(argv)


def overrides(args) -> list[str]:
    """bench_vs_sac's matched settings, with short chunks and a budget that keeps the buffer as large."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_vs_sac

    base = bench_vs_sac.parse_args([])
    matched = bench_vs_sac.pql_overrides(base, args.task)
    per_chunk = args.chunk_steps * base.num_envs
    total = per_chunk * (2 + args.chunks)
    return [*matched, f"run.chunk_steps={args.chunk_steps}", f"run.total_env_steps={total}", *args.override]


def op_scopes(hlo_text: str, named: tuple[str, ...] = SCOPES) -> tuple[dict[str, str], dict[str, str]]:
    """({HLO instruction name: innermost scope among `named`, or its opcode class}, {name: opcode
    and op_name}) from compiled HLO text. An instruction without an op_name of its own (XLA's
    wrapped fusions) takes the most common scope of the computation it calls."""
    pattern = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?\b([a-z\-]+)\(")
    header = re.compile(r"^\s*(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
    rows, inner, computation = [], defaultdict(list), None
    for line in hlo_text.splitlines():
        h = header.match(line)
        if h and " = " not in line:
            computation = h.group(1)
            continue
        m = pattern.match(line)
        if not m:
            continue
        meta = re.search(r'op_name="([^"]*)"', line)
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        op_name = meta.group(1) if meta else ""
        found = [s for s in re.split(r"[/()]", op_name) if s in named]
        rows.append((m.group(1), m.group(2), op_name, found[-1] if found else None, calls.group(1) if calls else None))
        if found:
            inner[computation].append(found[-1])
    out, described = {}, {}
    for name, opcode, op_name, scope, called in rows:
        if scope is None and called in inner:
            votes = inner[called]
            scope = max(set(votes), key=votes.count)
        described[name] = f"{opcode} {op_name or ('(calls ' + called + ')' if called else '')}"
        out[name] = scope or ("loop/cond control" if opcode in CONTROL else "other")
    return out, described


def exclusive_by_op(trace_dir: str, scopes: dict[str, str]) -> tuple[dict[str, float], float]:
    """({HLO instruction: exclusive seconds}, seconds of events that are no HLO instruction):
    nested thunk time is charged to the child."""
    from jax.profiler import ProfileData

    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    by_op, unmatched = defaultdict(float), 0.0
    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            events = sorted(((e.start_ns, e.duration_ns, e.name) for e in line.events if e.name in scopes),
                            key=lambda e: (e[0], -e[1]))
            stack = []  # [end, name, nested ns]
            own = []

            def close(item):
                end, name, nested, dur = item
                own.append((name, dur - nested))

            for start, dur, name in events:
                while stack and start >= stack[-1][0]:
                    close(stack.pop())
                if stack:
                    stack[-1][2] += dur
                stack.append([start + dur, name, 0, dur])
            while stack:
                close(stack.pop())
            for name, ns in own:
                by_op[name] += max(ns, 0) * 1e-9
            unmatched += sum(e.duration_ns for e in line.events if e.name not in scopes and not e.name.startswith(
                ("Threadpool", "ThunkExecutor", "end: "))) * 1e-9
    return dict(by_op), unmatched


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import numpy as np

    from pql_jax import config as C
    from pql_jax.learner import pql as T
    from pql_jax.learner.state import PopulationSchedule, hparams_from_config

    settings = overrides(args)
    cfg = C.load(None, settings)
    learner = T.make_learner(cfg)
    hp = hparams_from_config(cfg)
    init, chunk = jax.jit(learner.init), jax.jit(learner.chunk, donate_argnums=0)
    steps = cfg.run.chunk_steps
    schedule = lambda i: PopulationSchedule.of(hp, i * steps, evaluate=not args.no_eval)
    t0 = time.time()
    state = init(jax.random.PRNGKey(0), hp)
    compiled = chunk.lower(state, schedule(0)).compile()
    scopes, described = op_scopes(compiled.as_text())
    print(f"compiled in {time.time() - t0:.1f} s; {len(scopes)} HLO instructions", file=sys.stderr)
    for i in range(2):  # the prefill chunk, then one training chunk (warm)
        state, metrics = chunk(state, schedule(i))
    jax.block_until_ready(metrics)
    trace_dir = tempfile.mkdtemp(prefix="pql_profile_")
    jax.profiler.start_trace(trace_dir)
    t0 = time.time()
    for i in range(2, 2 + args.chunks):
        state, metrics = chunk(state, schedule(i))
        jax.block_until_ready(metrics)
    wall = time.time() - t0
    jax.profiler.stop_trace()
    by_op, unmatched = exclusive_by_op(trace_dir, scopes)
    by_scope = defaultdict(float)
    for name, sec in by_op.items():
        by_scope[scopes[name]] += sec
    shutil.rmtree(trace_dir, ignore_errors=True)

    total = sum(by_scope.values())
    env_steps = args.chunks * steps * cfg.env.num_envs
    updates = int(np.asarray(metrics["critic_updates"]))
    print(f"\n{args.task}, {args.chunks} chunks x {steps} vector steps x {cfg.env.num_envs} envs "
          f"({'with' if not args.no_eval else 'without'} evaluation): wall {wall:.2f} s, "
          f"{env_steps / wall:,.0f} env steps/s; critic updates so far {updates}; JAX {jax.__version__}")
    print(f"summed op time {total:.2f} s over the XLA threads (+ {unmatched:.2f} s in events not in the HLO)\n")
    print("| scope | op time s | share |\n|---|---|---|")
    rows = sorted(by_scope.items(), key=lambda kv: -kv[1])
    for name, sec in rows:
        print(f"| {name} | {sec:.3f} | {sec / total:.1%} |")
    top = sorted(((n, s) for n, s in by_op.items() if args.scope in (None, scopes[n])), key=lambda kv: -kv[1])[:args.top]
    print(f"\n| top {args.top} ops | scope | op time s | share | opcode and op_name |\n|---|---|---|---|---|")
    for name, sec in top:
        print(f"| {name} | {scopes[name]} | {sec:.3f} | {sec / total:.1%} | {described[name][:110]} |")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "task": args.task, "chunks": args.chunks, "chunk_steps": steps, "num_envs": cfg.env.num_envs,
            "evaluate": not args.no_eval, "wall_s": wall, "env_steps_per_s": env_steps / wall,
            "op_time_s": dict(rows), "top_ops": [[n, scopes[n], s, described[n]] for n, s in top], "unmatched_s": unmatched, "jax": jax.__version__,
            "overrides": settings}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
