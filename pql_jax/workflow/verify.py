"""The ``verify`` stage: train ``fit_laws/verify_plan.csv`` on fresh seeds and compare the measured
data-to-threshold D_J with the prediction (``verify/verification.csv``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pql_jax.run.distributed import is_primary
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
        if is_primary():
            write_json(str(d / "summary.json"), {"verified": False, "reason": reason})
        return {"verified": False, "reason": reason}
    with_width = "critic_width" in plan and plan["critic_width"].notna().any()
    runs = plan.drop_duplicates(["utd", "batch_size", "lr"] + (["critic_width"] if with_width else []))
    zipped = {"agent.utd": list(runs["utd"]), "agent.batch_size": [int(b) for b in runs["batch_size"]],
              "agent.critic_lr": [float(x) for x in runs["lr"]], "agent.actor_lr": [float(x) for x in runs["lr"]]}
    if with_width:
        zipped["agent.critic_width"] = [int(w) for w in runs["critic_width"]]
    write_sweep(wf, d / "sweep.yaml", wf.utd_sweep.overrides, {}, zipped, wf.verify.seeds)
    info = run_sweep_stage(wf, d, progress, log)
    if not is_primary():  # the other processes of a multi-process run only train
        return info
    df, _ = load_curves(str(d / "results.csv"), float(wf.max_return))
    levels = sorted(plan["level"].unique())
    thresholds = [float(plan.loc[plan["level"] == lv, "threshold"].iloc[0]) for lv in levels]
    cb = crossing_bootstrap(df, thresholds, wf.resamples, 0)
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
                     "rel_error": (p["data_pred"] - measured) / measured if np.isfinite(measured) else float("nan"),
                     # reached at the first logging point: an upper bound, not a measurement to verify with
                     "verified": bool(measured > float(df["step"].min()) * (1 + 1e-9))
                     and within_interval(measured, std, p.get("data_pred_lo"), p.get("data_pred_hi"))})
    ver = with_verdicts(pd.DataFrame(rows))
    ver.to_csv(d / "verification.csv", index=False)
    checks = budget_checks(ver, out)
    if len(checks):
        checks.to_csv(d / "budget_check.csv", index=False)
    n_ok, n = int(ver["verified"].sum()), int(ver["reached"].sum())
    write_json(str(d / "summary.json"), {"verified": True, "n_verified": n_ok, "n_measured": n,
                                        "n_predictions": len(ver),
                                        "budget_cheapest": int(checks["sigma_star_cheapest"].sum()) if len(checks) else None,
                                        "budget_checks": len(checks)})
    return {"verified": True, "n_verified": n_ok, "n_measured": n, **info}


#: z of the two-sided 90% normal interval (the measurement's bootstrap SD widened to 90%).
Z90 = 1.6449


def within_interval(measured: float, measured_std: float, lo, hi) -> bool:
    """Whether a measured D_J agrees with the 90% prediction interval [lo, hi], allowing for the
    measurement's own bootstrap spread: in log space the two half-widths add in quadrature
    around the interval's (geometric) centre. False when not measured or no interval."""
    low, high = combined_interval(measured, measured_std, lo, hi)
    if not np.isfinite(low):
        return False
    return bool(np.log(low) - 1e-12 <= np.log(measured) <= np.log(high) + 1e-12)


def combined_interval(measured: float, measured_std: float, lo, hi) -> tuple[float, float]:
    """The interval `within_interval` tests `measured` against: the prediction interval's geometric
    centre widened by both half-widths in quadrature (log space); NaNs when not computable."""
    vals = [measured, lo, hi]
    if not all(v is not None and np.isfinite(v) and v > 0 for v in vals):
        return float("nan"), float("nan")
    s = measured_std / measured if np.isfinite(measured_std) else 0.0
    half = np.hypot(np.log(hi / lo) / 2, Z90 * s)
    centre = np.sqrt(lo * hi)
    return float(centre * np.exp(-half)), float(centre * np.exp(half))


#: A relative error at least this large is called large in the verdict's words, even when the
#: measurement is too noisy to contradict the prediction.
LARGE_ERROR = 0.25


def verdict(row) -> str:
    """The verification of one threshold in words: agrees, agrees only within the noise (a large
    error the combined interval is too wide to contradict), disagrees, or cannot be judged (also
    where fit_laws refused the prediction: the levels' laws out of order in J there)."""
    lo, hi = row.get("agree_lo", np.nan), row.get("agree_hi", np.nan)
    refused = row.get("refused")
    if isinstance(refused, str) and refused:
        return f"no prediction to compare: refused ({refused})"
    if not row.get("reached", False):
        return "not reached by the verification runs: nothing to compare"
    if row.get("data_measured", np.nan) <= row.get("first_log", -np.inf) * (1 + 1e-9):
        return "reached at the first logging point: an upper bound, not a measurement"
    interval = f"[{lo:.3g}, {hi:.3g}]"
    err = abs(row.get("rel_error", np.nan))
    if not row.get("verified", False):
        return f"disagrees: measured {row['data_measured']:.3g} lies outside the combined interval {interval}"
    if err >= LARGE_ERROR:
        return (f"agrees only within the noise: off by {err:.0%}, but the combined interval {interval} "
                f"(a factor of {hi / lo:.2g}) is too wide to contradict it")
    return f"agrees: off by {err:.0%}, inside the combined interval {interval}"


def with_verdicts(ver: pd.DataFrame) -> pd.DataFrame:
    """`ver` with the combined interval each verdict used (`agree_lo`, `agree_hi`) and the verdict
    in words (`verdict`); also for tables written before these columns existed."""
    if ver.empty:
        return ver
    bounds = [combined_interval(r["data_measured"], r["data_measured_std"], r.get("data_pred_lo"), r.get("data_pred_hi"))
              for _, r in ver.iterrows()]
    ver = ver.assign(agree_lo=[b[0] for b in bounds], agree_hi=[b[1] for b in bounds])
    return ver.assign(verdict=[verdict(r) for _, r in ver.iterrows()])


def budget_checks(ver: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Problem 3.2's claim at the proposed budget: per (env, threshold), the measured budget
    F = k N B sigma D + delta D of sigma*(F) against sigma*/2 and 2 sigma* (all three run on
    fresh seeds); ``sigma_star_cheapest`` when sigma* costs no more than either."""
    path = out / "fit_laws" / "fit_budget.json"
    if not path.is_file() or "target" not in ver:
        return pd.DataFrame()
    fb = json.loads(path.read_text())
    star = ver[ver["target"].str.match(r"^budget [^ ]+$")]
    rows = []
    for _, s in star.iterrows():
        same = ver[(ver["env"] == s["env"]) & (ver["level"] == s["level"])]
        row = {"env": s["env"], "level": s["level"], "threshold": s["threshold"]}
        for label, key in (("", "sigma_star"), (" at sigma*/2", "half"), (" at 2 sigma*", "double")):
            r = same[same["target"] == s["target"] + label]
            if r.empty:
                break
            r = r.iloc[0]
            n = r["model_size"] if np.isfinite(r.get("model_size", np.nan)) else 1.0
            D = r["data_measured"]
            row[f"utd_{key}"] = r["utd_value"]
            row[f"budget_{key}"] = fb["k"] * n * r["batch_size"] * r["utd_value"] * D + fb["delta"] * D
        else:
            others = [row["budget_half"], row["budget_double"]]
            row["sigma_star_cheapest"] = bool(np.isfinite(row["budget_sigma_star"])
                                              and all(not np.isfinite(o) or row["budget_sigma_star"] <= o for o in others))
            rows.append(row)
    return pd.DataFrame(rows)
