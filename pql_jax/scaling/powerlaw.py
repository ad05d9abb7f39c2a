"""Power laws y = coef_g * x^(-slope) fitted as lines in log-log space (fixed effects: one slope
shared across groups, one intercept per group), with the seed bootstrap, percentile intervals and
the checks that keep a flat or undetermined law from being reported as a law."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pql_jax.errors import UserError

#: Central coverage of every percentile interval reported (5th to 95th percentile).
COVERAGE = 0.90
#: A law whose predicted y changes by less than this factor over the fitted x range is flat.
FLAT_CHANGE = 1.10


def percentile_interval(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The central ``COVERAGE`` percentile interval of bootstrap samples (NaNs ignored)."""
    q = 50 * (1 - COVERAGE)
    s = np.asarray(samples, float)
    with np.errstate(all="ignore"):
        if not np.isnan(s).any():  # the same numbers; nanpercentile loops over the columns in Python
            lo, hi = np.percentile(s, [q, 100 - q], axis=axis)
            return lo, hi
        return np.nanpercentile(s, q, axis=axis), np.nanpercentile(s, 100 - q, axis=axis)


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
    bootstrap_se: dict = field(default_factory=dict)  # {"slope": {g: se}, "coef": {g: se}}
    interval: dict = field(default_factory=dict)  # {"slope": {g: [lo, hi]}, "coef": ...}: bootstrap percentiles
    flat: dict = field(default_factory=dict)  # group -> True when y does not depend on x within the noise
    x_range: list = field(default_factory=list)  # [min, max] of the fitted x
    samples: dict = field(default_factory=dict)  # group -> [[coef, slope] per bootstrap resample] (propose's intervals)

    def predict(self, group, x) -> np.ndarray:
        """Predicted y for one group; a flat group (no dependence on x within the noise) is the
        constant the law takes at the geometric centre of the fitted x range (its slope is noise)."""
        x = np.asarray(x, float)
        if self.flat.get(group) and len(self.x_range) == 2:
            x = np.full_like(x, np.sqrt(self.x_range[0] * self.x_range[1]))
        return self.coef[group] * x ** (-self.slope[group])

    def beta(self, group) -> float:
        """The paper's beta in y = (beta / x)^alpha = coef^(1/slope): inf (or 0) when that
        overflows for a slope near 0, nan for a slope of exactly 0 (no such beta)."""
        s, c = self.slope[group], self.coef[group]
        if s == 0 or not c > 0:
            return float("nan")
        with np.errstate(over="ignore", under="ignore"):
            return float(np.exp(np.log(c) / s))

    def slope_uncertainty(self, group) -> float:
        """The bootstrap SE of the slope when there is one, else the least-squares SE."""
        b = (self.bootstrap_se.get("slope") or {}).get(group)
        return float(b) if b is not None and np.isfinite(b) else float(self.slope_se.get(group, np.nan))

    def check_flat(self) -> None:
        """Mark each group flat when its slope is within 2 SE of 0 or the law changes y by
        less than 10% over the fitted x range (coarse grids make such slopes noise)."""
        span = np.log(self.x_range[1] / self.x_range[0]) if len(self.x_range) == 2 else np.nan
        for g, s in self.slope.items():
            se = self.slope_uncertainty(g)
            small_change = np.isfinite(span) and abs(s) * span < np.log(FLAT_CHANGE)
            self.flat[g] = bool(small_change or (np.isfinite(se) and abs(s) < 2 * se))

    def to_dict(self) -> dict:
        """JSON-ready summary (``PowerFit.from_dict`` reads it back)."""
        groups = list(self.coef)
        beta = {g: (None if self.flat.get(g) else self.beta(g)) for g in groups}
        out = {"form": "power", "formula": f"{self.y} = coef * {self.x}^(-slope) = (beta / {self.x})^slope",
               "y": self.y, "x": self.x, "shared_slope": self.shared, "loss": self.loss, "n": self.n,
               "params": {g: {"coef": self.coef[g], "slope": self.slope[g], "beta": beta[g]} for g in groups},
               "se": {g: {"coef": self.coef_se[g], "slope": self.slope_se[g]} for g in groups}}
        for key in ("bootstrap_se", "interval", "flat", "x_range", "samples"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out

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
                   {k: {g: num(v) for g, v in per.items()} for k, per in (d.get("bootstrap_se") or {}).items()},
                   {k: {g: [num(a) for a in v] for g, v in per.items()} for k, per in (d.get("interval") or {}).items()},
                   {g: bool(v) for g, v in (d.get("flat") or {}).items()},
                   [num(v) for v in d.get("x_range") or []])

    def for_groups(self, groups) -> "PowerFit":
        """This fit of one group applied to each of ``groups`` (a law fitted on one env's sweep)."""
        if len(self.coef) != 1:
            raise UserError(f"{self.y}({self.x}) law has fits for {len(self.coef)} groups; expected one to share")
        (g,) = self.coef
        each = lambda d: {h: d[g] for h in groups}  # noqa: E731
        return PowerFit(self.y, self.x, each(self.slope), each(self.coef), each(self.slope_se), each(self.coef_se),
                        self.loss, self.n, self.shared,
                        {k: each(v) for k, v in self.bootstrap_se.items() if g in v},
                        {k: each(v) for k, v in self.interval.items() if g in v},
                        each(self.flat) if g in self.flat else {}, list(self.x_range))


def group_codes(values, groups) -> np.ndarray:
    """The index of each value in ``groups`` (-1 where absent): the codes of
    ``pd.Categorical(values, categories=groups)``, by a dict lookup (the Categorical costs
    ~0.4 ms per call, and the budget bootstrap builds hundreds of these small matrices)."""
    index = {g: i for i, g in enumerate(groups)}
    return np.fromiter((index.get(v, -1) for v in values), np.int64, count=len(values))


def design_matrix(df: pd.DataFrame, x: str, group: str, groups: list) -> np.ndarray:
    """Columns: one indicator per group (intercepts), then -log x (the shared slope)."""
    codes = group_codes(df[group], groups)
    return np.column_stack([np.eye(len(groups))[codes], -np.log(df[x].to_numpy(float))])


def fit_fixed_effects(df: pd.DataFrame, y: str, x: str = "utd", group: str = "env",
                      shared: bool = True) -> PowerFit:
    """log y = c_g - slope * log x by least squares; slope shared across groups (fixed effects)
    or fitted per group. With as many points as parameters the fit is exact and has no SE (NaN)."""
    groups = list(pd.unique(df[group]))
    xr = [float(df[x].min()), float(df[x].max())]
    if not shared:
        parts = [fit_fixed_effects(df[df[group] == g], y, x, group, True) for g in groups]
        n = sum(p.n for p in parts)
        pick = lambda attr: {g: getattr(p, attr)[g] for p, g in zip(parts, groups)}  # noqa: E731
        pf = PowerFit(y, x, pick("slope"), pick("coef"), pick("slope_se"), pick("coef_se"),
                      sum(p.loss * p.n for p in parts) / n, n, False, x_range=xr)
        pf.check_flat()
        return pf
    X = design_matrix(df, x, group, groups)
    ly = np.log(df[y].to_numpy(float))
    sol, *_ = np.linalg.lstsq(X, ly, rcond=None)
    resid = ly - X @ sol
    dof = len(ly) - X.shape[1]
    s2 = float(resid @ resid) / dof if dof > 0 else np.nan
    se = np.sqrt(np.clip(np.diag(s2 * np.linalg.pinv(X.T @ X)), 0, None))
    coef = {g: float(np.exp(sol[i])) for i, g in enumerate(groups)}
    pf = PowerFit(y, x, {g: float(sol[-1]) for g in groups}, coef, {g: float(se[-1]) for g in groups},
                  {g: coef[g] * float(se[i]) for i, g in enumerate(groups)},
                  float(np.mean(resid ** 2)), len(ly), True, x_range=xr)
    pf.check_flat()
    return pf


def fixed_effects_solutions(df: pd.DataFrame, y_matrix: np.ndarray, x: str = "utd",
                            group: str = "env") -> np.ndarray:
    """Intercepts (one row per group, in order of appearance) and the shared slope (last row)
    for many response columns at once (one least-squares solve)."""
    X = design_matrix(df, x, group, list(pd.unique(df[group])))
    sol, *_ = np.linalg.lstsq(X, np.log(y_matrix), rcond=None)
    return sol


def fixed_effects_bootstrap(df: pd.DataFrame, y_matrix: np.ndarray, x: str = "utd",
                            group: str = "env") -> np.ndarray:
    """Shared slopes for many response columns at once (one least-squares solve)."""
    return fixed_effects_solutions(df, y_matrix, x, group)[-1]


def add_bootstrap(pf: PowerFit, df: pd.DataFrame, boot: np.ndarray, group: str = "env") -> None:
    """Seed-bootstrap SEs and percentile intervals of slope and coef from resampled responses
    ``boot`` (rows of ``df`` x resamples; columns with a missing or non-positive value are
    dropped), then recheck flatness with the bootstrap SE. Shared slopes get one pooled SE."""
    cols = np.isfinite(boot).all(axis=0) & (boot > 0).all(axis=0)
    if cols.sum() < 2:
        return
    se, iv = {"slope": {}, "coef": {}}, {"slope": {}, "coef": {}}
    parts = [(list(pf.slope), df, boot)] if pf.shared else \
        [([g], df[df[group] == g], boot[(df[group] == g).to_numpy()]) for g in pf.slope]
    for groups, sub, b in parts:
        sol = fixed_effects_solutions(sub, b[:, cols], pf.x, group)
        lo, hi = percentile_interval(sol, axis=1)
        names = list(pd.unique(sub[group]))
        for g in groups:
            i = names.index(g)
            se["slope"][g], iv["slope"][g] = float(np.std(sol[-1], ddof=1)), [float(lo[-1]), float(hi[-1])]
            c = np.exp(sol[i])
            se["coef"][g], iv["coef"][g] = float(np.std(c, ddof=1)), [float(np.exp(lo[i])), float(np.exp(hi[i]))]
            pf.samples[g] = np.stack([c, sol[-1]], axis=1).tolist()
    pf.bootstrap_se, pf.interval = se, iv
    pf.check_flat()
