"""The fitting stages: ``fit_hparams`` (best B, eta per UTD -> B*(sigma), eta*(sigma) -> the
settings of the UTD sweep) and ``fit_laws`` (``fit all`` on the UTD sweep with those laws, then
the proposal and the plan that ``verify`` runs). Both use only ``pql_jax.scaling``'s public API.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pql_jax.values import format_utd
from pql_jax.errors import UserError
from pql_jax.scaling import (LawFit, PipelineConfig, PowerFit, batch_size_b, best_hparams, boot_predict,
                             compare_forms, crossing_bootstrap, depends_on_n, fit_all, fit_batch_size_n,
                             fit_hparam_law, flags_table, law_flags, law_points, load_curves, n_dependence_flags,
                             percentile_interval, propose, round_batch, round_sig, slope_by_threshold, write_json,
                             write_results, fill_nearest, nearest_setting, report_flags)
from pql_jax.workflow.spec import Workflow, read_settings

#: The two hyperparameter laws: (column of the tables, name of the fit files).
HPARAMS = (("batch_size", "batch_size"), ("lr", "learning_rate"))


def _thresholds(wf: Workflow):
    """The workflow's explicit thresholds, or None (auto-spaced ones)."""
    return list(wf.thresholds) if wf.thresholds else None


def pick_best(wf: Workflow, results: Path):
    """Best B and eta per cell (UTD, model size) of a sweep's ``results.csv``, as ``fit_hparams``
    picks them: the seed bootstrap of the crossings (``crossing_bootstrap``, seed 0), the threshold
    level (``_select_level``) and ``best_hparams`` there (its ``{hp}_edge`` column: 'high' / 'low'
    where the best value is an unbracketed grid edge). Returns (crossing bootstrap, best table
    with its ``threshold``, per-resample best values, level, thresholds J, notes)."""
    df, notes = load_curves(str(results), float(wf.max_return))
    cb = crossing_bootstrap(df, _thresholds(wf), wf.resamples, 0, n_thresholds=wf.n_thresholds, shared=True)
    level = _select_level(wf, cb, notes)
    best, per_resample = best_hparams(cb.table, cb.D, level)
    J = next(iter(cb.thresholds.values()))
    best["threshold"] = float(J[level])
    return cb, best, per_resample, level, J, notes


def stage_fit_hparams(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Steps 2-4: best B and eta per UTD (bootstrap over seeds), then B*(sigma), eta*(sigma) through
    the UTDs whose best value lies inside the swept grid, with the seed bootstrap's SEs and 90%
    intervals and the slope at every threshold; ``flags.csv`` lists what the data do not determine."""
    d = out / "fit_hparams"
    cb, best, per_resample, level, J, notes = pick_best(wf, out / "hparam_sweep" / "results.csv")
    best.to_csv(d / "best_hparams.csv", index=False)
    fits, flags = {}, []
    sens = slope_by_threshold(cb.table, cb.D, J)
    for hp, name in HPARAMS:
        if best[f"n_{hp}"].max() < 2:
            continue
        pf, law_notes, law_flags, excluded = fit_hparam_law(best, per_resample, hp, name)
        notes += law_notes
        flags += law_flags
        if pf is not None:
            fits[name] = pf
            write_json(str(d / f"fit_{name}.json"), {**pf.to_dict(), "excluded_at_edge": excluded,
                                                     "slope_by_threshold": sens.get(hp, {}),
                                                     "compare_forms": compare_forms(law_points(best, hp), hp, pf)})
    batch_n, boot_n, used = _fit_batch_size_n(best, per_resample, fits, notes, flags)
    if batch_n is not None:
        write_json(str(d / "fit_batch_size_n.json"),
                   {**batch_n.to_dict(), "paper_b": {g: batch_size_b(p) for g, p in batch_n.params.items()},
                    "bootstrap_log_params": {g: np.round(t, 6).tolist() for g, t in boot_n.items()},
                    "used": used})
        batch_n = batch_n if used else None
    targets = list(wf.utd_sweep.utd) + ([wf.verify.utd] if wf.verify.utd else [])
    widths = _width_sizes(out / "hparam_sweep" / "results.csv") if batch_n is not None else {}
    rows = [_setting(wf, best, fits, u, float(J[0]), batch_n, w, n) for u in targets
            for w, n in (widths.items() if widths else [(None, None)])]
    pd.DataFrame(rows).to_csv(d / "settings.csv", index=False)
    flags += report_flags({p.stem: json.loads(p.read_text()) for p in sorted(d.glob("fit_*.json"))})
    flags_table(flags).to_csv(d / "flags.csv", index=False)
    write_json(str(d / "summary.json"), {"level": level, "threshold": float(J[level]),
                                        "thresholds": [float(t) for t in J], "notes": notes})
    return {"laws": sorted(fits), "level": level}


def _fit_batch_size_n(best: pd.DataFrame, per_resample: dict, fits: dict, notes: list, flags: list):
    """B*(sigma, N) through the interior best batch sizes when the sweep has >= 3 model sizes,
    with its seed bootstrap: (LawFit, env -> bootstrap log parameters, used) or (None, {}, False).
    A law whose seed bootstrap shows no change of B* across the swept model sizes (``depends_on_n``)
    is reported but not used: its undetermined N part would set the UTD sweep's batch sizes and the
    budget's compute (on CartpoleBalance it put B* = 5 at a model size below the swept ones)."""
    if "model_size" not in best or best["model_size"].nunique() < 3 or "batch_size" not in fits:
        return None, {}, False
    try:
        lf, boot = fit_batch_size_n(best, per_resample)
    except UserError as exc:
        notes.append(f"B*(sigma, N) law not fitted: {exc}")
        return None, {}, False
    flags += law_flags("B*(utd, N) law", lf)
    if not depends_on_n(lf.flags):
        notes.append("B*(sigma, N) law fitted but not used (B* does not change with N within the noise): batch "
                     "sizes of the UTD sweep from B*(sigma) alone, the same at every critic width")
        return lf, boot, False
    notes.append("batch sizes of the UTD sweep from B*(sigma, N) at each (UTD, critic width)")
    return lf, boot, True


def batch_size_n_law(out: Path) -> LawFit | None:
    """The B*(sigma, N) law that ``fit_hparams`` fitted and chose to use, else None."""
    path = out / "fit_hparams" / "fit_batch_size_n.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    lf = LawFit.from_dict(d)
    if "used" not in d:  # a run written before the N-dependence check: check it now
        best = pd.read_csv(out / "fit_hparams" / "best_hparams.csv")
        lf.flags += n_dependence_flags(lf, law_points(best, "batch_size"), d.get("bootstrap_log_params") or {})
    return lf if d.get("used", True) and depends_on_n(lf.flags) else None


def _width_sizes(results: Path) -> dict:
    """critic width -> model size N of the hparam sweep's runs."""
    r = pd.read_csv(results, usecols=["critic_width", "model_size"]).drop_duplicates("critic_width")
    return dict(zip(r["critic_width"].astype(int), r["model_size"].astype(float)))


def _select_level(wf: Workflow, cb, notes: list) -> int:
    """The threshold level at which best B / eta are picked: the workflow's, else the highest
    one every swept UTD reaches (so the best values are defined at every UTD)."""
    nj = cb.D.shape[2]
    level = wf.select_level
    if level is None:
        level = 0
        for j in range(nj):
            reached = pd.Series(np.isfinite(cb.D[:, 0, j])).groupby(cb.table["utd"].to_numpy()).any()
            if reached.all():
                level = j
        notes.append(f"best B / eta picked at threshold level {level} (the highest one every swept UTD reaches)")
    return min(int(level), nj - 1)


def _setting(wf: Workflow, best: pd.DataFrame, fits: dict, u: float, lowest: float, batch_n=None,
             width=None, n=None) -> dict:
    """B*, eta* at UTD ``u`` (and critic width / model size N with a B*(sigma, N) law): from the
    law, else the best value of the nearest swept UTD (marked ``bound`` when that value sits at
    the edge of the swept grid); the batch size rounded to a multiple of 16 (and clipped), the
    learning rate to 3 s.f."""
    row = {"utd": format_utd(u), "utd_value": u}
    if width is not None:
        row["critic_width"], row["model_size"] = int(width), float(n)
    for hp, name in HPARAMS:
        if hp == "batch_size" and batch_n is not None:
            env = best["env"].iloc[0]
            v, src = float(batch_n.predict(env if env in batch_n.params else next(iter(batch_n.params)),
                                           utd=u, model_size=n)), "law B*(utd, N)"
        elif name in fits:
            v, src = float(fits[name].predict(best["env"].iloc[0], u)), "law"
            if fits[name].flat.get(best["env"].iloc[0]):
                src = "law (flat: a constant)"
        else:
            v, src = nearest_setting(best, hp, u)
            if not np.isfinite(v):
                raise UserError(f"fit_hparams: no run of the hparam sweep reaches threshold {lowest:g}; "
                                "lower the thresholds or train longer")
        row[f"{hp}_raw"], row[f"{hp}_source"] = v, src
    b = round_batch(row["batch_size_raw"])
    clip = wf.utd_sweep.batch_size_range
    if clip:
        b = int(min(max(b, clip[0]), clip[1]))
    row["batch_size"], row["lr"] = b, round_sig(row["lr_raw"])
    return row


def round_utd(u: float) -> float:
    """The nearest (in log) of {1, 1.25, 1.5, 1.75} x 2^m: an exact binary fraction, within ~6%."""
    m = math.floor(math.log2(u))
    cands = [c * 2.0 ** e for e in (m - 1, m, m + 1) for c in (1, 1.25, 1.5, 1.75)]
    return min(cands, key=lambda c: abs(math.log(c / u)))


def fit_source(out: Path) -> Path:
    """The table the laws are fitted on: the UTD sweep's, or with refinement rounds the refined
    one (``refine/results.csv``: the UTD sweep's rows and every round's)."""
    refined = out / "refine" / "results.csv"
    return refined if refined.is_file() else out / "utd_sweep" / "results.csv"


def _hparam_laws(out: Path) -> dict:
    """The B*(sigma), eta*(sigma) (and used B*(sigma, N)) laws ``fit_hparams`` fitted, by file name."""
    given = {name: PowerFit.from_dict(json.loads((out / "fit_hparams" / f"fit_{name}.json").read_text()))
             for _, name in HPARAMS if (out / "fit_hparams" / f"fit_{name}.json").is_file()}
    batch_n = batch_size_n_law(out)
    if batch_n is not None:
        given["batch_size_n"] = batch_n
    return given


def pipeline_config(wf: Workflow, out: Path) -> PipelineConfig:
    """``fit all``'s options for the UTD sweep's laws: B*(sigma), eta*(sigma) from the hparam sweep
    (the UTD sweep has one B, eta per UTD) and the verify UTD as a prediction target."""
    fixed = out / "refine" / "thresholds.json"  # auto thresholds as the refinement fixed them
    thresholds = json.loads(fixed.read_text()) if fixed.is_file() and not wf.thresholds else _thresholds(wf)
    return PipelineConfig(max_return=float(wf.max_return), thresholds=thresholds, n_thresholds=wf.n_thresholds,
                          resamples=wf.resamples, holdout=wf.fit.holdout, delta=wf.fit.delta, k=wf.fit.k,
                          hparam_fits=_hparam_laws(out), hparam_fits_source="fit_hparams (hparam sweep)",
                          targets={"utd": [wf.verify.utd]} if wf.verify.utd else None)


def settings_at(wf: Workflow, out: Path, utd: float, width=None, model_size=None) -> dict:
    """B*, eta* at a UTD (and critic width) as ``fit_hparams`` set them: its ``settings.csv`` row,
    else (a UTD it did not set) from its laws or the nearest best value, by the same rule."""
    s = read_settings(out)
    match = s[np.isclose(s["utd_value"], utd, rtol=1e-9)]
    if width is not None and "critic_width" in s and s["critic_width"].notna().any():
        match = match[match["critic_width"] == width]
    if len(match):
        return match.iloc[0].to_dict()
    best = pd.read_csv(out / "fit_hparams" / "best_hparams.csv")
    laws = _hparam_laws(out)
    batch_n = laws.pop("batch_size_n", None)
    n = model_size if batch_n is not None else None
    return _setting(wf, best, laws, utd, float(best["threshold"].iloc[0]), batch_n, width if n else None, n)


def stage_fit_laws(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Steps 6-8: D_J(sigma) (and (sigma, N)), compute, budget, sigma*(F); proposal and verify plan."""
    d = out / "fit_laws"
    results = fit_source(out)
    try:
        res = fit_all(str(results), pipeline_config(wf, out))
    except UserError as exc:  # honest: no law through noise; the report states why
        write_json(str(d / "summary.json"), {"fitted": False, "reason": str(exc)})
        log(f"  no laws fitted: {exc}")
        return {"fitted": False, "reason": str(exc)}
    write_results(res, str(d))
    notes = list(dict.fromkeys(res.notes))
    prop = _proposals(wf, out, res, notes)
    prop.to_csv(d / "proposal.csv", index=False)
    plan = _verify_plan(wf, results, res, prop)
    plan.to_csv(d / "verify_plan.csv", index=False)
    write_json(str(d / "summary.json"), {"fitted": True, "notes": notes})
    return {"fitted": True, "levels": len(res.objects["data"].fits), "proposals": len(prop)}


def _proposals(wf: Workflow, out: Path, res, notes: list) -> pd.DataFrame:
    """The settings to verify: at the held-out UTD and / or at a larger budget."""
    d = str(out / "fit_laws")
    props = []
    if wf.verify.utd is not None:
        t = propose(d, utds=[wf.verify.utd], fill=False)
        t["target"] = f"utd {format_utd(wf.verify.utd)}"
        props.append(t)
    if wf.verify.budget is not None:
        F = wf.verify.budget
        if isinstance(F, str):  # a factor of the largest budget optimum of the fitted thresholds
            F = float(F[:-1]) * float(res.tables["budget"]["budget"].max())
        try:
            t = propose(d, budget=F, fill=False)
            t["target"] = f"budget {F:.3g}"
            t["utd_proposed"] = t["utd"]
            t["utd"] = [round_utd(u) for u in t["utd"]]  # a UTD the learner's schedule can run exactly
            props.append(t)
            # Problem 3.2 claims sigma*(F) is the cheapest way to the target: run sigma*/2 and 2 sigma* too
            for factor, label in ((0.5, "sigma*/2"), (2.0, "2 sigma*")):
                c = propose(d, utds=[u * factor for u in t["utd"]], fill=False)
                c["target"] = f"budget {F:.3g} at {label}"
                props.append(c)
        except UserError as exc:
            notes.append(f"no proposal for budget {F:.3g}: {exc}")
    prop = fill_from_settings(pd.concat(props, ignore_index=True) if props else pd.DataFrame(),
                              read_settings(out), notes)
    if wf.utd_sweep.batch_size_range and len(prop):
        prop["batch_size"] = prop["batch_size"].clip(*wf.utd_sweep.batch_size_range)
    return prop


def fill_from_settings(prop: pd.DataFrame, settings: pd.DataFrame, notes: list) -> pd.DataFrame:
    """Each proposal's batch size or learning rate that no law gave (NaN), from the fitted
    setting (``settings.csv``) of the UTD nearest in log; a value a law gave stays. The rule of
    ``pql-jax propose`` (``scaling.propose.fill_nearest``): ``{hp}_source`` says where each came from."""
    if prop.empty:
        return prop.copy()
    out, filled = fill_nearest(prop, settings, utd_col="utd_value", round_values=False,
                               label="the fitted setting of the nearest utd")
    for (_, row), names in zip(prop.iterrows(), filled):
        if names:
            notes.append(f"proposal for {row['target']}: {' and '.join(names)} from the nearest fitted setting "
                         "(no law)")
    return out


def _verify_plan(wf: Workflow, results: Path, res, prop: pd.DataFrame) -> pd.DataFrame:
    """One row per (proposal, env, fitted threshold) with the predicted data-to-threshold."""
    fit = res.objects["data"]
    cross = res.tables["crossings"]
    sizes = {}  # critic width -> N, when the UTD sweep has a model-size axis
    if wf.utd_sweep.critic_width:
        r = pd.read_csv(results, usecols=["critic_width", "model_size"]).drop_duplicates("critic_width")
        sizes = dict(zip(r["critic_width"].astype(int), r["model_size"].astype(float)))
    plan = []
    for _, row in prop.iterrows():
        width, n = None, float(cross["model_size"].median()) if "model_size" in cross else float("nan")
        if sizes and np.isfinite(row.get("model_size", np.nan)):  # the swept width closest to the proposed N
            width = min(sizes, key=lambda w: abs(math.log(sizes[w] / float(row["model_size"]))))
            n = sizes[width]
        for lv, lf in fit.fits.items():
            for env in fit.thresholds[lv]:
                kw = {"utd": float(row["utd"])}
                if fit.law.name == "data_sigma_n":
                    kw["model_size"] = n
                boot = boot_predict(res, env, lv, **kw)
                lo, hi = percentile_interval(boot[:, 0]) if boot is not None and len(boot) > 1 else (np.nan, np.nan)
                refused = fit.refusal(env, lv, **kw)  # levels out of order in J here: no prediction
                pred = np.nan if refused else float(np.squeeze(fit.predict(env, lv, **kw)))
                lo, hi = (np.nan, np.nan) if refused else (lo, hi)
                plan.append({"target": row["target"], "env": env, "level": lv, "threshold": fit.thresholds[lv][env],
                             "utd": format_utd(float(row["utd"])), "utd_value": float(row["utd"]),
                             "batch_size": int(row["batch_size"]), "lr": float(row["lr"]),
                             "critic_width": width if width is not None else np.nan, "model_size": n,
                             "data_pred": pred, "data_pred_lo": float(lo), "data_pred_hi": float(hi),
                             "extrapolated": bool(row.get("extrapolated", False)), "refused": refused or ""})
    return pd.DataFrame(plan)
