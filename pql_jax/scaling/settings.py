"""A setting's batch size and learning rate as proposals and the workflow write them: rounded
(a batch size to a multiple of 16, a learning rate to 3 s.f.), and taken from the nearest swept UTD
where no law gives one (the one rule for both)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pql_jax.values import format_utd


def round_batch(b: float, multiple: int = 16) -> int:
    """Batch size rounded to the nearest multiple of 16 (at least 16)."""
    return int(max(multiple, multiple * np.floor(float(b) / multiple + 0.5)))


def round_sig(x: float, digits: int = 3) -> float:
    """x rounded to 3 significant figures."""
    return float(f"{float(x):.{digits - 1}e}") if np.isfinite(x) and x != 0 else float(x)


def nearest_setting(table: pd.DataFrame | None, hp: str, utd: float, utd_col: str = "utd",
                    label: str = "best value at the nearest swept utd") -> tuple[float, str]:
    """The value of ``hp`` in the row of ``table`` whose utd (``utd_col``) is nearest ``utd`` in
    log, among rows with a finite value, and where it came from: '{label} 1/2' (', a bound: high
    edge of the grid' where the row's ``{hp}_edge`` says so). (NaN, why) where no row has one.
    The one rule for a value no law gives, in proposals (best_hparams.csv of `fit all`) and in
    the workflow's settings."""
    if table is None or hp not in getattr(table, "columns", ()):
        return float("nan"), f"none: the curves have no {hp} column"
    ok = table[np.isfinite(pd.to_numeric(table[hp], errors="coerce").to_numpy(float))]
    if ok.empty:
        return float("nan"), f"none: no swept utd has a best {hp}"
    u = ok[utd_col].to_numpy(float)
    near = ok.iloc[int(np.argmin(np.abs(np.log(u) - np.log(float(utd)))))]
    edge = str(near.get(f"{hp}_edge", "") or "")
    bound = f", a bound: {edge} edge of the grid" if edge not in ("", "nan") else ""
    return float(near[hp]), f"{label} {format_utd(float(near[utd_col]))}{bound}"


def fill_nearest(prop: pd.DataFrame, table: pd.DataFrame | None, utd_col: str = "utd", round_values: bool = True,
                 label: str = "best value at the nearest swept utd") -> tuple[pd.DataFrame, list]:
    """Each proposal's batch size or learning rate that no law gave (NaN) from ``nearest_setting``
    in ``table``, with ``{hp}_source`` saying so ('no law: ...'); a value a law gave stays (its
    source column, where absent, says 'law'). Batch sizes are rounded to a multiple of 16 and
    learning rates to 3 s.f. with ``round_values``. Returns the filled copy and, per row, the
    names filled."""
    prop, filled = prop.copy(), []
    for i, row in prop.iterrows():
        names = []
        for hp in ("batch_size", "lr"):
            src = f"{hp}_source"
            if src not in prop.columns:
                prop[src] = ""
            if np.isfinite(float(row.get(hp, np.nan))):
                if not prop.at[i, src] or str(prop.at[i, src]) == "nan":
                    prop.at[i, src] = "law"
                continue
            v, where = nearest_setting(table, hp, float(row["utd"]), utd_col, label)
            if np.isfinite(v):
                v = (round_batch(v) if hp == "batch_size" else round_sig(v)) if round_values else \
                    (int(v) if hp == "batch_size" else float(v))
                names.append(hp)
            prop.at[i, hp] = v
            prop.at[i, src] = f"no {hp} law: {where}" if np.isfinite(v) else f"no {hp} law; {where}"
        filled.append(names)
    return prop, filled
