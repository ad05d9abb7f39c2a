"""Best hyperparameters per cell with the seed bootstrap (seed 001, eqs. D.1 and D.4), and the
best-tuned crossings per cell that the data-efficiency laws are fitted to."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pql_jax.values import format_utd
from pql_jax.scaling.curves import CELL_COLUMNS, nanmean, nanstd
from pql_jax.scaling.datafit import bootstrap_refit
from pql_jax.scaling.diagnostics import power_flags
from pql_jax.scaling.fit import fit_law, single_thread_blas
from pql_jax.scaling.laws import BATCH_SIGMA_N
from pql_jax.scaling.powerlaw import add_bootstrap, fit_fixed_effects, percentile_interval


def cell_columns(gdf: pd.DataFrame) -> list[str]:
    """The cell columns present in a group table."""
    return [c for c in CELL_COLUMNS if c in gdf.columns]


def _argbest(D: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per resample (column), the value of the row with the smallest crossing; NaN if none."""
    filled = np.where(np.isfinite(D), D, np.inf)
    best = values[np.argmin(filled, axis=0)].astype(float)
    best[~np.isfinite(filled).any(axis=0)] = np.nan
    return best


def _unbracketed(Dpart: np.ndarray, vals: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Per resample: whether a pick at the edge of ``vals`` is a bound, i.e. the parabola in log
    value through log D of the three swept values nearest that edge does not place its minimum
    inside the swept range (falls all the way to the edge, or is not convex). With fewer than 3
    swept values an edge pick is always a bound. ``Dpart``: (values, resamples)."""
    order = np.argsort(vals)
    lv, logD = np.log(vals[order]), np.log(np.where(Dpart[order] > 0, Dpart[order], np.nan))
    out = np.ones(Dpart.shape[1], bool)
    if len(lv) < 3:
        return out
    for side, idx in (("low", slice(0, 3)), ("high", slice(-3, None))):
        (x0, x1, x2), (y0, y1, y2) = lv[idx], logD[idx]
        ok = np.isfinite(y0) & np.isfinite(y1) & np.isfinite(y2)
        if not ok.any():
            continue
        y0, y1, y2 = y0[ok], y1[ok], y2[ok]
        # the parabola through the three points, for every resample at once (closed form)
        den = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
        b = (x2 ** 2 * (y0 - y1) + x1 ** 2 * (y2 - y0) + x0 ** 2 * (y1 - y2)) / den
        with np.errstate(all="ignore"):
            vertex = -b / (2 * a)
        inside = (a > 0) & (vertex > lv[0]) & (vertex < lv[-1])
        at_side = np.isclose(picks[ok], vals.min() if side == "low" else vals.max(), rtol=1e-9)
        col = np.flatnonzero(ok)[at_side]
        out[col] = ~inside[at_side]
    return out


def _edge_side(picks: np.ndarray, bound: np.ndarray, lo: float, hi: float) -> str:
    """'high' / 'low' when most finite picks sit at the top / bottom of the swept values and are
    bounds there (the optimum may lie beyond the grid: not an optimum), else ''."""
    fin = np.isfinite(picks)
    if not fin.any() or lo == hi:
        return ""
    for side, v in (("high", hi), ("low", lo)):
        if np.mean(np.isclose(picks[fin], v, rtol=1e-9) & bound[fin]) > 0.5:
            return side
    return ""


def _cells(gdf: pd.DataFrame):
    """The cells of a group table, each group's cell index, and each cell's group rows."""
    cells = cell_columns(gdf)
    cell_df = gdf[cells].drop_duplicates().reset_index(drop=True)
    cell_id = gdf.merge(cell_df.reset_index(), on=cells, how="left")["index"].to_numpy()
    return cell_df, cell_id, [np.flatnonzero(cell_id == c) for c in range(len(cell_df))]


def _cell_picks(gdf: pd.DataFrame, D2: np.ndarray, hp: str, by_cell: list) -> list:
    """Per cell, for crossings ``D2`` (groups, columns: resamples or levels): the best value of
    ``hp`` among the runs sharing each value of the other hyperparameter (parts, columns),
    whether each pick is an unbracketed edge pick (parts, columns), and the swept range."""
    other = "lr" if hp == "batch_size" else "batch_size"
    values = gdf[hp].to_numpy(float)
    others = gdf[other].to_numpy(float) if other in gdf.columns else np.zeros(len(gdf))
    out = []
    for rows in by_cell:
        oth = others[rows]
        groups = [rows[oth == v] for v in np.unique(oth)]
        parts = np.stack([_argbest(D2[r], values[r]) for r in groups])
        bound = np.stack([_unbracketed(D2[r], values[r], p) for r, p in zip(groups, parts)])
        out.append((parts, bound, values[rows].min(), values[rows].max()))
    return out


def best_hparams(gdf: pd.DataFrame, D: np.ndarray, level: int) -> tuple[pd.DataFrame, dict]:
    """Bootstrap-averaged best batch size and learning rate per cell at threshold ``level``.

    For each resample the best value among runs sharing the other hyperparameter is picked;
    these are averaged over resamples (D.1) and then over the other hyperparameter (D.4).
    Returns the table (value, bootstrap std, number of candidates, ``{hp}_edge``: 'high' / 'low'
    when most picks sit at the top / bottom of the cell's swept values with the optimum not
    bracketed there (a parabola in log value through the 3 nearest crossings has no minimum
    inside the grid), else '') and
    per-resample values ``{hp: (n_cells, K)}`` for propagating uncertainty into the fits.
    """
    cell_df, cell_id, by_cell = _cells(gdf)
    K = D.shape[1] - 1
    boot = slice(1, None) if K > 0 else slice(0, 1)
    table, per_resample = cell_df.copy(), {}
    for hp in ("batch_size", "lr"):
        if hp not in gdf.columns:
            continue
        picks = _cell_picks(gdf, D[:, :, level], hp, by_cell)
        mats = np.stack([nanmean(parts, axis=0) for parts, _, _, _ in picks])
        table[hp] = nanmean(mats[:, boot], axis=1)
        table[f"{hp}_std"] = nanstd(mats[:, boot], axis=1) if K > 1 else np.nan
        table[f"n_{hp}"] = gdf.groupby(cell_id)[hp].nunique().to_numpy()
        table[f"{hp}_edge"] = [_edge_side(parts[:, boot].ravel(), bound[:, boot].ravel(), lo, hi)
                               for parts, bound, lo, hi in picks]
        per_resample[hp] = mats[:, boot]
    return table, per_resample


def cell_crossings(gdf: pd.DataFrame, D: np.ndarray, thresholds: dict) -> tuple[pd.DataFrame, np.ndarray]:
    """Best-tuned crossing per (cell, threshold): the minimum over the cell's runs, for the
    plain mean (``data``) and every resample (``data_std`` over resamples). Returns the
    crossings table (the crossings input format) and the array (cells, K + 1, n_J)."""
    cells = cell_columns(gdf)
    cell_df = gdf[cells].drop_duplicates().reset_index(drop=True)
    cell_id = gdf.merge(cell_df.reset_index(), on=cells, how="left")["index"].to_numpy()
    Dc = np.full((len(cell_df), D.shape[1], D.shape[2]), np.nan)
    rows = []
    for c, cell in cell_df.iterrows():
        idx = np.flatnonzero(cell_id == c)
        filled = np.where(np.isfinite(D[idx]), D[idx], np.inf)
        m = filled.min(axis=0)
        Dc[c] = np.where(np.isfinite(m), m, np.nan)
        J = thresholds.get(cell["env"], thresholds.get("*"))
        arg0 = filled[:, 0, :].argmin(axis=0)
        for j, thr in enumerate(J):
            boot = Dc[c, 1:, j]
            fin = boot[np.isfinite(boot)]
            row = {**cell.to_dict(), "threshold": float(thr), "level": j, "data": Dc[c, 0, j],
                   "data_std": float(fin.std(ddof=1)) if len(fin) > 1 else np.nan,
                   "reached": bool(np.isfinite(Dc[c, 0, j])),
                   "reached_frac": float(np.isfinite(boot).mean()) if boot.size else np.nan}
            for hp in ("batch_size", "lr"):
                if hp in gdf.columns:
                    row[f"best_{hp}"] = float(gdf[hp].to_numpy()[idx[arg0[j]]])
            rows.append(row)
    return pd.DataFrame(rows), Dc


def fit_hparam_law(best: pd.DataFrame, per_resample: dict, hp: str, name: str, shared: bool = True):
    """B*(sigma) or eta*(sigma) through the cells whose best value is an optimum, with the seed
    bootstrap (pooled SE for a shared slope) and 90% percentile intervals.

    Cells whose best value sits at the edge of the swept grid (``{hp}_edge``) are bounds, not
    optima: they are left out of the law, and without 3 interior UTDs per env no law is fitted.
    Returns (PowerFit or None, notes, flags, the utd values left out)."""
    notes, flags = [], []
    vals = best[hp].to_numpy(float)
    at_edge = np.isfinite(vals) & (_edges(best, hp) != "")
    excluded = best[at_edge]
    if len(excluded):
        desc = ", ".join(f"{format_utd(r.utd)} ({getattr(r, f'{hp}_edge')} edge)" for r in excluded.itertuples())
        notes.append(f"best {hp} at the edge of the swept grid at utd {desc}: a bound, not an optimum; "
                     f"left out of the {name} law (widen the grid there)")
        flags += [{"quantity": f"best {hp}", "group": r.env, "param": f"utd={format_utd(r.utd)}",
                   "problem": f"at the {getattr(r, f'{hp}_edge')} edge of the swept grid: a bound, not an optimum "
                              "(widen the grid there)"}
                  for r in excluded.itertuples()]
    use = np.isfinite(vals) & ~at_edge
    sub = law_points(best, hp)
    n_utd = sub.groupby("env")["utd"].nunique().reindex(best["env"].unique()).fillna(0)
    if n_utd.min() < 3:
        notes.append(f"{name} law not fitted: {int(n_utd.min())} utd value(s) with an interior best {hp} "
                     "(needs 3)")
        flags.append({"quantity": f"{name} law", "group": "", "param": "",
                      "problem": f"not fitted: only {int(n_utd.min())} utd value(s) have an optimum inside the grid"})
        return None, notes, flags, excluded["utd"].tolist()
    pf = fit_fixed_effects(sub, hp, "utd", shared=shared)
    if hp in per_resample:
        add_bootstrap(pf, sub, per_resample[hp][use])
    flags += power_flags(f"{name} law", pf)
    for g, flat in pf.flat.items():
        if flat:
            notes.append(f"{name} ({g}): no dependence on utd within the noise (slope {pf.slope[g]:.3g} +- "
                         f"{pf.slope_uncertainty(g):.3g}); treat best {hp} as a constant")
    return pf, notes, flags, excluded["utd"].tolist()


def fit_batch_size_n(best: pd.DataFrame, per_resample: dict):
    """B*(sigma, N) through the interior best batch sizes (``law_points``), with the seed
    bootstrap like the 1-D laws: every resample's best batch sizes refitted (per env, from the
    main fit), giving ``bootstrap_se`` and 90% ``interval`` per parameter. Returns the LawFit
    and the refits, env -> log parameters (resamples, params) (NaN rows: failed refits)."""
    use = np.isfinite(best["batch_size"].to_numpy(float)) & (_edges(best, "batch_size") == "")
    sub = best[use]
    with single_thread_blas():
        lf = fit_law(BATCH_SIGMA_N, sub, y="batch_size")
    boot = {}
    if "batch_size" in per_resample and per_resample["batch_size"].shape[1] > 1:
        with np.errstate(all="ignore"):
            LY = np.log(np.where(per_resample["batch_size"][use] > 0, per_resample["batch_size"][use], np.nan)).T
        for g in lf.params:
            m = (sub["env"] == g).to_numpy()
            lx = {k: np.log(sub[k].to_numpy(float)[m]) for k in BATCH_SIGMA_N.inputs}
            theta = boot[g] = bootstrap_refit(lf, g, lx, LY[:, m])
            vals = np.exp(theta[np.isfinite(theta).all(1)])
            if len(vals) > 1:
                lo, hi = percentile_interval(vals)
                lf.bootstrap_se[g] = dict(zip(lf.law.params, nanstd(vals, axis=0).tolist()))
                lf.interval[g] = {p: [float(a), float(b)] for p, a, b in zip(lf.law.params, lo, hi)}
    lf.flags += n_dependence_flags(lf, sub, boot)
    return lf, boot


def n_dependence_flags(lf, points: pd.DataFrame, log_params: dict) -> list[dict]:
    """``_flat_in_n`` of every group of a B*(sigma, N) fit over the model sizes of its ``points``
    (env, model_size), from the bootstrap refits (group -> log parameters)."""
    return [f for g in lf.params
            for f in _flat_in_n(lf, g, points.loc[points["env"] == g, "model_size"].to_numpy(float),
                                log_params.get(g))]


#: B*(sigma, N) counts as depending on N when the 5th percentile of B*(largest N) / B*(smallest N)
#: over the seed bootstrap exceeds this: a smaller change is within a batch grid's rounding.
MIN_N_RATIO = 1.1


def _flat_in_n(lf, group, sizes: np.ndarray, log_params) -> list[dict]:
    """A flag when the seed bootstrap does not show B* changing across the swept model sizes:
    the law's N part (n_half, beta) is then not determined and B*(sigma) alone is the law.
    A prediction, not the parameters, is tested: n_half and beta trade off against each other
    (and the form's step limit beta -> inf) while the ratio across the swept N stays pinned."""
    if len(sizes) == 0 or log_params is None:
        return []
    log_params = np.asarray(log_params, float)
    lo_n, hi_n = float(sizes.min()), float(sizes.max())
    refit = dict(zip(lf.law.params, np.exp(log_params[np.isfinite(log_params).all(1)]).T))  # name -> (resamples,)
    ratios = np.atleast_1d(lf.law.predict(refit, utd=1.0, model_size=hi_n)
                           / lf.law.predict(refit, utd=1.0, model_size=lo_n))
    ratios = ratios[np.isfinite(ratios)]
    if len(ratios) < 2:
        return []
    lo, hi = percentile_interval(ratios)
    if lo > MIN_N_RATIO:
        return []
    return [{"group": group, "param": "N",
             "problem": f"no dependence on model size within the noise (B* at N={hi_n:.3g} / at N={lo_n:.3g}: "
                        f"90% [{lo:.3g}, {hi:.3g}]): B*(utd) is the law, not B*(utd, N)"}]


def depends_on_n(flags: list, group=None) -> bool:
    """Whether a fitted B*(sigma, N) shows B* changing with N, from its ``flags`` (a LawFit's, or
    its fit file's): no ``_flat_in_n`` flag for ``group`` (for any group when None)."""
    return not any(f.get("param") == "N" and (group is None or f.get("group") == group) for f in flags or [])


def _edges(best: pd.DataFrame, hp: str) -> np.ndarray:
    return best.get(f"{hp}_edge", pd.Series("", index=best.index)).fillna("").astype(str).to_numpy()


def law_points(best: pd.DataFrame, hp: str) -> pd.DataFrame:
    """The cells a B* / eta* law is fitted through: a finite best value inside the swept grid."""
    return best[np.isfinite(best[hp].to_numpy(float)) & (_edges(best, hp) == "")]


def slope_by_threshold(gdf: pd.DataFrame, D: np.ndarray, thresholds, hps=("batch_size", "lr")) -> dict:
    """Sensitivity of the B* / eta* slopes to the threshold used to pick the best values:
    ``{hp: {threshold: shared slope}}`` fitted at each threshold level through the interior
    cells of the plain seed means (NaN where fewer than 3 interior utds)."""
    cell_df, _, by_cell = _cells(gdf)
    out = {}
    for hp in [h for h in hps if h in gdf.columns]:
        picks = _cell_picks(gdf, D[:, 0, :], hp, by_cell)  # columns: the threshold levels
        out[hp] = {}
        for level, thr in enumerate(thresholds):
            best = cell_df.assign(**{hp: [nanmean(parts[:, level]) for parts, _, _, _ in picks],
                                     f"{hp}_edge": [_edge_side(parts[:, level], bound[:, level], lo, hi)
                                                    for parts, bound, lo, hi in picks]})
            ok = law_points(best, hp)
            enough = len(ok) and ok.groupby("env")["utd"].nunique().min() >= 3
            out[hp][float(thr)] = next(iter(fit_fixed_effects(ok, hp, "utd").slope.values())) if enough else float("nan")
    return out


def _axis_weights(values: np.ndarray, target: float) -> np.ndarray:
    """Interpolation weights over a cell's swept values of one hyperparameter at ``target``, in
    log space: the quadratic through the 3 values nearest the target (2: the line; 1: that
    value), with the target clamped to the swept range (beyond it the edge run stands in).

    Lagrange weights written by hand: they are applied to every resample and threshold of the
    cell at once (scipy's interpolators take one array of nodes per call)."""
    lv = np.log(np.asarray(values, float))
    w = np.zeros(len(lv))
    if len(lv) == 1 or not np.isfinite(target):
        w[np.argmin(np.abs(lv - (np.log(target) if np.isfinite(target) else lv.mean())))] = 1.0
        return w
    t = float(np.clip(np.log(target), lv.min(), lv.max()))
    idx = np.sort(np.argsort(np.abs(lv - t), kind="stable")[:3])
    for j in idx:
        w[j] = np.prod([(t - lv[k]) / (lv[j] - lv[k]) for k in idx if k != j])
    return w


def cell_crossings_at(gdf: pd.DataFrame, D: np.ndarray, thresholds: dict, targets) -> tuple[pd.DataFrame, np.ndarray]:
    """Crossing per (cell, threshold) at the best batch size and learning rate (seed 001,
    section 4.3: D_J is measured at B*, eta*), where ``targets(cell_row) -> {hp: value}`` gives
    them (a fitted law, or the cell's best value). Where no run sits exactly there, log D is
    interpolated in (log B, log lr) across the cell's grid (quadratic through the 3 nearest
    swept values per axis, clamped to the grid; where a run of that stencil never reached the
    threshold, the run nearest the target); a cell whose runs do not form a full grid falls back
    to the minimum over its runs. Same outputs as ``cell_crossings`` (the table's
    ``at_batch_size`` / ``at_lr`` are the targets, ``procedure`` says which was used)."""
    table, Dc = cell_crossings(gdf, D, thresholds)
    cells = cell_columns(gdf)
    cell_df = gdf[cells].drop_duplicates().reset_index(drop=True)
    cell_id = gdf.merge(cell_df.reset_index(), on=cells, how="left")["index"].to_numpy()
    hps = [h for h in ("batch_size", "lr") if h in gdf.columns]
    nj = D.shape[2]
    proc = np.array(["min over grid"] * len(cell_df), dtype=object)
    at = {h: np.full(len(cell_df), np.nan) for h in hps}
    for c, cell in cell_df.iterrows():
        idx = np.flatnonzero(cell_id == c)
        sub = gdf.iloc[idx]
        axes = [np.unique(sub[h].to_numpy(float)) for h in hps]
        if len(idx) != int(np.prod([len(a) for a in axes])) or sub.duplicated(hps).any():
            continue  # not a full grid: keep the minimum
        want = targets(cell)
        if want is None:
            continue
        pos = [np.searchsorted(a, sub[h].to_numpy(float)) for a, h in zip(axes, hps)]
        logD = np.full([len(a) for a in axes] + list(D.shape[1:]), np.nan)
        with np.errstate(divide="ignore"):
            logD[tuple(pos)] = np.log(D[idx])
        near = logD
        for h, a in zip(hps, axes):  # contract one axis at a time, using only runs with weight
            w = _axis_weights(a, want.get(h, np.nan))
            at[h][c] = float(np.clip(want.get(h, np.nan), a.min(), a.max()))
            keep = np.flatnonzero(w != 0)
            logD = np.tensordot(w[keep], np.take(logD, keep, axis=0), axes=(0, 0))
            near = np.take(near, np.argmin(np.abs(np.log(a) - np.log(at[h][c]))), axis=0)
        # a run of the stencil that never reached the threshold: the run nearest the target stands in
        Dc[c] = np.exp(np.where(np.isfinite(logD), logD, near))
        proc[c] = "at B*, eta* (interpolated)" if any(len(a) > 1 for a in axes) else "single run"
    for j in range(nj):  # refresh the table rows from Dc
        rows = table["level"] == j
        c_idx = table.index[rows].to_numpy() // nj  # rows are cell-major, one per threshold
        boot = Dc[c_idx, 1:, j]
        fin = np.isfinite(boot)
        table.loc[rows, "data"] = Dc[c_idx, 0, j]
        table.loc[rows, "data_std"] = [float(np.std(b[f], ddof=1)) if f.sum() > 1 else np.nan for b, f in zip(boot, fin)]
        table.loc[rows, "reached"] = np.isfinite(Dc[c_idx, 0, j])
        table.loc[rows, "reached_frac"] = fin.mean(axis=1) if boot.size else np.nan
        for h in hps:
            table.loc[rows, f"at_{h}"] = at[h][c_idx]
        table.loc[rows, "procedure"] = proc[c_idx]
    return table, Dc
