"""A law's linearised statistics for the refinement rule (``pql_jax.scaling.refine``): the log
prediction as a function of the parameter vector (``LogModel``), the cells a fit has (``Cell``,
``RefineProblem``), the covariance of a weighted least-squares fit to cell means
(``param_covariance``, the rule's steps 1-2) and the parameter vectors its profile likelihood
allows (``plausible_points``, step 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import chdtri  # chi-square quantile (scipy.stats is a 0.3 s import)

from pql_jax.scaling.fit import _bounds
from pql_jax.scaling.laws import Law

#: Relative ridge (times A's mean diagonal): a parameter the design does not determine at all
#: gets a huge but finite variance (with seed weights: s2 (A + ridge)^-1). A pseudo-inverse would
#: instead drop that direction and report a small variance for a parameter nothing constrains.
RIDGE = 1e-10
#: How far the scale's box reaches (in log) each side of its estimate; the fitter leaves it free.
SCALE_BOX = 30.0
#: Plausible parameter vectors per flagged parameter, and the profile-likelihood grid they come from.
N_POINTS, N_PROFILE = 5, 17


@dataclass(frozen=True, eq=False)
class LogModel:
    """A law's log prediction as a function of its parameter vector ``theta`` (log of positive
    parameters, signed ones as they are; entry 0 an additive log scale) and the fitted estimate."""

    names: tuple
    theta: np.ndarray
    positive: tuple
    bounds: tuple  # (lo, hi) of each theta entry: the fitter's search box
    log_predict: Callable  # (inputs: dict of arrays "utd"[, "model_size"], theta entries) -> log y

    def limit(self, name: str, max_log_se: float) -> float:
        """The largest SE of theta[name] that does not flag it: ``max_log_se`` for a positive
        parameter (SE(log p) <= 1 is SE <= value), |value| for a signed one."""
        i = self.names.index(name)
        return max_log_se if self.positive[i] else abs(float(self.theta[i]))


@dataclass(frozen=True)
class Cell:
    """One cell of a fit: inputs, seeds so far, seed-mean log value (NaN for a planned cell) and
    the between-seed variance of the per-seed log values (NaN if unknown)."""

    utd: float
    seeds: int
    log_value: float = float("nan")
    seed_var: float = float("nan")
    model_size: float | None = None


@dataclass(frozen=True, eq=False)
class RefineProblem:
    """A fit to refine: its model, cells, the cost of a run and how a cell's seeds are run.
    ``runs_per_seed``: runs one more seed at a cell takes (the B x lr grid of an hparam cell)."""

    model: LogModel
    cells: tuple
    run_env_steps: float
    runs_per_seed: int = 1
    new_cell_seeds: int = 3
    max_extend: int = 3  # grid steps a new UTD / width may lie beyond the cells' range, per end ...
    utd_limits: tuple | None = None  # ... or (lo, hi) that new UTDs must lie within (across rounds: the
    size_limits: tuple | None = None  # original sweep's range widened, or what the trainer can run)
    weighting: str = "seeds"
    seed_var: float | None = None  # per-seed variance of log y; None: pooled from the cells

    def pooled_seed_var(self) -> float:
        """``seed_var``, else the cells' between-seed variances pooled by their degrees of freedom."""
        if self.seed_var is not None:
            return float(self.seed_var)
        v = np.array([(c.seeds - 1, c.seed_var) for c in self.cells if c.seeds > 1 and np.isfinite(c.seed_var)])
        if not len(v) or v[:, 0].sum() <= 0:
            raise ValueError("no cell with >= 2 seeds and a seed variance: give seed_var")
        return float(v[:, 0] @ v[:, 1] / v[:, 0].sum())


def law_model(law: Law, params: dict, cells) -> LogModel:
    """The ``LogModel`` of a fitted ``laws.Law`` (all parameters positive) with the fitter's
    search box for the cells' inputs."""
    lx = {"utd": np.log([c.utd for c in cells])}
    if "model_size" in law.inputs:
        lx["model_size"] = np.log([c.model_size for c in cells])
    theta = np.log([float(params[p]) for p in law.params])
    box = ((theta[0] - SCALE_BOX, theta[0] + SCALE_BOX),) + tuple(tuple(b) for b in _bounds(law, law.grid(lx)))

    def log_predict(inputs, th):
        return law.log_predict({k: np.log(inputs[k]) for k in law.inputs}, list(th))
    return LogModel(tuple(law.params), theta, (True,) * len(theta), box, log_predict)


def power_model(coef: float, slope: float, max_slope: float = 5.0) -> LogModel:
    """y = coef * utd^-slope (B*(utd), eta*(utd)) fitted as a line in log-log space."""
    def log_predict(inputs, th):
        return th[0] - th[1] * np.log(inputs["utd"])
    theta = np.array([np.log(coef), slope], float)
    box = ((theta[0] - SCALE_BOX, theta[0] + SCALE_BOX), (-max_slope, max_slope))
    return LogModel(("coef", "slope"), theta, (True, False), box, log_predict)


def log_jacobian(model: LogModel, thetas, utd, model_size=None) -> np.ndarray:
    """d log y / d theta, (K, n, p) at K parameter vectors (or (n, p) for one) and n inputs, by
    central differences (the laws are closed forms without derivatives; all K x 2p perturbed
    vectors go through one broadcast call)."""
    th = np.atleast_2d(np.asarray(thetas, float))
    K, p = th.shape
    h = 1e-5
    pert = (th[:, None, :] + h * np.concatenate([np.eye(p), -np.eye(p)])[None]).reshape(-1, p)
    inputs = {"utd": np.asarray(utd, float)}
    if model_size is not None:
        inputs["model_size"] = np.asarray(model_size, float)
    f = model.log_predict(inputs, [pert[:, j:j + 1] for j in range(p)])
    f = np.broadcast_to(f, (len(pert), len(inputs["utd"]))).reshape(K, 2 * p, -1)
    jac = np.moveaxis((f[:, :p] - f[:, p:]) / (2 * h), 1, 2)
    return jac if np.ndim(thetas) == 2 else jac[0]


def param_covariance(jac, seeds, seed_var: float, weighting: str = "seeds") -> np.ndarray:
    """Cov theta = A^-1 B A^-1 of the weighted least-squares fit to cell means (module docstring),
    for a Jacobian (n, p) or a stack (K, n, p), with a ``RIDGE``."""
    G = np.asarray(jac, float)
    n = np.asarray(seeds, float)
    w = n if weighting == "seeds" else np.ones_like(n)
    A = np.einsum("...ni,n,...nj->...ij", G, w, G)
    B = np.einsum("...ni,n,...nj->...ij", G, w ** 2 * seed_var / n, G)
    # the ridge is a pseudo-observation of every parameter, in A and, at the design's own noise
    # per unit weight, in B: a ridge in A alone would give a null direction no variance at all
    p = A.shape[-1]
    trace_a, trace_b = np.trace(A, axis1=-2, axis2=-1), np.trace(B, axis1=-2, axis2=-1)
    lam = (RIDGE * trace_a / p)[..., None, None] * np.eye(p)
    Ainv = np.linalg.inv(A + lam)
    return Ainv @ (B + lam * (trace_b / trace_a)[..., None, None]) @ Ainv


def _profile(model: LogModel, i: int, grid: np.ndarray, inputs: dict, y: np.ndarray, w: np.ndarray,
             iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Parameter vectors (M, p) and weighted losses (M,) with theta[i] fixed at each grid value
    and the other shape parameters fitted (within the box), the scale at its exact optimum.

    Written by hand as a batched Levenberg-Marquardt from the fitted estimate: scipy's optimisers
    solve one problem per call, and the profile's few-parameter fits dominated a round that way."""
    p = len(model.theta)
    free = [j for j in range(1 if i else 0, p) if j != i]
    th = np.tile(model.theta, (len(grid), 1))
    th[:, i] = grid

    def resid(t):
        r = y - model.log_predict(inputs, [t[:, j:j + 1] for j in range(p)])
        return r - (r @ w / w.sum())[:, None] if i else r  # the scale's optimum: the weighted mean

    r = resid(th)
    loss, lam = (r ** 2) @ w, np.full(len(grid), 1e-3)
    lo, hi = (np.array([model.bounds[j][k] for j in free]) for k in (0, 1))
    for _ in range(iters if free else 0):
        jac = np.stack([(resid(th + 1e-6 * np.eye(p)[j]) - r) / 1e-6 for j in free], axis=-1)
        A = np.einsum("mnf,n,mng->mfg", jac, w, jac)
        g = np.einsum("mnf,n,mn->mf", jac, w, r)
        diag = np.einsum("mff->mf", A)
        # a floor on the damping: a parameter far out at its bound can have no derivative at all
        floor = 1e-9 * diag.mean(1, keepdims=True) + 1e-12
        damped = A + (lam[:, None] * (diag + floor))[:, :, None] * np.eye(len(free))
        cand = th.copy()
        cand[:, free] = np.clip(th[:, free] - np.linalg.solve(damped, g[..., None])[..., 0], lo, hi)
        rc = resid(cand)
        lc = (rc ** 2) @ w
        better = lc < loss
        th[better], r[better], loss[better] = cand[better], rc[better], lc[better]
        lam = np.where(better, lam / 3, lam * 4)
    if i:
        th[:, 0] += (y - model.log_predict(inputs, [th[:, j:j + 1] for j in range(p)])) @ w / w.sum()
    return th, loss


def plausible_points(problem: RefineProblem, param: str, level: float = 0.90) -> np.ndarray:
    """Up to ``N_POINTS`` parameter vectors (K, p) spread over the ``level`` profile-likelihood
    region of ``param`` (weighted squared log residuals of the measured cells, s2 known), the other
    shape parameters at their profile optimum within the search box."""
    m, i = problem.model, problem.model.names.index(param)
    cells = [c for c in problem.cells if np.isfinite(c.log_value)]
    inputs = {"utd": np.array([c.utd for c in cells])}
    if cells[0].model_size is not None:
        inputs["model_size"] = np.array([c.model_size for c in cells], float)
    seeds = np.array([c.seeds for c in cells], float)
    se = np.sqrt(param_covariance(log_jacobian(m, m.theta, inputs["utd"], inputs.get("model_size")),
                                  seeds, problem.pooled_seed_var(), problem.weighting)[i, i])
    lo, hi = m.bounds[i]
    span = float(np.clip(4 * se, 0.05, hi - lo))  # the linearised region, the whole box if undetermined
    grid = np.unique(np.r_[np.linspace(max(lo, m.theta[i] - span), min(hi, m.theta[i] + span), N_PROFILE),
                           np.clip(m.theta[i], lo, hi)])
    thetas, losses = _profile(m, i, grid, inputs, np.array([c.log_value for c in cells]),
                              seeds / problem.pooled_seed_var())
    keep = np.flatnonzero(losses - losses.min() <= chdtri(1, 1 - level))
    pick = keep[np.unique(np.linspace(0, len(keep) - 1, N_POINTS).round().astype(int))]
    return thetas[pick]
