"""Benchmark of `pql-jax fit all` on a synthetic sweep with planted laws.

7 envs x 6 UTDs x 3 batch sizes x 3 learning rates x 10 seeds x 200 logging points, 100
bootstrap resamples. Prints cold wall-clock times (a fresh `pql-jax` process, imports included)
with and without figures, the CPU seconds of the main process and of its forked children, the
time per stage, and recovered vs planted slopes. ``--before DIR`` also times another version
(a source tree holding ``pql_jax/``, e.g. ``git archive REV pql_jax | tar -x -C DIR``) against
this one, interleaved run by run (on a shared machine the load drifts between runs).

    python benchmarks/bench_fit.py [--keep DIR] [--before DIR] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

from pql_jax.scaling.synthetic import PLANTED, make_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the command line in a fresh process, reporting its own CPU and its children's (forked workers)
CLI = ("import json, resource, sys\nfrom pql_jax import cli\nrc = cli.main(sys.argv[1:])\n"
       "s, c = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))\n"
       "sys.stderr.write(json.dumps([s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime]))\n"
       "getattr(cli, 'exit_process', lambda rc, argv: sys.exit(rc))(rc, sys.argv[1:])")  # as `pql-jax` ends


def run(csv: str, out: str, *extra: str, source: str = ROOT) -> tuple[float, float, float]:
    """(wall, CPU of the main process, CPU of its children) seconds of one cold `pql-jax fit all`
    with the ``pql_jax`` of ``source``; CPU time is less affected by other jobs than wall time."""
    env = dict(os.environ, PYTHONPATH=source)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CLI, "fit", "all", csv, "--out", out, *extra], check=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                          cwd=tempfile.gettempdir())  # not the repository: PYTHONPATH decides the version
    wall = time.perf_counter() - t0
    main_cpu, child_cpu = json.loads(done.stderr.strip().splitlines()[-1])
    return wall, main_cpu, child_cpu


def compare(csv: str, work: str, before: str, rounds: int) -> None:
    """Interleaved cold runs with figures: ``before`` (a source tree) and this checkout."""
    load0 = os.getloadavg()[0]
    times = {"before": [], "after": []}
    for _ in range(rounds):
        for name, src in (("before", before), ("after", ROOT)):
            times[name].append(run(csv, os.path.join(work, f"out_{name}"), source=src))
    print(f"\ninterleaved, {rounds} rounds, with figures (1-min load average {load0:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after, other jobs included)\n")
    print("| version | wall median (min-max) | CPU median: total = main + children |\n|---|---|---|")
    for name, t in times.items():
        w, m, c = (statistics.median(x[i] for x in t) for i in range(3))
        print(f"| {name} | {w:.2f} s ({min(x[0] for x in t):.2f}-{max(x[0] for x in t):.2f}) | "
              f"{statistics.median(x[1] + x[2] for x in t):.2f} s = {m:.2f} + {c:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", help="write the outputs here instead of a temporary directory")
    ap.add_argument("--before", help="source tree of another version to time against this one, interleaved")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds with --before")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="bench_fit_")
    os.makedirs(work, exist_ok=True)
    csv = os.path.join(work, "sweep.csv")
    df = make_sweep()
    df.to_csv(csv, index=False)
    print(f"sweep: {len(df)} rows, {df.groupby(['env', 'utd', 'batch_size', 'lr']).ngroups} run groups, "
          f"{df['seed'].nunique()} seeds, {df.groupby(['env', 'utd', 'batch_size', 'lr', 'seed']).size().iloc[0]} points")
    runs = [run(csv, os.path.join(work, "out_nofig"), "--no-figures") for _ in range(3)]
    wall, cpu = np.median([r[0] for r in runs]), np.median([r[1] + r[2] for r in runs])
    out = os.path.join(work, "out")
    wall_f, main_f, child_f = run(csv, out)
    summary = json.load(open(os.path.join(out, "summary.json")))
    print(f"load average (1 min, other jobs included): {os.getloadavg()[0]:.2f}")
    print(f"\ncold `fit all` without figures (median of 3): wall {wall:.2f} s, CPU {cpu:.2f} s; "
          f"with figures: wall {wall_f:.2f} s, CPU {main_f + child_f:.2f} s ({main_f:.2f} main process, "
          f"{child_f:.2f} forked children)\n")
    print("| stage (run with figures) | seconds |\n|---|---|")
    for k, v in summary["timings"].items():
        print(f"| {k} | {v:.2f} |")
    fb = json.load(open(os.path.join(out, "fit_batch_size.json")))
    fl = json.load(open(os.path.join(out, "fit_learning_rate.json")))
    fd = json.load(open(os.path.join(out, "fit.json")))
    a = np.array([p["a"] for lv in fd["levels"].values() for p in lv["params"].values()])
    budget = json.load(open(os.path.join(out, "fit_budget.json")))
    print("\n| quantity | planted | recovered |\n|---|---|---|")
    g = next(iter(fb["params"]))
    for label, f, planted in (("B*", fb, PLANTED["batch_slope"]), ("eta*", fl, PLANTED["lr_slope"])):
        lo, hi = f["interval"]["slope"][g]
        print(f"| {label} slope (shared, fixed effects; {len(f['excluded_at_edge'])} of 42 cells at a grid edge left "
              f"out) | {planted} | {f['params'][g]['slope']:.3f} +- {f['bootstrap_se']['slope'][g]:.3f} (bootstrap "
              f"SE), 90% [{lo:.3f}, {hi:.3f}]; offset form vs power: {f['compare_forms'].get('preferred')} |")
    print(f"| D_J exponent a (per env and threshold, median [IQR] of {len(a)}) | {PLANTED['a']} | "
          f"{np.median(a):.3f} [{np.percentile(a, 25):.3f}, {np.percentile(a, 75):.3f}] |")
    laws = budget["laws"]
    if "utd" in laws:
        print(f"| utd*(F) exponent (2 largest budgets per env held out) | - | {laws['utd']['exponent']:.3f}, "
              f"held-out mean abs log error {laws['utd']['held_out_mean_abs_log_error']:.3f} |")
    flags = pd.read_csv(os.path.join(out, "flags.csv"))
    print(f"\nwarnings (flags.csv): {len(flags)}; by kind: "
          + ", ".join(f"{k}: {v}" for k, v in flags["problem"].str.split(":").str[0].str.split("(").str[0]
                      .str.strip().value_counts().items()))
    cr = pd.read_csv(os.path.join(out, "crossings_runs.csv"))
    print(f"\ncrossings: {len(cr)} (run group, threshold) pairs, {int((~cr['reached']).sum())} not reached; "
          f"outputs in {out}")
    if args.before:
        compare(csv, work, args.before, args.rounds)


if __name__ == "__main__":
    main()
