"""Fitting engine: brute-force grid of starts, then L-BFGS-B on the mean squared log error.

The scale parameter of every law enters log y additively, so for any other parameters its best
value is the mean log residual; the engine profiles it out (exactly) and searches only the shape
parameters, which makes the brute-force grid small enough to cover the space densely.
Parameter uncertainty comes from the Gauss-Newton Hessian of the log loss (``se``) and, in the
pipeline, from refitting every bootstrap resample (``bootstrap_se``).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from pql_jax.errors import UserError
from pql_jax.scaling.laws import LAWS, Law
from pql_jax.scaling.optimum import check_optimum, sharing_check
from pql_jax.scaling.powerlaw import (PowerFit, design_matrix, fit_fixed_effects,  # noqa: F401 - re-exported
                                      fixed_effects_bootstrap)

_EXP_BOUNDS = (np.log(0.005), np.log(10.0))


@contextlib.contextmanager
def single_thread_blas():
    """Run the block with OpenBLAS limited to one thread.

    Written by hand (threadpoolctl does this but is not a dependency): L-BFGS-B makes many
    tiny BLAS calls, and waking OpenBLAS worker threads for each made fits 5-8x slower on a
    2-core machine. A no-op where the libraries cannot be found.
    """
    handles = []
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/maps") as fh:
                paths = sorted({ln.split()[-1] for ln in fh if "openblas" in ln.lower() and "/" in ln})
            for path in paths:
                lib = ctypes.CDLL(path)
                for suffix in ("64_", ""):
                    get = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
                    put = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
                    if get is not None and put is not None:
                        handles.append((put, get()))
                        put(1)
                        break
        except OSError:
            pass
    try:
        yield
    finally:
        for put, n in handles:
            put(n)


@dataclass
class LawFit:
    """A fitted law: per-group parameters (shared ones equal), their SEs, and the loss."""

    law: Law
    params: dict  # group -> {param: value}
    se: dict  # group -> {param: standard error}
    loss: float  # mean over points of (log y - log yhat)^2
    n: int
    shared: tuple = ()
    bootstrap_se: dict = field(default_factory=dict)
    interval: dict = field(default_factory=dict)  # group -> {param: [lo, hi]} (bootstrap percentiles)
    flags: list = field(default_factory=list)  # dicts: group, param, problem (see diagnostics.py)

    def predict(self, group, **inputs) -> np.ndarray:
        """Predicted y for one group at the given inputs."""
        return self.law.predict(self.params[group], **inputs)

    @classmethod
    def from_dict(cls, d: dict) -> "LawFit":
        """The fit that ``to_dict`` describes (laws of ``laws.LAWS``; JSON null is NaN)."""
        if d.get("form") not in LAWS:
            raise UserError(f"unknown law {d.get('form')!r} in a fit file; known: {', '.join(LAWS)}")
        num = lambda v: float("nan") if v is None else float(v)  # noqa: E731
        table = lambda t: {g: {k: num(v) for k, v in p.items()} for g, p in (t or {}).items()}  # noqa: E731
        return cls(LAWS[d["form"]], table(d["params"]), table(d.get("se")), num(d.get("loss")), int(d.get("n") or 0),
                   tuple(d.get("shared") or ()), table(d.get("bootstrap_se")),
                   {g: {k: [num(x) for x in v] for k, v in p.items()} for g, p in (d.get("interval") or {}).items()},
                   [dict(f) for f in d.get("flags") or []])

    def for_groups(self, groups) -> "LawFit":
        """This fit of one group applied to each of ``groups`` (a law fitted on one env's sweep)."""
        if len(self.params) != 1:
            raise UserError(f"{self.law.name} law has fits for {len(self.params)} groups; expected one to share")
        (g,) = self.params
        per = lambda t: {h: t[g] for h in groups} if g in t else {}  # noqa: E731
        return LawFit(self.law, per(self.params), per(self.se), self.loss, self.n, self.shared,
                      per(self.bootstrap_se), per(self.interval),
                      [{**f, "group": h} for f in self.flags if f.get("group") == g for h in groups]
                      + [dict(f) for f in self.flags if f.get("group") != g])

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        out = {"form": self.law.name, "formula": self.law.formula, "loss": self.loss, "n": self.n,
               "shared": list(self.shared), "params": self.params, "se": self.se}
        for key in ("bootstrap_se", "interval", "flags"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out


def _log_inputs(law: Law, df: pd.DataFrame) -> dict:
    return {k: np.log(df[k].to_numpy(float)) for k in law.inputs}


def _bounds(law: Law, grid: list) -> list:
    """Box bounds on log shape parameters: exponents in [0.005, 10], locations near the grid."""
    names = law.params[1:]
    return [_EXP_BOUNDS if n in law.exponents else (g.min() - 3.0, g.max() + 3.0)
            for n, g in zip(names, grid)]


def _profiled_loss(law, lx, ly, th_cols, codes=None, n_groups=1):
    """Mean squared log residual with each group's scale at its optimum; vectorised over starts."""
    r = ly - law.log_shape(lx, th_cols)
    if codes is None:
        rc = r - r.mean(axis=-1, keepdims=True)
    else:
        cnt = np.bincount(codes, minlength=n_groups)
        means = np.stack([np.bincount(codes, weights=row, minlength=n_groups) for row in np.atleast_2d(r)])
        rc = r - (means / cnt)[..., codes].reshape(r.shape)
    return (rc ** 2).mean(axis=-1)


def _grid_losses(law, lx, ly, grid):
    """Loss at every point of the brute-force grid (chunked to bound memory)."""
    pts = np.array(list(itertools.product(*grid)))
    losses = np.empty(len(pts))
    step = max(1, 4_000_000 // max(len(ly), 1))
    for i in range(0, len(pts), step):
        chunk = pts[i:i + step]
        cols = [chunk[:, j:j + 1] for j in range(chunk.shape[1])]
        losses[i:i + step] = _profiled_loss(law, lx, ly, cols)
    return pts, losses


def _lbfgsb(fun, x0, bounds):
    """L-BFGS-B from x0: (x, loss, problem) where problem is None or why the result is not an
    optimum (iteration limit, non-finite loss, floating-point errors, a line search that stopped
    with a large gradient). Floating-point errors are counted, not suppressed."""
    errors = []
    old = np.seterrcall(lambda kind, flag: errors.append(kind))
    try:
        with np.errstate(over="call", invalid="call", divide="call", under="ignore"):
            res = minimize(fun, x0, method="L-BFGS-B", bounds=bounds, jac=True,
                           options={"maxiter": 500, "ftol": 1e-13, "gtol": 1e-9})
    finally:
        np.seterrcall(old)
    problem = None
    if not np.isfinite(res.fun):
        problem = "non-finite loss"
    elif res.status == 1:
        problem = "iteration limit reached"
    elif res.status not in (0, 1):
        g = np.asarray(res.jac, float)
        lo, hi = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
        free = (res.x > lo + 1e-8) & (res.x < hi - 1e-8)
        if np.max(np.abs(g[free]), initial=0.0) > 1e-5:
            problem = f"L-BFGS-B stopped: {res.message}"
    if errors and problem is None:
        problem = f"{len(errors)} floating-point error(s) ({', '.join(sorted(set(errors)))})"
    return res.x, float(res.fun), problem


def _at_bounds(law: Law, x: np.ndarray, bounds: list) -> list[str]:
    """Names of the shape parameters sitting at their box bound (the optimum may lie outside)."""
    return [name for name, v, (lo, hi) in zip(law.params[1:], x, bounds) if min(v - lo, hi - v) < 1e-4]


def _with_gradient(loss_many):
    """(f, grad) by central differences, all 2p + 1 points in one vectorised loss call
    (scipy's own finite differences call the loss once per point, which dominates here)."""
    def fun(th):
        h = 1e-6
        eye = np.eye(len(th)) * h
        pts = np.vstack([th, th + eye, th - eye])
        f = loss_many(pts)
        p = len(th)
        return float(f[0]), (f[1:p + 1] - f[p + 1:]) / (2 * h)
    return fun


def fit_one(law: Law, lx: dict, ly: np.ndarray, starts=None, n_starts: int = 3, diag: dict | None = None):
    """Best log shape parameters and loss for one group: grid starts (or given ones) + L-BFGS-B.
    ``diag`` (a dict) receives ``at_bound`` (parameter names) and ``problem`` (optimiser)."""
    grid = law.grid(lx)
    bounds = _bounds(law, grid)
    cache = []

    def grid_losses():
        if not cache:
            cache.append(_grid_losses(law, lx, ly, grid))
        return cache[0]

    if starts is None:
        pts, losses = grid_losses()
        starts = pts[np.argsort(losses)[:n_starts]]

    fun = _with_gradient(lambda pts: _profiled_loss(law, lx, ly, [pts[:, j:j + 1] for j in range(pts.shape[1])]))
    best = min((_lbfgsb(fun, np.asarray(s, float), bounds) for s in starts), key=lambda t: t[1])
    best, checked = check_optimum(law, lx, ly, best, lambda s: _lbfgsb(fun, np.asarray(s, float), bounds),
                                  grid_losses)
    if diag is not None:
        diag.update(at_bound=_at_bounds(law, best[0], bounds), problem=best[2], **checked)
    scale = float(np.mean(ly - law.log_shape(lx, list(best[0]))))
    return np.concatenate([[scale], best[0]]), best[1]


def hessian_se(law: Law, lx: dict, ly: np.ndarray, theta: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
    """Standard errors of log parameters from the Gauss-Newton Hessian of the log loss; NaN
    when the fit is exactly determined (as many points as parameters: no residual to scale by).

    ``index`` (params x points) maps each law parameter at each point to an entry of ``theta``
    (a joint fit where some exponents are shared and the rest belong to each group)."""
    h = 1e-5
    if index is None:
        index = np.repeat(np.arange(len(theta))[:, None], len(ly), axis=1)

    def log_pred(th):
        return law.log_predict(lx, [th[i] for i in index])

    cols = []
    for j in range(len(theta)):
        e = np.zeros_like(theta)
        e[j] = h
        cols.append((log_pred(theta + e) - log_pred(theta - e)) / (2 * h))
    jac = np.stack(cols, axis=1)
    resid = ly - log_pred(theta)
    dof = len(ly) - len(theta)
    if dof <= 0:
        return np.full(len(theta), np.nan)
    cov = float(resid @ resid) / dof * np.linalg.pinv(jac.T @ jac)
    return np.sqrt(np.clip(np.diag(cov), 0, None))


def _public(law: Law, theta, se_theta) -> tuple[dict, dict]:
    vals = np.exp(theta)
    return ({p: float(v) for p, v in zip(law.params, vals)},
            {p: float(v * s) for p, v, s in zip(law.params, vals, se_theta)})


def joint_layout(law: Law, codes: np.ndarray, n_groups: int, shared: tuple) -> tuple[np.ndarray, list]:
    """The parameter vector of a joint fit over groups with some exponents shared:
    [scale per group, shared exponents, other shape parameters per group]. Returns ``index``
    (law params x points: the vector entry each parameter takes at each point) and, per
    group, the vector entries of its law parameters in ``law.params`` order."""
    names = law.params[1:]
    si = [names.index(s) for s in shared]
    oi = [i for i in range(len(names)) if i not in si]
    G, S = n_groups, len(si)
    per_group = []
    for g in range(G):
        entries = [g] + [0] * len(names)
        for k, i in enumerate(si):
            entries[1 + i] = G + k
        for k, i in enumerate(oi):
            entries[1 + i] = G + S + g * len(oi) + k
        per_group.append(entries)
    index = np.array(per_group)[np.asarray(codes)].T
    return index, per_group


def fit_law(law: Law, df: pd.DataFrame, y: str = "data", group: str = "env",
            shared: tuple = (), n_starts: int = 3) -> LawFit:
    """Fit ``law`` to ``df[y]`` per group, optionally sharing some exponents across groups.

    The fit's ``flags`` name parameters at a search bound, optimiser problems and exactly
    determined fits (no SE). A shared exponent gets one SE from the joint fit, equal in every group.
    """
    groups = list(pd.unique(df[group]))
    shared = tuple(s for s in shared if s in law.exponents) if len(groups) > 1 else ()
    thetas, total, flags = {}, 0.0, []
    for g in groups:
        sub = df[df[group] == g]
        if len(sub) <= len(law.params) - 1:
            raise UserError(f"{law.name}: {len(sub)} points for {g} cannot fix {len(law.params)} parameters")
        diag = {}
        thetas[g], loss = fit_one(law, _log_inputs(law, sub), np.log(sub[y].to_numpy(float)), n_starts=n_starts,
                                  diag=diag)
        flags += _diag_flags(g, diag if not shared else {"poor_fit": diag.get("poor_fit")})
        total += loss * len(sub)
    if shared:
        free_ssr = total
        thetas, total, diag = _fit_shared(law, df, y, group, groups, shared, thetas)
        diag["poor_fit"] = sharing_check(free_ssr, total, len(df), len(groups) * len(law.params),
                                         (len(groups) - 1) * len(shared), shared)
        flags += _diag_flags("all groups (joint fit)", diag)
    params, se = {}, {}
    if shared:
        codes = pd.Categorical(df[group], categories=groups).codes
        index, per_group = joint_layout(law, codes, len(groups), shared)
        vec = np.empty(index.max() + 1)
        for gi, g in enumerate(groups):
            vec[per_group[gi]] = thetas[g]
        se_vec = hessian_se(law, _log_inputs(law, df), np.log(df[y].to_numpy(float)), vec, index)
        for gi, g in enumerate(groups):
            params[g], se[g] = _public(law, thetas[g], se_vec[per_group[gi]])
    else:
        for g in groups:
            sub = df[df[group] == g]
            lx, ly = _log_inputs(law, sub), np.log(sub[y].to_numpy(float))
            params[g], se[g] = _public(law, thetas[g], hessian_se(law, lx, ly, thetas[g]))
    for g in groups:
        if not all(np.isfinite(v) for v in se[g].values()):
            flags.append({"group": g, "param": "", "problem": "exactly determined (as many points as parameters): "
                          "no uncertainty estimate"})
    return LawFit(law, params, se, float(total / len(df)), len(df), shared, flags=flags)


def _diag_flags(group, diag: dict) -> list[dict]:
    out = [{"group": group, "param": p, "problem": "at the search bound (the optimum may lie outside)"}
           for p in diag.get("at_bound", [])]
    if diag.get("problem"):
        out.append({"group": group, "param": "", "problem": f"optimiser: {diag['problem']}"})
    out += [{"group": group, "param": "", "problem": diag[k]} for k in ("local_optimum", "poor_fit") if diag.get(k)]
    return out


def _fit_shared(law, df, y, group, groups, shared, thetas):
    """Joint fit with exponents in ``shared`` common to all groups; starts from per-group fits."""
    names = law.params[1:]
    si = [names.index(s) for s in shared]
    oi = [i for i in range(len(names)) if i not in si]
    codes = pd.Categorical(df[group], categories=groups).codes
    lx, ly = _log_inputs(law, df), np.log(df[y].to_numpy(float))
    G = len(groups)

    def unpack(pts):  # (M, q) parameter vectors -> per law parameter an (M, n) array over the points
        full = [None] * len(names)
        for k, i in enumerate(si):
            full[i] = np.broadcast_to(pts[:, k:k + 1], (len(pts), len(ly)))
        per = pts[:, len(si):].reshape(len(pts), G, len(oi))
        for k, i in enumerate(oi):
            full[i] = per[:, codes, k]
        return full

    def many(pts):
        return np.atleast_1d(_profiled_loss(law, lx, ly, unpack(np.atleast_2d(pts)), codes, G))

    def one(v):
        return float(many(v)[0])

    fun = _with_gradient(many)

    per = np.array([[thetas[g][1 + i] for i in oi] for g in groups]).ravel()
    cand_shared = [np.array([thetas[g][1 + i] for g in groups]) for i in si]
    starts = [np.concatenate([[np.median(c) for c in cand_shared], per])]
    for vals in itertools.product(*[np.log(np.geomspace(0.1, 2.0, 6))] * len(si)):
        starts.append(np.concatenate([vals, per]))
    grid = law.grid(lx)
    bounds = [_bounds(law, grid)[i] for i in si] + [_bounds(law, grid)[i] for i in oi] * G
    losses = [one(s) for s in starts]
    best = min((_lbfgsb(fun, starts[j], bounds) for j in np.argsort(losses)[:3]), key=lambda t: t[1])
    at = {names[i] for i, (v, (lo, hi)) in zip(si + oi * G, zip(best[0], bounds)) if min(v - lo, hi - v) < 1e-4}
    out = {}
    for gi, g in enumerate(groups):
        th = np.empty(len(names))
        th[si] = best[0][:len(si)]
        th[oi] = best[0][len(si):].reshape(G, len(oi))[gi]
        m = codes == gi
        scale = float(np.mean(ly[m] - law.log_shape({k: v[m] for k, v in lx.items()}, list(th))))
        out[g] = np.concatenate([[scale], th])
    return out, best[1] * len(ly), {"at_bound": sorted(at), "problem": best[2]}


def refit(fit: LawFit, df: pd.DataFrame, y: str = "data", group: str = "env") -> dict:
    """Refit per group starting from ``fit``'s optimum (used for bootstrap resamples)."""
    out = {}
    for g, sub in df.groupby(group, sort=False):
        if g not in fit.params or len(sub) < len(fit.law.params):
            continue
        th0 = np.log([fit.params[g][p] for p in fit.law.params[1:]])
        theta, _ = fit_one(fit.law, _log_inputs(fit.law, sub), np.log(sub[y].to_numpy(float)), starts=[th0])
        out[g] = dict(zip(fit.law.params, np.exp(theta).tolist()))
    return out


def holdout_split(df: pd.DataFrame, expr: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into (fit, held out) by a pandas query such as 'utd>=8'."""
    if not expr:
        return df, df.iloc[:0]
    try:
        mask = df.eval(expr)
    except Exception as exc:  # pandas raises many types for a bad expression
        raise UserError(f"bad --holdout expression {expr!r}: {str(exc).splitlines()[0]}") from None
    if not isinstance(mask, pd.Series) or mask.dtype != bool:
        raise UserError(f"--holdout expression {expr!r} must compare columns, e.g. 'utd>=8'")
    if mask.all():
        raise UserError(f"--holdout {expr!r} holds out every row; nothing left to fit")
    return df[~mask], df[mask]
