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

from pql_jax.config import format_utd
from pql_jax.errors import UserError
from pql_jax.scaling import (PipelineConfig, PowerFit, best_hparams, crossing_bootstrap, fit_all,
                             fit_fixed_effects, load_curves, propose, round_batch, round_sig, write_json,
                             write_results)
from pql_jax.workflow.spec import Workflow, read_settings

#: The two hyperparameter laws: (column of the tables, name of the fit files).
HPARAMS = (("batch_size", "batch_size"), ("lr", "learning_rate"))


def _thresholds(wf: Workflow):
    """The workflow's explicit thresholds, or None (auto-spaced ones)."""
    thr = wf.spec.get("thresholds")
    return [float(t) for t in thr] if thr else None


def stage_fit_hparams(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Steps 2-4: best B and eta per UTD (bootstrap over seeds), then B*(sigma), eta*(sigma)."""
    d = out / "fit_hparams"
    df, notes = load_curves(str(out / "hparam_sweep" / "results.csv"), float(wf.spec["max_return"]))
    cb = crossing_bootstrap(df, _thresholds(wf), int(wf.spec.get("resamples", 100)), 0,
                            n_thresholds=int(wf.spec.get("n_thresholds") or 5), shared=True)
    level = _select_level(wf, cb, notes)
    best, _ = best_hparams(cb.table, cb.D, level)
    J = next(iter(cb.thresholds.values()))
    best["threshold"] = float(J[level])
    best.to_csv(d / "best_hparams.csv", index=False)
    fits = {}
    for hp, name in HPARAMS:
        pf = _fit_hparam(wf, best, hp, name, float(J[level]), notes)
        if pf is not None:
            fits[name] = pf
            write_json(str(d / f"fit_{name}.json"), pf.to_dict())
    targets = list(wf.utd["utd"]) + ([wf.verify["utd"]] if wf.verify["utd"] else [])
    rows = [_setting(wf, best, fits, u, float(J[0])) for u in targets]
    pd.DataFrame(rows).to_csv(d / "settings.csv", index=False)
    write_json(str(d / "summary.json"), {"level": level, "threshold": float(J[level]),
                                        "thresholds": [float(t) for t in J], "notes": notes})
    return {"laws": sorted(fits), "level": level}


def _select_level(wf: Workflow, cb, notes: list) -> int:
    """The threshold level at which best B / eta are picked: the workflow's, else the highest
    one every swept UTD reaches (so the best values are defined at every UTD)."""
    nj = cb.D.shape[2]
    level = wf.spec.get("select_level")
    if level is None:
        level = 0
        for j in range(nj):
            reached = pd.Series(np.isfinite(cb.D[:, 0, j])).groupby(cb.table["utd"].to_numpy()).any()
            if reached.all():
                level = j
        notes.append(f"best B / eta picked at threshold level {level} (the highest one every swept UTD reaches)")
    return min(int(level), nj - 1)


def _fit_hparam(wf: Workflow, best: pd.DataFrame, hp: str, name: str, threshold: float,
                notes: list) -> PowerFit | None:
    """The power law of one hyperparameter over the UTD, or None (with a note) when the best
    values cannot carry one."""
    swept = wf.hparam[hp]
    ok = best[np.isfinite(best[hp].to_numpy(float))]
    if ok["utd"].nunique() < 3:
        notes.append(f"{name} law not fitted: only {ok['utd'].nunique()} UTD(s) reach threshold "
                     f"{threshold:g} (needs 3); using the best observed value of the nearest swept UTD")
        return None
    at_edge = lambda v: abs(v / min(swept) - 1) < 1e-4 or abs(v / max(swept) - 1) < 1e-4  # noqa: E731
    if ok[hp].nunique() == 1:  # the same best value at every UTD: no power law to fit
        v = ok[hp].iloc[0]
        notes.append(f"{name}: best {hp} = {v:g} at every UTD (no dependence on the UTD within this sweep): "
                     "kept constant, no law fitted"
                     + (" (it is the edge of the swept range: the optimum may lie outside it)" if at_edge(v) else ""))
        return None
    pf = fit_fixed_effects(ok, hp, "utd", shared=True)
    edge = ok[[at_edge(v) for v in ok[hp]]]
    if len(edge):
        notes.append(f"best {hp} is at the edge of the swept range at utd "
                     + ", ".join(format_utd(u) for u in edge["utd"]) + ": the optimum may lie outside it")
    return pf


def _setting(wf: Workflow, best: pd.DataFrame, fits: dict, u: float, lowest: float) -> dict:
    """B*, eta* at UTD ``u``: from the law, else the best value of the nearest swept UTD;
    the batch size rounded to a multiple of 16 (and clipped), the learning rate to 3 s.f."""
    row = {"utd": format_utd(u), "utd_value": u}
    for hp, name in HPARAMS:
        if name in fits:
            v, src = float(fits[name].predict(best["env"].iloc[0], u)), "law"
        else:
            ok = best[np.isfinite(best[hp].to_numpy(float))]
            if ok.empty:
                raise UserError(f"fit_hparams: no run of the hparam sweep reaches threshold {lowest:g}; "
                                "lower the thresholds or train longer")
            near = ok.iloc[int(np.argmin(np.abs(np.log(ok["utd"].to_numpy(float)) - math.log(u))))]
            v, src = float(near[hp]), "nearest"
        row[f"{hp}_raw"], row[f"{hp}_source"] = v, src
    b = round_batch(row["batch_size_raw"])
    if wf.utd["clip"]:
        b = int(min(max(b, wf.utd["clip"][0]), wf.utd["clip"][1]))
    row["batch_size"], row["lr"] = b, round_sig(row["lr_raw"])
    return row


def round_utd(u: float) -> float:
    """The nearest (in log) of {1, 1.25, 1.5, 1.75} x 2^m: an exact binary fraction, within ~6%."""
    m = math.floor(math.log2(u))
    cands = [c * 2.0 ** e for e in (m - 1, m, m + 1) for c in (1, 1.25, 1.5, 1.75)]
    return min(cands, key=lambda c: abs(math.log(c / u)))


def stage_fit_laws(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Steps 6-8: D_J(sigma) (and (sigma, N)), compute, budget, sigma*(F); proposal and verify plan."""
    d = out / "fit_laws"
    fit_opts = wf.spec.get("fit") or {}
    # B*(sigma), eta*(sigma) come from the hparam sweep (the UTD sweep has one B, eta per UTD)
    given = {name: PowerFit.from_dict(json.loads((out / "fit_hparams" / f"fit_{name}.json").read_text()))
             for _, name in HPARAMS if (out / "fit_hparams" / f"fit_{name}.json").is_file()}
    pcfg = PipelineConfig(max_return=float(wf.spec["max_return"]), thresholds=_thresholds(wf),
                          n_thresholds=int(wf.spec.get("n_thresholds") or 5),
                          resamples=int(wf.spec.get("resamples", 100)), holdout=fit_opts.get("holdout"),
                          delta=fit_opts.get("delta"), k=float(fit_opts.get("k", 10.0)),
                          hparam_fits=given, hparam_fits_source="fit_hparams (hparam sweep)")
    results = out / "utd_sweep" / "results.csv"
    try:
        res = fit_all(str(results), pcfg)
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
    if wf.verify["utd"] is not None:
        t = propose(d, utds=[wf.verify["utd"]])
        t["target"] = f"utd {format_utd(wf.verify['utd'])}"
        props.append(t)
    if wf.verify["budget"] is not None:
        F = wf.verify["budget"]
        if isinstance(F, str):  # a factor of the largest budget optimum of the fitted thresholds
            F = float(F[:-1]) * float(res.tables["budget"]["budget"].max())
        try:
            t = propose(d, budget=F)
            t["target"] = f"budget {F:.3g}"
            t["utd_proposed"] = t["utd"]
            t["utd"] = [round_utd(u) for u in t["utd"]]  # a UTD the learner's schedule can run exactly
            props.append(t)
        except UserError as exc:
            notes.append(f"no proposal for budget {F:.3g}: {exc}")
    prop = pd.concat(props, ignore_index=True) if props else pd.DataFrame()
    s = read_settings(out)  # no law: the fitted hparam setting of the nearest UTD
    for i, row in prop.iterrows():
        if not np.isfinite(row.get("batch_size", np.nan)) or not np.isfinite(row.get("lr", np.nan)):
            near = s.iloc[int(np.argmin(np.abs(np.log(s["utd_value"]) - math.log(row["utd"]))))]
            prop.loc[i, "batch_size"], prop.loc[i, "lr"] = int(near["batch_size"]), float(near["lr"])
            notes.append(f"proposal for {row['target']}: B / eta from the nearest fitted setting (no law)")
    if wf.utd["clip"] and len(prop):
        prop["batch_size"] = prop["batch_size"].clip(*wf.utd["clip"])
    return prop


def _verify_plan(wf: Workflow, results: Path, res, prop: pd.DataFrame) -> pd.DataFrame:
    """One row per (proposal, env, fitted threshold) with the predicted data-to-threshold."""
    fit = res.objects["data"]
    cross = res.tables["crossings"]
    sizes = {}  # critic width -> N, when the UTD sweep has a model-size axis
    if wf.utd["critic_width"]:
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
                plan.append({"target": row["target"], "env": env, "level": lv, "threshold": fit.thresholds[lv][env],
                             "utd": format_utd(float(row["utd"])), "utd_value": float(row["utd"]),
                             "batch_size": int(row["batch_size"]), "lr": float(row["lr"]),
                             "critic_width": width if width is not None else np.nan, "model_size": n,
                             "data_pred": float(np.squeeze(fit.predict(env, lv, **kw)))})
    return pd.DataFrame(plan)
