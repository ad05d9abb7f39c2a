"""Early stopping (`run.stop_after`): env steps saved and crossings moved, per k, from a full-length
results table, and the wall time a real stopped sweep saves under map and vmap.

Offline (`--table`): every member of a full-length table is cut where its results first held the
stop return (the highest threshold, raw) for k consecutive results, with `stopped` = 1 on its last
row. A stopped run writes exactly those rows (tests/test_early_stop.py checks a real stopped run
against the cut table, row for row), so the crossings computed here are the stopped run's. For
each k: the share of env steps saved, and how far each run group's bootstrap-mean crossing moved
in units of the full run's bootstrap SD.

    python benchmarks/early_stop.py --table runs/quickstart/hparam_sweep/results.csv \\
        --max-return 50 --thresholds 400,500,600

Timed (`--sweep`): the sweep file trained with and without `run.stop_after` under map and vmap
(cold program per batching, compiled before the clock starts), wall seconds and env steps of each.

    python benchmarks/early_stop.py --sweep SWEEP.yaml --stop-return 30 --k 8
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def cut(table: pd.DataFrame, level: float, after: int) -> tuple[pd.DataFrame, float]:
    """The table as a stopped run writes it, and the share of env steps saved."""
    parts, saved, total = [], 0.0, 0.0
    for _, rows in table.groupby("member", sort=False):
        streak, stop = 0, None
        for i, value in enumerate(rows["return"].to_numpy(float)):
            if math.isnan(value):
                continue
            streak = streak + 1 if value >= level else 0
            if streak >= after:
                stop = i
                break
        end = rows["env_steps"].max()
        total += end
        rows = rows.assign(stopped=0)
        if stop is not None:
            rows = rows.iloc[: stop + 1].copy()
            rows.loc[rows.index[-1], "stopped"] = 1
            saved += end - rows["env_steps"].iloc[-1]
        parts.append(rows)
    return pd.concat(parts), saved / total


def offline(args) -> None:
    from pql_jax.scaling import crossing_bootstrap, load_curves

    table = pd.read_csv(args.table)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    level = max(thresholds) * args.max_return / 1000.0
    full = crossing_bootstrap(load_curves(table, args.max_return)[0], thresholds, args.resamples, 0)
    mean0, sd0 = np.nanmean(full.D, axis=1), np.nanstd(full.D, axis=1, ddof=1)
    print(f"{args.table}: {table['member'].nunique()} members, stop return {level:g} (raw), "
          f"{full.D.shape[0]} run groups x {len(thresholds)} thresholds, {args.resamples} resamples")
    print("| k | env steps saved | crossings moved | within 1 SD | within 2 SD | largest move (relative) |")
    print("|---|---|---|---|---|---|")
    for k in [int(x) for x in args.k.split(",")]:
        stopped, share = cut(table, level, k)
        D = crossing_bootstrap(load_curves(stopped, args.max_return)[0], thresholds, args.resamples, 0).D
        ok = np.isfinite(mean0)
        shift = np.abs(np.nanmean(D, axis=1) - mean0)[ok]
        moved = ~np.isclose(shift, 0.0, atol=1e-9 * np.abs(mean0[ok]))
        # a crossing every resample puts at one step (SD 0) that moved at all counts as outside
        move = np.where(moved, shift / np.where(sd0[ok] > 0, sd0[ok], np.inf), 0.0)
        move[moved & ~(sd0[ok] > 0)] = np.inf
        print(f"| {k} | {100 * share:.1f}% | {np.mean(moved):.0%} | {np.mean(move <= 1):.0%} | "
              f"{np.mean(move <= 2):.0%} | {np.max(shift / mean0[ok]):.2f} |")


def timed(args) -> None:
    from pql_jax.run import launch

    print("| batching | stop_after | wall s | env steps (sum over members) |")
    print("|---|---|---|---|")
    for batching in ("map", "vmap"):
        for k in (0, int(args.k)):
            overrides = [f"run.stop_after={k}", f"run.stop_return={args.stop_return}"]
            with tempfile.TemporaryDirectory() as tmp:
                if k == 0:  # compile outside the clock: a 2-chunk run of the same program (the stopped run reuses it)
                    launch.train_sweep_file(args.sweep, Path(tmp) / "warm", [*overrides, "run.total_env_steps=800"],
                                            progress=False, batching=batching, log=lambda *a: None)
                tick = time.perf_counter()
                launch.train_sweep_file(args.sweep, Path(tmp) / "run", overrides, progress=False, batching=batching,
                                        log=lambda *a: None)
                wall = time.perf_counter() - tick
                rows = pd.read_csv(Path(tmp) / "run" / "results.csv")
            print(f"| {batching} | {k} | {wall:.1f} | {int(rows.groupby('member')['env_steps'].max().sum()):,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", help="a full-length results.csv (offline comparison)")
    parser.add_argument("--max-return", type=float, default=1000.0)
    parser.add_argument("--thresholds", default="400,500,600", help="normalised thresholds J")
    parser.add_argument("--k", default="1,2,3,4,6,8", help="stop_after values (one for --sweep)")
    parser.add_argument("--resamples", type=int, default=100)
    parser.add_argument("--sweep", help="a sweep file to time with and without stopping")
    parser.add_argument("--stop-return", type=float, default=0.0, help="raw stop return for --sweep")
    args = parser.parse_args()
    if args.table:
        offline(args)
    if args.sweep:
        timed(args)


if __name__ == "__main__":
    main()
