"""What the refinement budget could do for the B*(utd) and lr*(utd) laws (issue 32, section 3's
"too few UTDs for a law" and section 6's flat batch-size law): assessed, not trained.

Per swept hyperparameter (two or more grid values) and env, where ``fit_hparams`` fitted no law
or flagged its slope (its flags.csv: SE above the value, or no dependence on the UTD within the
noise), the refinement rule (``scaling.refine_round``) is asked whether the whole refinement
budget could determine the slope of log best value = log coef - slope log utd (pooled over the
critic widths of a width sweep, as replicate cells):
its cells are the UTDs whose best value lies inside the grid, one more seed at a cell is the whole
B x lr grid there (``runs_per_seed``), a new UTD one grid step beyond an end. The answer, with the
runs that would determine the slope and their cost, goes into ``refine/undetermined.csv``. Those
runs are not trained: a new best value would re-pick B* and lr* for the UTD sweep the D_J laws were
already fitted on, so they belong to a new workflow's hparam_sweep (the report says so).

A best value is discrete on a grid of ratio r, so a seed's log best value carries at least the
rounding variance (ln r)^2 / 12 however well the seeds agree: the seed variance used is never below
it (seeds that all pick one value would otherwise make any slope look determined).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pql_jax.scaling import Cell, RefineProblem, power_model, refine_round
from pql_jax.values import format_utd
from pql_jax.workflow.spec import Workflow

LAWS = (("batch_size", "batch_size", "B*(utd)"), ("lr", "learning_rate", "lr*(utd)"))
"""(best_hparams.csv column, fit_<name>.json name, the law as the report names it)."""


def hparam_undetermined(wf: Workflow, out: Path, utd_limits: tuple) -> list[dict]:
    """Rows for ``undetermined.csv`` (module docstring): one per flagged or unfitted hparam law,
    judged against the whole refinement budget (``refine.budget``)."""
    path, sweep = out / "fit_hparams" / "best_hparams.csv", out / "hparam_sweep" / "results.csv"
    if not (path.is_file() and sweep.is_file()):
        return []
    best = pd.read_csv(path)
    table = pd.read_csv(sweep, usecols=["member", "env_steps"])
    run_env_steps = float(table.groupby("member")["env_steps"].max().max())
    h = wf.hparam_sweep
    grid = {"batch_size": h.batch_size, "lr": h.lr}
    rows = []
    for column, name, law in LAWS:
        values = sorted(grid[column])
        if len(values) < 2:
            continue  # not swept: no law to determine
        fitted, flagged = _fitted(out, name), _flagged(out, name)
        for env, cells in best.groupby("env"):
            slope = fitted.get(str(env), np.nan)
            if np.isfinite(slope) and str(env) not in flagged and "" not in flagged:
                continue
            rows.append({"env": env, "level": "", "law": law, "param": "slope",
                         **_assess(cells, column, values, slope, run_env_steps, len(h.batch_size) * len(h.lr),
                                   wf.seeds, float(wf.refine.budget), utd_limits)})
    return rows


def _fitted(out: Path, name: str) -> dict:
    """env -> slope of ``fit_<name>.json`` (empty: no law fitted)."""
    path = out / "fit_hparams" / f"fit_{name}.json"
    if not path.is_file():
        return {}
    return {env: float(p["slope"]) for env, p in json.loads(path.read_text())["params"].items()}


def _flagged(out: Path, name: str) -> set:
    """Envs ('' for all) whose ``name`` law fit_hparams flagged as the report does (its
    flags.csv): the slope (SE above it by the seed bootstrap, or flat: a constant) or no law."""
    path = out / "fit_hparams" / "flags.csv"
    if not path.is_file():
        return set()
    f = pd.read_csv(path, dtype=str, keep_default_na=False)
    f = f[(f["quantity"] == f"{name} law") & f["param"].isin(["slope", ""])]
    return set(f["group"])


def _assess(best: pd.DataFrame, column: str, values: list, slope: float, run_env_steps: float,
            runs_per_seed: int, seeds: int, budget: float, utd_limits: tuple) -> dict:
    """The rule's verdict on one law's slope: value, reason, runs that would determine it, cost."""
    inside = best[best[f"{column}_edge"].isna()] if f"{column}_edge" in best else best
    inside = inside[np.isfinite(inside[column]) & (inside[column] > 0)]
    if len(inside) < 2:
        return {"value": slope, "reason": f"{len(inside)} UTD(s) with the best {column} inside the grid: a slope "
                "needs 2 (widen the grid: refine.widen)", "runs_that_would_determine": "", "env_steps": np.nan,
                "critic_updates": np.nan}
    floor = np.log(np.median(np.asarray(values[1:], float) / np.asarray(values[:-1], float))) ** 2 / 12
    cells = []
    for r in inside.itertuples():
        n = int(getattr(r, f"n_{column}"))
        rel = float(getattr(r, f"{column}_std")) / float(getattr(r, column))
        cells.append(Cell(float(r.utd), n, float(np.log(getattr(r, column))), max(n * rel ** 2, floor)))
    x, y = np.log([c.utd for c in cells]), np.array([c.log_value for c in cells])
    fit_slope, fit_coef = np.polyfit(x, y, 1, w=np.sqrt([c.seeds for c in cells]))
    problem = RefineProblem(power_model(float(np.exp(fit_coef)), -float(fit_slope)), tuple(cells), run_env_steps,
                            runs_per_seed=runs_per_seed, new_cell_seeds=seeds, utd_limits=utd_limits)
    plan = refine_round(problem, ["slope"], budget)
    edges = len(best) - len(inside)
    basis = f"from the best {column} at {len(cells)} UTDs inside the grid" + (
        f" ({edges} at an edge, a bound, left out)" if edges else "") + ": "
    if plan.undetermined:
        u = plan.undetermined[0]
        return {"value": u.value, "reason": basis + u.reason, "runs_that_would_determine": _runs(u.runs),
                "env_steps": u.env_steps, "critic_updates": u.critic_updates}
    now, _, limit = plan.predicted_se["slope"]
    if not plan.runs:
        return {"value": -float(fit_slope), "reason": basis + f"determined by these cells already (predicted SE "
                f"{now:.3g} vs |slope| {limit:.3g}); fit_hparams fitted no law or flagged it for another reason "
                "(its flags.csv)", "runs_that_would_determine": "", "env_steps": 0.0, "critic_updates": 0.0}
    return {"value": -float(fit_slope), "reason": basis + f"determinable within the refinement budget ({budget:,.0f} env steps) "
            "by the runs named; not trained here: new best values would re-pick the UTD sweep's settings, so "
            "they belong in the hparam_sweep of a new workflow", "runs_that_would_determine": _runs(plan.runs),
            "env_steps": plan.env_steps, "critic_updates": plan.critic_updates}


def _runs(runs) -> str:
    """Planned runs in words: each cell's kind, UTD and seeds of the whole grid."""
    return "; ".join(f"{p.kind} utd {format_utd(p.utd)} x{p.seeds} seed(s) of the grid ({p.runs} runs)" for p in runs)
