"""Best batch size per UTD from a sweep over (utd, batch_size) x seeds, with the seed bootstrap,
and the two-point slope of B*(utd) where the sweep has fewer than the 3 UTDs a law needs.

Reproduces the wider batch grid's table of benchmarks/RESULTS.md#batch-optimum
(issue "Real physics evidence", section 2):
    pql-jax sweep SWEEP.yaml --out runs/batch_grid   # grid: utd x batch_size, several seeds
    python scripts/batch_optimum.py runs/batch_grid --max-return 1000 --thresholds 400,600,800
It uses pql_jax.scaling's own crossings and best-value picks (the ones `pql-jax fit` and the
workflow use), so the numbers are those the workflow's fit_hparams stage would see.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pql_jax.errors import UserError
from pql_jax.scaling import best_hparams, crossing_bootstrap, load_curves
from pql_jax.values import read_numbers


def batch_optimum(df, thresholds: list[float], resamples: int = 200) -> dict:
    """Per threshold: the crossings of each (utd, batch size) group's seed-mean curve with their
    bootstrap SD, the best batch size per UTD (bootstrap mean, SD, edge flag) and the slope
    d log B* / d log utd between the lowest and highest UTD over the seed resamples."""
    cb = crossing_bootstrap(df, thresholds, resamples, 0, shared=True)
    table, D = cb.table, cb.D
    out = {}
    for j, thr in enumerate(thresholds):
        crossings = [{"utd": float(table["utd"][i]), "batch_size": int(table["batch_size"][i]),
                      "env_steps": float(D[i, 0, j]),
                      "resample_sd": float(np.nanstd(D[i, 1:, j])) if np.isfinite(D[i, 1:, j]).any() else np.nan,
                      "reached_frac": float(np.isfinite(D[i, 1:, j]).mean())} for i in range(len(table))]
        best, per_resample = best_hparams(table, D, j)
        utds = best["utd"].to_numpy(float)
        slope = None
        if len(utds) >= 2:
            lo, hi = np.argmin(utds), np.argmax(utds)
            r = per_resample["batch_size"]
            s = (np.log(r[hi]) - np.log(r[lo])) / (np.log(utds[hi]) - np.log(utds[lo]))
            s = s[np.isfinite(s)]
            slope = {"mean": float(s.mean()), "sd": float(s.std(ddof=1)), "p5": float(np.percentile(s, 5)),
                     "p95": float(np.percentile(s, 95)), "resamples": int(len(s))}
        out[thr] = {"crossings": sorted(crossings, key=lambda c: (c["utd"], c["batch_size"])),
                    "best": [{"utd": float(r["utd"]), "batch_size": float(r["batch_size"]),
                              "sd": float(r["batch_size_std"]), "edge": r["batch_size_edge"] or ""}
                             for _, r in best.sort_values("utd").iterrows()],
                    "slope": slope}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a sweep directory (its results.csv) or a learning-curve CSV")
    parser.add_argument("--max-return", type=float, required=True)
    parser.add_argument("--thresholds", required=True, help="comma-separated normalised returns")
    parser.add_argument("--resamples", type=int, default=200)
    args = parser.parse_args(argv)
    try:
        thresholds = read_numbers(args.thresholds)  # the scaling CLI's --thresholds parser
        df, _ = load_curves(args.sweep, args.max_return)  # a run directory's table or a CSV
        result = batch_optimum(df, thresholds, args.resamples)
    except (UserError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for thr, r in result.items():
        print(f"J = {thr:g}: env steps to J of the seed-mean curve (resample SD, share of resamples reaching J)")
        for c in r["crossings"]:
            print(f"  utd {c['utd']:.4g} B {c['batch_size']:5d}: {c['env_steps']:9.0f} ({c['resample_sd']:6.0f},"
                  f" {c['reached_frac']:.2f})")
        for b in r["best"]:
            print(f"  best batch size at utd {b['utd']:.4g}: {b['batch_size']:.0f} +- {b['sd']:.0f} {b['edge']}")
        if r["slope"]:
            s = r["slope"]
            print(f"  two-point slope d log B* / d log utd: {s['mean']:+.3f}, bootstrap SD {s['sd']:.3f},"
                  f" 90% [{s['p5']:+.3f}, {s['p95']:+.3f}] ({s['resamples']} resamples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
