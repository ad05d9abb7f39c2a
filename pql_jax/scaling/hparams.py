"""Best hyperparameters per cell with the seed bootstrap (seed 001, eqs. D.1 and D.4), and the
best-tuned crossings per cell that the data-efficiency laws are fitted to."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pql_jax.scaling.curves import CELL_COLUMNS, nanmean, nanstd


def cell_columns(gdf: pd.DataFrame) -> list[str]:
    """The cell columns present in a group table."""
    return [c for c in CELL_COLUMNS if c in gdf.columns]


def _argbest(D: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per resample (column), the value of the row with the smallest crossing; NaN if none."""
    filled = np.where(np.isfinite(D), D, np.inf)
    best = values[np.argmin(filled, axis=0)].astype(float)
    best[~np.isfinite(filled).any(axis=0)] = np.nan
    return best


def best_hparams(gdf: pd.DataFrame, D: np.ndarray, level: int) -> tuple[pd.DataFrame, dict]:
    """Bootstrap-averaged best batch size and learning rate per cell at threshold ``level``.

    For each resample the best value among runs sharing the other hyperparameter is picked;
    these are averaged over resamples (D.1) and then over the other hyperparameter (D.4).
    Returns the table (value, bootstrap std, number of candidates) and per-resample values
    ``{hp: (n_cells, K)}`` for propagating uncertainty into the fits.
    """
    cells = cell_columns(gdf)
    cell_df = gdf[cells].drop_duplicates().reset_index(drop=True)
    cell_id = gdf.merge(cell_df.reset_index(), on=cells, how="left")["index"].to_numpy()
    K = D.shape[1] - 1
    boot = slice(1, None) if K > 0 else slice(0, 1)
    table, per_resample = cell_df.copy(), {}
    for hp, other in (("batch_size", "lr"), ("lr", "batch_size")):
        if hp not in gdf.columns:
            continue
        mats = np.full((len(cell_df), K + 1), np.nan)
        for c in range(len(cell_df)):
            rows = np.flatnonzero(cell_id == c)
            sub = gdf.iloc[rows]
            parts = [_argbest(D[rows[m], :, level], sub[hp].to_numpy()[m])
                     for _, m in _masks(sub, other)]
            mats[c] = nanmean(np.stack(parts), axis=0)
        table[hp] = nanmean(mats[:, boot], axis=1)
        table[f"{hp}_std"] = nanstd(mats[:, boot], axis=1) if K > 1 else np.nan
        table[f"n_{hp}"] = gdf.groupby(cell_id)[hp].nunique().to_numpy()
        per_resample[hp] = mats[:, boot]
    return table, per_resample


def _masks(sub: pd.DataFrame, other: str):
    """Boolean masks of the runs sharing each value of ``other`` (one mask if absent)."""
    if other not in sub.columns:
        yield None, np.ones(len(sub), bool)
        return
    vals = sub[other].to_numpy()
    for v in np.unique(vals):
        yield v, vals == v


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
