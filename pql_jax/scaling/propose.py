"""Proposals: recommended (utd, batch_size, lr, model_size) from the fits of `fit all`, for a
list of UTDs or for a target budget F."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from pql_jax.errors import UserError
from pql_jax.scaling.hparams import depends_on_n
from pql_jax.scaling.powerlaw import percentile_interval


def round_batch(b: float, multiple: int = 16) -> int:
    """Batch size rounded to the nearest multiple of 16 (at least 16)."""
    return int(max(multiple, multiple * np.floor(float(b) / multiple + 0.5)))


def round_sig(x: float, digits: int = 3) -> float:
    """x rounded to 3 significant figures."""
    return float(f"{float(x):.{digits - 1}e}") if np.isfinite(x) and x != 0 else float(x)


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


def _batch(fits: dict, env: str, utd: float, n: float, utd_s, n_s) -> tuple[float, np.ndarray]:
    """Proposed batch size and its bootstrap samples (from B*(sigma, N) when fitted and B*
    changes with N (``depends_on_n``), else B*(sigma)), the samples at ``utd_s`` and ``n_s``
    (scalars, or samples of a budget row's)."""
    bn = fits.get("fit_batch_size_n")
    if bn and env in bn["params"] and np.isfinite(n) and depends_on_n(bn.get("flags"), env):
        theta = np.exp(np.asarray((bn.get("bootstrap_log_params") or {}).get(env) or [], float).reshape(-1, 4))
        return _b_n(bn["params"][env], utd, n), _b_n(dict(zip(("a", "alpha", "n_half", "beta"), theta.T)),
                                                      _paired(utd_s, len(theta)), _paired(n_s, len(theta)))
    fb = fits.get("fit_batch_size")
    return _power(fb, env, utd), _power_samples(fb, env, utd_s)


def _interval(samples: np.ndarray) -> tuple[float, float]:
    """90% percentile interval of bootstrap predictions (3 significant figures; NaN without)."""
    s = samples[np.isfinite(samples)]
    if len(s) < 2:
        return float("nan"), float("nan")
    lo, hi = percentile_interval(s)
    return round_sig(lo), round_sig(hi)


def propose(dir_: str, utds=None, budget: float | None = None, env: str | None = None) -> pd.DataFrame:
    """Table of recommended hyperparameters per env: for each utd in ``utds``, or for the
    budget-optimal utd (and N) of ``budget`` from the sigma*(F) (and N*(F)) power laws."""
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
    rows = []
    for e in envs:
        if budget is not None:
            rows.append(_for_budget(fits, e, budget, sizes.get(e, np.nan)))
        else:
            for u in utds:
                if not u > 0:
                    raise UserError(f"propose: utd must be positive, got {u:g}")
                rows.append(_row(fits, e, u, sizes.get(e, np.nan)))
    table = pd.DataFrame(rows)
    if len(table):
        table["extrapolated"] = [_outside(fits.get("fit_budget") or {}, r) for r in table.to_dict("records")]
    return table


def _outside(fb: dict, row: dict) -> bool:
    """Whether a proposal lies outside the fitted utd / model-size / budget range."""
    def out(key, v):
        r = fb.get(key)
        return bool(r and v is not None and np.isfinite(v) and not r[0] * (1 - 1e-9) <= v <= r[1] * (1 + 1e-9))
    return out("utd_range", row.get("utd")) or out("model_size_range", row.get("model_size")) \
        or out("budget_range", row.get("budget"))


def _for_budget(fits, env, F, n_default) -> dict:
    """The proposal at the budget-optimal utd*(F) (and N*(F)); with the laws' bootstrap refits
    stored, its intervals carry the uncertainty of utd*(F) and N*(F) as well (utd_lo/hi,
    model_size_lo/hi, and batch size / lr evaluated at each refit's utd and N)."""
    laws = (fits.get("fit_budget") or {}).get("laws") or {}
    if "utd" not in laws or env not in laws["utd"]["coef"]:
        raise UserError("propose --budget: no sigma*(F) law in this directory (needs >= 3 thresholds per env)")
    if not F > 0:
        raise UserError(f"propose: budget must be positive, got {F:g}")
    utd, utd_s = _budget_law(laws["utd"], env, F)
    n, n_s = _budget_law(laws["model_size"], env, F) if "model_size" in laws else (n_default, np.array([]))
    row = _row(fits, env, utd, n, utd_s if len(utd_s) else utd, n_s if len(n_s) else n)
    row["budget"] = F
    row["utd_lo"], row["utd_hi"] = _interval(utd_s)
    if "model_size" in laws:
        row["model_size_lo"], row["model_size_hi"] = _interval(n_s)
    for y in ("data", "compute"):
        if y in laws:
            row[f"{y}_pred"], s = _budget_law(laws[y], env, F)
            row[f"{y}_pred_lo"], row[f"{y}_pred_hi"] = _interval(s)
    return row


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
    b, b_s = _batch(fits, env, utd, n, utd_s, n_s)
    fl = fits.get("fit_learning_rate")
    lr = _power(fl, env, utd)
    (b_lo, b_hi), (lr_lo, lr_hi) = _interval(b_s), _interval(_power_samples(fl, env, utd_s))
    return {"env": env, "utd": utd, "batch_size": round_batch(b) if np.isfinite(b) else np.nan,
            "batch_size_lo": b_lo, "batch_size_hi": b_hi, "lr": round_sig(lr), "lr_lo": lr_lo, "lr_hi": lr_hi,
            "model_size": round_sig(n) if np.isfinite(n) else np.nan}


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
