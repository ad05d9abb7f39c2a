"""Benchmark of `pql-jax fit all` on a synthetic sweep with planted laws.

7 envs x 6 UTDs x 3 batch sizes x 3 learning rates x 10 seeds x 200 logging points, 100
bootstrap resamples. Prints cold wall-clock times (a fresh `pql-jax` process, imports included)
with and without figures, the time per stage, and recovered vs planted slopes.

    python benchmarks/bench_fit.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

from pql_jax.scaling.synthetic import PLANTED, make_sweep


def run(csv: str, out: str, *extra: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one cold `pql-jax fit all` process; CPU time is what the
    process itself used, so it is less affected by other jobs on a shared machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pql_jax.cli", "fit", "all", csv, "--out", out, *extra],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", help="write the outputs here instead of a temporary directory")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="bench_fit_")
    os.makedirs(work, exist_ok=True)
    csv = os.path.join(work, "sweep.csv")
    df = make_sweep()
    df.to_csv(csv, index=False)
    print(f"sweep: {len(df)} rows, {df.groupby(['env', 'utd', 'batch_size', 'lr']).ngroups} run groups, "
          f"{df['seed'].nunique()} seeds, {df.groupby(['env', 'utd', 'batch_size', 'lr', 'seed']).size().iloc[0]} points")
    runs = [run(csv, os.path.join(work, "out_nofig"), "--no-figures") for _ in range(3)]
    wall, cpu = np.median([r[0] for r in runs]), np.median([r[1] for r in runs])
    out = os.path.join(work, "out")
    wall_f, cpu_f = run(csv, out)
    summary = json.load(open(os.path.join(out, "summary.json")))
    print(f"load average (1 min, other jobs included): {os.getloadavg()[0]:.2f}")
    print(f"\ncold `fit all` without figures (median of 3): wall {wall:.2f} s, CPU {cpu:.2f} s; "
          f"with figures: wall {wall_f:.2f} s, CPU {cpu_f:.2f} s\n")
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


if __name__ == "__main__":
    main()
