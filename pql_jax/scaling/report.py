"""report.md: the fitted laws, the tables that matter, the figures and the notes of a run."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from pql_jax.scaling.diagnostics import flag_lines, flagged_params, merge_flags, report_flags, unflagged_notes


def fmt(value, digits: int = 4) -> str:
    """A table cell or number in text: floats to ``digits`` significant figures, NaN / None as
    n/a, integers, booleans and strings as they are."""
    if value is None:
        return "n/a"
    if isinstance(value, (str, bool, np.bool_, int, np.integer)):
        return str(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{x:.{digits}g}" if not np.isnan(x) else "n/a"


def markdown_table(df: pd.DataFrame, cols, digits: int = 4, max_rows: int = 60) -> str:
    """A markdown table of the given columns (those present), cells by ``fmt``; '(none)' when
    there is no row or no such column."""
    cols = [c for c in cols if c in df.columns]
    if df.empty or not cols:
        return "(none)"
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.head(max_rows).iterrows():
        lines.append("| " + " | ".join(fmt(r[c], digits) for c in cols) + " |")
    if len(df) > max_rows:
        lines.append(f"\n({len(df) - max_rows} more rows in the CSV)")
    return "\n".join(lines)


def _interval(iv) -> str:
    """'[lo, hi]' of a 90% percentile interval, or n/a."""
    return f"[{fmt(iv[0])}, {fmt(iv[1])}]" if iv else "n/a"


def _power_section(title: str, fit: dict | None, flags: pd.DataFrame, quantity: str) -> list[str]:
    """A B*(utd) / eta*(utd) law: its table (``flagged``: the parameters the warnings list), the
    points left out, the offset form and the slope at each threshold."""
    if not fit:
        return []
    bse, iv = fit.get("bootstrap_se") or {}, fit.get("interval") or {}
    rows = pd.DataFrame([{"env": g, **p, "slope_se": fit["se"][g]["slope"],
                          "slope_bootstrap_se": bse.get("slope", {}).get(g, np.nan),
                          "slope_90%": _interval(iv.get("slope", {}).get(g)),
                          "coef_90%": _interval(iv.get("coef", {}).get(g)),
                          "flat": (fit.get("flat") or {}).get(g, False), "flagged": flagged_params(flags, quantity, g)}
                         for g, p in fit["params"].items()])
    L = [f"## {title}", "", f"`{fit['formula']}`, shared slope: {fit['shared_slope']}, "
         f"loss (mean squared log error) {fit['loss']:.4g}, n = {fit['n']}"
         + (" (shared slope: one pooled bootstrap SE)" if fit["shared_slope"] else "")
         + (f"; given: {fit['source']}" if fit.get("source") else ""), "",
         markdown_table(rows, ["env", "slope", "slope_se", "slope_bootstrap_se", "slope_90%", "coef", "coef_90%",
                               "beta", "flat", "flagged"]), "",
         "(`flat`: no dependence on utd within the noise; beta is then not reported; `flagged`: parameters "
         "with a problem listed under Warnings)", ""]
    if fit.get("excluded_at_edge"):
        L += ["Left out (best value at the edge of the swept grid, a bound): utd "
              + ", ".join(fmt(u) for u in fit["excluded_at_edge"]), ""]
    L += _offset_lines(fit.get("compare_forms") or {}, flags, f"{quantity}, offset form")
    sens = fit.get("slope_by_threshold") or {}
    if sens:
        L += ["Sensitivity to the threshold used to pick the best values (slope fitted at each threshold): "
              + ", ".join(f"J={fmt(float(j))}: {fmt(v)}" for j, v in sens.items()), ""]
    return L


def _offset_lines(cmp: dict, flags: pd.DataFrame, quantity: str) -> list[str]:
    """The offset form of a B* / eta* law and its comparison with the power law."""
    if not cmp.get("offset"):
        return [f"Offset form not fitted: {cmp['reason']}", ""] if cmp.get("reason") else []
    off = cmp["offset"]
    rows = pd.DataFrame([{"env": g, **p, **{f"{k}_se": v for k, v in off["se"][g].items()},
                          "flagged": flagged_params(flags, quantity, g)} for g, p in off["params"].items()])
    forms = pd.DataFrame([{"form": f, **v} for f, v in cmp["forms"].items()])
    return [f"Offset form `{off['formula']}` (seed 001, eqs. D.2 / D.3):", "",
            markdown_table(rows, ["env", "c", "b", "a", "c_se", "b_se", "a_se", "flagged"]), "",
            markdown_table(forms, ["form", "n_params", "loss", "aicc", "loo_mean_abs_log_error"]), "",
            f"Preferred: **{cmp.get('preferred') or 'undecided'}** (by {cmp.get('criterion')}; AICc lower is better, "
            "leave-one-out: mean |log error| of each point predicted by a fit without it).", ""]


def _header() -> list[str]:
    return ["# Scaling-law fit report", "",
            "Tables: `crossings_runs.csv` (per run group), `best_hparams.csv`, `crossings.csv` (best-tuned, "
            "the input format of `fit data-efficiency`), `predictions.csv`, `budget.csv`, `pareto.csv`; fits: "
            "`fit*.json`; `summary.json` holds the configuration, thresholds and timings.", ""]


def _warnings_section(flags: pd.DataFrame) -> list[str]:
    """Every problem once: those found while fitting (``flags.csv``) and those of the fitted
    quantities this report prints (``diagnostics.report_flags``)."""
    if not len(flags):
        return ["## Warnings", "", "None: every parameter has an SE below its value, no parameter sits at a search "
                "bound, no optimiser failed, no budget exponent has an implausible or undetermined sign.", ""]
    return ["## Warnings", "", f"{len(flags)} problem(s); do not read the flagged quantities as determined (each "
            "table's `flagged` column names them; `flags.csv` holds those found while fitting):", ""] \
        + flag_lines(flags) + [""]


def _notes_section(notes: list, flags: pd.DataFrame) -> list[str]:
    """The notes that no warning already states (``diagnostics.unflagged_notes``)."""
    notes = unflagged_notes(notes, flags)
    return ["## Notes", ""] + [f"- {n}" for n in notes] + [""] if notes else []


def _crossings_section(res) -> list[str]:
    cr = res.tables["crossings_runs"]
    nr = cr.groupby("level")["reached"].agg(["size", "sum"]).reset_index()
    nr["threshold(s)"] = [", ".join(f"{t:.4g}" for t in sorted(cr[cr["level"] == lv]["threshold"].unique())[:3])
                          for lv in nr["level"]]
    return ["## Crossings", "", f"{len(cr)} (run group, threshold) pairs, {int((~cr['reached']).sum())} not reached "
            f"(kept in `crossings_runs.csv` with `reached = False`). Bootstrap: {res.config.resamples} seed "
            f"resamples, seed {res.config.seed}.", "",
            markdown_table(nr.rename(columns={"size": "runs", "sum": "reached"}),
                           ["level", "threshold(s)", "runs", "reached"]), ""]


def _batch_n_section(res, flags: pd.DataFrame) -> list[str]:
    """B*(utd, N), when fitted or given."""
    f = res.fits.get("fit_batch_size_n")
    if not f:
        return []
    iv = f.get("interval") or {}
    rows = pd.DataFrame([{"env": g, **p, "b": f["paper_b"][g],
                          **{f"{k} 90%": "[{:.3g}, {:.3g}]".format(*iv[g][k]) for k in ("alpha", "beta")
                             if k in iv.get(g, {})}, "flagged": flagged_params(flags, "B*(utd, N) law", g)}
                         for g, p in f["params"].items()])
    cols = ["env", "a", "alpha", "alpha 90%", "b", "n_half", "beta", "beta 90%", "flagged"]
    return ["## Best batch size B*(utd, N)", "", f"`{f['formula']}`, loss {f['loss']:.4g} (90%: seed bootstrap)", "",
            markdown_table(rows, [c for c in cols if c in rows]), ""]


def _data_section(res, flags: pd.DataFrame) -> list[str]:
    """The D_J laws: parameters, Hessian and bootstrap SEs, 90% intervals, flagged parameters."""
    fit = res.objects["data"]
    rows = []
    for lv, lf in fit.fits.items():
        for g, p in lf.params.items():
            rows.append({"level": lv, "env": g, **p, **{f"{k}_se": v for k, v in lf.se[g].items()},
                         **{f"{k}_bse": v for k, v in lf.bootstrap_se.get(g, {}).items()},
                         **{f"{k}_90%": _interval(v) for k, v in lf.interval.get(g, {}).items()},
                         "flagged": flagged_params(flags, f"D_J law, level {lv} ", g)})
    exps = list(fit.law.exponents)
    shared = fit.fits and next(iter(fit.fits.values())).shared
    return ["## Data efficiency", "", f"`{fit.law.formula}`, loss {fit.loss:.4g} over {fit.n} points"
            + (f", normalisation: {fit.normalise}" if fit.normalise else ""), "",
            markdown_table(pd.DataFrame(rows), ["level", "env"] + list(fit.law.params) + [f"{e}_se" for e in exps]
                           + [f"{e}_bse" for e in exps] + [f"{p}_90%" for p in fit.law.params] + ["flagged"]), "",
            "(`_se`: Hessian; `_bse`: seed bootstrap (refits of every resample"
            + (", exponents shared across envs: one pooled SE" if shared else "")
            + (", median normalisation redone per resample" if fit.normalise else "")
            + "); `_90%`: bootstrap 5th-95th percentiles)", ""] + _holdout_lines(res)


def _holdout_lines(res) -> list[str]:
    fit = res.objects["data"]
    if not fit.holdout:
        return []
    pr = res.tables["predictions"]
    h = pr[pr["held_out"].astype(bool)] if "held_out" in pr else pr.iloc[:0]
    return [f"Held out `{fit.holdout['expr']}`: {fit.holdout.get('n', 0)} points, mean |log error| "
            f"{fit.holdout.get('mean_abs_log_error', float('nan')):.4g}, max relative error "
            f"{fit.holdout.get('max_abs_rel_error', float('nan')):.4g}. The held-out rows took no part in the "
            "thresholds, the best hyperparameters or any fit.", "",
            markdown_table(h, ["env", "level", "utd", "model_size", "data", "data_std", "data_fit", "data_fit_lo",
                               "data_fit_hi"]), ""]


def _budget_section(res, flags: pd.DataFrame) -> list[str]:
    """Problem 3.2 per (env, level), the precision of each optimum and the budget power laws."""
    if "budget" not in res.tables:
        return []
    fb, b = res.fits["fit_budget"], res.tables["budget"]
    return ["## Budget-optimal settings (Problem 3.2)", "",
            f"C = k N B sigma D with k = {fb['k']:.4g}; F = C + delta D with delta = {fb['delta']:.4g}.", "",
            markdown_table(b, ["env", "level", "threshold", "utd", "utd_se", "utd_lo", "utd_hi", "model_size",
                               "batch_size", "data", "data_lo", "data_hi", "compute", "budget", "budget_se",
                               "budget_lo", "budget_hi", "at_edge", "extrapolated"]), "",
            "(`_lo` / `_hi`: 90% bootstrap percentile interval; `extrapolated`: the optimum lies outside the "
            "fitted utd / model-size range, where no run was made)", "",
            "### Precision of the optimum", "",
            "Range of utd (N at its optimum) whose budget stays within 5% / 10% of the optimum; "
            "`ratio` = hi / lo (large = flat optimum, coarse settings suffice).", "",
            markdown_table(b, ["env", "level"] + [c for c in b.columns if c.startswith(
                ("utd_5", "utd_10", "model_size_5", "model_size_10")) and not c.endswith("open")]), ""] \
        + _budget_laws_lines(fb["laws"], flags)


def _budget_laws_lines(laws: dict, flags: pd.DataFrame) -> list[str]:
    if not laws:
        return []
    rows = pd.DataFrame([{"quantity": y + "*", **{k: v for k, v in law.items() if k != "coef"},
                          "flagged": flagged_params(flags, f"{y}*(F) law")} for y, law in laws.items()])
    return ["### Power laws in the budget", "", "y* = coef_env F^exponent (exponent shared across envs); the "
            "largest budgets of each env are held out of the fit. C*(F) must rise with F (more budget cannot buy "
            "less compute at the optimum, F = C + delta D), and C*(F), D*(F) cannot both fall.", "",
            markdown_table(rows, ["quantity", "exponent", "exponent_se", "exponent_bootstrap_se", "exponent_lo",
                                  "exponent_hi", "loss", "n_fit", "n_held_out", "held_out_mean_abs_log_error",
                                  "flagged"]),
            "", "(`exponent_lo` / `_hi`: 90% interval of the exponent refitted to every resample's optima; "
            "`flagged`: listed under Warnings)", ""]


def write_report(res, out_dir: str, figures: list[str]) -> str:
    """Write ``out_dir/report.md`` and return its path."""
    flags = merge_flags(res.tables.get("flags"), report_flags(res.fits))
    L = _header() + _warnings_section(flags) + _notes_section(res.notes, flags) + _crossings_section(res)
    L += _power_section("Best batch size B*(utd)", res.fits.get("fit_batch_size"), flags, "batch_size law")
    L += _power_section("Best learning rate eta*(utd)", res.fits.get("fit_learning_rate"), flags, "learning_rate law")
    L += _batch_n_section(res, flags) + _data_section(res, flags) + _budget_section(res, flags)
    if figures:
        L += ["## Figures", ""] + [f"![{f}](figures/{f})\n" for f in figures]
    L += ["## Stage timings (s)", "", " | ".join(f"{k}: {v:.2f}" for k, v in res.timings.items()), ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(L))
    return path
