"""Compute, budget, data-compute Pareto frontiers, Problems 3.1 / 3.2 and optimum precision.

C_J = k N B*(sigma, N) sigma D_J(sigma, N) and F = C + delta D. Optima are found on a fine
log grid over the fitted range (extended 8x each way) and refined with scipy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from scipy.optimize import brentq, minimize, minimize_scalar

from pql_jax.scaling.powerlaw import fit_fixed_effects, fixed_effects_solutions, percentile_interval

EXTEND = 8.0


@dataclass
class BudgetModel:
    """Data, compute and budget of one (env, threshold) as functions of utd (and N)."""

    env: str
    level: int
    threshold: float
    data: Callable  # (utd, model_size) -> env steps
    batch: Callable  # (utd, model_size) -> batch size
    k: float
    delta: float
    sigma_range: tuple
    model_size: float = 1.0  # used when n_range is None
    n_range: tuple | None = None

    def compute(self, utd, model_size=None):
        """C_J = k N B sigma D."""
        n = self.model_size if model_size is None else model_size
        return self.k * n * self.batch(utd, n) * utd * self.data(utd, n)

    def budget(self, utd, model_size=None):
        """F = C + delta D."""
        n = self.model_size if model_size is None else model_size
        return self.compute(utd, n) + self.delta * self.data(utd, n)

    def sigma_grid(self, n: int = 801) -> np.ndarray:
        """Fine log grid over the fitted utd range, extended 8x each way."""
        return np.geomspace(self.sigma_range[0] / EXTEND, self.sigma_range[1] * EXTEND, n)

    def n_grid(self, n: int = 201) -> np.ndarray:
        """Fine log grid over model sizes (a single value when N is fixed)."""
        if self.n_range is None:
            return np.array([self.model_size])
        return np.geomspace(self.n_range[0] / EXTEND, self.n_range[1] * EXTEND, n)

    def frontier(self, n: int = 200, model_size=None) -> pd.DataFrame:
        """The data-compute Pareto frontier traced by utd (at N fixed or given)."""
        s = self.sigma_grid(n)
        N = self.model_size if model_size is None else model_size
        d, c = self.data(s, N), self.compute(s, N)
        order = np.argsort(c, kind="stable")  # dominated: another utd needs no more data and less compute
        prev_min = np.concatenate([[np.inf], np.minimum.accumulate(d[order])[:-1]])
        dominated = np.empty(len(s), bool)
        dominated[order] = d[order] >= prev_min
        return pd.DataFrame({"env": self.env, "level": self.level, "threshold": self.threshold,
                             "utd": s, "model_size": N, "data": d, "compute": c,
                             "budget": c + self.delta * d, "dominated": dominated,
                             "extrapolated": [self.outside(u, N) for u in s]})

    def solve_budget(self) -> dict:
        """Problem 3.2: the utd (and N) minimising F = C + delta D, with D*, C*, F*."""
        s, N = self.sigma_grid(), self.n_grid()
        S, NN = np.meshgrid(s, N, indexing="ij")
        F = self.budget(S, NN)
        i, j = np.unravel_index(np.nanargmin(F), F.shape)
        at_edge = i in (0, len(s) - 1) or (self.n_range is not None and j in (0, len(N) - 1))
        lo, hi = np.log(s[max(i - 1, 0)]), np.log(s[min(i + 1, len(s) - 1)])
        if self.n_range is None:
            res = minimize_scalar(lambda x: np.log(self.budget(np.exp(x))), bounds=(lo, hi),
                                  method="bounded", options={"xatol": 1e-10})
            best_s, best_n = float(np.exp(res.x)), self.model_size
        else:
            nlo, nhi = np.log(N[max(j - 1, 0)]), np.log(N[min(j + 1, len(N) - 1)])
            res = minimize(lambda x: np.log(self.budget(np.exp(x[0]), np.exp(x[1]))),
                           [np.log(s[i]), np.log(N[j])], method="L-BFGS-B", bounds=[(lo, hi), (nlo, nhi)])
            best_s, best_n = float(np.exp(res.x[0])), float(np.exp(res.x[1]))
        if self.budget(best_s, best_n) > F[i, j]:
            best_s, best_n = float(s[i]), float(N[j])
        d = float(self.data(best_s, best_n))
        c = float(self.compute(best_s, best_n))
        return {"env": self.env, "level": self.level, "threshold": self.threshold, "utd": best_s,
                "model_size": best_n, "batch_size": float(self.batch(best_s, best_n)), "data": d,
                "compute": c, "budget": c + self.delta * d, "at_edge": bool(at_edge),
                "extrapolated": self.outside(best_s, best_n)}

    def outside(self, utd: float, model_size=None) -> bool:
        """Whether (utd, N) lies outside the fitted range (the laws are extrapolated there)."""
        tol = 1 + 1e-9
        out = not self.sigma_range[0] / tol <= utd <= self.sigma_range[1] * tol
        if self.n_range is not None and model_size is not None:
            out |= not self.n_range[0] / tol <= model_size <= self.n_range[1] * tol
        return bool(out)

    def precision(self, opt: dict, tols=(0.05, 0.10)) -> dict:
        """Range of utd (N at its optimum) and of N (utd at its optimum) whose budget stays
        within each tolerance of the optimum; ``*_ratio`` = hi / lo (flat optima: large)."""
        out = {}
        s = self.sigma_grid(4001)
        fs = self.budget(s, opt["model_size"]) / opt["budget"]
        scans = [("utd", s, fs)]
        if self.n_range is not None:
            n = self.n_grid(2001)
            scans.append(("model_size", n, self.budget(opt["utd"], n) / opt["budget"]))
        for name, x, f in scans:
            i0 = int(np.argmin(np.abs(np.log(x) - np.log(opt[name]))))
            for tol in tols:
                ok = f <= 1 + tol
                lo, hi = i0, i0
                while lo > 0 and ok[lo - 1]:
                    lo -= 1
                while hi < len(x) - 1 and ok[hi + 1]:
                    hi += 1
                tag = f"{name}_{round(tol * 100)}pct"
                out.update({f"{tag}_lo": float(x[lo]), f"{tag}_hi": float(x[hi]),
                            f"{tag}_ratio": float(x[hi] / x[lo]),
                            f"{tag}_open": bool(lo == 0 or hi == len(x) - 1)})
        return out

    def max_data_efficiency(self, compute_cap: float, model_size=None) -> dict:
        """Problem 3.1 (1): least data under C <= compute_cap (largest feasible utd when D
        falls with utd). NaN when no utd in range fits the cap."""
        return self._constrained(lambda s, n: self.data(s, n), lambda s, n: self.compute(s, n),
                                 compute_cap, model_size)

    def max_compute_efficiency(self, data_cap: float, model_size=None) -> dict:
        """Problem 3.1 (2): least compute under D <= data_cap."""
        return self._constrained(lambda s, n: self.compute(s, n), lambda s, n: self.data(s, n),
                                 data_cap, model_size)

    def _constrained(self, objective, constraint, cap, model_size) -> dict:
        """Minimise objective over the utd grid subject to constraint <= cap; refine the
        boundary with brentq when the constraint is active."""
        N = self.model_size if model_size is None else model_size
        s = self.sigma_grid(4001)
        obj, con = objective(s, N), constraint(s, N)
        feas = con <= cap
        if not feas.any():
            return {"utd": np.nan, "data": np.nan, "compute": np.nan, "feasible": False, "at_edge": False,
                    "extrapolated": False}
        i = int(np.argmin(np.where(feas, obj, np.inf)))
        best = s[i]
        for j in (i - 1, i + 1):  # the true optimum lies on the constraint between grid points
            if 0 <= j < len(s) and not feas[j]:
                root = brentq(lambda x: constraint(np.exp(x), N) - cap, np.log(s[i]), np.log(s[j]))
                if objective(np.exp(root), N) < objective(best, N):
                    best = float(np.exp(root))
        return {"utd": float(best), "data": float(self.data(best, N)),
                "compute": float(self.compute(best, N)), "feasible": True,
                "at_edge": bool(best in (s[0], s[-1])), "extrapolated": self.outside(float(best), N)}


def measured_k(curves: pd.DataFrame) -> float | None:
    """k from measured FLOPs: median over runs of (FLOPs per critic update) / (N B)."""
    need = {"flops", "critic_updates", "model_size", "batch_size"}
    if not need <= set(curves.columns):
        return None
    last = curves.sort_values("step").groupby(["env", "seed", "utd", "batch_size", "model_size"]
                                              + (["lr"] if "lr" in curves else [])).last()
    last = last[(last["critic_updates"] > 0) & np.isfinite(last["flops"])]
    if last.empty:
        return None
    k = last["flops"] / last["critic_updates"] / (last.index.get_level_values("model_size")
                                                  * last.index.get_level_values("batch_size"))
    return float(np.median(k))


def budget_power_laws(table: pd.DataFrame, n_holdout: int = 2, samples: dict | None = None) -> dict:
    """Fit sigma*(F), N*(F), D*(F), C*(F) as power laws y = coef F^exponent (slope shared
    across envs), holding out each env's largest budgets when it has >= 3 + n_holdout levels.
    ``samples`` ((env, level) -> {quantity: bootstrap optima}) adds the exponent's bootstrap SE
    and 90% interval (the same rows refitted in every resample) and, per env, the refits'
    [coef, exponent] pairs (``samples``: what `propose --budget` draws its utd*(F) from)."""
    t = table[np.isfinite(table["budget"])].copy()
    t["rank"] = t.groupby("env")["budget"].rank(ascending=False)
    counts = t.groupby("env")["budget"].transform("size")
    t["held_out"] = (counts >= 3 + n_holdout) & (t["rank"] <= n_holdout)
    train = t[~t["held_out"]]
    if train.groupby("env").size().min() < 3:
        return {}
    ys = ["utd", "data", "compute"] + (["model_size"] if t["model_size"].nunique() > 1 else [])
    out = {}
    for y in ys:
        pf = fit_fixed_effects(train, y, x="budget")
        held = t[t["held_out"]]
        pred = np.array([pf.predict(e, f) for e, f in zip(held["env"], held["budget"])])
        err = np.abs(np.log(pred / held[y].to_numpy())) if len(held) else np.array([])
        out[y] = {"exponent": -next(iter(pf.slope.values())), "exponent_se": next(iter(pf.slope_se.values())),
                  "coef": pf.coef, "coef_se": pf.coef_se, "loss": pf.loss, "n_fit": pf.n, "n_held_out": int(len(held)),
                  "held_out_mean_abs_log_error": float(err.mean()) if len(err) else None}
        keys = list(zip(train["env"], train["level"]))
        if samples and all(k in samples and y in samples[k] for k in keys) \
                and len({len(samples[k][y]) for k in keys}) == 1:
            F = np.stack([samples[k]["budget"] for k in keys])  # (rows, resamples)
            Y = np.stack([samples[k][y] for k in keys])
            ok = (np.isfinite(F) & (F > 0) & np.isfinite(Y) & (Y > 0)).all(axis=0)
            sols = np.stack([fixed_effects_solutions(train.assign(budget=F[:, r]), Y[:, r:r + 1], "budget")[:, 0]
                             for r in np.flatnonzero(ok)]) if ok.any() else np.zeros((0, 1))
            if len(sols) > 1:
                slopes = sols[:, -1]
                lo, hi = percentile_interval(-slopes)
                envs = list(pd.unique(train["env"]))  # intercept columns, in order of appearance
                with np.errstate(over="ignore"):  # a resample's wild intercept: inf, dropped as non-finite downstream
                    samples = {e: np.stack([np.exp(sols[:, i]), -slopes], axis=1).tolist() for i, e in enumerate(envs)}
                out[y].update(exponent_bootstrap_se=float(np.std(slopes, ddof=1)), exponent_lo=float(lo),
                              exponent_hi=float(hi), samples=samples)
    return out


def delta_from_throughput(flops_per_s: float, env_steps_per_s: float) -> float:
    """delta (FLOPs per env step) that makes F = C + delta D a wall-clock budget in FLOPs."""
    return float(flops_per_s) / float(env_steps_per_s)
