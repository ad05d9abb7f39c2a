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

import numpy as np

from pql_jax.scaling.design import (Cell, LogModel, RefineProblem, law_model, log_jacobian, param_covariance,
                                    plausible_points, power_model)

__all__ = ["Candidate", "Cell", "LogModel", "PlannedRuns", "RefineProblem", "RoundPlan", "Undetermined", "candidates",
           "law_model", "log_jacobian", "param_covariance", "plausible_points", "power_model", "refine_round"]


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
