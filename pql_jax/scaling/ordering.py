"""Ordering of the D_J laws in the threshold J: reaching a higher return never takes less data,
so D_J(x) must not fall as J rises at any input x a prediction uses.

The rule (``order_levels``), per env:

1. The checked range is, per input (utd, and model_size for the (sigma, N) law), the span of
   the env's fitted points together with every prediction target given (``targets``, e.g. the
   workflow's verification UTD), on a dense log grid (``GRID`` points per input).
2. Laws fitted per level that keep D_J non-decreasing in J over that grid are kept as they are.
3. Where they cross, the env's levels are refitted jointly as an *ordered* fit: the exponents
   shared across levels and every coefficient of D_J = d + c_1 x_1^-e_1 (+ c_2 x_2^-e_2)
   non-decreasing in J (d = d_min, c = d_min b^a), which keeps D_J ordered at every input. The
   ordered fit is used when the data allow it: the extra-sum-of-squares F-test of
   ``optimum.sharing_check`` against the per-level fits (its constraints counted as the shared
   exponents plus the order constraints that bind) does not reject it. Its log-loss and AICc
   are recorded next to those of the per-level fits.
4. Otherwise (or with exponents shared across envs or median normalisation, whose levels are
   not fitted per env) the per-level laws stay, the crossing is flagged, and predictions of the
   crossing levels inside the crossing region are refused (``refusal``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from pql_jax.scaling.fit import _EXP_BOUNDS, hessian_se, joint_layout
from pql_jax.scaling.forms import aicc
from pql_jax.scaling.optimum import sharing_check

#: Points per input of the log grid on which the order is checked.
GRID = 200
#: (location, exponent, input) of each power term of a D_J law d (1 + sum (loc / x)^exp).
TERMS = {"data_sigma": (("b", "a", "utd"),),
         "data_sigma_n": (("a", "alpha", "utd"), ("b", "beta", "model_size"))}
QUANTITY = "D_J laws, order in J"


def check_range(law, rows: pd.DataFrame, targets: dict | None) -> dict:
    """input -> (lo, hi): the span of ``rows`` and of the targets' values of that input."""
    out = {}
    for k in law.inputs:
        vals = list(rows[k].to_numpy(float)) + [float(v) for v in np.atleast_1d((targets or {}).get(k, []))]
        vals = [v for v in vals if np.isfinite(v) and v > 0]
        out[k] = (float(min(vals)), float(max(vals)))
    return out


def grid_points(rng: dict) -> dict:
    """input -> flat array: the dense log grid over ``rng`` (all combinations for two inputs)."""
    n = GRID if len(rng) == 1 else int(np.sqrt(GRID * 8))
    axes = [np.geomspace(lo, hi, n) for lo, hi in rng.values()]
    mesh = np.meshgrid(*axes, indexing="ij")
    return {k: m.ravel() for k, m in zip(rng, mesh)}


def crossings(predict, levels: list, pts: dict, thresholds: dict) -> list[dict]:
    """The pairs of consecutive levels whose D_J falls as J rises somewhere on ``pts``:
    {levels, thresholds, input: [lo, hi] of the grid points where they cross}."""
    out = []
    for lo_lv, hi_lv in zip(levels[:-1], levels[1:]):
        bad = predict(hi_lv, pts) < predict(lo_lv, pts) * (1 - 1e-9)
        if bad.any():
            out.append({"levels": [int(lo_lv), int(hi_lv)], "thresholds": [thresholds[lo_lv], thresholds[hi_lv]],
                        **{k: [float(v[bad].min()), float(v[bad].max())] for k, v in pts.items()}})
    return out


def describe(region: dict, rng: dict) -> str:
    """Where a crossing lies in words, e.g. 'above utd 1.05' or 'for utd 0.1-0.3, model_size 1e4-3e4'."""
    parts = []
    for k, (lo, hi) in rng.items():
        a, b = region[k]
        if a <= lo * (1 + 1e-9) and b >= hi * (1 - 1e-9):
            parts.append(f"at every {k}")
        elif a <= lo * (1 + 1e-9):
            parts.append(f"below {k} {b:.3g}")
        elif b >= hi * (1 - 1e-9):
            parts.append(f"above {k} {a:.3g}")
        else:
            parts.append(f"for {k} {a:.3g}-{b:.3g}")
    return ", ".join(parts)


def _unpack(law, theta: np.ndarray, L: int):
    """Exponents (T,) and log coefficients (T + 1, L) of an ordered fit's vector: the exponents'
    logs, then per coefficient its level-0 log and the (>= 0) log steps to the next levels."""
    T = len(TERMS[law.name])
    return np.exp(theta[:T]), np.cumsum(theta[T:].reshape(T + 1, L), axis=1)


def _log_pred(law, theta: np.ndarray, lx: dict, codes: np.ndarray, L: int) -> np.ndarray:
    e, logc = _unpack(law, theta, L)
    parts = [logc[0][codes]] + [logc[1 + t][codes] - e[t] * lx[x] for t, (_, _, x) in enumerate(TERMS[law.name])]
    return np.logaddexp.reduce(np.stack(parts), axis=0)


def to_vector(law, params: list[dict]) -> np.ndarray:
    """An ordered fit's vector from per-level law parameters, made feasible: exponents at their
    median, every coefficient raised to the running maximum over the levels below."""
    terms = TERMS[law.name]
    e = np.array([np.median([p[ex] for p in params]) for _, ex, _ in terms])
    logc = [np.log([p["d_min"] for p in params])]
    logc += [logc[0] + e[t] * np.log([p[loc] for p in params]) for t, (loc, _, _) in enumerate(terms)]
    logc = np.maximum.accumulate(np.array(logc), axis=1)
    steps = np.concatenate([logc[:, :1], np.diff(logc, axis=1)], axis=1)
    return np.concatenate([np.log(e), steps.ravel()])


def to_params(law, theta: np.ndarray, L: int) -> list[dict]:
    """Per-level law parameters of an ordered fit's vector."""
    e, logc = _unpack(law, theta, L)
    out = []
    for j in range(L):
        p = {"d_min": float(np.exp(logc[0, j]))}
        for t, (loc, ex, _) in enumerate(TERMS[law.name]):
            p[loc], p[ex] = float(np.exp((logc[1 + t, j] - logc[0, j]) / e[t])), float(e[t])
        out.append({k: p[k] for k in law.params})
    return out


def _bounds(law, L: int) -> list:
    T = len(TERMS[law.name])
    return [_EXP_BOUNDS] * T + ([(None, None)] + [(0.0, None)] * (L - 1)) * (T + 1)


def ordered_fit(law, lx: dict, ly: np.ndarray, codes: np.ndarray, L: int, starts: list) -> tuple[np.ndarray, float]:
    """The ordered joint fit (vector, sum of squared log residuals) from the best of ``starts``."""
    def loss(th):
        r = ly - _log_pred(law, th, lx, codes, L)
        return float(r @ r)

    best = None
    for s in starts:
        res = minimize(loss, s, method="L-BFGS-B", bounds=_bounds(law, L),
                       options={"maxiter": 2000, "ftol": 1e-14, "gtol": 1e-10})
        if best is None or res.fun < best[1]:
            best = (res.x, float(res.fun))
    return best


def n_active(law, theta: np.ndarray, L: int) -> int:
    """Order constraints that bind (a coefficient equal to the level's below)."""
    T = len(TERMS[law.name])
    return int(np.sum(theta[T:].reshape(T + 1, L)[:, 1:] < 1e-8))


def ordered_refit(law, lx: dict, LY: np.ndarray, codes: np.ndarray, L: int, theta0: np.ndarray) -> np.ndarray:
    """Bootstrap refits of an ordered fit, from its optimum: per resample row of LY (NaN =
    missing point) the log law parameters of every level, (R, L, p); NaN rows where fewer points
    than parameters remain."""
    out = np.full((len(LY), L, len(law.params)), np.nan)
    for r, ly in enumerate(LY):
        m = np.isfinite(ly)
        if m.sum() < len(theta0) or len(np.unique(codes[m])) < L:
            continue
        th, _ = ordered_fit(law, {k: v[m] for k, v in lx.items()}, ly[m], codes[m], L, [theta0])
        out[r] = np.log([[p[k] for k in law.params] for p in to_params(law, th, L)])
    return out


def joint_se(law, lx: dict, ly: np.ndarray, codes: np.ndarray, params: list[dict]) -> list[dict]:
    """Hessian SEs of per-level parameters at an ordered fit, as a joint fit with the exponents
    shared across levels (the order constraints are not counted)."""
    L = len(params)
    index, per = joint_layout(law, codes, L, law.exponents)
    vec = np.empty(index.max() + 1)
    for j, p in enumerate(params):
        vec[per[j]] = np.log([p[k] for k in law.params])
    se = hessian_se(law, lx, ly, vec, index)
    return [{k: float(p[k] * s) for k, s in zip(law.params, se[per[j]])} for j, p in enumerate(params)]


def compare(law, n: int, L: int, sse_sep: float, sse_ord: float, theta: np.ndarray) -> dict:
    """The ordered fit against the per-level fits: log-losses, AICc, and the F-test verdict."""
    T = len(TERMS[law.name])
    p_sep, act = L * len(law.params), n_active(law, theta, L)
    p_ord = T + (T + 1) * L - act
    poor = sharing_check(sse_sep, sse_ord, n, p_sep, p_sep - p_ord, law.exponents)
    return {"loss_separate": sse_sep / n, "loss_ordered": sse_ord / n, "n": n,
            "aicc_separate": aicc(sse_sep, n, p_sep), "aicc_ordered": aicc(sse_ord, n, p_ord),
            "binding_constraints": act, "rejected": poor}


def order_levels(fit, train: pd.DataFrame, targets: dict | None = None) -> None:
    """Apply the module's rule (see the module docstring) to a ``DataEfficiencyFit`` in place:
    per env whose per-level laws cross, the ordered fit replaces them, or the crossing is
    flagged (``fit.flags``) and refused; ``fit.ordering`` records what was done, per env."""
    law = fit.law
    pooled = fit.normalise is not None or any(lf.shared for lf in fit.fits.values())
    for env in sorted({e for t in fit.thresholds.values() for e in t}):
        levels = sorted(lv for lv in fit.fits if env in fit.thresholds[lv])
        if len(levels) < 2:
            continue
        rows = train[(train["env"] == env) & train["level"].isin(levels)]
        rng = check_range(law, rows, targets)
        thr = {lv: fit.thresholds[lv][env] for lv in levels}
        cross = crossings(lambda lv, p: fit.predict(env, lv, **p), levels, grid_points(rng), thr)
        if not cross:
            continue
        where = "; ".join(f"J={c['thresholds'][1]:g} below J={c['thresholds'][0]:g} {describe(c, rng)}" for c in cross)
        rec = fit.ordering[env] = {"range": {k: list(v) for k, v in rng.items()}, "crossed": cross}
        if pooled:
            why = "levels fitted with exponents shared across envs or median normalisation are not refitted per env"
        else:
            why = _remedy(fit, env, levels, rows, rng, thr, rec)
        if why is None:
            c = rec["compare"]
            fit.notes.append(f"D_J levels of {env} crossed ({where}); refitted jointly with "
                             f"{', '.join(law.exponents)} shared across levels and D_J non-decreasing in J "
                             f"(log-loss {c['loss_ordered']:.4g} vs {c['loss_separate']:.4g} separate, AICc "
                             f"{c['aicc_ordered']:.4g} vs {c['aicc_separate']:.4g})")
            continue
        rec["refused"], rec["reason"] = cross, why
        problem = (f"levels cross ({where}): no ordered fit the data allow ({why}); predictions of these levels "
                   "there are refused")
        fit.flags.append({"quantity": QUANTITY, "group": env, "param": "", "problem": problem})
        fit.notes.append(f"D_J levels of {env} cross ({where}): {why}; predictions there are refused")


def _remedy(fit, env, levels, rows, rng, thr, rec) -> str | None:
    """Fit the env's levels as an ordered fit and use it (None) when the data allow it and it is
    ordered over the checked range; else why not."""
    law, L = fit.law, len(levels)
    lx = {k: np.log(rows[k].to_numpy(float)) for k in law.inputs}
    ly = np.log(rows["data"].to_numpy(float))
    codes = pd.Categorical(rows["level"], categories=levels).codes
    before = [fit.params(env, lv) for lv in levels]
    sse_sep = _sse(law, lx, ly, codes, before)
    starts = [to_vector(law, before)]
    starts.append(np.concatenate([np.log([np.max([p[ex] for p in before]) for _, ex, _ in TERMS[law.name]]),
                                  starts[0][len(TERMS[law.name]):]]))
    theta, sse = ordered_fit(law, lx, ly, codes, L, starts)
    comp = rec["compare"] = compare(law, len(ly), L, sse_sep, sse, theta)
    if comp["rejected"]:
        return f"the ordered joint fit is rejected: {comp['rejected']}"
    params = to_params(law, theta, L)
    left = crossings(lambda j, p: law.predict(params[j], **p), list(range(L)), grid_points(rng),
                     {j: thr[lv] for j, lv in enumerate(levels)})
    if left:  # rounding only: the coefficients are ordered by construction
        return "the ordered joint fit still crosses"
    se = joint_se(law, lx, ly, codes, params)
    for j, lv in enumerate(levels):
        lf = fit.fits[lv]
        lf.params[env], lf.se[env] = params[j], se[j]
        lf.flags = [f for f in lf.flags if f.get("group") != env]
    rec["remedy"] = (f"ordered joint fit: {', '.join(law.exponents)} shared across levels, coefficients "
                     "non-decreasing in J")
    rec["params"] = {str(lv): p for lv, p in zip(levels, params)}
    fit.order_fits[env] = {"levels": levels, "theta": theta}
    return None


def _sse(law, lx, ly, codes, params: list[dict]) -> float:
    pred = np.empty_like(ly)
    for j, p in enumerate(params):
        m = codes == j
        pred[m] = law.log_predict({k: v[m] for k, v in lx.items()}, [np.log(p[k]) for k in law.params])
    return float(np.sum((ly - pred) ** 2))


def refusal(fit, env, level, **inputs) -> str | None:
    """Why a prediction of D_J for (env, level) at ``inputs`` is refused, or None: inside a
    flagged crossing region of that level, or where the env's laws are out of order in J at
    these inputs themselves (a point beyond the range checked at fit time)."""
    reasons = refused_points(fit, env, level, **inputs)
    return next((r for r in reasons if r), None)


def refused_points(fit, env, level, **inputs) -> list:
    """Per input point (inputs broadcast together), why its prediction of D_J for (env, level)
    is refused ('' where it is not): the budget optima and Pareto frontiers reach beyond the
    fitted range, where per-level laws may cross although they are ordered inside it."""
    pts = {k: np.atleast_1d(np.asarray(inputs[k], float)) for k in fit.law.inputs}
    pts = dict(zip(pts, np.broadcast_arrays(*pts.values())))
    n = len(next(iter(pts.values())))
    out = [""] * n
    for c in (fit.ordering.get(env) or {}).get("refused", []):
        if level in c["levels"]:
            inside = np.logical_and.reduce([(v >= c[k][0]) & (v <= c[k][1]) for k, v in pts.items()])
            why = f"D_J at J={c['thresholds'][1]:g} falls below J={c['thresholds'][0]:g} there (laws cross)"
            out = [o or (why if hit else "") for o, hit in zip(out, inside)]
    levels = sorted(lv for lv in fit.fits if env in fit.thresholds.get(lv, {}))
    if level not in levels:
        return out
    i = levels.index(level)
    here = np.broadcast_to(fit.predict(env, level, **pts), (n,))
    for other in levels[max(i - 1, 0):i] + levels[i + 1:i + 2]:
        there = np.broadcast_to(fit.predict(env, other, **pts), (n,))
        low, high = (there, here) if other < level else (here, there)
        a, b = sorted([level, other])
        why = f"D_J at J={fit.thresholds[b][env]:g} falls below J={fit.thresholds[a][env]:g} at these inputs (laws cross)"
        out = [o or (why if hit else "") for o, hit in zip(out, high < low * (1 - 1e-9))]
    return out
