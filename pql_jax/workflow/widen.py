"""``refine.widen``: widen the hparam sweep's grid where the best batch size or learning rate lies
on its edge, so that ``fit_hparams`` fits its laws through optima rather than bounds.

The rule. After the grid is trained, the best B and eta of every cell (UTD, and model size when
the sweep has critic widths) are picked exactly as ``fit_hparams`` picks them (``fits.pick_best``).
Where a best value is an unbracketed edge of the cell's swept values (``best_hparams``'
``{hp}_edge``: 'high' / 'low', the test behind fit_hparams' "at the high edge" flags), the next
value outward is added at that cell: the grid's end value times the grid's own ratio there
(highest / second-highest value, or lowest / second-lowest) to the power k for the k-th added
value; batch sizes rounded to an integer, learning rates to 6 significant figures. The cell's grid
becomes the product of its widened axes: every (B, eta) of it not trained yet is trained, for
every seed, in a widening round ``hparam_sweep/widen<r>/`` (its own ``sweep.yaml`` and ``run/``).
``hparam_sweep/results.csv`` is then the grid's rows plus every round's (members prefixed
``widen<r>/``), the best values are picked again, and rounds go on until no best value is on an
edge or every edge has had ``refine.widen`` values added outward (per cell, axis and direction).
A value beyond the edge that was trained but that no pick could use (every seed diverged) brackets
the edge: nothing more is added there. ``hparam_sweep/widened.csv`` lists every added value and
every edge left (limit reached); the report shows the grid as swept and as widened.

With ``refine.widen`` 0 (the default) none of this runs: the stage writes and trains the grid alone.
"""

from __future__ import annotations

import csv
import itertools
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pql_jax.run.distributed import barrier, is_primary
from pql_jax.run.tables import read_rows, write_rows_atomic
from pql_jax.scaling import fmt
from pql_jax.values import format_utd
from pql_jax.workflow.fits import pick_best
from pql_jax.workflow.spec import Workflow
from pql_jax.workflow.sweeps import hparam_grid, run_sweep_stage, write_sweep

#: The axes widened: (column of the tables, key of the sweep files).
AXES = (("batch_size", "agent.batch_size"), ("lr", "agent.critic_lr"))
WIDENED = "widened.csv"
COLUMNS = ["round", "utd", "critic_width", "axis", "side", "swept", "added", "why"]


def outward_value(grid, side: str, k: int, axis: str):
    """The k-th value (k = 1, 2, ...) outward of the grid's ``side`` ('high' / 'low') end at the
    grid's own ratio there; an int for batch_size, 6 s.f. for lr. None when the grid has one value
    (no ratio) or a batch size would fall below 1."""
    v = sorted(set(float(x) for x in grid))
    if len(v) < 2:
        return None
    end, ratio = (v[-1], v[-1] / v[-2]) if side == "high" else (v[0], v[0] / v[1])
    x = end * ratio ** k
    if axis == "batch_size":
        return int(round(x)) if round(x) >= 1 else None
    return float(f"{x:.6g}")


def _at(runs: pd.DataFrame, utd: float, model_size: float) -> pd.DataFrame:
    """The rows of ``runs`` at one cell."""
    ok = np.isclose(runs["utd"].to_numpy(float), utd, rtol=1e-9)
    if "model_size" in runs and np.isfinite(model_size):
        ok &= np.isclose(runs["model_size"].to_numpy(float), model_size, rtol=1e-9)
    return runs[ok]


def _has(values, x: float) -> bool:
    return any(math.isclose(float(v), float(x), rel_tol=1e-6) for v in values)


def _edge(cell, hp: str, vals: list, used: list, grid, widen: int, round_: int, label: str, width):
    """The record of one (cell, axis) whose best value is on an edge, or None; ``added`` NaN (and
    ``why``) where nothing is added."""
    side = str(getattr(cell, f"{hp}_edge", "") or "")
    if side not in ("high", "low") or not used:
        return None
    end = max if side == "high" else min
    if not math.isclose(end(vals), end(used), rel_tol=1e-9):
        return None  # the values beyond were trained and every seed of them diverged: bracketed
    g_end = end(float(x) for x in grid)
    k = 1 + sum((v > g_end * (1 + 1e-9)) if side == "high" else (v < g_end * (1 - 1e-9)) for v in vals)
    rec = {"round": round_, "utd": label, "critic_width": width, "axis": hp, "side": side,
           "swept": " ".join(fmt(v, 6) for v in vals), "added": np.nan}
    x = outward_value(grid, side, k, hp) if k <= widen else None
    if k > widen:
        rec["why"] = f"best still at the {side} edge: limit refine.widen = {widen} reached"
    elif x is None or _has(vals, x):
        rec["why"] = f"best at the {side} edge, but the grid gives no value outward"
    else:
        rec["added"], rec["why"] = x, f"best at the {side} edge"
    return rec


def decide(best: pd.DataFrame, runs: pd.DataFrame, grid: dict, widen: int, round_: int,
           used: pd.DataFrame | None = None) -> tuple[list[dict], pd.DataFrame]:
    """One round's decision (the module's rule).

    ``best``: ``best_hparams``' table (utd, model_size, batch_size_edge, lr_edge); ``runs``: every
    setting trained so far (utd, batch_size, lr, and utd_label, model_size, critic_width when
    known); ``used``: the settings the pick used (default ``runs``; diverged ones left out);
    ``grid``: the workflow's axes {"batch_size": ..., "lr": ...}. Returns (one record per (cell,
    axis) whose best value is on an edge: ``COLUMNS``, ``added`` NaN where nothing is added; the
    new members: utd, utd_label, critic_width, batch_size, lr, sorted)."""
    used = runs if used is None else used
    edges, new = [], []
    for cell in best.itertuples(index=False):
        ms = float(getattr(cell, "model_size", np.nan))
        at, at_used = _at(runs, cell.utd, ms), _at(used, cell.utd, ms)
        if at.empty:
            continue
        label = str(at["utd_label"].iloc[0]) if "utd_label" in at else format_utd(cell.utd)
        width = int(at["critic_width"].iloc[0]) if "critic_width" in at else np.nan
        axes = {hp: sorted(set(at[hp].astype(float))) for hp, _ in AXES}
        for hp, _ in AXES:
            rec = _edge(cell, hp, axes[hp], list(at_used[hp].astype(float)), grid[hp], widen, round_, label, width)
            if rec is not None:
                edges.append(rec)
                if np.isfinite(rec["added"]):
                    axes[hp] = axes[hp] + [rec["added"]]
        have = list(zip(at["batch_size"].astype(float), at["lr"].astype(float)))
        for b, lr in itertools.product(*axes.values()):
            if not any(math.isclose(b, hb) and math.isclose(lr, hl, rel_tol=1e-6) for hb, hl in have):
                new.append({"utd": float(cell.utd), "utd_label": label, "critic_width": width,
                            "batch_size": int(round(b)), "lr": float(lr)})
    members = pd.DataFrame(new, columns=["utd", "utd_label", "critic_width", "batch_size", "lr"])
    return edges, members.sort_values(["utd", "critic_width", "batch_size", "lr"], ignore_index=True)


def round_sweep(members: pd.DataFrame, widths: bool) -> dict:
    """The ``zip`` of a widening round's sweep file (critic and actor learning rates alike)."""
    lr = [float(x) for x in members["lr"]]
    zipped = {"agent.utd": list(members["utd_label"]), "agent.batch_size": [int(b) for b in members["batch_size"]],
              "agent.critic_lr": lr, "agent.actor_lr": lr}
    if widths:
        zipped["agent.critic_width"] = [int(w) for w in members["critic_width"]]
    return zipped


def swept_settings(results: Path) -> pd.DataFrame:
    """The settings trained in a ``results.csv``: one row per (utd, model size, batch size, lr)."""
    head = pd.read_csv(results, nrows=0).columns
    cols = [c for c in ("utd", "utd_label", "model_size", "critic_width", "batch_size", "critic_lr") if c in head]
    return pd.read_csv(results, usecols=cols).drop_duplicates().rename(columns={"critic_lr": "lr"})


def combine_results(sources: list[tuple[Path, str]], dest: Path) -> int:
    """Write ``dest``: the rows of every (results.csv, member prefix) in order, each source's
    program groups numbered after the earlier ones' (members and groups stay unique across
    rounds); the first source's rows as they are. Returns the number of members."""
    rows, columns, offset = [], [], 0
    for path, prefix in sources:
        part = read_rows(path)
        with path.open(newline="") as handle:
            columns += [c for c in next(csv.reader(handle)) if c not in columns]
        for r in part:
            r["member"] = prefix + r["member"]
            r["group"] = str(int(r["group"]) + offset)
        offset = max([int(r["group"]) + 1 for r in part] + [offset])
        rows += part
    write_rows_atomic(dest, rows, columns)
    return len({r["member"] for r in rows})


def _train(wf: Workflow, d: Path, progress: bool, log) -> None:
    """Train the sweep of ``d`` unless it finished before (its ``results.csv`` copy exists)."""
    if (d / "results.csv").is_file():
        log(f"  {d.name}: trained already")
        return
    run_sweep_stage(wf, d, progress, log)
    barrier(f"pql_jax: {d.name} trained")


def widen_stage(wf: Workflow, d: Path, progress: bool = True, log=print) -> dict:
    """The hparam_sweep stage with ``refine.widen`` > 0 (its ``sweep.yaml`` written): train the
    grid, then widening rounds until no best value is on an edge or the limit (the module's rule).
    Finished rounds are not retrained on resume; every process decides the same rounds."""
    h = wf.hparam_sweep
    grid = {"batch_size": h.batch_size, "lr": h.lr}
    _train(wf, d, progress, log)
    sources, records = [(d / "run" / "results.csv", "")], []
    for r in itertools.count(1):
        if is_primary():  # the grid's and earlier rounds' rows (a resumed stage may hold later ones)
            if r == 1:
                shutil.copyfile(sources[0][0], d / "results.csv")
            else:
                combine_results(sources, d / "results.csv")
        barrier(f"pql_jax: widen round {r} picked from")
        cb, best, *_ = pick_best(wf, d / "results.csv")
        edges, members = decide(best, swept_settings(d / "results.csv"), grid, wf.refine.widen, r, cb.table)
        added = [e for e in edges if np.isfinite(e["added"])]
        if not added:  # every edge left is at the limit (or has no value outward): the final state
            records += edges
            break
        records += added
        rd = d / f"widen{r}"
        if is_primary():
            rd.mkdir(exist_ok=True)
        write_sweep(wf, rd / "sweep.yaml", {}, {}, round_sweep(members, bool(h.critic_width)), wf.seeds)
        log(f"  widening round {r}: " + "; ".join(f"utd {e['utd']} {e['axis']} +{fmt(e['added'], 6)}" for e in added)
            + f" ({len(members)} settings x seeds)")
        _train(wf, rd, progress, log)
        sources.append((rd / "run" / "results.csv", f"{rd.name}/"))
    table = pd.DataFrame(records, columns=COLUMNS)
    if is_primary():
        table.to_csv(d / WIDENED, index=False)
    added = table[np.isfinite(table["added"].astype(float))]
    return {"members": len(pd.read_csv(d / "results.csv", usecols=["member"])["member"].unique()),
            "widen_rounds": r - 1, "widened": [f"utd {t.utd} {t.axis} +{fmt(t.added, 6)} (round {t.round})"
                                               for t in added.itertuples()]}


def report_lines(wf: Workflow, out: Path) -> list[str]:
    """The hparam sweep's grid as swept and as widened, a line per (UTD, width, axis) that was
    widened or is still at an edge; [] when the stage did not widen (no ``widened.csv``)."""
    path = out / "hparam_sweep" / WIDENED
    if not path.is_file():
        return []
    t = pd.read_csv(path, dtype={"utd": str})
    h = wf.hparam_sweep
    swept = {"batch_size": h.batch_size, "lr": h.lr}
    rounds = t.loc[np.isfinite(t["added"]), "round"].nunique()
    head = (f"Grid widened (refine.widen = {wf.refine.widen}: at most that many values outward per UTD, axis and "
            f"direction, at the grid's own ratio), {rounds} round(s):")
    if t.empty:
        return [head + " nothing added, every best value lies inside the grid.", ""]
    lines = [head]
    for (utd, width, axis), g in t.groupby(["utd", "critic_width", "axis"], sort=False, dropna=False):
        at = f"utd {utd}" + (f", critic width {int(width)}" if h.critic_width and np.isfinite(width) else "")
        text = f"- {at}: {axis} swept {', '.join(fmt(v, 3) for v in swept[axis])}"
        add = g[np.isfinite(g["added"])]
        if len(add):
            text += "; widened " + ", ".join(f"+{fmt(a.added, 3)} (round {a.round}: {a.why})" for a in add.itertuples())
        for a in g[~np.isfinite(g["added"])].itertuples():
            text += f"; {a.why}"
        lines.append(text)
    return lines + [""]


def max_added_members(wf: Workflow, seeds: int) -> tuple[int, int]:
    """Upper bounds of the members widening may add: (one direction per axis at every cell, both
    directions); an axis of one value is never widened."""
    h, w = wf.hparam_sweep, wf.refine.widen
    cells = len(h.utd) * max(1, len(h.critic_width))
    nb, nl = len(h.batch_size), len(h.lr)
    wb, wl = (w if nb > 1 else 0), (w if nl > 1 else 0)
    one = ((nb + wb) * (nl + wl) - nb * nl) * cells * seeds
    both = ((nb + 2 * wb) * (nl + 2 * wl) - nb * nl) * cells * seeds
    return one, both


def stage_hparam_sweep(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Step 1: UTD x batch size x learning rate (critic and actor) grid, several seeds; with
    ``refine.widen`` then widened where a best value lies on the grid's edge (``widen_stage``)."""
    d = out / "hparam_sweep"
    write_sweep(wf, d / "sweep.yaml", {}, *hparam_grid(wf), wf.seeds)
    if wf.refine.widen:
        return widen_stage(wf, d, progress, log)
    return run_sweep_stage(wf, d, progress, log)
