"""Warnings about fits that should not be read as laws: parameters the data do not determine
(SE above the value, percentile intervals spanning orders of magnitude), parameters at a search
bound, exactly determined fits, optimiser failures, flat laws, best values at the edge of the
swept grid, extrapolated optima, budget exponents whose sign is implausible or undetermined.
One row per problem: quantity, group, param, problem."""

from __future__ import annotations

import re
from statistics import NormalDist

import numpy as np
import pandas as pd

from pql_jax.scaling.powerlaw import COVERAGE, PowerFit, percentile_interval

#: A percentile interval whose hi / lo exceeds this spans orders of magnitude.
ORDERS = 100.0
FLAG_COLUMNS = ["quantity", "group", "param", "problem"]
#: Sign of the exponent of y*(F) that F = C + delta D fixes: C*(F) rises with the budget (more
#: budget cannot buy less compute at the optimum); D*(F) has no fixed sign unless C*(F) falls
#: (then D*(F) must rise: both cannot fall); utd*(F) and N*(F) have none.
BUDGET_SIGNS = {"compute": 1}
#: An exponent, its SE or an interval end below this is zero to rounding (a law fitted exactly,
#: such as a constant utd*(F) when every optimum sits at the same end of the utd grid).
ROUNDING = 1e-9


def _finite(*vals) -> list[float]:
    return [float(v) for v in vals if v is not None and np.isfinite(v)]


def parameter_flags(quantity: str, group, params: dict, se: dict, bootstrap_se: dict | None = None,
                    interval: dict | None = None, atol: float = 0.0) -> list[dict]:
    """Flags of one group's parameters: SE (Hessian or bootstrap) above |value| (+ ``atol``, the
    rounding of a value that may be 0), interval spanning orders of magnitude (positive
    parameters only)."""
    out = []
    for p, v in params.items():
        if v is None or not np.isfinite(v):
            continue
        errs = _finite((se or {}).get(p), (bootstrap_se or {}).get(p))
        if errs and max(errs) > abs(v) + atol:
            out.append({"quantity": quantity, "group": group, "param": p,
                        "problem": f"SE {max(errs):.3g} exceeds the value {v:.3g}: not determined by this data"})
        iv = (interval or {}).get(p)  # hi may be inf (a derived parameter's overflow)
        if iv is not None and len(iv) == 2 and None not in iv and v > 0 and iv[0] > 0 and iv[1] / iv[0] > ORDERS:
            out.append({"quantity": quantity, "group": group, "param": p,
                        "problem": f"90% interval [{iv[0]:.3g}, {iv[1]:.3g}] spans orders of magnitude"})
    return out


def law_flags(quantity: str, lf) -> list[dict]:
    """Flags of a ``LawFit``: its own (bounds, optimiser, exact fits) and its parameters'."""
    out = [{"quantity": quantity, **f} for f in lf.flags]
    for g, p in lf.params.items():
        out += parameter_flags(quantity, g, p, lf.se.get(g, {}), lf.bootstrap_se.get(g), lf.interval.get(g))
    return out


def power_flags(quantity: str, pf) -> list[dict]:
    """Flags of a ``PowerFit``: flat groups, exactly determined fits, undetermined slopes,
    coefficients and betas (``beta_flags``)."""
    out = []
    for g in pf.slope:
        if pf.flat.get(g):
            out.append({"quantity": quantity, "group": g, "param": "slope",
                        "problem": f"no dependence on {pf.x} within the noise (slope {pf.slope[g]:.3g}, "
                                   f"SE {pf.slope_uncertainty(g):.3g}): a constant, not a law"})
        elif not np.isfinite(pf.slope_se.get(g, np.nan)):
            out.append({"quantity": quantity, "group": g, "param": "",
                        "problem": "exactly determined (as many points as parameters): no uncertainty estimate"})
        else:
            se = {k: pf.slope_se[g] if k == "slope" else pf.coef_se[g] for k in ("slope", "coef")}
            bse = {k: v.get(g) for k, v in pf.bootstrap_se.items()}
            iv = {k: v.get(g) for k, v in pf.interval.items() if k == "coef"}
            out += parameter_flags(quantity, g, {"slope": pf.slope[g], "coef": pf.coef[g]}, se, bse, iv)
            out += beta_flags(quantity, pf, g)
    return out


def beta_flags(quantity: str, pf, group) -> list[dict]:
    """Flags of the beta = coef^(1/slope) of y = (beta / x)^slope that a ``PowerFit`` reports:
    its SE by the delta method in log space (from the slope's and coef's SEs, bootstrap where
    larger) and its 90% interval from the bootstrap refits' (coef, slope) pairs. beta is where
    the law reaches y = 1, often far outside the fitted x, so a small slope leaves it undetermined."""
    b, s, c = pf.beta(group), pf.slope[group], pf.coef[group]
    if not (np.isfinite(b) and b > 0 and s != 0 and c > 0):
        return []
    se_s = max(_finite(pf.slope_se.get(group), (pf.bootstrap_se.get("slope") or {}).get(group)) or [np.nan])
    se_c = max(_finite(pf.coef_se.get(group), (pf.bootstrap_se.get("coef") or {}).get(group)) or [np.nan])
    se_log = float(np.hypot(se_c / c / s, np.log(c) * se_s / s ** 2))
    iv = None
    pairs = np.asarray(pf.samples.get(group) or [], float)
    if pairs.ndim == 2 and len(pairs) > 1:
        with np.errstate(all="ignore"):
            lb = np.log(pairs[:, 0]) / pairs[:, 1]
        lb = lb[np.isfinite(lb)]
        if len(lb) > 1:
            with np.errstate(over="ignore"):
                iv = [float(np.exp(v)) for v in percentile_interval(lb)]
    return parameter_flags(quantity, group, {"beta": b}, {"beta": b * se_log if np.isfinite(se_log) else None},
                           None, {"beta": iv} if iv else None)


def law_dict_flags(quantity: str, d: dict) -> list[dict]:
    """``law_flags`` of a fit as written to JSON (``LawFit.to_dict``: the offset form of
    ``compare_forms``, a fit file): its own flags and its parameters'."""
    out = [{"quantity": quantity, "group": "", "param": "", **f} for f in d.get("flags") or []]
    for g, p in (d.get("params") or {}).items():
        out += parameter_flags(quantity, g, p, (d.get("se") or {}).get(g, {}), (d.get("bootstrap_se") or {}).get(g),
                               (d.get("interval") or {}).get(g))
    return out


def _z() -> float:
    """The normal quantile of a central ``COVERAGE`` interval (1.645 for 90%)."""
    return NormalDist().inv_cdf(0.5 + COVERAGE / 2)


def exponent_interval(law: dict) -> tuple[float, float]:
    """The 90% interval of a budget law's exponent: the resamples' percentiles, else the
    exponent +- z SE (normal); NaN where there is neither."""
    lo, hi = law.get("exponent_lo"), law.get("exponent_hi")
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        return float(lo), float(hi)
    e, se = law.get("exponent"), law.get("exponent_se")
    if e is None or se is None or not np.isfinite(se):
        return np.nan, np.nan
    return float(e - _z() * se), float(e + _z() * se)


def sign_flags(quantity: str, param: str, value: float, interval, sign: int | None, meaning: str) -> list[dict]:
    """A flag when an exponent's 90% interval excludes the sign the method fixes (implausible)
    or includes 0 (direction not determined). ``sign``: +1, -1 or None (no fixed sign);
    ``meaning``: what a value of the wrong sign would mean, in words."""
    lo, hi = interval
    if not (np.isfinite(lo) and np.isfinite(hi)) or value is None or not np.isfinite(value):
        return []
    iv = f"90% interval [{lo:.3g}, {hi:.3g}]"
    row = {"quantity": quantity, "group": "", "param": param}
    if sign is not None and (hi < -ROUNDING if sign > 0 else lo > ROUNDING):
        return [{**row, "problem": f"implausible: exponent {value:.3g}, {iv}: {meaning}"}]
    if not lo < -ROUNDING < ROUNDING < hi:
        return []
    if sign is not None and value * sign < 0:
        return [{**row, "problem": f"exponent {value:.3g}: {meaning}; its {iv} includes 0: the sign is not determined"}]
    return [{**row, "problem": f"{iv} includes 0: whether it rises or falls with the budget is not determined"}]


def budget_law_flags(laws: dict) -> list[dict]:
    """Flags of the budget power laws y*(F) = coef_env F^exponent (``budget.budget_power_laws``):
    the exponent's SE above its value, exactly determined fits and, where F = C + delta D fixes it
    (``BUDGET_SIGNS``), an exponent of implausible or undetermined sign. The coefficients are not
    flagged: a coefficient is the law's value at F = 1 FLOP, orders of magnitude below any fitted
    budget, so its SE always dwarfs it while saying nothing about the law where it is used (the
    proposals' intervals at a budget carry that)."""
    out = []
    falls = ((laws.get("compute") or {}).get("exponent") or 0.0) < 0
    for y, law in laws.items():
        q, e = f"{y}*(F) law", law.get("exponent")
        if law.get("exponent_se") is None or not np.isfinite(law["exponent_se"]):
            out.append({"quantity": q, "group": "", "param": "",
                        "problem": "exactly determined (as many points as parameters): no uncertainty estimate"})
            continue
        out += parameter_flags(q, "", {"exponent": e}, {"exponent": law["exponent_se"]},
                               {"exponent": law.get("exponent_bootstrap_se")}, atol=ROUNDING)
        sign = BUDGET_SIGNS.get(y, 1 if y == "data" and falls else None)
        meaning = {"compute": "the compute at the optimum falls as the budget grows (more budget buying less "
                              "compute), impossible with F = C + delta D",
                   "data": "the data at the optimum falls as the budget grows while the compute falls too, "
                           "impossible with F = C + delta D"}.get(y, "")
        out += sign_flags(q, "exponent", e, exponent_interval(law), sign, meaning)
    return out


def report_flags(fits: dict) -> list[dict]:
    """The flags of the fitted quantities a report prints that the fitting stages do not list:
    the offset forms of ``compare_forms``, laws given to the pipeline (fit files with a
    ``source``), the paper's b of B*(utd, N) and the budget power laws. ``fits``: fit file name
    without ``.json`` -> its JSON dict (``fit_batch_size``, ``fit_learning_rate``, ...)."""
    out = []
    for name in ("batch_size", "learning_rate"):
        d = fits.get(f"fit_{name}") or {}
        if d.get("source") and d.get("params"):
            out += power_flags(f"{name} law", PowerFit.from_dict(d))
        off = (d.get("compare_forms") or {}).get("offset")
        if off:
            out += law_dict_flags(f"{name} law, offset form", off)
    out += paper_b_flags(fits.get("fit_batch_size_n") or {})
    out += budget_law_flags((fits.get("fit_budget") or {}).get("laws") or {})
    return out


def paper_b_flags(d: dict) -> list[dict]:
    """The 90% interval of the paper's b = n_half^beta of B*(utd, N) (a JSON fit with
    ``paper_b`` and ``bootstrap_log_params``), flagged when it spans orders of magnitude."""
    out = []
    for g, b in (d.get("paper_b") or {}).items():
        theta = np.asarray((d.get("bootstrap_log_params") or {}).get(g) or [], float)
        if b is None or theta.ndim != 2 or theta.shape[1] != 4:  # a, alpha, n_half, beta
            continue
        with np.errstate(all="ignore"):
            lb = np.exp(theta[:, 3]) * theta[:, 2]  # log b = beta log n_half
        lb = lb[np.isfinite(lb)]
        if len(lb) > 1:
            with np.errstate(over="ignore"):
                iv = [float(np.exp(v)) for v in percentile_interval(lb)]
            out += parameter_flags("B*(utd, N) law", g, {"b": b}, {}, None, {"b": iv})
    return out


def flags_table(rows: list[dict]) -> pd.DataFrame:
    """The flags as a table (columns ``FLAG_COLUMNS``), duplicates dropped."""
    t = pd.DataFrame(rows, columns=FLAG_COLUMNS)
    return t.astype({"group": str}).drop_duplicates().reset_index(drop=True)


def flag_lines(table: pd.DataFrame) -> list[str]:
    """One markdown bullet per flag."""
    return [f"- **{r.quantity}**" + (f" ({r.group})" if r.group not in ("", "nan") else "")
            + (f" `{r.param}`" if r.param else "") + f": {r.problem}" for r in table.itertuples()]


def merge_flags(*sources) -> pd.DataFrame:
    """One flags table (``flags_table``) from tables (a stage's ``flags.csv``) and lists of flag
    rows: each problem once, missing cells as '', each quantity's flags together (in the order
    in which the quantities first appear)."""
    rows = []
    for src in sources:
        if isinstance(src, pd.DataFrame):
            rows += src.reindex(columns=FLAG_COLUMNS).fillna("").to_dict("records")
        elif src:
            rows += [{k: r.get(k, "") for k in FLAG_COLUMNS} for r in src]
    order = {q: i for i, q in reversed(list(enumerate(r["quantity"] for r in rows)))}
    return flags_table(sorted(rows, key=lambda r: order[r["quantity"]]))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_.*+-]+", str(text).lower())


def _runs(words: list[str], n: int = 4) -> set:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def unflagged_notes(notes, table: pd.DataFrame) -> list[str]:
    """The notes that say something no flag of ``table`` says, each once: a note is dropped when
    it names a flag's quantity (without " law": "best lr", "learning_rate") and states the same
    problem (a run of 4 words in common with the flag's, e.g. "a bound, not an optimum")."""
    subjects = [(str(r.quantity).removesuffix(" law").lower(), _runs(_words(r.problem)))
                for r in table.itertuples()] if len(table) else []
    return [n for n in dict.fromkeys(notes)
            if not any(subj and subj in n.lower() and runs & _runs(_words(n)) for subj, runs in subjects)]


def flagged_params(table: pd.DataFrame, quantity: str, group=None) -> str:
    """The flagged parameters of ``quantity`` (a flag's quantity equal to it, or starting with it
    when it ends in a space or comma) for ``group`` (also the flags of every group), comma
    separated: the comment beside a printed value whose problem the warnings list."""
    if table is None or not len(table):
        return ""
    q = table["quantity"].astype(str)
    hit = q.str.startswith(quantity) if quantity.endswith((" ", ",")) else q == quantity
    if group is not None:
        hit &= table["group"].astype(str).isin([str(group), "", "nan", "all", "all groups (joint fit)"])
    params = table.loc[hit, "param"].fillna("").astype(str)
    return ", ".join(dict.fromkeys(p for p in params if p and p != "nan"))
