"""Learning curves to crossings: seed means, isotonic fits, interpolated first crossings, and
the seed bootstrap (seeded per run group, so results do not depend on which other groups exist).
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import isotonic_regression

from pql_jax.errors import UserError
from pql_jax.scaling.io import HPARAM_COLUMNS, sorted_levels

#: Columns of a cell: the unit whose best hyperparameters are chosen and whose D_J is fitted.
CELL_COLUMNS = ("env", "utd", "model_size")


@dataclass
class RunGroup:
    """One hyperparameter setting of one env: its seeds' curves on a common step grid."""

    key: tuple  # (env, *hyperparameter values)
    steps: np.ndarray  # (T,)
    returns: np.ndarray  # (n_seeds, T)


def group_keys(df: pd.DataFrame) -> list[str]:
    """The columns that identify a run group: env plus the hyperparameter columns present."""
    return ["env"] + [c for c in HPARAM_COLUMNS if c in df.columns]


def _common_grid(block: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Seeds x steps matrix; gaps are filled by linear interpolation between a seed's own
    logging points, a seed that stopped early (a row with ``stopped`` = 1, `pql_jax.run.early_stop`)
    keeps its last result from there on, and steps not covered by every seed are dropped."""
    wide = block.pivot(index="seed", columns="step", values="return")
    if wide.isna().to_numpy().any():
        wide = wide.interpolate(axis=1, limit_area="inside")
        if "stopped" in block.columns:
            # it stopped after its results held the highest threshold: its last result stands for
            # the rest of the run, so the other seeds' later steps keep a full seed mean
            early = block.loc[block["stopped"] == 1, "seed"].unique()
            wide.loc[early] = wide.loc[early].ffill(axis=1)
        wide = wide.dropna(axis=1)
    return wide.columns.to_numpy(float), wide.to_numpy(float)


def run_groups(df: pd.DataFrame) -> list[RunGroup]:
    """Split curves into run groups with a seeds x steps matrix each."""
    keys = group_keys(df)
    parts = _sorted_parts(df, keys)
    if parts is None:  # not sorted already: sort (stable) and group
        df = df.sort_values(keys + ["seed", "step"], kind="stable")
        parts = df.groupby(keys, sort=True).indices.items()
    seed, step, ret = (df[c].to_numpy(float) for c in ("seed", "step", "return"))
    out = []
    for key, pos in parts:
        key = key if isinstance(key, tuple) else (key,)
        n = len(np.unique(seed[pos]))
        st = step[pos].reshape(n, -1) if len(pos) % n == 0 else None
        if st is not None and (st == st[0]).all():  # fast path: every seed logs the same steps
            steps, mat = st[0], ret[pos].reshape(n, -1)
        else:
            steps, mat = _common_grid(df.iloc[pos])
        if len(steps) == 0:
            raise UserError(f"curves: the seeds of run {key} share no logging steps")
        out.append(RunGroup(tuple(key), steps, mat))
    return out


def _sorted_parts(df: pd.DataFrame, keys: list[str]):
    """(key, positions) of every run group as ``groupby(keys, sort=True).indices`` gives them,
    when the rows are already sorted by keys, seed and step (then the groups are runs of
    consecutive rows; no sort or hashing of the whole table); None otherwise (or when a key
    column is neither float nor object, whose groupby keys this does not reproduce)."""
    cols = [df[k].to_numpy() for k in keys]
    if not len(df) or any(c.dtype.kind not in "fO" for c in cols):
        return None
    level = sorted_levels(df, keys + ["seed", "step"])
    if level is None:
        return None
    starts = np.concatenate([[0], np.flatnonzero(level < len(keys)) + 1, [len(df)]])
    heads = [tuple(c[starts[:-1]].tolist()) for c in cols]  # Python str / float, as groupby's keys
    out = []
    for i, key in enumerate(zip(*heads)):
        if any(v != v for v in key):  # groupby leaves out groups with a NaN key
            return None
        out.append((key, np.arange(starts[i], starts[i + 1])))
    return out


def isotonic_rows(y: np.ndarray) -> np.ndarray:
    """Non-decreasing least-squares fit of every row, in one call of scipy's PAVA: each row is
    lifted above the previous one's maximum and the rows are concatenated; no block can pool
    across a boundary (every mean of a row lies below every value of the next), so the fit of
    the concatenation minus the lifts is each row's own fit (one call instead of one per row)."""
    y = np.atleast_2d(np.asarray(y, float))
    if len(y) == 1:
        return isotonic_regression(y[0]).x[None]
    low = y.min(axis=1)
    span = y.max(axis=1) - low
    lift = np.concatenate([[0.0], np.cumsum(span[:-1] + 1.0)]) - low
    lift -= lift.mean()  # keep the lifted values centred: less rounding in the long sum
    flat = isotonic_regression((y + lift[:, None]).ravel()).x
    return flat.reshape(y.shape) - lift[:, None]


def first_crossings(steps: np.ndarray, iso: np.ndarray, thresholds) -> np.ndarray:
    """First step at which each monotone row reaches each threshold, linearly interpolated
    between the two logging points around it; NaN where never reached. Shape (rows, n_J)."""
    iso = np.atleast_2d(iso)
    J = np.asarray(thresholds, float)
    T = iso.shape[1]
    # rows are monotone: the count of values below J is the index of the first value >= J
    # (argmax stops at the first True; counting a 3-D comparison took 4x as long)
    first = np.zeros((len(iso), len(J)), np.intp)
    for i, j in enumerate(J):
        first[:, i] = np.where(iso[:, -1] < j, T, np.argmax(iso >= j, axis=1))
    hi = np.minimum(first, T - 1)
    lo = np.maximum(first - 1, 0)
    y0 = np.take_along_axis(iso, lo, axis=1)
    y1 = np.take_along_axis(iso, hi, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(y1 > y0, (J[None, :] - y0) / (y1 - y0), 0.0)
    out = steps[lo] + frac * (steps[hi] - steps[lo])
    out = np.where(first == 0, steps[0], out)
    return np.where(first >= T, np.nan, out)


def group_rng(seed: int, key: tuple) -> np.random.Generator:
    """A generator seeded by the global seed and a stable hash of the group key."""
    return np.random.default_rng([int(seed), zlib.crc32(repr(key).encode())])


def resample_means(group: RunGroup, n_resamples: int, seed: int) -> np.ndarray:
    """Row 0: the seed mean; rows 1..K: means over seeds drawn with replacement, rescaled about
    the seed mean by sqrt(n / (n - 1)).

    The plain bootstrap of a mean of n seeds has variance s^2 (n - 1) / n^2, short of the
    mean's s^2 / n by (n - 1) / n (a third too narrow with 3 seeds); stretching the resample
    weights about 1 / n restores it (the rescaled bootstrap), which brings the 90% intervals
    of the fits to about 90% coverage with the few seeds RL sweeps have."""
    n = group.returns.shape[0]
    counts = group_rng(seed, group.key).multinomial(n, np.full(n, 1.0 / n), size=n_resamples)
    stretch = np.sqrt(n / (n - 1)) if n > 1 else 1.0
    weights = np.vstack([np.full((1, n), 1.0 / n), 1.0 / n + stretch * (counts / n - 1.0 / n)])
    return weights @ group.returns


def check_seed_variation(groups: list[RunGroup]) -> None:
    """Raise when no run group has two different seed curves (the bootstrap would be empty)."""
    for g in groups:
        r = g.returns
        if r.shape[0] > 1 and not np.allclose(r, r[0]):
            return
    raise UserError("curves: all seeds are identical (or one seed per run) in every run group; "
                    "the seed bootstrap needs at least 2 different seeds (or use --resamples 0)")


def start_levels(groups: list[RunGroup], keys: list[str], base: float | None = None,
                 shared: bool = False) -> pd.DataFrame:
    """Per env (or '*' when ``shared``): ``base`` (default: the highest starting level of the
    isotonic seed-mean curves), ``top`` (the best level every (env, utd, model_size) cell reaches
    with its best hyperparameters) and ``noise`` (median noise level of the seed-mean curves)."""
    at = [keys.index(c) for c in CELL_COLUMNS if c in keys]
    rows = []
    for g in groups:
        mean = g.returns.mean(axis=0)
        iso = isotonic_rows(mean)[0]
        rows.append({"env": "*" if shared else g.key[0], "cell": tuple(g.key[i] for i in at), "start": iso[0],
                     "final": iso[-1], "noise": mean_curve_noise(mean)})
    t = pd.DataFrame(rows)
    out = []
    for env, sub in t.groupby("env"):
        out.append({"env": env, "base": sub["start"].max() if base is None else float(base),
                    "top": sub.groupby("cell")["final"].max().min(), "noise": float(np.nanmedian(sub["noise"]))})
    return pd.DataFrame(out).set_index("env")


def auto_thresholds(groups: list[RunGroup], keys: list[str], n: int = 5,
                    base: float | None = None, shared: bool = False) -> dict:
    """Per env (or one set for all when ``shared``): n thresholds evenly spaced strictly between
    ``NOISE_MARGIN`` noise levels above ``base`` (default: the highest starting level) and the
    best level that every (env, utd, model_size) cell reaches with its best hyperparameters.
    Refused (UserError) when that range is empty: the curves do not rise out of their noise."""
    out = {}
    for env, r in start_levels(groups, keys, base, shared).iterrows():
        where = "any env" if shared else f"env {env}"
        if not r.top > r.base:
            raise UserError(f"no threshold is reached by every utd of {where}: best common level "
                            f"{r.top:.4g} is not above the base {r.base:.4g}")
        lo = r.base + NOISE_MARGIN * r.noise
        if r.top - lo < r.noise:  # flat noisy curves reach ~1 noise level above the base by chance
            raise UserError(f"auto thresholds would lie inside the seed noise for {where}: the best common level "
                            f"{r.top:.4g} is only {(r.top - r.base) / max(r.noise, 1e-300):.1f} x the noise of the "
                            f"seed-mean curves ({r.noise:.3g}) above the base {r.base:.4g} (needs "
                            f"{NOISE_MARGIN + 1:g} x); the curves do not rise measurably: give --thresholds, more "
                            "seeds or longer runs")
        out[env] = lo + (r.top - lo) * np.arange(1, n + 1) / (n + 1)
    return out


#: Auto thresholds start this many noise levels of the seed-mean curves above the base.
NOISE_MARGIN = 1.0


def mean_curve_noise(mean: np.ndarray) -> float:
    """Noise level of a seed-mean curve: the robust SD of its step-to-step differences over
    sqrt 2 (white noise shows fully, a smooth rise hardly at all)."""
    d = np.diff(np.asarray(mean, float))
    if len(d) < 2:
        return 0.0
    return float(np.median(np.abs(d - np.median(d))) / 0.6745 / np.sqrt(2))


def bootstrap_crossings(groups: list[RunGroup], thresholds: dict, n_resamples: int = 100,
                        seed: int = 0) -> np.ndarray:
    """Crossings D[g, k, j] for every group, resample (k = 0 is the plain seed mean) and
    threshold; NaN where not reached. ``thresholds`` maps env (or '*') to an array."""
    nj = len(next(iter(thresholds.values())))
    out = np.full((len(groups), n_resamples + 1, nj), np.nan)
    for i, g in enumerate(groups):
        J = thresholds.get(g.key[0], thresholds.get("*"))
        out[i] = first_crossings(g.steps, isotonic_rows(resample_means(g, n_resamples, seed)), J)
    return out


@dataclass
class CrossingBootstrap:
    """The crossings of every run group of a curves table, with the seed bootstrap."""

    groups: list  # RunGroup per hyperparameter setting
    keys: list  # the columns of a group's key (env, then the hyperparameter columns present)
    table: pd.DataFrame  # one row per group: its key columns
    thresholds: dict  # env (or '*') -> sorted thresholds, one per level
    D: np.ndarray  # (groups, 1 + resamples, levels): k = 0 the plain seed mean; NaN = not reached
    levels: pd.DataFrame | None = None  # ``start_levels``: base, top, noise per env (or '*')


def crossing_bootstrap(df: pd.DataFrame, thresholds=None, resamples: int = 100, seed: int = 0,
                       n_thresholds: int = 5, base: float | None = None, shared: bool = True,
                       check_seeds: bool = False) -> CrossingBootstrap:
    """Curves (from ``load_curves``) -> run groups -> thresholds -> bootstrapped crossings.

    ``thresholds``: a list for every env, a dict env (or '*') -> list, or None for
    ``n_thresholds`` auto-spaced ones (``auto_thresholds`` with ``base``, one set for all envs
    when ``shared``). ``check_seeds`` raises when no group has two different seed curves.
    """
    keys = group_keys(df)
    groups = run_groups(df)
    if check_seeds and resamples > 0:
        check_seed_variation(groups)
    levels = None  # the noise of the curves, to flag explicit thresholds inside it
    if thresholds is not None:
        levels = start_levels(groups, keys, base, shared=not isinstance(thresholds, dict))
    if thresholds is None:
        thr = auto_thresholds(groups, keys, n_thresholds, base, shared=shared)
    elif isinstance(thresholds, dict):
        thr = {env: np.sort(np.asarray(t, float)) for env, t in thresholds.items()}
    else:
        thr = {"*": np.sort(np.asarray(thresholds, float))}
    D = bootstrap_crossings(groups, thr, resamples, seed)
    return CrossingBootstrap(groups, keys, pd.DataFrame([g.key for g in groups], columns=keys), thr, D, levels)


def crossings_table(groups: list[RunGroup], keys: list[str], thresholds: dict,
                    D: np.ndarray) -> pd.DataFrame:
    """Long table: one row per (run group, threshold) with the crossing, its bootstrap SE and
    the fraction of resamples that reached the threshold."""
    nj = D.shape[2]
    J = np.array([thresholds.get(g.key[0], thresholds.get("*")) for g in groups], float).reshape(len(groups), nj)
    # each (group, threshold)'s resamples as one contiguous row: the same sums, in the same
    # order, as on the slice D[i, 1:, j] alone (one vectorised pass instead of a call per row)
    boot = np.ascontiguousarray(D[:, 1:, :].transpose(0, 2, 1)).reshape(len(groups) * nj, -1)
    cols = {k: np.repeat(np.array([g.key[i] for g in groups], dtype=object), nj).tolist() for i, k in enumerate(keys)}
    cols.update(level=np.tile(np.arange(nj), len(groups)), threshold=J.ravel(), data=D[:, 0, :].ravel(),
                data_std=nanstd(boot, axis=1) if boot.shape[1] else np.full(len(boot), np.nan),
                reached=np.isfinite(D[:, 0, :]).ravel(),
                reached_frac=np.isfinite(boot).mean(axis=1) if boot.shape[1] else np.full(len(boot), np.nan))
    return pd.DataFrame(cols)


def nanmean(x, axis=None):
    """Mean over the non-NaN entries (NaN, without a warning, where there are none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def nanstd(x, axis=None):
    """Sample SD (ddof=1) over the finite entries; NaN, without a warning, where fewer than 2."""
    x = np.asarray(x, float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanstd(np.where(np.isfinite(x), x, np.nan), axis=axis, ddof=1)
