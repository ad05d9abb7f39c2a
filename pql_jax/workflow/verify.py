"""The ``verify`` stage: train ``fit_laws/verify_plan.csv`` on fresh seeds and compare the measured
data-to-threshold D_J with the prediction (``verify/verification.csv``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pql_jax.scaling import cell_crossings, crossing_bootstrap, load_curves, write_json
from pql_jax.workflow.spec import Workflow, read_marker
from pql_jax.workflow.sweeps import run_sweep_stage, write_sweep


def _read_plan(out: Path) -> pd.DataFrame:
    path = out / "fit_laws" / "verify_plan.csv"
    if not path.is_file() or path.stat().st_size <= 1:  # fit_laws wrote no row
        return pd.DataFrame()
    return pd.read_csv(path, dtype={"utd": str})


def stage_verify(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Run the proposed settings at the held-out UTD / budget; measured vs predicted D_J."""
    d = out / "verify"
    plan = _read_plan(out)
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
    write_sweep(wf, d / "sweep.yaml", dict(wf.utd["overrides"]), {}, zipped, wf.verify["seeds"])
    info = run_sweep_stage(wf, d, progress, log)
    df, _ = load_curves(str(d / "results.csv"), float(wf.spec["max_return"]))
    levels = sorted(plan["level"].unique())
    thresholds = [float(plan.loc[plan["level"] == lv, "threshold"].iloc[0]) for lv in levels]
    cb = crossing_bootstrap(df, thresholds, int(wf.spec.get("resamples", 100)), 0)
    cells, _ = cell_crossings(cb.table, cb.D, cb.thresholds)
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
