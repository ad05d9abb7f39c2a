"""The D_J stage of `fit all`: fit the data-efficiency laws to the best-tuned crossings, refit
every seed-bootstrap resample (per env, shared exponents jointly, median normalisation redone
per resample), and turn the refits into SEs, 90% percentile intervals and prediction intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pql_jax.scaling.curves import nanstd
from pql_jax.scaling.datafit import bootstrap_refit, bootstrap_refits, fit_data_efficiency, joint_bootstrap_refit
from pql_jax.scaling.diagnostics import law_flags
from pql_jax.scaling.ordering import ordered_refit
from pql_jax.scaling.powerlaw import percentile_interval


def fit_data_stage(res, cells: pd.DataFrame, Dc: np.ndarray) -> None:
    """D_J fits (``res.objects['data']``), their bootstrap refits (``res.objects['data_boot']``:
    (group, level) -> log parameters (R, p)), predictions with intervals, and flags."""
    cfg = res.config
    fit, pred = fit_data_efficiency(cells, shared=cfg.shared, normalise=cfg.normalise, targets=cfg.targets)
    res.objects["data"] = fit
    res.notes += fit.notes
    boot = res.objects["data_boot"] = {}
    if Dc.shape[1] > 2:
        for lv, lf in fit.fits.items():
            envs = [e for e in fit.thresholds[lv] if e not in fit.order_fits]
            rows = pred[(pred["level"] == lv) & np.isfinite(pred["data"]) & pred["env"].isin(envs)]
            D_r = Dc[rows.index.to_numpy() // Dc.shape[2], 1:, lv].T  # (resamples, points)
            for g, theta in (_refits(fit, lf, rows, D_r) if len(rows) else {}).items():
                _store(boot, lf, g, lv, theta)
        for env, of in fit.order_fits.items():
            rows = pred[(pred["env"] == env) & pred["level"].isin(of["levels"]) & np.isfinite(pred["data"])]
            D_r = Dc[rows.index.to_numpy() // Dc.shape[2], 1:, rows["level"].to_numpy()].T
            for lv, theta in _ordered_refits(fit, of, rows, D_r).items():
                _store(boot, fit.fits[lv], env, lv, theta)
    for lv, lf in fit.fits.items():
        J = next(iter(fit.thresholds[lv].values()))
        res.flags += law_flags(f"D_J law, level {lv} (J={J:.4g})", lf)
    res.flags += fit.flags
    res.tables["predictions"] = with_intervals(res, pred)
    res.fits["fit"] = fit.to_dict()


def _store(boot: dict, lf, g, lv, theta: np.ndarray) -> None:
    """Keep one group's refits and set its bootstrap SEs and 90% intervals."""
    boot[(g, lv)] = theta
    vals = np.exp(theta[np.isfinite(theta).all(1)])
    if len(vals) > 1:
        lo, hi = percentile_interval(vals)
        lf.bootstrap_se[g] = dict(zip(lf.law.params, nanstd(vals, axis=0).tolist()))
        lf.interval[g] = {p: [float(a), float(b)] for p, a, b in zip(lf.law.params, lo, hi)}


def _ordered_refits(fit, of: dict, rows: pd.DataFrame, D_r: np.ndarray) -> dict:
    """level -> refitted log parameters of one env's ordered joint fit (every resample refitted
    with the same order constraints)."""
    law, levels = fit.law, of["levels"]
    lx = {k: np.log(rows[k].to_numpy(float)) for k in law.inputs}
    codes = pd.Categorical(rows["level"], categories=levels).codes
    with np.errstate(all="ignore"):
        theta = ordered_refit(law, lx, np.log(D_r), codes, len(levels), of["theta"])
    return {lv: theta[:, j] for j, lv in enumerate(levels)}


def _refits(fit, lf, rows: pd.DataFrame, D_r: np.ndarray) -> dict:
    """group -> refitted log parameters, the way the main fit was made."""
    law = lf.law
    if fit.normalise == "median":  # the normalisation is part of the estimate: redo it per resample
        with np.errstate(all="ignore"):
            overall = np.nanmedian(D_r, axis=1, keepdims=True)
            env_med = np.empty_like(D_r)
            for env in rows["env"].unique():
                m = (rows["env"] == env).to_numpy()
                env_med[:, m] = np.nanmedian(D_r[:, m], axis=1, keepdims=True)
        lx = {k: np.log(rows[k].to_numpy(float)) for k in law.inputs}
        return {"all": bootstrap_refit(lf, "all", lx, np.log(D_r * overall / env_med))}
    if lf.shared:
        return joint_bootstrap_refit(lf, rows, np.log(D_r))
    parts = {}
    for env in lf.params:
        m = (rows["env"] == env).to_numpy()
        parts[env] = ({k: np.log(rows[k].to_numpy(float)[m]) for k in law.inputs}, np.log(D_r[:, m]))
    return bootstrap_refits(lf, parts)


def boot_log_params(res, env, level) -> np.ndarray | None:
    """Bootstrap log parameters (R, p) of one env's D_J law at a level (median-normalised
    fits: the pooled refits rescaled to the env), or None without a bootstrap."""
    fit, boot = res.objects["data"], res.objects.get("data_boot", {})
    if (env, level) in boot:
        return boot[(env, level)]
    if ("all", level) in boot and (level, env) in fit.scale:
        theta = boot[("all", level)].copy()
        theta[:, 0] += np.log(fit.scale[(level, env)])
        return theta
    return None


def boot_predict(res, env, level, **inputs) -> np.ndarray | None:
    """Bootstrap predictions of D_J (resamples x points), or None."""
    theta = boot_log_params(res, env, level)
    if theta is None:
        return None
    law = res.objects["data"].law
    theta = theta[np.isfinite(theta).all(1)]
    lx = {k: np.log(np.atleast_1d(np.asarray(inputs[k], float)))[None, :] for k in law.inputs}
    return np.exp(law.log_predict(lx, [theta[:, j:j + 1] for j in range(theta.shape[1])]))


def with_intervals(res, pred: pd.DataFrame) -> pd.DataFrame:
    """``pred`` with ``data_fit_lo`` / ``data_fit_hi``: the 90% percentile interval of the
    bootstrap refits' prediction at each row (NaN without a bootstrap)."""
    law = res.objects["data"].law
    lo, hi = np.full(len(pred), np.nan), np.full(len(pred), np.nan)
    for (env, lv), idx in pred.groupby(["env", "level"]).indices.items():
        sub = pred.iloc[idx]
        b = boot_predict(res, env, lv, **{k: sub[k].to_numpy(float) for k in law.inputs})
        if b is not None and len(b) > 1:
            lo[idx], hi[idx] = percentile_interval(b)
    return pred.assign(data_fit_lo=lo, data_fit_hi=hi)
