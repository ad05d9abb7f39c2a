"""Which runs to add where a fit is undetermined (issue 32, section 3): the rule, not the wiring.

The rule, a sequential c-optimal design averaged over the parameter values the data allow:

1. Linearise the law's log prediction in theta (log of positive parameters, signed ones such as a
   power law's slope as they are; entry 0 an additive log scale): g_c = d log y(x_c) / d theta.
2. A fit to cell means with weights w_c (``weighting="seeds"``: w_c = n_c, the efficient fit of
   per-seed log values; ``"equal"``: as a fit of seed-mean crossings) has Cov theta = A^-1 B A^-1,
   A = sum w_c g_c g_c^T, B = sum w_c^2 (s2 / n_c) g_c g_c^T, s2 the pooled per-seed variance of
   log y (seed weights: s2 A^-1, the inverse information).
3. theta ranges over the 90% profile-likelihood region of each flagged parameter
   (``plausible_points``): b at its search bound (knee beyond the swept UTDs) spans from the data's
   end to the bound, and only runs reaching into that span shrink its variance there. The
   criterion is the sum over flagged p of the mean over those points of log Var(theta_p).
4. Greedy: add the candidate (seeds at a cell, a UTD or a width one grid step beyond an end)
   with the largest fall of the criterion per env step, until the round's env steps are spent or
   every flagged parameter's predicted SE (geometric mean over the points) is below ``margin`` x
   its limit: SE(log p) <= 1 (SE <= value) for a positive parameter, SE <= |value| for a signed one.
5. First, per flagged parameter: if the best plan for the whole remaining budget leaves its SE
   above the limit even at its most favourable plausible value, it is not determinable within
   the budget: nothing is spent on it, and the runs that would determine it (at that value) and
   their cost are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Candidate:
    """Runs that could be added: ``kind`` is 'more seeds', 'utd below', 'utd above', 'width below'
    or 'width above'; a run costs env steps, and env steps x utd critic updates."""

    kind: str
    utd: float
    model_size: float | None
    seeds: int
    runs: int
    env_steps: float
    critic_updates: float


@dataclass(frozen=True)
class PlannedRuns(Candidate):
    """Chosen runs: the flagged parameter they are for, its predicted SE (theta units: relative SE
    for a positive parameter) before and after them."""

    param: str = ""
    se_before: float = float("nan")
    se_after: float = float("nan")


@dataclass(frozen=True)
class Undetermined:
    """A flagged parameter no plan within the remaining budget determines: its value, SE now,
    the best plan's SE, the limit, why, and the runs that would determine it (empty: none within
    the horizon) with their cost."""

    param: str
    value: float
    se_now: float
    se_best: float
    limit: float
    reason: str
    runs: tuple = ()
    env_steps: float = 0.0
    critic_updates: float = 0.0


@dataclass(frozen=True)
class RoundPlan:
    """One round's runs, what stays undetermined, and the predicted SE of every flagged
    parameter now and after the round's runs (param -> (now, after, limit))."""

    runs: tuple
    undetermined: tuple
    env_steps: float
    critic_updates: float
    predicted_se: dict = field(default_factory=dict)


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


class _Design:
    """Cells (utd, model_size) with seeds, and their Jacobian rows at the plausible points."""

    def __init__(self, problem: RefineProblem, points: np.ndarray, keys=None, seeds=None, rows=None):
        self.problem, self.points = problem, points
        self.keys = list(keys if keys is not None else [(c.utd, c.model_size) for c in problem.cells])
        self.seeds = np.array(seeds if seeds is not None else [c.seeds for c in problem.cells], float)
        self.rows = rows if rows is not None else {}

    def jac(self) -> np.ndarray:
        missing = [k for k in self.keys if k not in self.rows]
        if missing:
            sizes = None if missing[0][1] is None else [k[1] for k in missing]
            G = log_jacobian(self.problem.model, self.points, [k[0] for k in missing], sizes)
            self.rows.update({k: G[:, i] for i, k in enumerate(missing)})
        return np.stack([self.rows[k] for k in self.keys], axis=1)

    def log_var(self, idx) -> np.ndarray:
        """log Var(theta_p), (K points, len(idx) parameters)."""
        cov = param_covariance(self.jac(), self.seeds, self.problem.pooled_seed_var(), self.problem.weighting)
        return np.log(np.clip(cov[:, idx, idx], 1e-300, None))

    def add(self, cand: Candidate) -> "_Design":
        key = (cand.utd, cand.model_size)
        keys = self.keys if key in self.keys else self.keys + [key]
        seeds = np.zeros(len(keys))
        seeds[:len(self.seeds)] = self.seeds
        seeds[keys.index(key)] += cand.seeds
        return _Design(self.problem, self.points, keys, seeds, self.rows)


def _ratio(values) -> float | None:
    """The grid's own step: the median ratio of consecutive distinct values (None: one value)."""
    v = np.unique(np.asarray([x for x in values if x is not None], float))
    # ratios, not exp of log steps: a binary grid's step stays exactly 2 or 4, so a new UTD is
    # exactly 1/64 (run names and table keys match) rather than 1/64 to rounding
    return float(np.median(v[1:] / v[:-1])) if len(v) > 1 else None


def _candidate(problem: RefineProblem, kind: str, utd: float, size, seeds: int) -> Candidate:
    runs = seeds * problem.runs_per_seed
    env = runs * problem.run_env_steps
    return Candidate(kind, float(utd), size, int(seeds), int(runs), float(env), float(env * utd))


def candidates(problem: RefineProblem, design: _Design | None = None) -> list[Candidate]:
    """Runs that could be added to ``problem``'s cells (or a planned design): one more seed and
    as many seeds again at each cell, a new cell one grid step beyond the lowest / highest UTD
    (at every width), and with several widths a width one step beyond either end (at every UTD)."""
    keys = design.keys if design is not None else [(c.utd, c.model_size) for c in problem.cells]
    seeds = design.seeds if design is not None else [c.seeds for c in problem.cells]
    out = []
    for (u, s), n in zip(keys, seeds):
        out.append(_candidate(problem, "more seeds", u, s, 1))
        if n > 1:
            out.append(_candidate(problem, "more seeds", u, s, int(n)))
    utds, sizes = sorted({k[0] for k in keys}), sorted({k[1] for k in keys if k[1] is not None})
    for u in _beyond([c.utd for c in problem.cells], utds, problem.max_extend, problem.utd_limits):
        kind = "utd below" if u < utds[0] else "utd above"
        out += [_candidate(problem, kind, u, s, problem.new_cell_seeds) for s in (sizes or [None])]
    for s in _beyond([c.model_size for c in problem.cells], sizes, problem.max_extend, problem.size_limits):
        kind = "width below" if s < sizes[0] else "width above"
        out += [_candidate(problem, kind, u, s, problem.new_cell_seeds) for u in utds]
    return out


def _beyond(swept, current, max_extend: int, limits) -> list[float]:
    """The values one grid step below / above ``current``'s ends, if within ``limits`` (default:
    ``max_extend`` steps beyond the ``swept`` range; a linear law would be extended without end)."""
    r = _ratio(swept)
    if not r or not current:
        return []
    if limits is None:
        reach = r ** max_extend
        limits = (min(x for x in swept if x is not None) / reach, max(x for x in swept if x is not None) * reach)
    lo, hi = limits[0] * (1 - 1e-9), limits[1] * (1 + 1e-9)
    return [v for v in (current[0] / r, current[-1] * r) if lo <= v <= hi]


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


def _se(log_var: np.ndarray) -> np.ndarray:
    """Predicted SE per parameter: the geometric mean over the plausible points."""
    return np.exp(0.5 * log_var.mean(axis=0))


def _best_se(log_var: np.ndarray) -> np.ndarray:
    """SE per parameter at its most favourable plausible point."""
    return np.exp(0.5 * log_var.min(axis=0))


def _greedy(design: _Design, idx: list, budget: float, stop=None, se=_se) -> tuple[list, _Design]:
    """Greedy picks (candidate, log Var before, after) within ``budget`` env steps: the largest fall
    of sum_p mean_k log Var(theta_p) per env step, until nothing affordable helps or every SE
    (``se`` of the log variances) is below ``stop`` (array over idx)."""
    picks, spent = [], 0.0
    cur = design.log_var(idx)
    while stop is None or not np.all(se(cur) < stop):
        best, best_gain = None, 0.0
        for cand in candidates(design.problem, design):
            if spent + cand.env_steps > budget * (1 + 1e-12):
                continue
            nxt = design.add(cand)
            lv = nxt.log_var(idx)
            gain = (cur.mean(0).sum() - lv.mean(0).sum()) / cand.env_steps
            if gain > best_gain:
                best, best_gain = (cand, nxt, lv), gain
        if best is None:
            break
        picks.append((best[0], cur, best[2]))
        design, cur, spent = best[1], best[2], spent + best[0].env_steps
    return picks, design


def _planned(picks: list, names: list) -> tuple:
    """Picks as ``PlannedRuns``, each for the parameter whose log variance fell most; consecutive
    picks of one cell for one parameter merged."""
    out = []
    for cand, before, after in picks:
        j = int(np.argmax(before.mean(0) - after.mean(0)))
        se0, se1 = float(_se(before)[j]), float(_se(after)[j])
        last = out[-1] if out else None
        if last and (last.kind, last.utd, last.model_size, last.param) == (cand.kind, cand.utd, cand.model_size,
                                                                            names[j]):
            out[-1] = PlannedRuns(cand.kind, cand.utd, cand.model_size, last.seeds + cand.seeds,
                                  last.runs + cand.runs, last.env_steps + cand.env_steps,
                                  last.critic_updates + cand.critic_updates, names[j], last.se_before, se1)
        else:
            out.append(PlannedRuns(**vars(cand), param=names[j], se_before=se0, se_after=se1))
    return tuple(out)


def _cost(runs) -> tuple[float, float]:
    return float(sum(r.env_steps for r in runs)), float(sum(r.critic_updates for r in runs))


def _undetermined(design, name, i, limit, se_now, se_best, remaining, horizon) -> Undetermined:
    """The report of a parameter the remaining budget cannot determine: the greedy plan (up to
    ``horizon`` x the remaining budget) that would, if any, and its cost."""
    picks, end = _greedy(design, [i], horizon * max(remaining, design.problem.run_env_steps), np.array([limit]),
                         _best_se)
    done = float(_best_se(end.log_var([i]))[0]) < limit
    runs = _planned(picks, [name]) if done else ()
    positive = design.problem.model.positive[i]
    value = float(np.exp(design.problem.model.theta[i]) if positive else design.problem.model.theta[i])
    what = f"SE of log {name} {se_best:.3g} vs limit {limit:.3g}" if positive else \
        f"SE {se_best:.3g} vs value {value:.3g}"
    reason = (f"not determinable within budget {remaining:.3g} env steps: best plan gives {what} at the most "
              f"favourable plausible value ({name} = {value:.3g} now); "
              + (f"determined by {sum(r.runs for r in runs)} runs, {_cost(runs)[0]:.3g} env steps" if done else
                 f"no plan within {horizon:g}x the budget determines it"))
    return Undetermined(name, value, se_now, se_best, float(limit), reason, runs, *_cost(runs))


def refine_round(problem: RefineProblem, flagged, remaining_env_steps: float, round_env_steps: float | None = None,
                 max_log_se: float = 1.0, margin: float = 0.8, horizon: float = 10.0) -> RoundPlan:
    """One refinement round: the runs to add for the ``flagged`` parameters (names of
    ``problem.model``) within ``round_env_steps`` (default half of ``remaining_env_steps``, at
    least one run), and the parameters that not even the whole remaining budget determines
    (reported with the runs that would, nothing spent on them). ``margin``: stop spending on a
    parameter once its predicted SE is below margin x its limit (0: spend the round's budget)."""
    names = list(problem.model.names)
    idx = [names.index(p) for p in flagged]
    if not idx:
        return RoundPlan((), (), 0.0, 0.0)
    points = np.vstack([plausible_points(problem, p) for p in flagged])
    design = _Design(problem, points)
    now = _se(design.log_var(idx))
    limits = np.array([problem.model.limit(p, max_log_se) for p in flagged])
    keep, undetermined, predicted = [], [], {}
    for k, i in enumerate(idx):
        _, end = _greedy(design, [i], remaining_env_steps)
        se_best = float(_best_se(end.log_var([i]))[0])
        if se_best < limits[k]:
            keep.append(k)
        else:
            undetermined.append(_undetermined(design, names[i], i, limits[k], float(now[k]), se_best,
                                              remaining_env_steps, horizon))
            predicted[names[i]] = (float(now[k]), float(now[k]), float(limits[k]))
    if round_env_steps is None:
        round_env_steps = max(remaining_env_steps / 2, problem.run_env_steps * problem.runs_per_seed)
    budget = min(round_env_steps, remaining_env_steps)
    sel = [idx[k] for k in keep]
    picks, end = _greedy(design, sel, budget, margin * limits[keep]) if sel else ([], design)
    after = _se(end.log_var(idx))
    for k in keep:
        predicted[names[idx[k]]] = (float(now[k]), float(after[k]), float(limits[k]))
    runs = _planned(picks, [names[i] for i in sel])
    return RoundPlan(runs, tuple(undetermined), *_cost(runs), predicted)
