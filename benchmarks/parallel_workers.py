"""A workflow's hparam_sweep stage trained in-process (W=1, today's path) vs by W local worker
processes (pql_jax.run.local_parts), each with a cold (empty) persistent compilation cache.

Prints one row per run: wall seconds, CPU seconds (user + system of the run and every process it
started), CPU% (CPU / wall: 100% = one core busy) and whether the table equals the W=1 run's on
every non-timing column. Timings on a shared machine are noisy: `--repeat 2` runs each W twice.

    python benchmarks/parallel_workers.py [--workflow configs/workflows/quickstart.yaml] [--workers 1,2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMING = ("wall_time", "env_steps_per_s", "updates_per_s")


def write_stage_sweep(workflow: str, root: Path) -> Path:
    """The workflow's hparam_sweep sweep file, written as the workflow writes it."""
    from pql_jax.workflow.spec import load_workflow
    from pql_jax.workflow.sweeps import hparam_grid, write_sweep

    wf = load_workflow(workflow)
    path = root / "hparam_sweep" / "sweep.yaml"
    path.parent.mkdir(parents=True)
    write_sweep(wf, path, {}, *hparam_grid(wf), wf.seeds)
    return path


def run(sweep: Path, out: Path, workers: int, cache: Path) -> tuple[float, float]:
    """Train `sweep` into `out` with `workers` (1: `pql-jax sweep` in one process); (wall s, CPU s)."""
    if workers == 1:
        command = [sys.executable, "-m", "pql_jax.cli", "sweep", str(sweep), "--out", str(out), "--no-progress"]
    else:
        command = [sys.executable, "-c", "import sys; from pql_jax.run.local_parts import launch_local; "
                   f"launch_local({str(sweep)!r}, {str(out)!r}, count={workers}, progress=False)"]
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["PQL_JAX_COMPILE_CACHE"] = str(cache)  # empty: every program compiles (cold)
    before, tick = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall, after = time.perf_counter() - tick, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)  # waited-for grandchildren included


def same_numbers(a: Path, b: Path) -> bool:
    from pql_jax.run.tables import read_rows

    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    return strip(read_rows(a)) == strip(read_rows(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", default="configs/workflows/quickstart.yaml")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (1: in-process)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="parallel_workers_"))
    sweep = write_stage_sweep(args.workflow, root)
    counts = [int(w) for w in args.workers.split(",")]
    print(f"{args.workflow} hparam_sweep, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start",
          flush=True)
    print(f"{'W':>3} {'wall s':>8} {'CPU s':>8} {'CPU%':>6}  same numbers as W={counts[0]}", flush=True)
    reference = None
    for rep in range(args.repeat):
        for workers in counts:
            out = root / f"w{workers}_r{rep}"
            wall, cpu = run(sweep, out, workers, root / f"cache_w{workers}_r{rep}")
            table = out / "results.csv"
            reference = reference or table
            print(f"{workers:>3} {wall:8.1f} {cpu:8.1f} {100 * cpu / wall:5.0f}%  {same_numbers(reference, table)}",
                  flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at end; outputs in {root}")


if __name__ == "__main__":
    main()
