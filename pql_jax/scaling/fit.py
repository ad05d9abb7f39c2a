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
from pql_jax.scaling.laws import Law

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

    def predict(self, group, **inputs) -> np.ndarray:
        """Predicted y for one group at the given inputs."""
        return self.law.predict(self.params[group], **inputs)

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        out = {"form": self.law.name, "formula": self.law.formula, "loss": self.loss, "n": self.n,
               "shared": list(self.shared), "params": self.params, "se": self.se}
        if self.bootstrap_se:
            out["bootstrap_se"] = self.bootstrap_se
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
    with np.errstate(all="ignore"):
        res = minimize(fun, x0, method="L-BFGS-B", bounds=bounds, jac=True,
                       options={"maxiter": 500, "ftol": 1e-13, "gtol": 1e-9})
    return res.x, float(res.fun)


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


def fit_one(law: Law, lx: dict, ly: np.ndarray, starts=None, n_starts: int = 3):
    """Best log shape parameters and loss for one group: grid starts (or given ones) + L-BFGS-B."""
    grid = law.grid(lx)
    bounds = _bounds(law, grid)
    if starts is None:
        pts, losses = _grid_losses(law, lx, ly, grid)
        starts = pts[np.argsort(losses)[:n_starts]]

    fun = _with_gradient(lambda pts: _profiled_loss(law, lx, ly, [pts[:, j:j + 1] for j in range(pts.shape[1])]))
    best = min((_lbfgsb(fun, np.asarray(s, float), bounds) for s in starts), key=lambda t: t[1])
    scale = float(np.mean(ly - law.log_shape(lx, list(best[0]))))
    return np.concatenate([[scale], best[0]]), best[1]


def hessian_se(law: Law, lx: dict, ly: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Standard errors of log parameters from the Gauss-Newton Hessian of the log loss."""
    h = 1e-5
    cols = []
    for j in range(len(theta)):
        e = np.zeros_like(theta)
        e[j] = h
        cols.append((law.log_predict(lx, theta + e) - law.log_predict(lx, theta - e)) / (2 * h))
    jac = np.stack(cols, axis=1)
    resid = ly - law.log_predict(lx, theta)
    s2 = float(resid @ resid) / max(len(ly) - len(theta), 1)
    cov = s2 * np.linalg.pinv(jac.T @ jac)
    return np.sqrt(np.clip(np.diag(cov), 0, None))


def _public(law: Law, theta, se_theta) -> tuple[dict, dict]:
    vals = np.exp(theta)
    return ({p: float(v) for p, v in zip(law.params, vals)},
            {p: float(v * s) for p, v, s in zip(law.params, vals, se_theta)})


def fit_law(law: Law, df: pd.DataFrame, y: str = "data", group: str = "env",
            shared: tuple = (), n_starts: int = 3) -> LawFit:
    """Fit ``law`` to ``df[y]`` per group, optionally sharing some exponents across groups."""
    groups = list(pd.unique(df[group]))
    shared = tuple(s for s in shared if s in law.exponents) if len(groups) > 1 else ()
    thetas, total = {}, 0.0
    for g in groups:
        sub = df[df[group] == g]
        if len(sub) <= len(law.params) - 1:
            raise UserError(f"{law.name}: {len(sub)} points for {g} cannot fix {len(law.params)} parameters")
        thetas[g], loss = fit_one(law, _log_inputs(law, sub), np.log(sub[y].to_numpy(float)), n_starts=n_starts)
        total += loss * len(sub)
    if shared:
        thetas, total = _fit_shared(law, df, y, group, groups, shared, thetas)
    params, se = {}, {}
    for g in groups:
        sub = df[df[group] == g]
        lx, ly = _log_inputs(law, sub), np.log(sub[y].to_numpy(float))
        params[g], se[g] = _public(law, thetas[g], hessian_se(law, lx, ly, thetas[g]))
    return LawFit(law, params, se, float(total / len(df)), len(df), shared)


def _fit_shared(law, df, y, group, groups, shared, thetas):
    """Joint fit with exponents in ``shared`` common to all groups; starts from per-group fits."""
    names = law.params[1:]
    si = [names.index(s) for s in shared]
    oi = [i for i in range(len(names)) if i not in si]
    codes = pd.Categorical(df[group], categories=groups).codes
    lx, ly = _log_inputs(law, df), np.log(df[y].to_numpy(float))
    G = len(groups)

    def unpack(v):
        full = np.empty((len(names), len(ly)))
        for k, i in enumerate(si):
            full[i] = v[k]
        per = v[len(si):].reshape(G, len(oi))
        for k, i in enumerate(oi):
            full[i] = per[codes, k]
        return list(full)

    def one(v):
        return float(_profiled_loss(law, lx, ly, unpack(v), codes, G))

    fun = _with_gradient(lambda pts: np.array([one(v) for v in pts]))

    per = np.array([[thetas[g][1 + i] for i in oi] for g in groups]).ravel()
    cand_shared = [np.array([thetas[g][1 + i] for g in groups]) for i in si]
    starts = [np.concatenate([[np.median(c) for c in cand_shared], per])]
    for vals in itertools.product(*[np.log(np.geomspace(0.1, 2.0, 6))] * len(si)):
        starts.append(np.concatenate([vals, per]))
    grid = law.grid(lx)
    bounds = [_bounds(law, grid)[i] for i in si] + [_bounds(law, grid)[i] for i in oi] * G
    losses = [one(s) for s in starts]
    best = min((_lbfgsb(fun, starts[j], bounds) for j in np.argsort(losses)[:3]), key=lambda t: t[1])
    out = {}
    for gi, g in enumerate(groups):
        th = np.empty(len(names))
        th[si] = best[0][:len(si)]
        th[oi] = best[0][len(si):].reshape(G, len(oi))[gi]
        m = codes == gi
        scale = float(np.mean(ly[m] - law.log_shape({k: v[m] for k, v in lx.items()}, list(th))))
        out[g] = np.concatenate([[scale], th])
    return out, best[1] * len(ly)


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


@dataclass
class PowerFit:
    """y = coef_g * x^(-slope) (= (beta_g / x)^slope), fitted as lines in log-log space."""

    y: str
    x: str
    slope: dict  # group -> slope (equal when shared)
    coef: dict  # group -> coefficient at x = 1
    slope_se: dict
    coef_se: dict
    loss: float
    n: int
    shared: bool
    bootstrap_se: dict = field(default_factory=dict)

    def predict(self, group, x) -> np.ndarray:
        """Predicted y for one group."""
        return self.coef[group] * np.asarray(x, float) ** (-self.slope[group])

    def beta(self, group) -> float:
        """The paper's beta in y = (beta / x)^alpha = coef^(1/slope): inf (or 0) when that
        overflows for a slope near 0, nan for a slope of exactly 0 (no such beta)."""
        s, c = self.slope[group], self.coef[group]
        if s == 0 or not c > 0:
            return float("nan")
        with np.errstate(over="ignore", under="ignore"):
            return float(np.exp(np.log(c) / s))

    def to_dict(self) -> dict:
        """JSON-ready summary (``PowerFit.from_dict`` reads it back)."""
        groups = list(self.coef)
        return {"form": "power", "formula": f"{self.y} = coef * {self.x}^(-slope) = (beta / {self.x})^slope",
                "y": self.y, "x": self.x, "shared_slope": self.shared, "loss": self.loss, "n": self.n,
                "params": {g: {"coef": self.coef[g], "slope": self.slope[g], "beta": self.beta(g)} for g in groups},
                "se": {g: {"coef": self.coef_se[g], "slope": self.slope_se[g]} for g in groups},
                **({"bootstrap_se": self.bootstrap_se} if self.bootstrap_se else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "PowerFit":
        """The fit that ``to_dict`` (or a ``fit*.json`` of a power law) describes."""
        y, x = d.get("y"), d.get("x")
        if y is None or x is None:  # written before y / x were stored: read them off the formula
            y, rhs = (part.strip() for part in d["formula"].split("=")[:2])
            x = rhs.split("*", 1)[1].split("^", 1)[0].strip()
        num = lambda v: float("nan") if v is None else float(v)  # noqa: E731 - JSON null is NaN
        params, se = d["params"], d.get("se") or {}
        pick = lambda table, key: {g: num((table.get(g) or {}).get(key)) for g in params}  # noqa: E731
        return cls(y, x, pick(params, "slope"), pick(params, "coef"), pick(se, "slope"), pick(se, "coef"),
                   num(d.get("loss")), int(d.get("n") or 0), bool(d.get("shared_slope", True)),
                   {k: {g: num(v) for g, v in per.items()} for k, per in (d.get("bootstrap_se") or {}).items()})

    def for_groups(self, groups) -> "PowerFit":
        """This fit of one group applied to each of ``groups`` (a law fitted on one env's sweep)."""
        if len(self.coef) != 1:
            raise UserError(f"{self.y}({self.x}) law has fits for {len(self.coef)} groups; expected one to share")
        (g,) = self.coef
        each = lambda d: {h: d[g] for h in groups}  # noqa: E731
        return PowerFit(self.y, self.x, each(self.slope), each(self.coef), each(self.slope_se), each(self.coef_se),
                        self.loss, self.n, self.shared,
                        {k: each(v) for k, v in self.bootstrap_se.items() if g in v})


def design_matrix(df: pd.DataFrame, x: str, group: str, groups: list) -> np.ndarray:
    """Columns: one indicator per group (intercepts), then -log x (the shared slope)."""
    codes = pd.Categorical(df[group], categories=groups).codes
    return np.column_stack([np.eye(len(groups))[codes], -np.log(df[x].to_numpy(float))])


def fit_fixed_effects(df: pd.DataFrame, y: str, x: str = "utd", group: str = "env",
                      shared: bool = True) -> PowerFit:
    """log y = c_g - slope * log x by least squares; slope shared across groups (fixed effects)
    or fitted per group."""
    groups = list(pd.unique(df[group]))
    if not shared:
        parts = [fit_fixed_effects(df[df[group] == g], y, x, group, True) for g in groups]
        n = sum(p.n for p in parts)
        pick = lambda attr: {g: getattr(p, attr)[g] for p, g in zip(parts, groups)}  # noqa: E731
        return PowerFit(y, x, pick("slope"), pick("coef"), pick("slope_se"), pick("coef_se"),
                        sum(p.loss * p.n for p in parts) / n, n, False)
    X = design_matrix(df, x, group, groups)
    ly = np.log(df[y].to_numpy(float))
    sol, *_ = np.linalg.lstsq(X, ly, rcond=None)
    resid = ly - X @ sol
    s2 = float(resid @ resid) / max(len(ly) - X.shape[1], 1)
    se = np.sqrt(np.clip(np.diag(s2 * np.linalg.pinv(X.T @ X)), 0, None))
    coef = {g: float(np.exp(sol[i])) for i, g in enumerate(groups)}
    return PowerFit(y, x, {g: float(sol[-1]) for g in groups}, coef, {g: float(se[-1]) for g in groups},
                    {g: coef[g] * float(se[i]) for i, g in enumerate(groups)},
                    float(np.mean(resid ** 2)), len(ly), True)


def fixed_effects_bootstrap(df: pd.DataFrame, y_matrix: np.ndarray, x: str = "utd",
                            group: str = "env") -> np.ndarray:
    """Shared slopes for many response columns at once (one least-squares solve)."""
    X = design_matrix(df, x, group, list(pd.unique(df[group])))
    sol, *_ = np.linalg.lstsq(X, np.log(y_matrix), rcond=None)
    return sol[-1]


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
