"""Statistics and resume logic of benchmarks/bench_vs_sac.py, checked against numpy by hand.

No training and no brax: the script is imported by path, and its pure functions are fed
hand-made run records.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_vs_sac.py"
import vs_sac_options as O  # noqa: E402
import vs_sac_report as R  # noqa: E402
import vs_sac_store as S  # noqa: E402


@pytest.fixture(scope="module")
def B():
    spec = importlib.util.spec_from_file_location("bench_vs_sac_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evals(steps, returns):
    return [{"env_steps": s, "eval_return": r} for s, r in zip(steps, returns)]


def record(env, method, seed, returns, train_sps=100.0, steps=None, fp="fp0", **extra):
    steps = steps or [1000 * (i + 1) for i in range(len(returns))]
    return {"env": env, "method": method, "seed": seed, "evals": evals(steps, returns), "train_sps": train_sps,
            "loop_sps": train_sps * 0.9, "eval_share": 0.01, "startup_s": 5.0, "total_wall_s": 50.0,
            "outside_frac": 0.001, "jax": "0.9.2", "fingerprint": fp, "settings": {"env_steps": 1}, **extra}


def test_import_does_not_pull_in_brax_or_jax():
    # a fresh interpreter: in this one other tests may have imported them already
    probe = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('b', sys.argv[1]); "
             "s.loader.exec_module(importlib.util.module_from_spec(s)); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('brax', 'jax', 'mujoco_playground')))")
    out = subprocess.run([sys.executable, "-c", probe, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_score_is_mean_of_last_three(B):
    returns = [10.0, 250.0, 400.0, 380.0, 700.0, 655.5]
    assert R.score(evals(range(6), returns)) == pytest.approx(np.mean(returns[-3:]))
    assert R.score(evals(range(6), returns)) != pytest.approx(np.mean(returns))
    # fewer than three evaluations: the mean of those there are
    assert R.score(evals(range(2), [3.0, 5.0])) == pytest.approx(4.0)


def test_mean_se_uses_sample_sd(B):
    values = [818.0, 792.0, 640.5, 901.25, 700.0]
    m, se, n = R.mean_se(values)
    assert n == 5
    assert m == pytest.approx(np.mean(values))
    assert se == pytest.approx(np.std(values, ddof=1) / math.sqrt(5))
    assert se != pytest.approx(np.std(values) / math.sqrt(5))  # not the population SD
    m1, se1, n1 = R.mean_se([5.0, None, float("nan")])
    assert (m1, n1) == (5.0, 1) and math.isnan(se1)


def test_steps_to_threshold_first_crossing(B):
    ev = evals([30_080, 60_160, 90_240, 120_320], [120.0, 410.0, 390.0, 800.0])
    assert R.steps_to_threshold(ev, 400.0) == 60_160
    assert R.steps_to_threshold(ev, 410.0) == 60_160  # ">=": reaching it counts
    assert R.steps_to_threshold(ev, 900.0) is None
    assert R.steps_to_threshold(ev, None) is None


def test_pair_ratios_per_seed(B):
    pql = {0: 900.0, 1: 800.0, 2: 1000.0, 3: 700.0}
    sac = {0: 600.0, 1: 800.0, 2: 500.0}  # seed 3 has no partner
    ratios = R.pair_ratios(pql, sac)
    assert ratios == pytest.approx({0: 1.5, 1: 1.0, 2: 2.0})
    summary = R.ratio_summary(ratios)
    r = np.array([1.5, 1.0, 2.0])
    assert summary["mean"] == pytest.approx(r.mean())
    assert summary["se"] == pytest.approx(r.std(ddof=1) / math.sqrt(3))
    assert (summary["min"], summary["max"], summary["n"]) == (1.0, 2.0, 3)
    # the ratio of means is not the mean of per-pair ratios
    assert summary["mean"] != pytest.approx(np.mean([900, 800, 1000]) / np.mean([600, 800, 500]))


def test_summarize_against_numpy(B):
    task = "playground:CartpoleSwingup"
    pql_returns = {0: [100, 450, 500, 520], 1: [50, 200, 390, 410], 2: [10, 20, 30, 40]}
    sac_returns = {0: [0, 100, 420, 430], 1: [5, 300, 350, 360]}
    pql_sps, sac_sps = {0: 900.0, 1: 850.0, 2: 870.0}, {0: 700.0, 1: 600.0}
    recs = ([record(task, "pql_jax", s, r, pql_sps[s]) for s, r in pql_returns.items()]
            + [record(task, "brax_sac", s, r, sac_sps[s]) for s, r in sac_returns.items()])
    row = R.summarize(recs, {"CartpoleSwingup": 400.0})[task]
    p = row["pql_jax"]
    scores = [np.mean(r[-3:]) for r in pql_returns.values()]
    assert p["n"] == 3 and p["score"]["mean"] == pytest.approx(np.mean(scores))
    assert p["score"]["se"] == pytest.approx(np.std(scores, ddof=1) / math.sqrt(3))
    # seed 0 reaches 400 at its 2nd eval (2000 steps), seed 1 at its 4th (4000), seed 2 never
    st = p["steps_to_threshold"]
    assert st["per_seed"] == [2000, 4000, None] and st["hits"] == 2
    assert st["mean"] == pytest.approx(3000.0)
    assert st["se"] == pytest.approx(np.std([2000, 4000], ddof=1) / math.sqrt(2))
    assert p["train_sps"]["mean"] == pytest.approx(np.mean(list(pql_sps.values())))
    assert p["train_sps"]["se"] == pytest.approx(np.std(list(pql_sps.values()), ddof=1) / math.sqrt(3))
    ratio = row["train_sps_ratio"]
    pairs = np.array([900 / 700, 850 / 600])
    assert ratio["n"] == 2 and ratio["mean"] == pytest.approx(pairs.mean())
    assert ratio["se"] == pytest.approx(pairs.std(ddof=1) / math.sqrt(2))
    assert row["brax_sac"]["steps_to_threshold"]["hits"] == 1
    table = R.markdown({task: row})
    assert "(2/3)" in table and "(1/2)" in table and "2 pairs" in table


def test_curve_mean_se_and_interpolation(B):
    a = record("t", "pql_jax", 0, [0.0, 10.0, 20.0], steps=[100, 200, 300])
    b = record("t", "pql_jax", 1, [2.0, 14.0, 26.0], steps=[100, 200, 300])
    x, mean, se, n, interpolated = R.curve([b, a])
    assert not interpolated and n == 2 and list(x) == [100, 200, 300]
    y = np.array([[0, 10, 20], [2, 14, 26]], dtype=float)
    np.testing.assert_allclose(mean, y.mean(0))
    np.testing.assert_allclose(se, y.std(0, ddof=1) / math.sqrt(2))
    c = record("t", "pql_jax", 2, [0.0, 20.0, 40.0], steps=[100, 300, 500])  # other eval steps
    x, mean, _, _, interpolated = R.curve([a, c])
    assert interpolated and list(x) == [100, 200, 300]  # the lowest seed's grid
    np.testing.assert_allclose(mean, [(0 + 0) / 2, (10 + 10) / 2, (20 + 20) / 2])


def test_parse_seeds(B):
    tasks = [O.normalize_task(t) for t in ("CartpoleSwingup", "CheetahRun", "WalkerWalk")]
    assert O.parse_seeds(None, tasks) == dict(zip(tasks, (5, 3, 3)))
    assert O.parse_seeds("2", tasks) == dict(zip(tasks, (2, 2, 2)))
    assert O.parse_seeds("CartpoleSwingup=7,playground:CheetahRun=4", tasks) == dict(zip(tasks, (7, 4, 3)))
    assert O.parse_seeds("1,WalkerWalk=6", tasks) == dict(zip(tasks, (1, 1, 6)))
    for bad in ("CheetahRun=x", "0", "HopperHop=2", "CheetahRun=2,CheetahRun=3", "x"):
        with pytest.raises(B.BadInput):
            O.parse_seeds(bad, tasks)


def _settings(B, **change):
    args = O.parse_args(["--quick"])
    for k, v in change.items():
        setattr(args, k, v)
    versions = {"jax": "0.9.2", "brax": "0.14.2"}
    settings = O.comparable_settings(args, versions)
    return settings, S.fingerprint(settings)


def test_fingerprint_ignores_tasks_and_seeds_only(B):
    s0, fp0 = _settings(B)
    assert _settings(B, seed_counts={"x": 9}, tasks=["playground:CheetahRun"], thresholds={})[1] == fp0
    assert _settings(B, env_steps=s0["env_steps"] + 1)[1] != fp0
    assert _settings(B, pql_override=["agent.n_step=1"])[1] != fp0
    args = O.parse_args(["--quick"])
    assert S.fingerprint(O.comparable_settings(args, {"jax": "0.10.2", "brax": "0.14.2"})) != fp0
    # an option given with --quick wins over the quick default, and changes the fingerprint
    args = O.parse_args(["--quick", "--env-steps", "30000"])
    assert args.env_steps == 30000
    assert S.fingerprint(O.comparable_settings(args, {"jax": "0.9.2", "brax": "0.14.2"})) != fp0


def test_resume_skips_done_and_ignores_truncated_last_line(B, tmp_path):
    settings, fp = _settings(B)
    out = tmp_path / "runs.jsonl"
    task = "playground:CartpoleSwingup"
    for method, seed in (("pql_jax", 0), ("brax_sac", 0), ("pql_jax", 1)):
        S.append_record(out, record(task, method, seed, [1.0, 2.0, 3.0], fp=fp, settings=settings))
    full = out.read_bytes()
    with open(out, "ab") as f:  # a run killed while appending: half a line, no newline
        f.write(json.dumps(record(task, "brax_sac", 1, [1.0], fp=fp, settings=settings)).encode()[:57])
    records, notes, partial_at = S.read_records(out)
    assert len(records) == 3 and partial_at == len(full)
    assert len(notes) == 1 and "half-written" in notes[0]
    records = S.matching_records(records, fp, settings, out)
    todo, skipped = S.plan_runs({task: 3}, R.METHODS, {S.run_key(r) for r in records})
    assert skipped == [(task, "pql_jax", 0), (task, "brax_sac", 0), (task, "pql_jax", 1)]
    # interleaved per seed, the killed run first again
    assert todo == [(task, "brax_sac", 1), (task, "pql_jax", 2), (task, "brax_sac", 2)]


def test_bad_line_before_the_last_is_an_error(B, tmp_path):
    out = tmp_path / "runs.jsonl"
    out.write_text('{"env": "a"\n' + json.dumps(record("t", "pql_jax", 0, [1.0])) + "\n")
    with pytest.raises(B.BadInput, match="line 1"):
        S.read_records(out)


def test_other_fingerprint_is_refused(B, tmp_path):
    settings, fp = _settings(B)
    other, other_fp = _settings(B, env_steps=settings["env_steps"] * 2)
    out = tmp_path / "runs.jsonl"
    S.append_record(out, record("playground:CartpoleSwingup", "pql_jax", 0, [1.0], fp=other_fp, settings=other))
    records, _, _ = S.read_records(out)
    with pytest.raises(B.BadInput, match="env_steps"):
        S.matching_records(records, fp, settings, out)
    assert S.matching_records(records, other_fp, other, out) == records


def test_main_refuses_other_fingerprint_with_exit_2(B, tmp_path, capsys):
    other, other_fp = _settings(B, env_steps=123)
    out = tmp_path / "runs.jsonl"
    S.append_record(out, record("playground:CartpoleSwingup", "pql_jax", 0, [1.0], fp=other_fp, settings=other))
    assert B.main(["--quick", "--report-only", "--out", str(out), "--figures", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings" in err and "--new-out" in err


def test_main_bad_input_exit_2(B, capsys):
    for argv in (["--seeds", "CheetahRun=x"], ["--tasks", "brax:ant"], ["--report-only"], ["--nonsense"]):
        assert B.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("bench_vs_sac.py: error:")


def test_report_only_reads_matching_lines(B, tmp_path, capsys, monkeypatch):
    # versions as this interpreter sees them, so --report-only's fingerprint matches
    args = O.parse_args(["--quick"])
    settings = O.comparable_settings(args, O.package_versions())
    fp = S.fingerprint(settings)
    out = tmp_path / "runs.jsonl"
    task = "playground:CartpoleSwingup"
    for method, seed, ret, sps in (("pql_jax", 0, 500.0, 900.0), ("brax_sac", 0, 300.0, 600.0)):
        S.append_record(out, record(task, method, seed, [ret] * 3, sps, fp=fp, settings=settings))
    drawn = []
    monkeypatch.setattr(B, "plot_task", lambda task, recs, thr, path: drawn.append(path))
    assert B.main(["--quick", "--report-only", "--out", str(out), "--figures", str(tmp_path / "fig")]) == 0
    text = capsys.readouterr().out
    assert "1.50x" in text and "(1/1)" in text and "(0/1)" in text
    assert (tmp_path / "runs.md").exists() and drawn == [tmp_path / "fig" / "vs_sac_CartpoleSwingup.png"]
