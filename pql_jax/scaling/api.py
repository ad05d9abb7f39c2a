"""File-level API mirroring the commands: read a table, fit, write outputs atomically."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

from pql_jax.scaling.datafit import DataEfficiencyFit, fit_data_efficiency
from pql_jax.scaling.fit import PowerFit, fit_fixed_effects
from pql_jax.scaling.io import (_numeric_column, _check_values, atomic_output_dir, load_crossings,
                                read_table, require_columns, require_distinct, write_json)
from pql_jax.scaling import forking, report
from pql_jax.scaling.figure_list import FIGURES
from pql_jax.scaling.pipeline import PipelineConfig, Results, fit_all


def fit_data_efficiency_file(crossings, out: str, shared: bool = False, normalise: str | None = None,
                             holdout: str | None = None) -> DataEfficiencyFit:
    """`fit data-efficiency`: fit D_J to a crossings CSV (or DataFrame); write ``out/fit.json``
    and ``out/predictions.csv`` (the input rows plus ``data_fit``)."""
    df = load_crossings(crossings)
    require_distinct(df[np.isfinite(df["data"])], "utd", "crossings")
    if "model_size" in df.columns and df["model_size"].nunique() > 1:
        require_distinct(df, "model_size", "crossings")
    fit, pred = fit_data_efficiency(df, shared=shared, normalise=normalise, holdout=holdout)
    with atomic_output_dir(out) as tmp:
        write_json(os.path.join(tmp, "fit.json"), fit.to_dict())
        pred.to_csv(os.path.join(tmp, "predictions.csv"), index=False)
    return fit


def fit_hparam_file(table, out: str, hp: str = "batch_size", shared: bool = True) -> PowerFit:
    """`fit batch-size` / `fit learning-rate`: log-log fit of hp against utd (fixed effects)."""
    df = read_table(table, "table")
    if hp == "lr" and "lr" not in df.columns and "critic_lr" in df.columns:
        df = df.rename(columns={"critic_lr": "lr"})
    require_columns(df, ["utd", hp], "table")
    df["env"] = df["env"].astype(str) if "env" in df.columns else "all"
    for col in ("utd", hp):
        df[col] = _numeric_column(df, col, "table")
    _check_values(df, ["utd", hp], "table")
    require_distinct(df, "utd", "table")
    pf = fit_fixed_effects(df, hp, "utd", shared=shared)
    pred = df.copy()
    pred[f"{hp}_fit"] = [pf.predict(e, u) for e, u in zip(df["env"], df["utd"])]
    with atomic_output_dir(out) as tmp:
        write_json(os.path.join(tmp, "fit.json"), pf.to_dict())
        pred.to_csv(os.path.join(tmp, "predictions.csv"), index=False)
    return pf


def fit_all_file(curves, out: str, config: PipelineConfig | None = None) -> Results:
    """`fit all`: run the pipeline, then write every table, fit, figure and report.md. Figures
    are drawn by a forked child while the pipeline fits, where ``forking.fork_safe()``."""
    painter = forking.FigurePainter() if (config or PipelineConfig()).figures and forking.fork_safe() else None
    try:
        res = fit_all(curves, config, painter=painter)
        write_results(res, out, painter)
    finally:
        if painter is not None:
            painter.close()
    return res


def write_results(res: Results, out: str, painter=None) -> None:
    """Write a pipeline result into ``out`` (atomically: all files or none); ``painter``: the
    ``forking.FigurePainter`` that drew its figures while it was fitted."""
    with atomic_output_dir(out) as tmp:
        t0 = time.perf_counter()
        figures = []
        if res.config.figures:
            figures = write_figures(res, os.path.join(tmp, "figures"), painter.finish() if painter else {})
        res.timings["figures"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for name, table in res.tables.items():
            table.to_csv(os.path.join(tmp, f"{name}.csv"), index=False)
        for name, obj in res.fits.items():
            write_json(os.path.join(tmp, f"{name}.json"), obj)
        res.timings["write"] = time.perf_counter() - t0
        res.summary["timings"] = res.timings
        write_json(os.path.join(tmp, "summary.json"), res.summary)
        report.write_report(res, tmp, figures)


def write_figures(res: Results, out_dir: str, pngs: dict) -> list[str]:
    """Write every figure the results support into ``out_dir``: ``pngs`` (function name -> PNG
    bytes or None, from ``FigurePainter.finish``) and, drawn here, those it lacks; return the file
    names written, in ``FIGURES`` order."""
    missing = [fn for _, fn in FIGURES if fn not in pngs]
    if missing:
        from pql_jax.scaling import plots  # matplotlib (~0.3 s import) only where no child drew a figure

        pngs = {**pngs, **{fn: plots.render(res, fn) for fn in missing}}
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, fn in FIGURES:
        if pngs[fn] is not None:
            with open(os.path.join(out_dir, name), "wb") as fh:
                fh.write(pngs[fn])
            written.append(name)
    return written


def read_crossings(path) -> pd.DataFrame:
    """Read and validate a crossings table (see README for the columns)."""
    return load_crossings(path)


__all__ = ["fit_data_efficiency_file", "fit_hparam_file", "fit_all_file", "write_results",
           "read_crossings"]
