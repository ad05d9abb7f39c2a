"""Warnings about fits that should not be read as laws: parameters the data do not determine
(SE above the value, percentile intervals spanning orders of magnitude), parameters at a search
bound, exactly determined fits, optimiser failures, flat laws, best values at the edge of the
swept grid, extrapolated optima. One row per problem: quantity, group, param, problem."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: A percentile interval whose hi / lo exceeds this spans orders of magnitude.
ORDERS = 100.0
FLAG_COLUMNS = ["quantity", "group", "param", "problem"]


def _finite(*vals) -> list[float]:
    return [float(v) for v in vals if v is not None and np.isfinite(v)]


def parameter_flags(quantity: str, group, params: dict, se: dict, bootstrap_se: dict | None = None,
                    interval: dict | None = None) -> list[dict]:
    """Flags of one group's parameters: SE (Hessian or bootstrap) above |value|, interval
    spanning orders of magnitude (positive parameters only)."""
    out = []
    for p, v in params.items():
        if v is None or not np.isfinite(v):
            continue
        errs = _finite((se or {}).get(p), (bootstrap_se or {}).get(p))
        if errs and max(errs) > abs(v):
            out.append({"quantity": quantity, "group": group, "param": p,
                        "problem": f"SE {max(errs):.3g} exceeds the value {v:.3g}: not determined by this data"})
        iv = (interval or {}).get(p)
        if iv is not None and len(_finite(*iv)) == 2 and v > 0 and iv[0] > 0 and iv[1] / iv[0] > ORDERS:
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
    """Flags of a ``PowerFit``: flat groups, exactly determined fits, undetermined slopes."""
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
    return out


def flags_table(rows: list[dict]) -> pd.DataFrame:
    """The flags as a table (columns ``FLAG_COLUMNS``), duplicates dropped."""
    t = pd.DataFrame(rows, columns=FLAG_COLUMNS)
    return t.astype({"group": str}).drop_duplicates().reset_index(drop=True)


def flag_lines(table: pd.DataFrame) -> list[str]:
    """One markdown bullet per flag."""
    return [f"- **{r.quantity}**" + (f" ({r.group})" if r.group not in ("", "nan") else "")
            + (f" `{r.param}`" if r.param else "") + f": {r.problem}" for r in table.itertuples()]
