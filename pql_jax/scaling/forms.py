"""Model comparison for B*(sigma), eta*(sigma): the pure power law y = coef sigma^-slope against
the offset form y = c (1 + (b / sigma)^a) (seed 001, eqs. D.2 / D.3), by AICc on the log
residuals and by leave-one-out prediction error."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pql_jax.errors import UserError
from pql_jax.scaling.fit import LawFit, fit_law, single_thread_blas
from pql_jax.scaling.laws import OFFSET_POWER
from pql_jax.scaling.powerlaw import PowerFit, fit_fixed_effects


def aicc(sse: float, n: int, k: int) -> float:
    """Akaike's criterion with the small-sample correction for a least-squares fit with k
    parameters (Gaussian log residuals); NaN when n <= k + 1 (undefined)."""
    if n <= k + 1 or not sse > 0:
        return float("nan")
    return float(n * np.log(sse / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1))


def _offset_fit(df: pd.DataFrame, y: str, shared: bool) -> LawFit:
    with single_thread_blas():
        return fit_law(OFFSET_POWER, df, y=y, shared=("a",) if shared else ())


def _n_params(form: str, groups: int, shared: bool) -> int:
    if form == "power":
        return groups + (1 if shared else groups)
    return 2 * groups + (1 if shared else groups)


def _predict(form: str, fit, env: str, utd) -> np.ndarray:
    return fit.predict(env, utd) if form == "power" else fit.predict(env, utd=utd)


def compare_forms(df: pd.DataFrame, y: str, power: PowerFit) -> dict:
    """Fit the offset form to the points of ``power`` (table with env, utd, y) and compare the
    two forms: loss, AICc (lower is better) and leave-one-out mean |log error| (held-out rows
    refitted without them). Returns a JSON-ready dict with the offset fit, or the reason it
    could not be fitted."""
    shared = power.shared and df["env"].nunique() > 1
    try:
        offset = _offset_fit(df, y, shared)
    except UserError as exc:
        return {"offset": None, "reason": str(exc)}
    G, n = df["env"].nunique(), len(df)
    ly = np.log(df[y].to_numpy(float))
    out = {"offset": offset.to_dict(), "forms": {}}
    for form, fit in (("power", power), ("offset", offset)):
        pred = np.array([float(_predict(form, fit, e, u)) for e, u in zip(df["env"], df["utd"])])
        sse = float(np.sum((ly - np.log(pred)) ** 2))
        k = _n_params(form, G, shared)
        out["forms"][form] = {"loss": sse / n, "n_params": k, "aicc": aicc(sse, n, k),
                              "loo_mean_abs_log_error": _loo(df, y, form, shared)}
    a, b = out["forms"]["power"], out["forms"]["offset"]
    crit = "aicc" if np.isfinite(a["aicc"]) and np.isfinite(b["aicc"]) else "loo_mean_abs_log_error"
    if np.isfinite(a[crit]) and np.isfinite(b[crit]):
        out["preferred"], out["criterion"] = ("offset" if b[crit] < a[crit] else "power"), crit
    else:
        out["preferred"], out["criterion"] = None, "too few points to compare (AICc and leave-one-out undefined)"
    return out


#: Leave-one-out refits are made up to this many points (beyond, AICc alone: the refits of a
#: shared offset fit cost ~0.1 s each).
MAX_LOO_POINTS = 12


def _loo(df: pd.DataFrame, y: str, form: str, shared: bool) -> float:
    """Leave-one-out mean |log error|; NaN when a fold leaves a group too few points or the
    table is larger than ``MAX_LOO_POINTS``."""
    if len(df) > MAX_LOO_POINTS:
        return float("nan")
    errs = []
    for i in range(len(df)):
        train, test = df.drop(df.index[i]), df.iloc[i]
        if (train["env"] == test["env"]).sum() < (2 if form == "power" else 3):
            return float("nan")
        try:
            fit = fit_fixed_effects(train, y, shared=shared) if form == "power" else _offset_fit(train, y, shared)
        except UserError:
            return float("nan")
        errs.append(abs(float(np.log(_predict(form, fit, test["env"], test["utd"]) / test[y]))))
    return float(np.mean(errs))
