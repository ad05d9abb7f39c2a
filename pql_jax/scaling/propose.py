"""Proposals: recommended (utd, batch_size, lr, model_size) from the fits of `fit all`, for a
list of UTDs, for a target budget F, or for a data target D (the cheapest settings that reach
each threshold J within D env steps)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from pql_jax.errors import UserError
from pql_jax.scaling.hparams import depends_on_n
from pql_jax.scaling.powerlaw import percentile_interval
from pql_jax.scaling.settings import fill_nearest, nearest_setting, round_batch, round_sig

__all__ = ["fill_nearest", "nearest_setting", "propose", "round_batch", "round_sig", "write_proposals"]


def _load(dir_: str, name: str):
    path = os.path.join(dir_, name)
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def _power(fit: dict | None, env: str, x: float) -> float:
    """coef * x^(-slope) from a fit_*.json power fit; NaN when absent."""
    if not fit or env not in fit["params"]:
        return float("nan")
    p = fit["params"][env]
    xr = fit.get("x_range") or []
    if (fit.get("flat") or {}).get(env) and len(xr) == 2:  # no dependence within the noise: a constant
        x = float(np.sqrt(xr[0] * xr[1]))
    return p["coef"] * x ** (-p["slope"])


def _power_samples(fit: dict | None, env: str, x: float) -> np.ndarray:
    """coef * x^(-slope) for every bootstrap resample stored with a power fit (empty without)."""
    fit = fit or {}
    s = np.asarray((fit.get("samples") or {}).get(env) or [], float).reshape(-1, 2)
    xr = fit.get("x_range") or []
    if (fit.get("flat") or {}).get(env) and len(xr) == 2:
        x = float(np.sqrt(xr[0] * xr[1]))
    return s[:, 0] * _paired(x, len(s)) ** (-s[:, 1])


def _paired(x, n: int):
    """``x`` as one value per resample: a scalar as is; samples (of the utd or N a budget row
    proposes) cycled to length ``n``, resample i of one law beside resample i of the other (both
    come from the same seed bootstrap, so the uncertainties combine as drawn together)."""
    x = np.asarray(x, float)
    return x if x.ndim == 0 else x[np.arange(n) % len(x)]


def _b_n(p, utd: float, n: float):
    """B*(sigma, N) = a / utd^alpha / (1 + (n_half / N)^beta) (parameters scalars or arrays)."""
    with np.errstate(over="ignore"):
        return p["a"] / utd ** p["alpha"] / (1 + (p["n_half"] / n) ** p["beta"])


def _batch(fits: dict, env: str, utd: float, n: float, utd_s, n_s) -> tuple[float, np.ndarray, str]:
    """Proposed batch size, its bootstrap samples (from B*(sigma, N) when fitted and B*
    changes with N (``depends_on_n``), else B*(sigma)), the samples at ``utd_s`` and ``n_s``
    (scalars, or samples of a budget row's), and which law gave it (``_law_source``)."""
    bn = fits.get("fit_batch_size_n")
    if bn and env in bn["params"] and np.isfinite(n) and depends_on_n(bn.get("flags"), env):
        theta = np.exp(np.asarray((bn.get("bootstrap_log_params") or {}).get(env) or [], float).reshape(-1, 4))
        return _b_n(bn["params"][env], utd, n), _b_n(dict(zip(("a", "alpha", "n_half", "beta"), theta.T)),
                                                      _paired(utd_s, len(theta)), _paired(n_s, len(theta))), \
            "law B*(utd, N)"
    fb = fits.get("fit_batch_size")
    return _power(fb, env, utd), _power_samples(fb, env, utd_s), _law_source(fb, env)


def _law_source(fit: dict | None, env: str) -> str:
    """'law', 'law (flat: a constant)', or '' where the fit file has no law for ``env``."""
    if not fit or env not in fit.get("params", {}):
        return ""
    return "law (flat: a constant)" if (fit.get("flat") or {}).get(env) else "law"


def _interval(samples: np.ndarray) -> tuple[float, float]:
    """90% percentile interval of bootstrap predictions (3 significant figures; NaN without)."""
    s = samples[np.isfinite(samples)]
    if len(s) < 2:
        return float("nan"), float("nan")
    lo, hi = percentile_interval(s)
    return round_sig(lo), round_sig(hi)


def propose(dir_: str, utds=None, budget: float | None = None, env: str | None = None,
            data: float | None = None, fill: bool = True) -> pd.DataFrame:
    """Table of recommended hyperparameters per env: for each utd in ``utds``; for the
    budget-optimal utd (and N) of ``budget`` from the sigma*(F) (and N*(F)) power laws, with the
    threshold J that budget reaches at its optimum; or, per threshold J, for the cheapest
    setting (least compute on the fitted Pareto frontier) that reaches J within ``data`` env
    steps. A batch size or learning rate that no law gives is, with ``fill``, the best value at
    the nearest swept utd (``fill_nearest``); ``batch_size_source`` / ``lr_source`` say where
    each came from. What the user must know besides the table (units, rows over their budget,
    thresholds out of reach) is in ``table.attrs['notes']`` and ``table.attrs['warnings']``."""
    if sum(x is not None for x in (utds, budget, data)) != 1:
        raise UserError("propose: give exactly one of --utd, --budget or --data")
    if not os.path.isdir(dir_):
        raise UserError(f"propose: no such directory {dir_} (run `pql-jax fit all` first)")
    fits = {n: _load(dir_, f"{n}.json") for n in ("fit_batch_size", "fit_learning_rate",
                                                   "fit_batch_size_n", "fit_budget")}
    if not any(fits.values()):
        raise UserError(f"propose: {dir_} holds no fit_*.json files from `pql-jax fit all`")
    envs = _envs(dir_, fits)
    if env is not None:
        if env not in envs:
            raise UserError(f"propose: unknown env {env!r} (known: {', '.join(envs)})")
        envs = [env]
    sizes = _model_sizes(dir_)
    rows, notes, warnings, misses = [], [], [], []
    for e in envs:
        if budget is not None:
            rows.append(_for_budget(fits, e, budget, sizes.get(e, np.nan), dir_))
        elif data is not None:
            rows += _for_data(dir_, fits, e, data, sizes.get(e, np.nan), misses)
        else:
            for u in utds:
                if not u > 0:
                    raise UserError(f"propose: utd must be positive, got {u:g}")
                rows.append(_row(fits, e, u, sizes.get(e, np.nan)))
    if data is not None:
        if not rows:
            e, J, least, at = min(misses, key=lambda m: m[2] if np.isfinite(m[2]) else np.inf)
            raise UserError(f"propose --data {data:g}: no threshold is reached within {data:g} env steps at any utd "
                            f"searched (the least data: {e} J={J:g} {_least(least, at)})")
        notes += [f"{e} J={J:g}: not reached within {data:g} env steps at any utd searched ({_least(least, at)}): "
                  "no row" for e, J, least, at in misses]
    table = pd.DataFrame(rows)
    if len(table):
        table["extrapolated"] = [_outside(fits.get("fit_budget") or {}, r) for r in table.to_dict("records")]
        if fill:
            table = _fill(table, dir_, notes)
    unit = _compute_unit(dir_, fits)
    if budget is not None or data is not None:
        table["budget_unit"] = unit
        if unit != "FLOPs":
            read = f"--budget {budget:g} was read as FLOPs per critic parameter: " if budget is not None else ""
            notes.append(f"{read}budget and compute are FLOPs per critic parameter, because the curves had no "
                         "model_size column (N = 1); multiply by the critic's parameter count, or refit with "
                         "--model-size N")
    if budget is not None:
        fb = (fits.get("fit_budget") or {}).get("budget_range") or []
        for r in table[table["over_budget"]].itertuples():
            beyond = f": {budget:.3g} lies outside the fitted budgets {fb[0]:.3g} to {fb[1]:.3g}" \
                if len(fb) == 2 and not fb[0] <= budget <= fb[1] else ""
            warnings.append(f"{r.env}: the predicted compute {r.compute_pred:.3g} exceeds the budget {budget:.3g}, so "
                            f"the budget laws do not hold together there{beyond}; this row is not a setting for that "
                            "budget (over_budget)")
    table.attrs["notes"], table.attrs["warnings"] = notes, warnings
    return table


def _fill(table: pd.DataFrame, dir_: str, notes: list) -> pd.DataFrame:
    """``fill_nearest`` from the directory's best_hparams.csv; a note says why a law is missing
    (the pipeline's own note, from summary.json, where it gave one)."""
    path = os.path.join(dir_, "best_hparams.csv")
    best = pd.read_csv(path) if os.path.isfile(path) else None
    out, filled = fill_nearest(table, best)
    why = [n for n in ((_load(dir_, "summary.json") or {}).get("notes") or []) if " law not fitted" in str(n)]
    for name, hp in (("batch_size", "batch_size"), ("learning_rate", "lr")):
        if any(hp in names for names in filled):
            reason = next((n for n in why if n.startswith(name)), f"no {name} law in {dir_}")
            notes.append(f"{hp} is the best value at the nearest swept utd (best_hparams.csv): {reason}")
    return out


def _compute_unit(dir_: str, fits: dict) -> str:
    """'FLOPs', or 'FLOPs per critic parameter' where the curves had no model_size column (as
    fit_budget.json says; in directories written before it did: budget.csv's N of 1)."""
    fb = fits.get("fit_budget") or {}
    if "compute_unit" in fb:
        return fb["compute_unit"]
    path = os.path.join(dir_, "budget.csv")
    if os.path.isfile(path):
        t = pd.read_csv(path)
        if "model_size" in t and (t["model_size"] == 1).all():
            return "FLOPs per critic parameter"
    return "FLOPs"


def _outside(fb: dict, row: dict) -> bool:
    """Whether a proposal lies outside the fitted utd / model-size / budget range."""
    def out(key, v):
        r = fb.get(key)
        return bool(r and v is not None and np.isfinite(v) and not r[0] * (1 - 1e-9) <= v <= r[1] * (1 + 1e-9))
    return out("utd_range", row.get("utd")) or out("model_size_range", row.get("model_size")) \
        or out("budget_range", row.get("budget"))


def _for_budget(fits, env, F, n_default, dir_: str | None = None) -> dict:
    """The proposal at the budget-optimal utd*(F) (and N*(F)); with the laws' bootstrap refits
    stored, its intervals carry the uncertainty of utd*(F) and N*(F) as well (utd_lo/hi,
    model_size_lo/hi, and batch size / lr evaluated at each refit's utd and N). ``threshold``:
    the J whose budget optimum is F (``_budget_threshold``); ``over_budget``: the predicted
    compute exceeds F."""
    laws = (fits.get("fit_budget") or {}).get("laws") or {}
    if "utd" not in laws or env not in laws["utd"]["coef"]:
        raise UserError("propose --budget: no sigma*(F) law in this directory (needs >= 3 thresholds per env)")
    if not F > 0:
        raise UserError(f"propose: budget must be positive, got {F:g}")
    utd, utd_s = _budget_law(laws["utd"], env, F)
    n, n_s = _budget_law(laws["model_size"], env, F) if "model_size" in laws else (n_default, np.array([]))
    J, J_source = _budget_threshold(dir_, env, F)
    row = {"env": env, "threshold": J, "threshold_source": J_source,
           **_row(fits, env, utd, n, utd_s if len(utd_s) else utd, n_s if len(n_s) else n)}
    row["budget"] = F
    row["utd_lo"], row["utd_hi"] = _interval(utd_s)
    if "model_size" in laws:
        row["model_size_lo"], row["model_size_hi"] = _interval(n_s)
    for y in ("data", "compute"):
        if y in laws:
            row[f"{y}_pred"], s = _budget_law(laws[y], env, F)
            row[f"{y}_pred_lo"], row[f"{y}_pred_hi"] = _interval(s)
    row["over_budget"] = bool(row.get("compute_pred", 0.0) > F)
    return row


def _budget_threshold(dir_: str | None, env: str, F: float) -> tuple[float, str]:
    """The threshold J a budget F is for: the J whose budget-optimal F* (budget.csv) is F, in log F
    between the fitted thresholds; beyond the highest, at least that one (NaN below the lowest)."""
    path = os.path.join(dir_, "budget.csv") if dir_ else ""
    if not os.path.isfile(path):
        return float("nan"), "unknown (no budget.csv)"
    t = pd.read_csv(path)
    t = t[(t["env"].astype(str) == str(env)) & np.isfinite(t["budget"]) & ~_refused(t)].sort_values("budget")
    if t.empty:
        return float("nan"), "unknown (no budget optimum for this env)"
    Fs, Js = t["budget"].to_numpy(float), t["threshold"].to_numpy(float)
    if F < Fs[0] * (1 - 1e-9):
        return float("nan"), f"below J={Js[0]:g}: its optimum needs F*={Fs[0]:.3g}"
    if F > Fs[-1] * (1 + 1e-9):
        return float(Js[-1]), f"at least J={Js[-1]:g} (its optimum needs F*={Fs[-1]:.3g})"
    J = float(np.interp(np.log(F), np.log(Fs), Js))
    i = int(min(np.searchsorted(Fs, F), len(Fs) - 1))
    if np.isclose(F, Fs[i], rtol=1e-6) or len(Fs) == 1:
        return float(Js[i]), f"the optimum of J={Js[i]:g}"
    return J, f"between the optima of J={Js[i - 1]:g} (F*={Fs[i - 1]:.3g}) and J={Js[i]:g} (F*={Fs[i]:.3g})"


def _for_data(dir_: str, fits: dict, env: str, D: float, n_default: float, misses: list) -> list[dict]:
    """Per threshold J of ``env``: the cheapest setting (least compute C) that reaches J within
    ``D`` env steps, on the fitted data-compute Pareto frontier (pareto.csv, at the N of the
    budget optimum), refined between grid points in log-log where D binds; a J out of reach at
    every searched utd goes into ``misses`` as (env, J, least data, its utd) instead."""
    if not D > 0:
        raise UserError(f"propose: --data must be positive, got {D:g}")
    path = os.path.join(dir_, "pareto.csv")
    if not os.path.isfile(path):
        raise UserError(f"propose --data: no pareto.csv in {dir_} (run `pql-jax fit all`)")
    front = pd.read_csv(path)
    delta = float((fits.get("fit_budget") or {}).get("delta") or np.nan)
    rows = []
    for _, f in front[front["env"].astype(str) == str(env)].groupby("level"):
        f = f.sort_values("utd")
        u, d, c = (f[k].to_numpy(float) for k in ("utd", "data", "compute"))
        J = float(f["threshold"].iloc[0])
        d = np.where(_refused(f), np.nan, d)  # where the levels' laws cross, D_J is no prediction
        ok = np.isfinite(d) & np.isfinite(c) & (d <= D)
        if not ok.any():
            if not np.isfinite(d).any():
                misses.append((env, J, float("nan"), float("nan")))
                continue
            i = int(np.nanargmin(d))
            misses.append((env, J, float(d[i]), float(u[i])))
            continue
        i = int(np.flatnonzero(ok)[np.argmin(c[ok])])
        ui, ci, di = u[i], c[i], d[i]
        with np.errstate(all="ignore"):
            for j in (i - 1, i + 1):  # where D binds, the optimum lies between i and its neighbour out of reach
                if 0 <= j < len(u) and np.isfinite(d[j]) and d[j] > D and c[j] > 0:
                    t = (np.log(D) - np.log(d[i])) / (np.log(d[j]) - np.log(d[i]))
                    cj = float(np.exp(np.log(c[i]) + t * (np.log(c[j]) - np.log(c[i]))))
                    if np.isfinite(cj) and cj < ci:
                        ui, ci, di = float(np.exp(np.log(u[i]) + t * (np.log(u[j]) - np.log(u[i])))), cj, float(D)
        n = float(f["model_size"].iloc[0]) if np.isfinite(n_default) else n_default
        row = _row(fits, env, float(ui), n)
        rows.append({"env": env, "threshold": J, "data_target": float(D),
                     **{k: v for k, v in row.items() if k != "env"}, "data_pred": float(di), "compute_pred": float(ci),
                     "budget_pred": float(ci + delta * di)})
    return rows


def _least(least: float, at: float) -> str:
    """The least data a threshold needs on its frontier, for a miss's message."""
    if not np.isfinite(least):
        return "refused at every utd searched: the levels' D_J laws cross"
    return f"needs {least:.3g}, at utd {at:.3g}"


def _refused(table: pd.DataFrame) -> np.ndarray:
    """Rows the pipeline refused (budget.csv / pareto.csv ``refused``: the levels' D_J laws cross
    there); none in files written before the column existed."""
    if "refused" not in table:
        return np.zeros(len(table), bool)
    col = table["refused"]  # all-empty reads back as float NaN
    return (col.notna() & (col.astype(str).str.len() > 0)).to_numpy()


def _budget_law(law: dict, env: str, F: float) -> tuple[float, np.ndarray]:
    """coef F^exponent of a budget power law, and the same for each stored bootstrap refit."""
    s = np.asarray((law.get("samples") or {}).get(env) or [], float).reshape(-1, 2)
    return law["coef"][env] * F ** law["exponent"], s[:, 0] * F ** s[:, 1]


def _row(fits, env, utd, n, utd_s=None, n_s=None) -> dict:
    """One proposal with the 90% interval of the seed bootstrap's refits at this utd (and N):
    batch_size_lo/hi, lr_lo/hi (NaN when the fit files hold no refits). ``utd_s``, ``n_s``:
    samples of the utd and N themselves (a budget row's), else the intervals are conditional on
    the row's utd and N."""
    utd_s, n_s = (utd if utd_s is None else utd_s), (n if n_s is None else n_s)
    b, b_s, b_src = _batch(fits, env, utd, n, utd_s, n_s)
    fl = fits.get("fit_learning_rate")
    lr = _power(fl, env, utd)
    (b_lo, b_hi), (lr_lo, lr_hi) = _interval(b_s), _interval(_power_samples(fl, env, utd_s))
    return {"env": env, "utd": utd, "batch_size": round_batch(b) if np.isfinite(b) else np.nan,
            "batch_size_lo": b_lo, "batch_size_hi": b_hi, "lr": round_sig(lr), "lr_lo": lr_lo, "lr_hi": lr_hi,
            "model_size": round_sig(n) if np.isfinite(n) else np.nan,
            "batch_size_source": b_src if np.isfinite(b) else "no batch_size law",
            "lr_source": _law_source(fl, env) if np.isfinite(lr) else "no lr law"}


def _envs(dir_: str, fits: dict) -> list:
    for f in fits.values():
        if f and "params" in f:
            return list(f["params"])
    laws = (fits.get("fit_budget") or {}).get("laws") or {}
    return list(next(iter(laws.values()))["coef"]) if laws else []


def _model_sizes(dir_: str) -> dict:
    path = os.path.join(dir_, "budget.csv")
    if not os.path.isfile(path):
        return {}
    t = pd.read_csv(path)
    if "model_size" not in t or (t["model_size"] == 1).all():
        return {}
    return t.groupby("env")["model_size"].median().to_dict()


def write_proposals(table: pd.DataFrame, path: str) -> str:
    """Write the table via a temporary file, so a failure leaves no partial CSV."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        table.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
