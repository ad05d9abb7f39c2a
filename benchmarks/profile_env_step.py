"""Where one env's control step spends its time, per XLA op, with and without XLA's CPU fusion.

Reproduces benchmarks/RESULTS.md#dog-cpu-fusion: jits one env's `step`
(the raw MJX env of a `dmc:` port, as `env.batching: map` runs it), compiled as training compiles
it for each --cpu-fusion setting (`env.cpu_fusion`), times --steps control steps, then traces as
many with `jax.profiler` and charges every op its exclusive time (profile_chunk.py's reader). Prints
env steps/s, the summed op time, the --top ops with their HLO (the fused computation's size
says what a fusion recomputes), and the largest |qpos| difference between the settings' final
states (same reset, same actions: float rounding only).

    python benchmarks/profile_env_step.py --task DogStand --cpu-fusion on off
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_chunk import exclusive_by_op, op_scopes  # noqa: E402

from pql_jax.envs.dmc.reference import DM_NAMES  # noqa: E402


def profile(task: str, fusion: str, steps: int, top: int) -> dict:
    """Compile, time and trace `steps` control steps of one env; the final qpos for comparison."""
    import jax
    import jax.numpy as jnp

    from pql_jax.config import EnvConfig
    from pql_jax.envs import compiler_options, dmc

    env = dmc.load(task)
    options = compiler_options(EnvConfig(name=f"dmc:{task}", cpu_fusion=fusion))
    state = jax.block_until_ready(jax.jit(env.reset)(jax.random.PRNGKey(0)))
    actions = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (steps + 1, env.action_size)), jnp.float32)
    tick = time.perf_counter()
    step = jax.jit(env.step, compiler_options=options).lower(state, actions[0]).compile()
    compile_s = time.perf_counter() - tick
    state = jax.block_until_ready(step(state, actions[0]))
    tick = time.perf_counter()  # timed without the profiler: tracing thousands of unfused ops slows them
    for action in actions[1:]:
        state = step(state, action)
    jax.block_until_ready(state)
    wall = time.perf_counter() - tick
    trace_dir, traced = tempfile.mkdtemp(), state
    with jax.profiler.trace(trace_dir):
        for action in actions[1:]:
            traced = step(traced, action)
        jax.block_until_ready(traced)
    hlo = step.as_text()
    scopes, described = op_scopes(hlo, named=())
    by_op, _ = exclusive_by_op(trace_dir, scopes)
    sizes = _computation_sizes(hlo)
    ops = []
    for name, seconds in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]:
        called = re.search(r"calls=%?([\w.\-]+)", _instruction(hlo, name))
        ops.append({"op": name, "seconds": round(seconds, 4), "what": described[name][:120],
                    "fused_lines": sizes.get(called.group(1)) if called else None})
    total = sum(by_op.values())
    return {"task": task, "cpu_fusion": fusion, "xla_options": options or {}, "compile_s": round(compile_s, 1),
            "env_steps_per_s": round(steps / wall, 2), "op_seconds": round(total, 3), "wall_seconds": round(wall, 3),
            "top_share": round(sum(o["seconds"] for o in ops) / total, 3), "top": ops,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            "qpos": np.asarray(state.data.qpos, np.float64)}


def _instruction(hlo: str, name: str) -> str:
    match = re.search(rf"%{re.escape(name)} = [^\n]*", hlo)
    return match.group(0) if match else ""


def _computation_sizes(hlo: str) -> dict[str, int]:
    """Instructions per HLO computation (what a fusion computes for each output element)."""
    sizes, current = defaultdict(int), None
    for line in hlo.splitlines():
        if line.rstrip().endswith("{") and " = " not in line:
            current = line.split()[0 if not line.startswith("ENTRY") else 1].lstrip("%")
        elif current and " = " in line:
            sizes[current] += 1
    return dict(sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="DogStand", choices=sorted(DM_NAMES))
    parser.add_argument("--cpu-fusion", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--steps", type=int, default=10, help="control steps timed, then as many traced")
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.top < 1:
        print("error: --steps and --top must be >= 1", file=sys.stderr)
        return 2
    results = []
    for fusion in args.cpu_fusion:
        result = profile(args.task, fusion, args.steps, args.top)
        results.append(result)
        print(f"{args.task} cpu_fusion={fusion}: {result['env_steps_per_s']} env steps/s, compile {result['compile_s']} s, "
              f"traced op time {result['op_seconds']} s (untraced wall {result['wall_seconds']} s), peak RSS {result['peak_rss_gb']} GB; "
              f"top {args.top} ops {100 * result['top_share']:.0f}% of op time:", flush=True)
        for op in result["top"]:
            print(f"  {op['seconds']:8.4f} s  {op['what']}  (fused computation: {op['fused_lines']} instructions)")
    if len(results) == 2:
        diff = np.abs(results[0]["qpos"] - results[1]["qpos"]).max()
        print(f"max |qpos| difference after {args.steps + 1} steps: {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
