"""Data-efficiency laws D_J(sigma) and D_J(sigma, N), per env and threshold, with optional
exponents shared across envs or median normalisation (seed 001, appendix D), plus held-out
extrapolation checks and vectorised bootstrap refits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pql_jax.errors import UserError
from pql_jax.scaling.fit import LawFit, _bounds, fit_law, holdout_split, joint_layout, single_thread_blas
from pql_jax.scaling.laws import DATA_SIGMA, DATA_SIGMA_N, Law
from pql_jax.scaling.ordering import order_levels, refusal


@dataclass
class DataEfficiencyFit:
    """Fitted D_J per threshold level; ``predict(env, level, utd=..., model_size=...)``."""

    law: Law
    fits: dict  # level -> LawFit (groups: envs, or 'all' when median-normalised)
    thresholds: dict  # level -> {env: threshold}
    scale: dict  # (level, env) -> multiplier from median normalisation
    normalise: str | None
    loss: float
    n: int
    notes: list = field(default_factory=list)
    holdout: dict = field(default_factory=dict)
    ordering: dict = field(default_factory=dict)  # env -> what ``ordering.order_levels`` found and did
    order_fits: dict = field(default_factory=dict)  # env -> {levels, theta} of an ordered joint fit
    flags: list = field(default_factory=list)  # flag rows (quantity, group, param, problem) of the ordering

    def params(self, env, level) -> dict:
        """Law parameters for one env and level (d_min already rescaled to the env)."""
        fit = self.fits[level]
        p = dict(fit.params[env if env in fit.params else "all"])
        p["d_min"] *= self.scale.get((level, env), 1.0)
        return p

    def predict(self, env, level, **inputs) -> np.ndarray:
        """Predicted env steps to reach the level's threshold."""
        return self.law.predict(self.params(env, level), **inputs)

    def refusal(self, env, level, **inputs) -> str | None:
        """Why a prediction at ``inputs`` is refused (levels out of order in J there), or None."""
        return refusal(self, env, level, **inputs)

    def to_dict(self) -> dict:
        """JSON-ready summary (fit.json); ``ordering`` only where levels crossed."""
        out = {"form": self.law.name, "formula": self.law.formula, "loss": self.loss, "n": self.n,
               "normalise": self.normalise, "notes": self.notes, "holdout": self.holdout,
               "levels": {str(lv): {"thresholds": self.thresholds[lv], **f.to_dict()}
                          for lv, f in self.fits.items()}}
        if self.ordering:
            out["ordering"] = self.ordering
        return out


def choose_law(df: pd.DataFrame) -> Law:
    """The (sigma, N) law when model_size varies, else the sigma law."""
    if "model_size" in df.columns and df["model_size"].nunique() > 1:
        return DATA_SIGMA_N
    return DATA_SIGMA


def add_levels(df: pd.DataFrame) -> pd.DataFrame:
    """Add a ``level`` column: the rank of the threshold within each env (0 if none)."""
    df = df.copy()
    if "level" in df.columns:
        df["level"] = df["level"].astype(int)
    elif "threshold" in df.columns:
        df["level"] = df.groupby("env")["threshold"].rank(method="dense").astype(int) - 1
    else:
        df["level"] = 0
    if "threshold" not in df.columns:
        df["threshold"] = np.nan
    return df


def _check_fittable(sub: pd.DataFrame, law: Law) -> str | None:
    """Why a (env, level) subset cannot fix the law, or None."""
    for col in law.inputs:
        vals = sorted(sub[col].unique())
        if len(vals) < 3:
            return (f"a law needs at least 3 distinct {col} values, found "
                    f"{', '.join(f'{v:g}' for v in vals) or 'none'}")
    if len(sub) < len(law.params):
        return f"{len(sub)} points cannot fix {len(law.params)} parameters"
    return None


def _median_scale(df: pd.DataFrame) -> pd.Series:
    """Per-row multiplier D_med(env) / D_med(all) of the median normalisation."""
    env_med = df.groupby("env")["data"].transform("median")
    return env_med / df["data"].median()


def fit_data_efficiency(crossings: pd.DataFrame, shared: bool = False, normalise: str | None = None,
                        holdout: str | None = None,
                        targets: dict | None = None) -> tuple[DataEfficiencyFit, pd.DataFrame]:
    """Fit D_J per env and threshold level; returns the fit and the input rows with
    ``data_fit`` (and ``held_out``). ``normalise='median'`` pools envs after dividing by each
    env's median; ``shared`` shares the exponents across envs. The levels' laws are then kept
    ordered in J over the fitted range and ``targets`` (input -> values predictions will use,
    e.g. ``{"utd": [2.0]}``) by ``ordering.order_levels``: refitted as an ordered joint fit
    where they cross, or flagged and refused there."""
    df = add_levels(crossings)
    usable = df[np.isfinite(df["data"])]
    if usable.empty:
        raise UserError("no threshold is reached by any run: no crossings to fit")
    law = choose_law(usable)
    train, _ = holdout_split(usable, holdout)
    fits, thresholds, scale, notes, total, n = {}, {}, {}, [], 0.0, 0
    if len(usable) < len(df):
        notes.append(f"{len(df) - len(usable)} crossings not reached, left out of the fits")
    reasons = []
    for level, sub in train.groupby("level"):
        keep = []
        for env, es in sub.groupby("env"):
            why = _check_fittable(es, law)
            (reasons.append(f"env {env} level {level}: {why}") if why else keep.append(env))
        sub = sub[sub["env"].isin(keep)]
        if sub.empty:
            continue
        thresholds[level] = {e: float(t) for e, t in sub.groupby("env")["threshold"].first().items()}
        if normalise == "median":
            m = _median_scale(sub)
            scale.update({(level, e): float(v) for e, v in m.groupby(sub["env"]).first().items()})
            sub = sub.assign(data=sub["data"] / m, env="all")
        with single_thread_blas():
            fits[level] = fit_law(law, sub, shared=law.exponents if shared else ())
        total += fits[level].loss * fits[level].n
        n += fits[level].n
    if not fits:
        raise UserError(reasons[0] if reasons else "nothing to fit")
    notes += [f"skipped {r}" for r in reasons]
    result = DataEfficiencyFit(law, fits, thresholds, scale, normalise, total / n, n, notes)
    order_levels(result, train, targets)
    if result.order_fits:
        _refresh_losses(result, train)
    pred = predictions(result, df)
    if holdout:
        pred["held_out"] = df.index.isin(usable.index.difference(train.index))
        result.holdout = holdout_errors(pred, holdout)
    return result, pred


def _refresh_losses(fit: DataEfficiencyFit, train: pd.DataFrame) -> None:
    """Each level's loss (and the total) from its current parameters (after an ordered refit)."""
    total = 0.0
    for lv, lf in fit.fits.items():
        rows = train[(train["level"] == lv) & train["env"].isin(lf.params)]
        pred = np.concatenate([fit.predict(e, lv, **{k: g[k].to_numpy(float) for k in fit.law.inputs})
                               for e, g in rows.groupby("env", sort=False)])
        ly = np.concatenate([np.log(g["data"].to_numpy(float)) for _, g in rows.groupby("env", sort=False)])
        lf.loss = float(np.mean((ly - np.log(pred)) ** 2))
        total += lf.loss * lf.n
    fit.loss = total / fit.n


def predictions(fit: DataEfficiencyFit, df: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``df`` with a ``data_fit`` column (NaN where no fit covers the row)."""
    out = df.copy()
    vals = np.full(len(df), np.nan)
    for i, row in enumerate(df.itertuples(index=False)):
        r = row._asdict()
        if r["level"] in fit.fits and (r["env"] in fit.fits[r["level"]].params or fit.normalise):
            if fit.normalise and (r["level"], r["env"]) not in fit.scale:
                continue
            vals[i] = fit.predict(r["env"], r["level"], **{k: r[k] for k in fit.law.inputs})[()]
    out["data_fit"] = vals
    return out


def holdout_errors(pred: pd.DataFrame, expr: str) -> dict:
    """Prediction error on the held-out rows: mean |log error| and max relative error."""
    h = pred[pred["held_out"] & np.isfinite(pred["data_fit"]) & np.isfinite(pred["data"])]
    if h.empty:
        return {"expr": expr, "n": 0}
    rel = h["data_fit"] / h["data"] - 1
    return {"expr": expr, "n": int(len(h)), "mean_abs_log_error": float(np.mean(np.abs(np.log1p(rel)))),
            "max_abs_rel_error": float(np.max(np.abs(rel)))}


def bootstrap_refit(fit: LawFit, group, lx: dict, LY: np.ndarray, iters: int = 30) -> np.ndarray:
    """Log parameters (R, p) refitted to every resample row of LY (NaN = missing point), for
    one group of ``fit`` (its own parameters; see ``joint_bootstrap_refit`` for shared ones)."""
    law = fit.law
    theta0 = np.log([fit.params[group][p] for p in law.params])
    index = np.repeat(np.arange(len(theta0))[:, None], LY.shape[1], axis=1)
    return batched_lm(law, lx, LY, theta0, index, iters)


def joint_bootstrap_refit(fit: LawFit, df: pd.DataFrame, LY: np.ndarray, group: str = "env",
                          iters: int = 30) -> dict:
    """Refit a fit with shared exponents to every resample row of LY (columns: rows of ``df``)
    jointly over its groups; returns group -> log parameters (R, p)."""
    law, groups = fit.law, list(fit.params)
    codes = pd.Categorical(df[group], categories=groups).codes
    index, per_group = joint_layout(law, codes, len(groups), fit.shared)
    theta0 = np.empty(index.max() + 1)
    for gi, g in enumerate(groups):
        theta0[per_group[gi]] = np.log([fit.params[g][p] for p in law.params])
    lx = {k: np.log(df[k].to_numpy(float)) for k in law.inputs}
    vec = batched_lm(law, lx, LY, theta0, index, iters)
    return {g: vec[:, per_group[gi]] for gi, g in enumerate(groups)}


def bootstrap_refits(fit: LawFit, parts: dict, iters: int = 30) -> dict:
    """``bootstrap_refit`` of several groups, ``parts``: group -> (lx, LY); returns group -> log
    parameters (R, p), the same numbers as one call per group.

    Groups whose points have the same inputs (the same UTDs, sizes) are refitted in one
    ``batched_lm`` pass, their resample rows stacked under the shared inputs: every operation
    there is per row, so each row's numbers are those of its group's own call (35 calls were
    mostly numpy call overhead). Inputs are never tiled per row: that changed the last bits of
    some refits of the (sigma, N) law."""
    law, out, classes = fit.law, {}, {}
    for g, (lx, _) in parts.items():
        classes.setdefault(tuple(np.asarray(lx[k], float).tobytes() for k in law.inputs), []).append(g)
    for same in classes.values():
        if len(same) == 1:
            out[same[0]] = bootstrap_refit(fit, same[0], *parts[same[0]], iters)
            continue
        lx, LYs = parts[same[0]][0], [parts[g][1] for g in same]
        q, n = len(law.params), LYs[0].shape[1]
        index = np.repeat(np.arange(q)[:, None], n, axis=1)
        lo, hi = _box(law, lx, index, q)
        theta = np.vstack([np.tile(np.log([fit.params[g][p] for p in law.params]), (len(LY), 1))
                           for g, LY in zip(same, LYs)])
        ends = np.cumsum([0] + [len(LY) for LY in LYs])
        blocks = [slice(a, b) for a, b in zip(ends[:-1], ends[1:])]
        theta = _lm(law, lx, np.vstack(LYs), theta, lo, hi, index, iters, blocks)
        out.update({g: theta[b] for g, b in zip(same, blocks)})
    return {g: out[g] for g in parts}


def _box(law: Law, lx: dict, index: np.ndarray, q: int):
    """Bounds (q,) on the parameter vector: the main fit's box (``_bounds``); scales unbounded."""
    box = _bounds(law, law.grid(lx))
    lo, hi = np.full(q, -np.inf), np.full(q, np.inf)
    for i in range(1, len(law.params)):  # entry 0 of a law is its scale: unbounded
        lo[np.unique(index[i])], hi[np.unique(index[i])] = box[i - 1]
    return lo, hi


def batched_lm(law: Law, lx: dict, LY: np.ndarray, theta0: np.ndarray, index: np.ndarray,
               iters: int = 30) -> np.ndarray:
    """Parameter vectors (R, q) minimising the squared log residuals of every row of LY, from
    ``theta0``; ``index`` (law params x points) maps each law parameter at each point to a
    vector entry (shared exponents point to one entry for every group).

    Written by hand as a batched Levenberg-Marquardt on the log residuals: resamples sit close
    to the main fit's optimum, and running thousands of tiny fits through scipy's per-problem
    optimisers costs seconds where this costs milliseconds. Parameters stay in the main fit's
    box (no runaway along ridges); rows with fewer points than parameters are NaN.
    """
    R, q = len(LY), len(theta0)
    lo, hi = _box(law, lx, index, q)
    return _lm(law, lx, LY, np.tile(np.asarray(theta0, float), (R, 1)), lo, hi, index, iters, [slice(None)])


def _lm(law: Law, lx: dict, LY: np.ndarray, theta: np.ndarray, lo, hi, index: np.ndarray, iters: int,
        blocks: list) -> np.ndarray:
    """The iterations of ``batched_lm`` from starts ``theta`` (R, q) within [lo, hi]; a singular
    step falls back to the pseudo-inverse for the rows of its block (one caller's group)."""
    W = np.isfinite(LY).astype(float)
    LY = np.where(W > 0, LY, 0.0)
    q = theta.shape[1]

    def resid(th):
        return W * (LY - law.log_predict(lx, [th[:, idx] for idx in index]))

    r = resid(theta)
    loss = (r ** 2).sum(1)
    lam = np.full(len(LY), 1e-3)
    eye = np.eye(q)
    for _ in range(iters):
        jac = np.stack([(resid(theta + 1e-6 * e) - r) / 1e-6 for e in eye], axis=-1)  # (R, n, q)
        A = np.einsum("rni,rnj->rij", jac, jac)
        g = np.einsum("rni,rn->ri", jac, r)
        A_damped = A + lam[:, None, None] * (np.einsum("rii->ri", A)[:, :, None] * eye + 1e-12 * eye)
        step = np.empty_like(theta)
        for b in blocks if len(blocks) > 1 else [slice(None)]:
            try:
                step[b] = -np.linalg.solve(A_damped[b], g[b][..., None])[..., 0]
            except np.linalg.LinAlgError:  # a resample whose points cannot move some parameter
                step[b] = -np.einsum("rij,rj->ri", np.linalg.pinv(A_damped[b]), g[b])
        cand = np.clip(theta + step, lo, hi)
        rc = resid(cand)
        lc = (rc ** 2).sum(1)
        better = lc < loss
        theta[better], r[better], loss[better] = cand[better], rc[better], lc[better]
        lam = np.where(better, lam / 3, lam * 4)
    theta[W.sum(1) < q] = np.nan
    return theta
