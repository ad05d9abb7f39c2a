"""The workflow's last stage: ``OUT/report.md`` (every law with its fitted values and
uncertainties, extrapolation errors, TD-overfitting diagnostics, the proposal and its
verification) and ``OUT/report/figures/``. Reads only files of the earlier stages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pql_jax.values import format_utd
from pql_jax.scaling import flag_lines, fmt, markdown_table
from pql_jax.scaling import flagged_params, merge_flags, report_flags, unflagged_notes
from pql_jax.workflow.spec import STAGES, Workflow, read_marker, seeds_value
from pql_jax.workflow.refine_stage import refine_lines
from pql_jax.workflow.verify import with_verdicts
from pql_jax.workflow.widen import report_lines as widen_lines


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _num(x) -> str:
    """A number in the report's text: 3 significant figures."""
    return fmt(x, 3)


def _table(df: pd.DataFrame, cols: list[str]) -> list[str]:
    """A markdown table (3 significant figures) as lines of the report."""
    return [markdown_table(df, cols, digits=3)]


def _flagged(params: str) -> str:
    """The comment beside printed values that the warnings list."""
    return f"; **flagged**: {params} (see the warnings)" if params else ""


def _power_law(lines: list, name: str, fit: dict, flags: pd.DataFrame, quantity: str) -> None:
    """A B*(sigma) / eta*(sigma) law per env; ``quantity``: its name in the flags."""
    if not fit:
        return
    for env, p in fit["params"].items():
        se = fit.get("se", {}).get(env, {})
        bse = (fit.get("bootstrap_se", {}).get("slope") or {}).get(env)
        lines.append(f"- {name} ({env}): {_num(p['coef'])} (+- {_num(se.get('coef'))}) x utd^({_num(-p['slope'])}) "
                     f"(slope, the negated exponent: {_num(p['slope'])} +- {_num(se.get('slope'))} Hessian" + (f", +- {_num(bse)} bootstrap" if bse else "")
                     + ")" + (f", i.e. ({_num(p['beta'])} / utd)^{_num(p['slope'])}" if p['slope'] > 0 else "")
                     + f"; log-loss {_num(fit['loss'])}, {fit['n']} points"
                     + _flagged(flagged_params(flags, quantity, env)))
        iv = (fit.get("interval") or {}).get("slope", {}).get(env)
        if iv:
            lines.append(f"  - slope 90% bootstrap interval [{_num(iv[0])}, {_num(iv[1])}]")
        if fit.get("excluded_at_edge"):
            lines.append("  - left out (best value at the edge of the swept grid, a bound): utd "
                         + ", ".join(format_utd(u) for u in fit["excluded_at_edge"]))
        cmp = fit.get("compare_forms") or {}
        if cmp.get("offset") and env in cmp["offset"]["params"]:
            o, f = cmp["offset"]["params"][env], cmp["forms"]
            lines.append(f"  - offset form (eqs. D.2 / D.3): {_num(o['c'])} (1 + (utd / {_num(o['b'])})^-{_num(o['a'])}); "
                         f"AICc power {_num(f['power']['aicc'])} vs offset {_num(f['offset']['aicc'])}, leave-one-out "
                         f"|log error| {_num(f['power']['loo_mean_abs_log_error'])} vs "
                         f"{_num(f['offset']['loo_mean_abs_log_error'])}: preferred {cmp.get('preferred') or 'undecided'}"
                         + _flagged(flagged_params(flags, f"{quantity}, offset form", env)))
        elif cmp.get("reason"):
            lines.append(f"  - offset form not fitted: {cmp['reason']}")
        sens = fit.get("slope_by_threshold") or {}
        if sens:
            lines.append("  - slope at each threshold used to pick the best values: "
                         + ", ".join(f"J={_num(float(j))}: {_num(v)}" for j, v in sens.items()))


def _stage_flags(path: Path, fits: dict) -> pd.DataFrame:
    """A fitting stage's warnings: its ``flags.csv`` and those of the fitted quantities this report
    prints that the stage does not list (``report_flags`` of its fit files), each once."""
    return merge_flags(_csv(path), report_flags(fits))


def _flags(t: pd.DataFrame) -> list[str]:
    """The warnings of a fitting stage (``_stage_flags``) as report lines."""
    if t.empty:
        return ["- warnings: none (every parameter determined, none at a search bound, no optimiser failure, no "
                "budget exponent of implausible or undetermined sign)"]
    return [f"- **warnings ({len(t)})**: do not read these quantities as determined:"] + \
        ["  " + line for line in flag_lines(t)]


def _td_table(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """Final-point mean training / validation TD error (and passive critics) per value of ``by``."""
    if df.empty or by not in df.columns or "td_train" not in df.columns:
        return pd.DataFrame()
    last = df.sort_values("step").groupby("member").tail(1)
    cols = [c for c in last.columns if c in ("td_train", "td_val", "td_gap") or
            (c.startswith("passive") and c.endswith(("td_train", "td_val")))]
    t = last.groupby(by)[cols].mean(numeric_only=True).reset_index()
    return t


def _figures(out: Path, figdir: Path) -> list[tuple[str, str]]:
    # here, not at the top: importing the workflow (plan, the other stages) neither loads matplotlib
    # nor switches the backend of whoever imported it to Agg
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from pql_jax.scaling.plots import log_ticks  # noqa: PLC0415 - matplotlib, as above

    made = []
    ver = _csv(out / "verify" / "verification.csv")
    cross = _csv(out / "fit_laws" / "crossings.csv")
    if not cross.empty:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        pred = _csv(out / "fit_laws" / "predictions.csv")
        at_n = ""
        if "model_size" in cross and cross["model_size"].nunique() > 1:  # one model size: the verified one
            sizes = cross["model_size"].unique()
            want = float(ver["model_size"].iloc[0]) if "model_size" in ver and len(ver) else np.nan
            want = want if np.isfinite(want) else float(np.median(sizes))
            n = sizes[np.argmin(np.abs(np.log(sizes / want)))]
            cross = cross[cross["model_size"] == n]
            pred = pred[pred["model_size"] == n] if "model_size" in pred else pred
            at_n = f" at N = {n:,.0f}"
        laws, shown = [], set()

        def first(label):
            """``label`` the first time, then None: the first level's marks stand for all in the legend."""
            if label in shown:
                return None
            shown.add(label)
            return label

        for lv, sub in cross.groupby("level"):
            ok = sub[np.isfinite(sub["data"])]
            line = ax.plot(ok["utd"], ok["data"], "o", label=f"J={sub['threshold'].iloc[0]:g}")[0]
            v = ver[ver["level"] == lv] if not ver.empty else ver
            if len(v):
                ax.plot(v["utd_value"], v["data_pred"], "s", mfc="none", color=line.get_color(),
                        label=first("verify: predicted"))
                ax.plot(v["utd_value"], v["data_measured"], "*", ms=11, color=line.get_color(),
                        label=first("verify: measured"))
            if not pred.empty and "data_fit" in pred:
                # the law through its fitted points, extended to the verification it predicted
                p = pred[pred["level"] == lv][["utd", "data_fit"]]
                if len(v):
                    p = pd.concat([p, v[["utd_value", "data_pred"]].set_axis(["utd", "data_fit"], axis=1)])
                laws.append((p.sort_values("utd"), line.get_color(), first("fit")))
        ax.set(xscale="log", yscale="log", xlabel="UTD sigma", ylabel="env steps to threshold D_J",
               title=f"D_J(sigma){at_n}: sweep, fit, verification")
        ax.set(xlim=ax.get_xlim(), ylim=ax.get_ylim())  # set by the points: the laws are clipped to them
        for p, color, label in laws:
            ax.plot(p["utd"], p["data_fit"], "-", color=color, alpha=0.6, gid="law", label=label)
        log_ticks(ax)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(figdir / "verification.png", dpi=110)
        plt.close(fig)
        made.append(("verification.png", f"D_J(sigma){at_n} with the held-out verification"))
    hp = _csv(out / "hparam_sweep" / "results.csv")
    ut = _csv(out / "utd_sweep" / "results.csv")
    panels = [(d, by) for d, by in ((hp, "batch_size"), (ut, "critic_width")) if not _td_table(d, by).empty]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
        for ax, (d, by) in zip(axes[0], panels):
            t = _td_table(d, by)
            for col in [c for c in t.columns if c != by]:
                if t[col].notna().any():
                    ax.plot(t[by], t[col], "o-", label=col)
            ax.set(xscale="log", yscale="log", xlabel=by, ylabel="TD error (final point, mean)")
            log_ticks(ax)
            ax.set_xticks(t[by])  # the swept values (powers of two, mostly)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(figdir / "td_overfitting.png", dpi=110)
        plt.close(fig)
        made.append(("td_overfitting.png", "training vs validation TD error across batch size and critic width"))
    return made


def _stages_section(wf: Workflow, out: Path) -> list[str]:
    """The title and the stage timings."""
    lines = [f"# Scaling workflow `{wf.name}`", "",
         f"Workflow file: `{wf.path}` (copy: `workflow.yaml`); base config `{wf.base_path}`; returns normalised "
         f"to 0..1000 by max return {wf.max_return}.", "", "## Stages", ""]
    lines += _table(pd.DataFrame([{"stage": s, "seconds": read_marker(out, s).get("seconds", "running"),
                                "finished": read_marker(out, s).get("finished", "")} for s in STAGES[:-1]
                                if s != "refine" or wf.refine.budget]),
                ["stage", "seconds", "finished"])

    return lines


def _hparam_section(wf: Workflow, out: Path) -> list[str]:
    """Steps 1-4: the best batch size and learning rate per UTD, their laws, the UTD sweep's settings."""
    lines, h = [], wf.hparam_sweep
    hparam_summary = _json(out / "fit_hparams" / "summary.json")
    lines += ["", "## Best batch size and learning rate (hparam sweep)", "",
          f"Sweep: UTD {', '.join(format_utd(u) for u in h.utd)} x batch size "
          f"{list(h.batch_size)} x learning rate {list(h.lr)}, seeds {seeds_value(wf.seeds) or 1}; "
          f"best values picked at threshold J = {_num(hparam_summary.get('threshold'))} (seed bootstrap, eqs. D.1/D.4).", ""]
    lines += widen_lines(wf, out)  # the grid as widened (refine.widen), when it was
    lines += _table(_csv(out / "fit_hparams" / "best_hparams.csv"),
                ["utd", "batch_size", "batch_size_std", "n_batch_size", "lr", "lr_std", "n_lr"])
    lines.append("")
    fits = {f"fit_{n}": _json(out / "fit_hparams" / f"fit_{n}.json") for n in ("batch_size", "learning_rate",
                                                                                "batch_size_n")}
    flags = _stage_flags(out / "fit_hparams" / "flags.csv", fits)
    _power_law(lines, "B*(sigma)", fits["fit_batch_size"], flags, "batch_size law")
    _power_law(lines, "eta*(sigma)", fits["fit_learning_rate"], flags, "learning_rate law")
    batch_law_n = fits["fit_batch_size_n"]
    for env, p in (batch_law_n.get("params") or {}).items():
        se = (batch_law_n.get("se") or {}).get(env, {})
        bse, iv = (batch_law_n.get("bootstrap_se") or {}).get(env, {}), (batch_law_n.get("interval") or {}).get(env, {})
        boot = "".join(f"; {k} +- {_num(bse[k])} bootstrap, 90% [{_num(iv[k][0])}, {_num(iv[k][1])}]"
                       for k in ("alpha", "beta") if k in bse and k in iv)
        lines.append(f"- B*(sigma, N) ({env}): {_num(p['a'])} / utd^{_num(p['alpha'])} / (1 + ({_num(p['n_half'])} / N)^"
                 f"{_num(p['beta'])}) (alpha +- {_num(se.get('alpha'))}, beta +- {_num(se.get('beta'))} Hessian{boot}); "
                 + ("it sets the batch size of every (UTD, critic width) of the UTD sweep" if batch_law_n.get("used", True)
                    else "**not used**: B* does not change with N within the noise (flags below)")
                 + _flagged(flagged_params(flags, "B*(utd, N) law", env)))
    for n in unflagged_notes(hparam_summary.get("notes", []), flags):
        lines.append(f"- note: {n}")
    lines += _flags(flags)
    lines += ["", "Settings of the UTD sweep (batch size rounded to a multiple of 16, lr to 3 s.f.):", ""]
    lines += _table(_csv(out / "fit_hparams" / "settings.csv"),
                ["utd", "critic_width", "model_size", "batch_size_raw", "batch_size_source", "batch_size", "lr_raw",
                 "lr_source", "lr"])

    return lines


def _laws_section(wf: Workflow, out: Path) -> list[str]:
    """Steps 5-8: the D_J laws, crossings, held-out points, compute and budget laws."""
    lines = []
    laws_summary = _json(out / "fit_laws" / "summary.json")
    lines += ["", "## Data efficiency, compute and budget (UTD sweep)", ""]
    if not laws_summary.get("fitted"):
        lines.append(f"**No laws fitted**: {laws_summary.get('reason', 'fit_laws did not run')}. The sweep's crossings "
                 "are below; no line is drawn through them.")
        cr = _csv(out / "utd_sweep" / "results.csv")
        if not cr.empty:
            last = cr.sort_values("step").groupby("member").tail(1)
            lines += ["", "Final eval return per UTD (raw, mean over seeds):", ""]
            lines += _table(last.groupby("utd_label")["return"].agg(["mean", "std"]).reset_index(),
                        ["utd_label", "mean", "std"])
    else:
        cross = _csv(out / "fit_laws" / "crossings.csv")
        fit = _json(out / "fit_laws" / "fit.json")
        fb = _json(out / "fit_laws" / "fit_budget.json")
        flags = _stage_flags(out / "fit_laws" / "flags.csv", {"fit_budget": fb})
        lines += [f"D_J law: `{fit.get('formula', fit.get('form', ''))}`", ""]
        for lv, f in sorted((fit.get("levels") or {}).items(), key=lambda kv: int(kv[0])):
            sub = cross[cross["level"] == int(lv)] if not cross.empty else cross
            reached = int(sub["reached"].sum()) if len(sub) else 0
            lines.append(f"- J = {_num(sub['threshold'].iloc[0]) if len(sub) else '?'}: "
                     f"{reached} of {len(sub)} (UTD, N) cells reach it")
            for env, p in (f.get("params") or {}).items():
                se = (f.get("se") or {}).get(env) or {}
                bse = (f.get("bootstrap_se") or {}).get(env) or {}
                lines.append(f"  - {env}: " + ", ".join(
                    f"{k} = {_num(v)} (+- {_num(se.get(k))} Hessian" + (f", +- {_num(bse.get(k))} bootstrap)" if bse else ")")
                    for k, v in p.items()) + f"; log-loss {_num(f.get('loss'))}, {f.get('n')} points"
                    + _flagged(flagged_params(flags, f"D_J law, level {lv} ", env)))
        if not cross.empty:
            miss = cross.groupby("level")["reached"].sum()
            for lv, n in miss.items():
                if n < 3:
                    lines.append(f"- J = {_num(cross.loc[cross['level'] == lv, 'threshold'].iloc[0])}: only {int(n)} UTD(s) "
                             "reach it, too few for a law (needs 3): not fitted")
        lines += ["", "Crossings (env steps to threshold, best-tuned cell, bootstrap std):", ""]
        lines += _table(cross, ["utd", "model_size", "threshold", "data", "data_std", "reached_frac"])
        pred = _csv(out / "fit_laws" / "predictions.csv")
        if "held_out" in pred.columns and pred["held_out"].any():
            h = pred[pred["held_out"] & np.isfinite(pred["data"])]
            h = h.assign(rel_error=(h["data_fit"] - h["data"]) / h["data"])
            lines += ["", "Held-out points of the D_J fit (extrapolation error):", ""]
            lines += _table(h, ["utd", "threshold", "data", "data_fit", "rel_error"])
        if fb:
            lines += ["", f"Compute C_J = k N B*(sigma) sigma D_J with k = {_num(fb.get('k'))}; budget F = C + delta D "
                  f"with delta = {_num(fb.get('delta'))} FLOPs per env step.", ""]
            lines += _table(_csv(out / "fit_laws" / "budget.csv"),
                        ["threshold", "utd", "utd_se", "model_size", "data", "compute", "budget", "budget_se"])
            laws = fb.get("laws") or {}
            for y, law in laws.items():
                for env, c in (law.get("coef") or {}).items():
                    lines.append(f"- {y}*(F) ({env}) = {_num(c)} F^{_num(law['exponent'])}"
                             + (f" (exponent +- {_num(law['exponent_se'])})" if "exponent_se" in law else "")
                             + _flagged(flagged_params(flags, f"{y}*(F) law", env)))
            if not laws:
                lines.append("- sigma*(F) law not fitted (needs >= 3 thresholds with a budget optimum)")
        for n in unflagged_notes(laws_summary.get("notes", []), flags):
            lines.append(f"- note: {n}")
        lines += _flags(flags)
        lines += ["", "Figures of the fit: " + ", ".join(
            f"[{f}](fit_laws/figures/{f})" for f in sorted(os.listdir(out / "fit_laws" / "figures")))
              if (out / "fit_laws" / "figures").is_dir() else ""]

    return lines


def _proposal_section(wf: Workflow, out: Path) -> list[str]:
    """The proposal and its verification on fresh seeds."""
    lines = []
    lines += ["", "## Proposal and verification", ""]
    lines += _table(_csv(out / "fit_laws" / "proposal.csv"),
                ["target", "utd_proposed", "utd", "batch_size", "lr", "model_size", "budget", "data_pred",
                 "compute_pred"])
    lines.append("")
    lines.append("(`utd_proposed`: sigma*(F) of the budget law; `utd`: rounded to a binary fraction the learner runs "
             "exactly; `data_pred` / `compute_pred` of a budget row: D*(F), C*(F) of the budget power laws, i.e. at "
             "the threshold that budget implies. The table below compares D_J at the fitted thresholds, at the "
             "proposed settings, on fresh seeds.)")
    vs = _json(out / "verify" / "summary.json")
    ver = _csv(out / "verify" / "verification.csv")
    if not vs.get("verified"):
        lines += ["", f"Not verified: {vs.get('reason', 'verify did not run')}."]
    else:
        lines += ["", "Measured vs predicted data-to-threshold at the proposed settings (held out from every fit):", ""]
        ver = with_verdicts(ver)
        lines += _table(ver, ["target", "utd", "batch_size", "lr", "threshold", "data_pred", "data_pred_lo", "data_pred_hi",
                          "data_measured", "data_measured_std", "agree_lo", "agree_hi", "rel_error", "verified",
                          "extrapolated"])
        lines += ["", "(`data_pred_lo` / `data_pred_hi`: 90% interval of the bootstrap refits' predictions; `agree_lo` / "
              "`agree_hi`: the combined interval the verdict used, that interval widened by the measurement's own "
              "bootstrap spread (90%) in quadrature in log space; `verified`: the measurement lies inside it; a "
              "threshold already reached at the first logging point is an upper bound and does not verify)", ""]
        if "verified" in ver:
            lines.append(f"- **{int(vs.get('n_verified', ver['verified'].sum()))} of {len(ver)} predictions verified** "
                     f"({int(ver['reached'].sum()) if 'reached' in ver else len(ver)} measured)")
            lines += [f"  - J = {_num(r['threshold'])} ({r['target']}): {r['verdict']}" for _, r in ver.iterrows()]
        bc = _csv(out / "verify" / "budget_check.csv")
        if not bc.empty:
            lines += ["", "Problem 3.2 at the proposed budget: measured budget F = C + delta D to reach each threshold at "
                  "sigma*(F), sigma*/2 and 2 sigma* (fresh seeds):", ""]
            lines += _table(bc, ["env", "threshold", "utd_sigma_star", "budget_sigma_star", "utd_half", "budget_half",
                             "utd_double", "budget_double", "sigma_star_cheapest"])
            lines.append("")
            lines.append(f"- sigma*(F) was the cheapest of the three for {int(bc['sigma_star_cheapest'].sum())} of "
                     f"{len(bc)} threshold(s)")
        if "first_log" in ver:
            early = ver[ver["data_measured"] <= ver["first_log"] * (1 + 1e-9)]
            if len(early):
                lines.append(f"- {len(early)} threshold(s) were already reached at the first logging point "
                         f"({_num(early['first_log'].iloc[0])} env steps): the measured D_J there is an upper bound, "
                         "not a measurement; log more often (`run.chunk_steps`) to resolve it.")
        bad = ver[~ver["reached"].astype(bool)] if "reached" in ver else ver.iloc[:0]
        if len(bad):
            lines.append(f"- {len(bad)} threshold(s) not reached by the verification runs: no measured D_J there.")
        ok = ver[np.isfinite(ver["rel_error"])] if "rel_error" in ver else ver.iloc[:0]
        if len(ok):
            lines.append(f"- median |relative error| {_num(np.median(np.abs(ok['rel_error'])))} over {len(ok)} threshold(s)")

    return lines


def _td_section(wf: Workflow, out: Path) -> list[str]:
    """TD-overfitting diagnostics: training vs validation TD error."""
    lines = []
    lines += ["", "## TD-overfitting diagnostics", "",
          "Final-point mean TD error on training batches (`td_train`) and on a held-out validation stream "
          "(`td_val`, needs `env.val_envs > 0`); `passive*` columns are passive critics (trained on the same "
          "batches onto the main critic's targets, never acting).", ""]
    for name, d, by in (("hparam sweep, by batch size", _csv(out / "hparam_sweep" / "results.csv"), "batch_size"),
                        ("UTD sweep, by critic width", _csv(out / "utd_sweep" / "results.csv"), "critic_width")):
        t = _td_table(d, by)
        lines += [f"{name}:", ""]
        if t.empty or ("td_val" in t and not t["td_val"].notna().any()):
            lines.append("(no validation TD error logged: set env.val_envs > 0)" if not t.empty else "(none)")
            if not t.empty:
                lines += [""] + _table(t, list(t.columns))
        else:
            lines += _table(t, list(t.columns))
        lines.append("")
    return lines


def _notes_once(lines: list[str]) -> list[str]:
    """The report's lines with each note once: a later stage's note that repeats an earlier one
    (the same column mapping read from both sweeps) is dropped."""
    seen, kept = set(), []
    for line in lines:
        if line.startswith("- note: "):
            if line in seen:
                continue
            seen.add(line)
        kept.append(line)
    return kept


def stage_report(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Write OUT/report.md and OUT/report/figures/."""
    figdir = out / "report" / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    made = _figures(out, figdir)
    lines = _stages_section(wf, out)
    for section in (_hparam_section, _laws_section, _proposal_section, _td_section):
        lines += section(wf, out)
        if section is _laws_section:  # the laws as fitted after the rounds, then the rounds
            lines += refine_lines(out)
    if made:
        lines += ["## Figures", ""] + [f"- [{f}](report/figures/{f}): {desc}" for f, desc in made]
    (out / "report.md").write_text("\n".join(_notes_once(lines)) + "\n")
    return {"report": str(out / "report.md"), "figures": [str(figdir / f) for f, _ in made]}
