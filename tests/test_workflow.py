"""The scaling workflow end to end on test:pointmass at seconds-scale settings: every stage and
artifact (and the direction of the fitted D_J law), resume after an interrupted stage, --from,
and bad input (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import interrupt_after
from pql_jax import workflow
from pql_jax.cli import main
from pql_jax.scaling import DATA_SIGMA
from pql_jax.workflow import sweeps

pytestmark = pytest.mark.slow  # trains about 40 small agents (a few minutes on 2 cores)

ROOT = Path(__file__).resolve().parents[1]

MINI = {
    "name": "mini",
    "base": str(ROOT / "configs" / "pointmass.yaml"),
    "overrides": {"env.num_envs": 8, "env.eval_envs": 8, "env.val_envs": 4, "run.total_env_steps": 3200,
                  "run.chunk_steps": 50, "run.checkpoint_every": 4, "agent.critic_width": 32, "agent.actor_width": 32,
                  "agent.buffer_capacity": 10000, "agent.passive_critic_widths": [16]},
    "seeds": 2,
    "max_return": 50,
    "n_thresholds": 3,
    "resamples": 20,
    "hparam_sweep": {"utd": ["1/8", "1/4", "1/2"], "batch_size": [32, 64], "lr": [1e-3, 3e-3]},
    # one batch size in the UTD sweep and verify keeps this test to few compiled programs
    "utd_sweep": {"utd": ["1/16", "1/8", "1/4", "1/2", "1"], "batch_size_range": [32, 32]},
    "verify": {"utd": "3/4", "budget": "4x"},
}


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _mtimes(out: Path) -> dict:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Run the workflow with a failure injected after stage 2, then resume it through the CLI."""
    import jax

    tmp = tmp_path_factory.mktemp("wf")
    # identical programs (verify rerun by --from) are then loaded instead of recompiled
    old = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
    jax.config.update("jax_compilation_cache_dir", str(tmp / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        yield _run(tmp)
    finally:
        for k, v in old.items():
            jax.config.update(k, v)


def _run(tmp: Path):
    wf = _write(tmp / "mini.yaml", MINI)
    out = tmp / "out"
    with pytest.raises(RuntimeError, match="injected"):
        workflow.run_workflow(wf, out, progress=False, log=lambda *a: None, fail_after="fit_hparams")
    assert workflow.is_done(out, "fit_hparams") and not (out / "utd_sweep" / "done.json").exists()
    before = _mtimes(out)
    # then the process "dies" inside the UTD sweep, after 4 chunks (a checkpoint)
    real, calls = sweeps.train_sweep_file, []

    def interrupted(*args, **kw):
        calls.append(kw["resume"])
        with interrupt_after(4):
            real(*args, **kw)

    sweeps.train_sweep_file = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            workflow.run_workflow(wf, out, progress=False, log=lambda *a: None)
    finally:
        sweeps.train_sweep_file = real
    assert calls == [False] and not workflow.is_done(out, "utd_sweep")
    partial = pd.read_csv(out / "utd_sweep" / "run" / "results.csv")
    # one process here (utd_sweep resumes in-process anyway)
    assert main(["workflow", str(wf), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    resumed = pd.read_csv(out / "utd_sweep" / "results.csv")
    first = resumed[resumed["step"] <= partial["step"].max()]
    assert partial["step"].max() == 4 * 400 and len(first) == len(partial)
    assert (first["wall_time"].to_numpy() == partial["wall_time"].to_numpy()).all()  # chunks 1-4 not redone
    assert resumed["step"].max() == 3200
    return wf, out, before


def test_every_stage_and_artifact(run):
    wf, out, _ = run
    for stage in workflow.STAGES:
        assert workflow.is_done(out, stage), stage
    for f in ("workflow.yaml", "hparam_sweep/sweep.yaml", "hparam_sweep/results.csv", "fit_hparams/best_hparams.csv",
              "fit_hparams/settings.csv", "utd_sweep/sweep.yaml", "utd_sweep/results.csv", "fit_laws/summary.json",
              "verify/summary.json", "report.md"):
        assert (out / f).is_file(), f
    hp = pd.read_csv(out / "hparam_sweep" / "results.csv")
    assert hp["member"].nunique() == 3 * 2 * 2 * 2 and {"td_train", "td_val"} <= set(hp.columns)
    settings = pd.read_csv(out / "fit_hparams" / "settings.csv")
    assert len(settings) == 6 and (settings["batch_size"] % 16 == 0).all()
    assert (settings["batch_size"] == 32).all() and (settings["lr"] > 0).all()
    ut = pd.read_csv(out / "utd_sweep" / "results.csv")
    assert ut["member"].nunique() == 5 * 2 and ut["utd"].max() / ut["utd"].min() >= 16
    report = (out / "report.md").read_text()
    for heading in ("Best batch size", "Data efficiency", "Proposal and verification", "TD-overfitting"):
        assert heading in report
    fl = json.loads((out / "fit_laws" / "summary.json").read_text())
    assert fl["fitted"] is True, fl
    for f in ("fit.json", "crossings.csv", "budget.csv", "proposal.csv", "verify_plan.csv"):
        assert (out / "fit_laws" / f).is_file(), f
    ver = pd.read_csv(out / "verify" / "verification.csv")
    assert {"data_pred", "data_measured", "rel_error", "data_pred_lo", "data_pred_hi", "verified"} <= set(ver.columns)
    assert (ver["data_pred"] > 0).all() and (ver["data_pred_lo"] <= ver["data_pred_hi"]).all()
    # verified = measured inside the 90% prediction interval widened by the measurement's own spread
    s = np.hypot(np.log(ver["data_pred_hi"] / ver["data_pred_lo"]) / 2,
                 1.6449 * ver["data_measured_std"].fillna(0) / ver["data_measured"])
    inside = np.abs(np.log(ver["data_measured"] / np.sqrt(ver["data_pred_lo"] * ver["data_pred_hi"]))) <= s
    censored = ver["data_measured"] <= ver["first_log"] * (1 + 1e-9)  # an upper bound, not a measurement
    assert (ver["verified"] == (inside & ver["reached"] & ~censored)).all()
    assert "predictions verified**" in report and (out / "fit_hparams" / "flags.csv").is_file()
    law_flags = pd.read_csv(out / "fit_laws" / "flags.csv")  # 3 thresholds: sigma*(F) from 3 points, none held out
    assert law_flags["problem"].str.contains("nothing held out").any()
    # the budget claim of Problem 3.2: sigma*(F), sigma*/2 and 2 sigma* all run at the proposed budget
    budget_rows = ver[ver["target"].str.startswith("budget ")]
    assert {t.split(" at ")[-1] for t in budget_rows["target"] if " at " in t} == {"sigma*/2", "2 sigma*"}
    check = pd.read_csv(out / "verify" / "budget_check.csv")
    np.testing.assert_allclose(check["utd_half"] * 2, check["utd_sigma_star"])
    np.testing.assert_allclose(check["utd_double"] / 2, check["utd_sigma_star"])
    assert (ver.loc[ver["target"] == "utd 3/4", "utd_value"] == 0.75).all()
    assert set(ver["target"]) <= {"utd 3/4"} | {t for t in ver["target"] if t.startswith("budget ")}
    assert json.loads((out / "verify" / "summary.json").read_text())["verified"] is True


def test_fitted_data_efficiency_law_has_the_expected_direction(run):
    """D_J(sigma) = d_min (1 + (b / sigma)^a): the data needed falls as the UTD rises (here about 4x
    from UTD 1/16 to 1 in every threshold's crossings), and rises with the threshold J."""
    _, out, _ = run
    fit = json.loads((out / "fit_laws" / "fit.json").read_text())
    assert fit["form"] == "data_sigma" and len(fit["levels"]) == 3
    cross = pd.read_csv(out / "fit_laws" / "crossings.csv")
    lo, hi = cross["utd"].min(), cross["utd"].max()
    flags = pd.read_csv(out / "fit_laws" / "flags.csv")
    at_mid = []
    for lv, f in sorted(fit["levels"].items(), key=lambda kv: int(kv[0])):
        (p,) = f["params"].values()
        # the UTD dependence acts inside the swept range, or the report says b is not determined
        b_flagged = flags["quantity"].str.contains(f"level {lv} ") & (flags["param"] == "b")
        assert p["a"] > 0.3 and (lo / 4 < p["b"] < hi * 4 or b_flagged.any()), p
        d_lo, d_hi = (float(DATA_SIGMA.predict(p, utd=u)) for u in (lo, hi))
        assert d_lo > 2 * d_hi, (lv, d_lo, d_hi)
        measured = cross[cross["level"] == int(lv)].set_index("utd")["data"]
        assert measured[lo] > 2 * measured[hi]
        at_mid.append(float(DATA_SIGMA.predict(p, utd=0.25)))
    assert at_mid == sorted(at_mid), at_mid
    # the held-out UTD 3/4 (inside the fitted range): measured within 2x of the prediction
    ver = pd.read_csv(out / "verify" / "verification.csv")
    held = ver[ver["target"] == "utd 3/4"]
    assert len(held) == 3 and held["reached"].all()
    assert (np.abs(np.log(held["data_pred"] / held["data_measured"])) < np.log(2)).all(), held


def test_resume_redoes_nothing_finished(run):
    _, out, before = run
    after = _mtimes(out)
    for f, t in before.items():
        if f.startswith(("hparam_sweep/", "fit_hparams/")) or f == "workflow.yaml":
            assert after[f] == t, f"{f} was rewritten on resume"
    # a finished workflow run again does nothing
    wf = run[0]
    assert main(["workflow", str(wf), "--out", str(out), "--no-progress"]) == 0
    assert _mtimes(out) == after


def test_from_stage_reruns_it_and_later_only(run):
    wf, out, _ = run
    before = _mtimes(out)
    # in this process: verify's program is read from the fixture's compile cache (2 worker processes
    # cost ~25 s more here; the worker path is tests/test_local_parts.py's and test_parts.py's)
    assert main(["workflow", str(wf), "--out", str(out), "--from", "fit_laws", "--no-progress", "--workers", "1"]) == 0
    after = _mtimes(out)
    for f, t in before.items():
        if f.startswith(("hparam_sweep/", "fit_hparams/", "utd_sweep/")):
            assert after[f] == t, f
    assert after["fit_laws/done.json"] > before["fit_laws/done.json"]
    assert after["report.md"] > before["report.md"]


def _bad(capsys, argv, out: Path) -> str:
    snapshot = _mtimes(out) if out.exists() else None
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    if snapshot is not None:
        assert _mtimes(out) == snapshot
    return err


def test_bad_input(run, tmp_path, capsys):
    wf, out, _ = run
    assert "unknown stage" in _bad(capsys, ["workflow", str(wf), "--out", str(out), "--from", "nope"], out)
    spec = {k: v for k, v in MINI.items()}
    spec["hparam_sweep"] = {"utd": ["1/16", "1/4", "1"], "batch_size": [32, 64]}
    missing = _write(tmp_path / "missing.yaml", spec)
    assert "hparam_sweep.lr" in _bad(capsys, ["workflow", str(missing), "--out", str(tmp_path / "o1")], tmp_path / "o1")
    assert not (tmp_path / "o1").exists()
    other = _write(tmp_path / "other.yaml", {**MINI, "seeds": 3})
    assert "different workflow" in _bad(capsys, ["workflow", str(other), "--out", str(out)], out)
    narrow = _write(tmp_path / "narrow.yaml", {**MINI, "utd_sweep": {"utd": ["1/8", "1/4", "1/2"]}})
    assert "16x" in _bad(capsys, ["workflow", str(narrow), "--out", str(tmp_path / "o2")], tmp_path / "o2")
    held = _write(tmp_path / "held.yaml", {**MINI, "verify": {"utd": "1/4"}})
    assert "held out" in _bad(capsys, ["workflow", str(held), "--out", str(tmp_path / "o3")], tmp_path / "o3")


def _refine_copy(out: Path, tmp_path: Path, budget: float):
    """The finished run's fit_hparams and UTD sweep results in a fresh OUT, and the workflow with
    a refinement budget (the refine stage reads nothing else)."""
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(out / "fit_hparams", copy / "fit_hparams")
    (copy / "hparam_sweep").mkdir(parents=True)  # its run length: what a seed of the B x lr grid costs
    shutil.copy(out / "hparam_sweep" / "results.csv", copy / "hparam_sweep" / "results.csv")
    (copy / "utd_sweep").mkdir(parents=True)
    shutil.copy(out / "utd_sweep" / "results.csv", copy / "utd_sweep" / "results.csv")
    (copy / "refine").mkdir()
    wf = workflow.load_workflow(_write(tmp_path / "refined.yaml", {**MINI, "refine": {"budget": budget}}))
    return wf, copy


def test_refinement_rounds_stay_within_budget_and_resume(run, tmp_path):
    from pql_jax.workflow.fits import fit_source
    from pql_jax.workflow.refine_stage import stage_refine

    _, out, _ = run
    wf, copy = _refine_copy(out, tmp_path, budget=3200)  # one run of the sweep's length: one round
    assert stage_refine(workflow.load_workflow(_write(tmp_path / "off.yaml", MINI)), copy, False,
                        lambda *a: None) == {"rounds": 0}
    assert fit_source(copy) == copy / "utd_sweep" / "results.csv" and not any((copy / "refine").iterdir())
    info = stage_refine(wf, copy, False, lambda *a: None)
    rounds = pd.read_csv(copy / "refine" / "rounds.csv") if info["rounds"] else pd.DataFrame()
    sweep = pd.read_csv(copy / "utd_sweep" / "results.csv")
    if info["rounds"]:
        refined = pd.read_csv(fit_source(copy))
        added = refined[refined["member"].str.startswith("round")]
        assert len(refined) == len(sweep) + len(added) and fit_source(copy) == copy / "refine" / "results.csv"
        spent = added.groupby("member")["env_steps"].max().sum()
        assert spent == info["env_steps"] <= 3200 and info["rounds"] == 1
        assert set(rounds["kind"]) <= {"more seeds", "utd below", "utd above"}
        assert (np.abs(added["utd"] - 3 / 4) > 1e-9).all()  # the held-out verify UTD is never trained
        # new seeds never repeat one a cell already has
        assert not added.merge(sweep, on=["utd", "seed"]).shape[0]
        assert rounds["se_before"].notna().all() and rounds["se_after"].notna().all()
        before = {p: p.stat().st_mtime_ns for p in (copy / "refine").rglob("results.csv")}
        again = stage_refine(wf, copy, False, lambda *a: None)  # resumed: finished rounds are not retrained
        assert again == info
        for p, t in before.items():
            if p.parent.name.startswith("round"):
                assert pd.read_csv(p)["wall_time"].tolist() == pd.read_csv(p)["wall_time"].tolist()
    undetermined = pd.read_csv(copy / "refine" / "undetermined.csv")
    # the B*, lr* laws fit_hparams did not determine are judged too (refine_hparams), each with a reason
    unfitted = {law for law, name in (("B*(utd)", "batch_size"), ("lr*(utd)", "learning_rate"))
                if not (out / "fit_hparams" / f"fit_{name}.json").is_file()}
    assert unfitted <= set(undetermined["law"]) and undetermined["reason"].str.len().gt(0).all()
