"""The ``refine`` stage: rounds of runs where the UTD sweep's D_J laws are undetermined.

With ``refine.budget`` extra env steps, each round fits the UTD sweep plus every earlier round as
``fit_laws`` does, takes the D_J parameters the fit flags (SE above the value, a search bound, an
interval spanning orders of magnitude), asks ``pql_jax.scaling.refine_round`` which runs shrink
them most per env step (more seeds at a cell, a UTD one grid step beyond an end) and trains them
in ``refine/round<r>/``. Rounds stop when nothing is flagged, the rule adds nothing, or the budget
is spent. ``refine/results.csv`` (the UTD sweep's rows, then each round's, members prefixed
``round<r>/``) is what ``fit_laws`` then fits; ``rounds.csv`` lists each round's runs, why, their
cost and each flagged parameter's SE before and after; ``undetermined.csv`` what stays flagged,
with the runs that would determine it and their cost. Without a budget the stage writes nothing.

New UTDs never reach the held-out verification UTD (``verify.utd`` stays outside the fitted
range); new critic widths are not added (a width's model size is known only once built).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pql_jax.errors import UserError
from pql_jax.run.distributed import barrier, is_primary
from pql_jax.scaling import Cell, RefineProblem, fit_all, law_model, markdown_table, refine_round, write_json
from pql_jax.values import format_utd
from pql_jax.workflow.fits import pipeline_config, settings_at
from pql_jax.workflow.refine_hparams import hparam_undetermined
from pql_jax.workflow.spec import Workflow
from pql_jax.workflow.sweeps import run_sweep_stage, write_sweep
from pql_jax.workflow.widen import combine_results

MAX_ROUNDS = 8
"""A bound on rounds whatever the budget: each round costs a compile and a fit."""


def stage_refine(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Refinement rounds within ``refine.budget`` env steps (nothing without a budget)."""
    if not wf.refine.budget:
        return {"rounds": 0}
    d = out / "refine"
    spent, rows, undetermined, r = 0.0, [], [], 1
    while r <= MAX_ROUNDS + 1:
        table = _combined(out, r - 1)
        try:
            res = fit_all(table, pipeline_config(wf, out))
        except UserError as exc:  # e.g. a round's runs moved nothing into reach: stop with what there is
            log(f"  refinement stopped: {exc}")
            break
        if r == 1:
            _fix_thresholds(wf, out, res)
        flagged = _flagged(res)
        _record_after(rows, res, r - 1)
        remaining = wf.refine.budget - spent
        run_env_steps = _run_env_steps(table)
        # at least one run's worth, so the last word on what stays flagged names the runs it needs
        plans = _plans(wf, res, table, flagged, max(remaining, run_env_steps), run_env_steps) if flagged else []
        round_budget = _round_budget(remaining, run_env_steps, wf.refine.round_runs)
        runs = _merge_runs(plans, run_env_steps, round_budget) if r <= MAX_ROUNDS else {}
        if not runs:
            undetermined = _still_flagged(flagged, plans, remaining, run_env_steps)
            break
        log(f"  round {r}: {len(runs)} cell(s), " + "; ".join(f"{k} at utd {format_utd(u)} x{s}"
                                                          for (u, _), (k, s, _) in runs.items()))
        cost = _train_round(wf, out, r, table, runs, progress, log)
        spent += cost
        rows += _round_rows(r, plans, runs, res, cost)
        r += 1
    if is_primary():
        _write(d, rows, undetermined + hparam_undetermined(wf, out, _utd_limits(wf)), spent)
    barrier("pql_jax: refine written")
    return {"rounds": r - 1, "env_steps": spent, "undetermined": len(undetermined)}


def _fix_thresholds(wf: Workflow, out: Path, res) -> None:
    """Auto-spaced thresholds are placed from the curves, so added runs would move them: every
    round's fit and ``fit_laws`` use the ones of the UTD sweep alone (``refine/thresholds.json``)."""
    if wf.thresholds or not is_primary():
        return
    found = {env: [float(t) for t in J] for env, J in res.objects["thresholds"].items()}
    write_json(str(out / "refine" / "thresholds.json"), found.get("*", found))


def _combined(out: Path, rounds: int) -> pd.DataFrame:
    """The UTD sweep's rows and those of rounds 1..``rounds`` (members prefixed ``round<r>/``,
    program groups numbered uniquely), written to ``refine/results.csv`` with the CSV text kept."""
    sweep = out / "utd_sweep" / "results.csv"
    if not rounds:
        return pd.read_csv(sweep)
    dest = out / "refine" / "results.csv"
    if is_primary():
        combine_results([(sweep, "")] + [(out / "refine" / f"round{r}" / "results.csv", f"round{r}/")
                                         for r in range(1, rounds + 1)], dest)
    barrier("pql_jax: refine table written")
    return pd.read_csv(dest)


def _flagged(res) -> dict:
    """(env, level) -> (flagged D_J parameter names, their problems), from the fit's flags."""
    fit = res.objects["data"]
    out: dict = {}
    for f in res.flags:
        q = str(f.get("quantity", ""))
        if not q.startswith("D_J law, level ") or f.get("param") not in fit.law.params:
            continue
        level = int(q.split("level ")[1].split()[0])
        names, why = out.setdefault((f["group"], level), ([], []))
        if f["param"] not in names:
            names.append(f["param"])
            why.append(f"{f['param']}: {f['problem']}")
    return out


def _cells(res, seeds: pd.Series, env, level) -> list[Cell]:
    """The fit's cells at one (env, level): UTD, model size, seeds so far (``seeds``, per
    (utd, model_size)) and the per-seed variance of log D (n x the bootstrap variance of the
    seed-mean crossing)."""
    cross = res.tables["crossings"]
    c = cross[(cross["env"] == env) & (cross["level"] == level) & np.isfinite(cross["data"])]
    cells = []
    for _, row in c.iterrows():
        n = int(seeds.get((row["utd"], row["model_size"]), 1))
        rel = float(row["data_std"]) / float(row["data"])
        cells.append(Cell(float(row["utd"]), n, float(np.log(row["data"])), n * rel ** 2,
                          float(row["model_size"])))
    return cells


def _plans(wf: Workflow, res, table: pd.DataFrame, flagged: dict, remaining: float, run_env_steps: float) -> list:
    """[((env, level), RoundPlan)] for each flagged D_J law, each given the round's budget
    (``_round_budget``); ``run_env_steps`` is one run's full length."""
    fit = res.objects["data"]
    seeds = table.groupby(["utd", "model_size"])["seed"].nunique()
    lo, hi = _utd_limits(wf)
    plans, budget = [], _round_budget(remaining, run_env_steps, wf.refine.round_runs)
    for (env, level), (names, _) in sorted(flagged.items()):
        cells = _cells(res, seeds, env, level)
        if len(cells) < len(fit.law.params):
            continue
        sizes = [c.model_size for c in cells]
        problem = RefineProblem(law_model(fit.law, fit.params(env, level), cells), tuple(cells), run_env_steps,
                                new_cell_seeds=len(set(table["seed"])), utd_limits=(lo, hi),
                                size_limits=(min(sizes), max(sizes)))
        plans.append(((env, level), refine_round(problem, names, remaining, round_env_steps=budget)))
    return plans


def _utd_limits(wf: Workflow) -> tuple[float, float]:
    """(lo, hi) new UTDs must lie within: up to 8x beyond the UTD sweep's range, never reaching the
    held-out verify UTD."""
    swept = sorted(wf.utd_sweep.utd)
    held = wf.verify.utd
    hi = held * (1 - 1e-6) if held and held > swept[-1] else swept[-1] * 8
    lo = held * (1 + 1e-6) if held and held < swept[0] else swept[0] / 8
    return lo, hi


def _round_budget(remaining: float, run_env_steps: float, round_runs: int) -> float:
    """What one round may spend: half of what is left (later rounds see what it changed), at
    least ``round_runs`` runs (``refine.round_runs``: they train side by side), never more than
    is left (0: nothing can be trained)."""
    floor = round_runs * run_env_steps  # round_runs >= 1: the workflow file's parser refuses less
    return min(remaining, max(remaining / 2, floor)) if remaining >= run_env_steps else 0.0


def _merge_runs(plans: list, run_env_steps: float, remaining: float) -> dict:
    """(utd, model_size) -> (kind, seeds, why): a cell's seeds serve every level, so the largest
    request per cell is trained once; cells in the rule's order (each level's first picks first)
    while their runs fit in what is left of the budget."""
    wanted: dict = {}
    picks = [(i, env, level, p) for (env, level), plan in plans for i, p in enumerate(plan.runs)]
    for _, env, level, p in sorted(picks, key=lambda x: x[0]):
        key = (p.utd, p.model_size)
        if key not in wanted or p.seeds > wanted[key][1]:
            wanted[key] = (p.kind, p.seeds, f"{env} J level {level}: {p.param}")
    runs, cost = {}, 0.0
    for key, (kind, seeds, why) in wanted.items():
        if cost + seeds * run_env_steps <= remaining:
            runs[key], cost = (kind, seeds, why), cost + seeds * run_env_steps
    return runs


def _run_env_steps(table: pd.DataFrame) -> float:
    """Env steps one run of the sweep takes to full length (its longest member)."""
    return float(table.groupby("member")["env_steps"].max().max())


def _train_round(wf: Workflow, out: Path, r: int, table: pd.DataFrame, runs: dict, progress, log) -> float:
    """Train round ``r``'s runs (new seeds numbered after a cell's highest); its env steps."""
    d = out / "refine" / f"round{r}"
    if is_primary():
        d.mkdir(parents=True, exist_ok=True)
    barrier("pql_jax: refine round directory")
    zipped = {"agent.utd": [], "agent.batch_size": [], "agent.critic_lr": [], "agent.actor_lr": [], "run.seed": []}
    widths = {}  # model size -> critic width, when the sweep has a width axis
    if "critic_width" in table.columns and table["critic_width"].nunique() > 1:
        widths = dict(zip(table["model_size"], table["critic_width"].astype(int)))
        zipped["agent.critic_width"] = []
    top = table.groupby(["utd", "model_size"])["seed"].max()
    for (utd, size), (_, seeds, _) in runs.items():
        width = widths.get(size)
        setting = settings_at(wf, out, utd, width, size)
        first = int(top.get((utd, size), table["seed"].max())) + 1
        for seed in range(first, first + seeds):
            zipped["agent.utd"].append(format_utd(utd))
            zipped["agent.batch_size"].append(int(setting["batch_size"]))
            zipped["agent.critic_lr"].append(float(setting["lr"]))
            zipped["agent.actor_lr"].append(float(setting["lr"]))
            zipped["run.seed"].append(seed)
            if widths:
                zipped["agent.critic_width"].append(width)
    before = (d / "sweep.yaml").read_text() if (d / "sweep.yaml").is_file() else None
    barrier("pql_jax: refine round sweep read")
    write_sweep(wf, d / "sweep.yaml", wf.utd_sweep.overrides, {}, zipped, None)
    # a resumed stage decides the same round again: a finished one (its results.csv copy written
    # after training) is not even compiled again
    if before == (d / "sweep.yaml").read_text() and (d / "results.csv").is_file():
        log(f"  round {r}: trained already")
    else:
        run_sweep_stage(wf, d, progress, log)
    t = pd.read_csv(d / "results.csv")
    return float(t.groupby("member")["env_steps"].max().sum())


def _param_se(res, env, level, name) -> tuple[float, float, float]:
    """A D_J parameter's value, Hessian SE and bootstrap SE in the fit ``res`` (NaN if absent)."""
    lf = res.objects["data"].fits.get(level)
    if lf is None or env not in lf.params:
        return (np.nan,) * 3
    boot = (lf.bootstrap_se.get(env) or {}).get(name, np.nan) if lf.bootstrap_se else np.nan
    return float(lf.params[env][name]), float(lf.se.get(env, {}).get(name, np.nan)), float(boot)


def _round_rows(r: int, plans: list, runs: dict, res, cost: float) -> list[dict]:
    """One row per run group of round ``r`` the rule planned and the round trained (``runs``),
    with the flagged parameter it was for and that parameter's SE before."""
    rows = []
    for (env, level), plan in plans:
        for p in plan.runs:
            if (p.utd, p.model_size) not in runs:
                continue
            value, se, boot = _param_se(res, env, level, p.param)
            rows.append({"round": r, "env": env, "level": level, "param": p.param, "kind": p.kind,
                         "utd": format_utd(p.utd), "model_size": p.model_size, "seeds": p.seeds, "runs": p.runs,
                         "planned_env_steps": p.env_steps, "planned_critic_updates": p.critic_updates,
                         "round_env_steps": cost, "value_before": value, "se_before": se,
                         "bootstrap_se_before": boot, "predicted_rel_se_before": p.se_before,
                         "predicted_rel_se_after": p.se_after})
    return rows


def _record_after(rows: list, res, r: int) -> None:
    """Fill round ``r``'s rows with the parameter's value and SEs in the fit after it."""
    for row in rows:
        if row["round"] == r:
            row["value_after"], row["se_after"], row["bootstrap_se_after"] = _param_se(
                res, row["env"], row["level"], row["param"])


def _still_flagged(flagged: dict, plans: list, remaining: float, run_env_steps: float) -> list:
    """[((env, level), what)] for every parameter still flagged at the end: the rule's
    ``Undetermined`` (why no runs, which would determine it and their cost) where it gave one,
    else the flag itself."""
    said = {(key, u.param): u for key, plan in plans for u in plan.undetermined}
    out = []
    for key, (names, why) in sorted(flagged.items()):
        for name, problem in zip(names, why):
            if (key, name) in said:
                out.append((key, said[key, name]))
            else:
                wanted = [p for key2, plan in plans if key2 == key for p in plan.runs if p.param == name]
                if remaining < run_env_steps:
                    end = (f"the refinement budget left ({max(remaining, 0):,.0f} env steps) is less than a run "
                           f"({run_env_steps:,.0f})")
                    if wanted:
                        end += "; next: " + ", ".join(f"{p.kind} at utd {format_utd(p.utd)} x{p.seeds}" for p in wanted)
                else:
                    end = "no run the rule can add shrinks it"
                out.append((key, {"param": name, "reason": f"{problem}; {end}"}))
    return out


def _write(d: Path, rows: list, undetermined: list, spent: float) -> None:
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(d / "rounds.csv", index=False)
    out = []
    for item in undetermined:
        if isinstance(item, dict):  # an hparam law's (refine_hparams), complete
            out.append(item)
            continue
        (env, level), u = item
        if isinstance(u, dict):
            out.append({"env": env, "level": level, "law": "D_J", **u})
            continue
        runs = "; ".join(f"{p.kind} utd {format_utd(p.utd)} x{p.seeds}" for p in u.runs)
        out.append({"env": env, "level": level, "law": "D_J", "param": u.param, "value": u.value, "reason": u.reason,
                    "runs_that_would_determine": runs, "env_steps": u.env_steps, "critic_updates": u.critic_updates})
    pd.DataFrame(out).to_csv(d / "undetermined.csv", index=False)
    write_json(str(d / "summary.json"), {"env_steps": spent, "rounds": int(max([r["round"] for r in rows], default=0))})


def refine_lines(out: Path) -> list[str]:
    """The report's refinement section: each round, and what stays undetermined."""
    d = out / "refine"
    if not (d / "rounds.csv").is_file():
        return []
    summary = json.loads((d / "summary.json").read_text())
    lines = ["## Refinement rounds", "",
             f"{summary['rounds']} round(s), {summary['env_steps']:,.0f} extra env steps (budget "
             f"{yaml.safe_load((out / 'workflow.yaml').read_text()).get('refine', {}).get('budget', 0):,}).", ""]
    try:
        rounds = pd.read_csv(d / "rounds.csv")
    except pd.errors.EmptyDataError:
        rounds = pd.DataFrame()
    if len(rounds):
        cols = [c for c in ("round", "level", "param", "kind", "utd", "seeds", "planned_env_steps", "value_before",
                            "se_before", "value_after", "se_after") if c in rounds.columns]
        lines += [markdown_table(rounds, cols, digits=3), ""]
    try:
        left = pd.read_csv(d / "undetermined.csv")
    except pd.errors.EmptyDataError:
        left = pd.DataFrame()
    for _, u in left.iterrows():
        runs = u.get("runs_that_would_determine")
        law = u.get("law", "D_J")
        level = int(u["level"]) if pd.notna(u["level"]) and float(u["level"]).is_integer() else u["level"]
        where = f"{law} level {level}" if law == "D_J" or pd.isna(law) else f"{law} law"
        lines.append(f"- still undetermined: {where} `{u['param']}`: {u['reason']}"
                     + (f" (would need: {runs}, {u['env_steps']:.3g} env steps)" if isinstance(runs, str) and runs
                        else ""))
    return lines + [""]
