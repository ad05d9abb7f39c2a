"""The fitting stages of the scaling workflow (``fit_hparams``, ``fit_laws``) and ``verify``.

Each reads only files of earlier stages from the run directory (see ``pql_jax.workflow``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pql_jax.errors import UserError
from pql_jax.workflow.spec import Workflow, _run_sweep_stage, _write_sweep, read_marker, utd_text


def _curves(wf: Workflow, path: Path):
    from pql_jax.scaling import load_curves

    df, notes = load_curves(str(path), float(wf.spec["max_return"]))
    return df, notes


def _thresholds(wf: Workflow, groups, keys) -> dict:
    from pql_jax.scaling import auto_thresholds

    if wf.spec.get("thresholds"):
        return {"*": np.sort(np.asarray([float(t) for t in wf.spec["thresholds"]], float))}
    return auto_thresholds(groups, keys, int(wf.spec.get("n_thresholds") or 5), None, shared=True)


def stage_fit_hparams(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Step 2-4: best B and eta per UTD (bootstrap over seeds), then B*(sigma), eta*(sigma)."""
    from pql_jax.scaling import best_hparams, bootstrap_crossings, fit_fixed_effects, round_batch, round_sig
    from pql_jax.scaling import curves as cv
    from pql_jax.scaling.io import write_json

    d = out / "fit_hparams"
    df, notes = _curves(wf, out / "hparam_sweep" / "results.csv")
    keys = cv.group_keys(df)
    groups = cv.run_groups(df)
    thresholds = _thresholds(wf, groups, keys)
    resamples = int(wf.spec.get("resamples", 100))
    D = bootstrap_crossings(groups, thresholds, resamples, 0)
    gdf = pd.DataFrame([g.key for g in groups], columns=keys)
    nj = D.shape[2]
    level = wf.spec.get("select_level")
    if level is None:  # the highest level every UTD reaches (best B / eta defined everywhere)
        level = 0
        for j in range(nj):
            reached = pd.Series(np.isfinite(D[:, 0, j])).groupby(gdf["utd"].to_numpy()).any()
            if reached.all():
                level = j
        notes.append(f"best B / eta picked at threshold level {level} (the highest one every swept UTD reaches)")
    level = min(int(level), nj - 1)
    best, _ = best_hparams(gdf, D, level)
    J = next(iter(thresholds.values()))
    best["threshold"] = float(J[level])
    best.to_csv(d / "best_hparams.csv", index=False)
    fits, laws = {}, {}
    for hp, name, swept in (("batch_size", "batch_size", wf.hparam["batch_size"]),
                            ("lr", "learning_rate", wf.hparam["lr"])):
        ok = best[np.isfinite(best[hp].to_numpy(float))]
        if ok["utd"].nunique() < 3:
            notes.append(f"{name} law not fitted: only {ok['utd'].nunique()} UTD(s) reach threshold "
                         f"{J[level]:g} (needs 3); using the best observed value of the nearest swept UTD")
            continue
        if ok[hp].nunique() == 1:  # the same best value at every UTD: no power law to fit
            notes.append(f"{name}: best {hp} = {ok[hp].iloc[0]:g} at every UTD (no dependence on the UTD "
                         "within this sweep): kept constant, no law fitted"
                         + (" (it is the edge of the swept range: the optimum may lie outside it)"
                            if ok[hp].iloc[0] in (min(swept), max(swept)) or
                            abs(ok[hp].iloc[0] / min(swept) - 1) < 1e-6 or abs(ok[hp].iloc[0] / max(swept) - 1) < 1e-6
                            else ""))
            continue
        pf = fit_fixed_effects(ok, hp, "utd", shared=True)
        try:
            law = pf.to_dict()
        except (OverflowError, ZeroDivisionError):  # slope ~ 0: beta = coef^(1/slope) is undefined
            notes.append(f"{name}: fitted slope {next(iter(pf.slope.values())):.3g} ~ 0: kept constant")
            continue
        fits[name] = pf
        laws[name] = law
        write_json(str(d / f"fit_{name}.json"), law)
        edge = ok[(ok[hp] <= min(swept) * 1.0001) | (ok[hp] >= max(swept) * 0.9999)]
        if len(edge):
            notes.append(f"best {hp} is at the edge of the swept range at utd "
                         + ", ".join(utd_text(u) for u in edge["utd"]) + ": the optimum may lie outside it")
    rows = []
    targets = list(wf.utd["utd"]) + ([wf.verify["utd"]] if wf.verify["utd"] else [])
    for u in targets:
        row = {"utd": utd_text(u), "utd_value": u}
        for hp, name in (("batch_size", "batch_size"), ("lr", "learning_rate")):
            if name in fits:
                v, src = float(fits[name].predict(best["env"].iloc[0], u)), "law"
            else:
                ok = best[np.isfinite(best[hp].to_numpy(float))]
                if ok.empty:
                    raise UserError(f"fit_hparams: no run of the hparam sweep reaches threshold {J[0]:g}; "
                                    "lower the thresholds or train longer")
                near = ok.iloc[int(np.argmin(np.abs(np.log(ok["utd"].to_numpy(float)) - math.log(u))))]
                v, src = float(near[hp]), "nearest"
            row[f"{hp}_raw"], row[f"{hp}_source"] = v, src
        b = round_batch(row["batch_size_raw"])
        if wf.utd["clip"]:
            b = int(min(max(b, wf.utd["clip"][0]), wf.utd["clip"][1]))
        row["batch_size"], row["lr"] = b, round_sig(row["lr_raw"])
        rows.append(row)
    pd.DataFrame(rows).to_csv(d / "settings.csv", index=False)
    write_json(str(d / "summary.json"), {"level": level, "threshold": float(J[level]),
                                        "thresholds": [float(t) for t in J], "notes": notes})
    return {"laws": sorted(laws), "level": level}


def round_utd(u: float) -> float:
    """The nearest (in log) of {1, 1.25, 1.5, 1.75} x 2^m: an exact binary fraction, within ~6%."""
    m = math.floor(math.log2(u))
    cands = [c * 2.0 ** e for e in (m - 1, m, m + 1) for c in (1, 1.25, 1.5, 1.75)]
    return min(cands, key=lambda c: abs(math.log(c / u)))


def _settings(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "fit_hparams" / "settings.csv", dtype={"utd": str})


def stage_fit_laws(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Steps 6-8: D_J(sigma) (and (sigma, N)), compute, budget, sigma*(F); proposal and verify plan."""
    from pql_jax.scaling import PipelineConfig, fit_all, propose, write_results
    from pql_jax.scaling import pipeline
    from pql_jax.scaling.fit import PowerFit, single_thread_blas
    from pql_jax.scaling.io import write_json

    d = out / "fit_laws"
    fit_opts = wf.spec.get("fit") or {}
    thr = wf.spec.get("thresholds")
    pcfg = PipelineConfig(max_return=float(wf.spec["max_return"]), thresholds=[float(t) for t in thr] if thr else None,
                          n_thresholds=int(wf.spec.get("n_thresholds") or 5),
                          resamples=int(wf.spec.get("resamples", 100)), holdout=fit_opts.get("holdout"),
                          delta=fit_opts.get("delta"), k=float(fit_opts.get("k", 10.0)))
    results = out / "utd_sweep" / "results.csv"
    try:
        res = fit_all(str(results), pcfg)
    except UserError as exc:  # honest: no law through noise; the report states why
        write_json(str(d / "summary.json"), {"fitted": False, "reason": str(exc)})
        log(f"  no laws fitted: {exc}")
        return {"fitted": False, "reason": str(exc)}
    # B*(sigma), eta*(sigma) come from the hparam sweep: carry them so compute and proposals use them
    for name in ("batch_size", "learning_rate"):
        src = out / "fit_hparams" / f"fit_{name}.json"
        if name not in res.objects and src.is_file():
            j = json.loads(src.read_text())
            env = next(iter(j["params"]))
            envs = sorted(res.tables["crossings"]["env"].unique())
            p, se = j["params"][env], j["se"][env]
            res.objects[name] = PowerFit("batch_size" if name == "batch_size" else "lr", "utd", {e: p["slope"] for e in envs},
                                         {e: p["coef"] for e in envs}, {e: se["slope"] for e in envs},
                                         {e: se["coef"] for e in envs}, j["loss"], j["n"], True)
            res.fits[f"fit_{name}"] = {**j, "params": {e: p for e in envs}, "se": {e: se for e in envs},
                                       "source": "fit_hparams (hparam sweep)"}
    if "batch_size" in res.objects and "fit_batch_size" in res.fits and "source" in res.fits["fit_batch_size"]:
        res.notes[:] = [n for n in res.notes if not n.startswith(("delta not given", "k measured"))]
        df, _ = _curves(wf, results)
        with single_thread_blas():
            pipeline._budgets(res, df, res.tables["crossings"])
    write_results(res, str(d))
    # proposals: held-out UTD and/or larger budget
    props, notes = [], list(dict.fromkeys(res.notes))
    if wf.verify["utd"] is not None:
        t = propose(str(d), utds=[wf.verify["utd"]])
        t["target"] = f"utd {utd_text(wf.verify['utd'])}"
        props.append(t)
    if wf.verify["budget"] is not None:
        F = wf.verify["budget"]
        if isinstance(F, str):  # a factor of the largest budget optimum of the fitted thresholds
            F = float(F[:-1]) * float(res.tables["budget"]["budget"].max())
        try:
            t = propose(str(d), budget=F)
            t["target"] = f"budget {F:.3g}"
            t["utd_proposed"] = t["utd"]
            t["utd"] = [round_utd(u) for u in t["utd"]]  # a UTD the learner's schedule can run exactly
            props.append(t)
        except UserError as exc:
            notes.append(f"no proposal for budget {F:.3g}: {exc}")
    prop = pd.concat(props, ignore_index=True) if props else pd.DataFrame()
    # settings fallback (no law): the fitted hparam settings of the verify UTD
    s = _settings(out)
    for i, row in prop.iterrows():
        if not np.isfinite(row.get("batch_size", np.nan)) or not np.isfinite(row.get("lr", np.nan)):
            near = s.iloc[int(np.argmin(np.abs(np.log(s["utd_value"]) - math.log(row["utd"]))))]
            prop.loc[i, "batch_size"], prop.loc[i, "lr"] = int(near["batch_size"]), float(near["lr"])
            notes.append(f"proposal for {row['target']}: B / eta from the nearest fitted setting (no law)")
    if wf.utd["clip"] and len(prop):
        prop["batch_size"] = prop["batch_size"].clip(*wf.utd["clip"])
    prop.to_csv(d / "proposal.csv", index=False)
    fit = res.objects["data"]
    sizes = {}  # critic width -> N, when the UTD sweep has a model-size axis
    if wf.utd["critic_width"]:
        r = pd.read_csv(results, usecols=["critic_width", "model_size"]).drop_duplicates("critic_width")
        sizes = dict(zip(r["critic_width"].astype(int), r["model_size"].astype(float)))
    plan = []
    for _, row in prop.iterrows():
        width, n = None, float(res.tables["crossings"]["model_size"].median()) \
            if "model_size" in res.tables["crossings"] else float("nan")
        if sizes and np.isfinite(row.get("model_size", np.nan)):  # the swept width closest to the proposed N
            width = min(sizes, key=lambda w: abs(math.log(sizes[w] / float(row["model_size"]))))
            n = sizes[width]
        for lv, lf in fit.fits.items():
            for env in fit.thresholds[lv]:
                kw = {"utd": float(row["utd"])}
                if fit.law.name == "data_sigma_n":
                    kw["model_size"] = n
                plan.append({"target": row["target"], "env": env, "level": lv, "threshold": fit.thresholds[lv][env],
                             "utd": utd_text(float(row["utd"])), "utd_value": float(row["utd"]),
                             "batch_size": int(row["batch_size"]), "lr": float(row["lr"]),
                             "critic_width": width if width is not None else np.nan, "model_size": n,
                             "data_pred": float(np.squeeze(fit.predict(env, lv, **kw)))})
    pd.DataFrame(plan).to_csv(d / "verify_plan.csv", index=False)
    write_json(str(d / "summary.json"), {"fitted": True, "notes": notes})
    return {"fitted": True, "levels": len(fit.fits), "proposals": len(prop)}


def stage_verify(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Run the proposed settings at the held-out UTD / budget; measured vs predicted D_J."""
    from pql_jax.scaling import bootstrap_crossings, cell_crossings
    from pql_jax.scaling import curves as cv
    from pql_jax.scaling.io import write_json

    d = out / "verify"
    plan_path = out / "fit_laws" / "verify_plan.csv"
    plan = pd.read_csv(plan_path, dtype={"utd": str}) if plan_path.is_file() and plan_path.stat().st_size > 1 \
        else pd.DataFrame()
    if plan.empty:
        reason = read_marker(out, "fit_laws").get("reason", "fit_laws proposed no settings")
        write_json(str(d / "summary.json"), {"verified": False, "reason": reason})
        return {"verified": False, "reason": reason}
    with_width = "critic_width" in plan and plan["critic_width"].notna().any()
    runs = plan.drop_duplicates(["utd", "batch_size", "lr"] + (["critic_width"] if with_width else []))
    zipped = {"agent.utd": list(runs["utd"]), "agent.batch_size": [int(b) for b in runs["batch_size"]],
              "agent.critic_lr": [float(x) for x in runs["lr"]], "agent.actor_lr": [float(x) for x in runs["lr"]]}
    if with_width:
        zipped["agent.critic_width"] = [int(w) for w in runs["critic_width"]]
    overrides = dict(wf.utd["overrides"])
    _write_sweep(wf, d / "sweep.yaml", overrides, {}, zipped, wf.verify["seeds"])
    info = _run_sweep_stage(wf, d, progress, log)
    df, _ = _curves(wf, d / "results.csv")
    groups = cv.run_groups(df)
    keys = cv.group_keys(df)
    levels = sorted(plan["level"].unique())
    thr = {"*": np.array([float(plan.loc[plan["level"] == lv, "threshold"].iloc[0]) for lv in levels])}
    D = bootstrap_crossings(groups, thr, int(wf.spec.get("resamples", 100)), 0)
    gdf = pd.DataFrame([g.key for g in groups], columns=keys)
    cells, _ = cell_crossings(gdf, D, thr)
    rows = []
    for _, p in plan.iterrows():
        sel = (np.abs(cells["utd"] - p["utd_value"]) <= 1e-9 * p["utd_value"]) & (cells["env"] == p["env"]) \
            & (cells["level"] == levels.index(p["level"]))
        if with_width and "model_size" in cells and np.isfinite(p["model_size"]):
            sel &= np.abs(cells["model_size"] - p["model_size"]) <= 1e-6 * p["model_size"]
        m = cells[sel]
        measured = float(m["data"].min()) if len(m) else float("nan")
        std = float(m["data_std"].iloc[0]) if len(m) else float("nan")
        rows.append({**p.to_dict(), "data_measured": measured, "data_measured_std": std,
                     "first_log": float(df["step"].min()),
                     "reached": bool(np.isfinite(measured)),
                     "rel_error": (p["data_pred"] - measured) / measured if np.isfinite(measured) else float("nan")})
    pd.DataFrame(rows).to_csv(d / "verification.csv", index=False)
    write_json(str(d / "summary.json"), {"verified": True})
    return {"verified": True, **info}
