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

Replayed (`--replay`): the whole workflow with `refine.stop_after: k` and nothing else refined, run on
the full-length workflow's tables cut at k instead of training: each sweep stage's members must be
the full run's (the same sweep file, stop overrides aside; else the replay stops and says where it
diverged, and a real run is needed), so the fits, the verification and the report are exactly what
the stopped workflow computes. The full run is refitted the same way (k = 0: its tables as they are),
so both columns come from this code. Prints every D_J parameter and verdict side by side.

    python benchmarks/early_stop.py --replay runs/quickstart_fixed --k 8 --out /tmp/stopped

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


def replay(args) -> None:
    """The full run's workflow refitted by this code (k = 0) and the stop-only workflow on its
    tables cut at k (module docstring), side by side."""
    full, new, k = Path(args.replay), Path(args.out), int(args.k)
    outs = [new / "full_length", new / f"stop_after_{k}"]
    for out, after in zip(outs, (0, k)):
        saved = _replay_one(full, out, after)
        print(f"{out}: " + ", ".join(f"{stage} {100 * share:.1f}% env steps saved" for stage, share in saved.items()))
    _side_by_side(*outs)


def _replay_one(full: Path, new: Path, k: int) -> dict:
    """Run the workflow of ``full`` with ``refine.stop_after: k`` into ``new`` on ``full``'s tables cut
    at k (0: as they are); {stage: share of env steps saved}."""
    import yaml

    from pql_jax import workflow
    from pql_jax.workflow import sweeps, verify, widen

    spec = yaml.safe_load((full / "workflow.yaml").read_text())
    if spec.get("refine"):
        raise SystemExit(f"{full}: a refined workflow; replay needs a fixed grid's full-length run")
    if not spec.get("thresholds"):
        raise SystemExit(f"{full}: auto thresholds: members train to full length, nothing to replay")
    level = max(spec["thresholds"]) * float(spec["max_return"]) / 1000.0
    new.mkdir(parents=True, exist_ok=False)
    wf_path = new.parent / f"{new.name}.workflow.yaml"
    wf_path.write_text(yaml.safe_dump({**spec, "refine": {"stop_after": k}}, sort_keys=False))
    saved = {}

    def cut_stage(wf, stage_dir: Path, progress, log) -> dict:
        rel = stage_dir.relative_to(new)
        mine, theirs = (yaml.safe_load((d / "sweep.yaml").read_text()) for d in (stage_dir, full / rel))
        mine["overrides"] = {key: v for key, v in (mine.get("overrides") or {}).items()
                             if key not in ("run.stop_after", "run.stop_return")}
        if mine != theirs:
            raise SystemExit(f"replay diverged at {rel}: the stopped workflow trains other members than the full run "
                             "(a real run is needed)")
        table = pd.read_csv(full / rel / "results.csv")
        table, share = cut(table, level, k) if k else (table, 0.0)
        table.to_csv(stage_dir / "results.csv", index=False)
        saved[str(rel)] = share
        return {"members": int(table["member"].nunique())}

    for module in (sweeps, widen, verify):
        module.run_sweep_stage = cut_stage
    workflow.run_workflow(wf_path, new, progress=False, log=lambda *a: None)
    return saved


def _side_by_side(full: Path, new: Path) -> None:
    """D_J parameters (value +- Hessian SE [bootstrap SE]) and verification verdicts of both runs."""
    from refine_compare import params  # this folder's reader of fit_laws/fit.json

    fits = [params(d) for d in (full, new)]
    print("| J | parameter | full length: value +- Hessian SE [bootstrap SE] | stopped | difference / larger Hessian SE |")
    print("|---|---|---|---|---|")
    for key in fits[0]:
        pairs = [f.get(key, (np.nan,) * 3 + (False,))[:3] for f in fits]
        cells = [f"{v:.3g} +- {se:.2g} [{boot:.2g}]" for v, se, boot in pairs]
        gap = abs(pairs[0][0] - pairs[1][0]) / max(pairs[0][1], pairs[1][1])
        print(f"| {key[0]:g} | {key[1]} | {cells[0]} | {cells[1]} | {gap:.2f} |")
    ver = [pd.read_csv(d / "verify" / "verification.csv") for d in (full, new)]
    print("\n| target | J | measured full / stopped | predicted full [90%] | predicted stopped [90%] | verified |")
    print("|---|---|---|---|---|---|")
    for (_, a), (_, b) in zip(ver[0].iterrows(), ver[1].iterrows()):
        print(f"| {a['target']} | {a['threshold']:g} | {a['data_measured']:.0f} / {b['data_measured']:.0f} | "
              f"{a['data_pred']:.0f} [{a['data_pred_lo']:.0f}, {a['data_pred_hi']:.0f}] | "
              f"{b['data_pred']:.0f} [{b['data_pred_lo']:.0f}, {b['data_pred_hi']:.0f}] | "
              f"{bool(a['verified'])} / {bool(b['verified'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", help="a full-length results.csv (offline comparison)")
    parser.add_argument("--max-return", type=float, default=1000.0)
    parser.add_argument("--thresholds", default="400,500,600", help="normalised thresholds J")
    parser.add_argument("--k", default="1,2,3,4,6,8", help="stop_after values (one for --sweep)")
    parser.add_argument("--resamples", type=int, default=100)
    parser.add_argument("--sweep", help="a sweep file to time with and without stopping")
    parser.add_argument("--stop-return", type=float, default=0.0, help="raw stop return for --sweep")
    parser.add_argument("--replay", help="a fixed grid's full-length workflow OUT to replay with early stopping")
    parser.add_argument("--out", help="with --replay: the new OUT (must not exist)")
    args = parser.parse_args()
    if args.replay:
        replay(args)
    if args.table:
        offline(args)
    if args.sweep:
        timed(args)


if __name__ == "__main__":
    main()
