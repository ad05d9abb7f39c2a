"""Sweep and workflow files parse into typed frozen dataclasses (SweepSpec, Workflow and its
sections); every malformed input is a one-line UserError naming its key; a workflow's record,
identity and stage sweep files are what existing output directories hold, so they still resume."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pql_jax.cli import main
from pql_jax.errors import UserError
from pql_jax.plan.sweep import SweepSpec, load_sweep, parse_sweep_spec, read_sweep_spec
from pql_jax.workflow import spec as wf_spec
from pql_jax.workflow.spec import FitSpec, HparamSweepSpec, UtdSweepSpec, VerifySpec, Workflow, load_workflow
from pql_jax.workflow.sweeps import hparam_grid, stop_overrides, write_sweep

ROOT = Path(__file__).resolve().parents[1]
POINTMASS = ROOT / "configs" / "pointmass.yaml"


def _yaml(path: Path, body) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# ---- sweep files ---------------------------------------------------------------------------------

SWEEP = {"name": "widths", "base": "../configs/pointmass.yaml",
         "overrides": {"num_envs": 8, "run.total_env_steps": 4800},
         "seeds": [3, 5],
         "grid": {"utd": ["1/8", "1/4"], "critic_width": [32, 64]},
         "zip": {"critic_lr": [1e-3, 3e-3], "agent.actor_lr": [2e-3, 6e-3]}}


def test_a_sweep_file_parses_to_its_typed_spec(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "pointmass.yaml").write_text(POINTMASS.read_text())
    (tmp_path / "sweeps").mkdir()
    path = _yaml(tmp_path / "sweeps" / "s.yaml", SWEEP)
    expected = SweepSpec(name="widths", base=tmp_path / "sweeps" / "../configs/pointmass.yaml",
                         overrides=("env.num_envs=8", "run.total_env_steps=4800"), seeds=(3, 5),
                         grid=(("agent.utd", ("1/8", "1/4")), ("agent.critic_width", (32, 64))),
                         zip=(("agent.critic_lr", (1e-3, 3e-3)), ("agent.actor_lr", (2e-3, 6e-3))))
    spec = read_sweep_spec(path)
    assert spec == expected
    assert spec.axes == ("agent.utd", "agent.critic_width", "agent.critic_lr", "agent.actor_lr")
    assert len(spec.combinations()) == 2 * 2 * 2 and spec.seed_list(0) == [3, 5]
    assert spec.combinations()[1] == {"agent.utd": "1/8", "agent.critic_width": 32, "agent.critic_lr": 3e-3,
                                      "agent.actor_lr": 6e-3}
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"
    sweep = load_sweep(path)
    assert sweep.name == "widths" and sweep.axes == spec.axes and len(sweep.members) == 16
    assert sweep.members[0].values == {**spec.combinations()[0], "run.seed": 3}
    assert sweep.members[0].config.env.num_envs == 8


def test_sweep_defaults_counts_and_override_lists(tmp_path):
    path = _yaml(tmp_path / "plain.yaml", {"base": str(POINTMASS), "seeds": 2,
                                           "overrides": ["agent.utd=1/4", "env.num_envs=8"]})
    spec = read_sweep_spec(path)
    assert spec == SweepSpec(name="plain", base=POINTMASS, overrides=("agent.utd=1/4", "env.num_envs=8"), seeds=2)
    assert spec.combinations() == [{}] and spec.seed_list(7) == [7, 8]
    assert parse_sweep_spec({}, tmp_path / "empty.yaml") == SweepSpec(name="empty", base=None)
    assert SweepSpec("x", None).seed_list(4) == [4]


@pytest.mark.parametrize("body, message", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"grid": [1]}, "sweep grid must be a mapping"),
    ({"zip": "utd"}, "sweep zip must be a mapping"),
    ({"grid": {"utd": 0.5}}, "sweep axis 'utd' must be a list"),
    ({"grid": {"utd": []}}, "sweep axis 'utd' is empty"),
    ({"grid": {"nope": [1]}}, "unknown sweep axis 'nope'"),
    ({"grid": {"utd": [1], "agent.utd": [2]}}, "sweep axis 'agent.utd' is given twice in grid"),
    ({"zip": {"batch_size": [32, 64], "critic_lr": [1e-3]}}, "zipped sweep axes must have equal lengths"),
    ({"grid": {"utd": [1]}, "zip": {"agent.utd": [2]}}, "axis 'agent.utd' is in both grid and zip"),
    ({"seeds": 0}, "seeds must be >= 1"),
    ({"seeds": True}, "seeds must be a count"),
    ({"seeds": []}, "seeds must be a count or a non-empty list"),
    ({"seeds": [1, 1]}, "seeds list has duplicates"),
    ({"seeds": "three"}, "seeds must be a count"),
    ({"base": 3}, "sweep base must be the path"),
    ({"overrides": "agent.utd=1"}, "sweep overrides must be"),
    ({"overrides": [1]}, "sweep overrides must be"),
])
def test_a_malformed_sweep_file_names_its_key(tmp_path, body, message):
    path = _yaml(tmp_path / "bad.yaml", body)
    with pytest.raises(UserError, match=message) as info:
        read_sweep_spec(path)
    assert "\n" not in str(info.value)


def test_a_config_error_of_a_sweep_still_names_the_key(tmp_path):
    for body, message in (({"base": "nope.yaml"}, "does not exist"), ({"overrides": {"agent.nope": 1}}, "agent.nope"),
                          ({"grid": {"utd": ["x"]}}, "agent.utd"), ({"grid": {"batch_size": [10**9]}}, "member m000")):
        with pytest.raises(UserError, match=message):
            load_sweep(_yaml(tmp_path / "bad.yaml", {"base": str(POINTMASS), **body}))


def test_parsing_a_sweep_file_imports_no_jax(tmp_path):
    """Reading and expanding a sweep file (plan, job-array parts) starts no JAX and builds no network."""
    path = _yaml(tmp_path / "s.yaml", {"base": str(POINTMASS), "grid": {"utd": ["1/8", "1/4"]}, "seeds": 2})
    code = ("import sys; from pql_jax.plan.sweep import load_sweep, read_sweep_spec; "
            f"read_sweep_spec({str(path)!r}); assert len(load_sweep({str(path)!r}).members) == 4; "
            "print([m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'brax', 'matplotlib') "
            "or m.startswith('pql_jax.learner')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- workflow files ------------------------------------------------------------------------------

WORKFLOW = {
    "name": "typed", "base": str(POINTMASS), "overrides": {"env.num_envs": 8, "agent.passive_critic_widths": [16]},
    "seeds": 2, "max_return": 50, "thresholds": [400, 600], "n_thresholds": 4, "select_level": 1, "resamples": 20,
    "hparam_sweep": {"utd": ["1/8", "1/4", 0.5], "batch_size": [32, "64"], "lr": ["1e-3", 3e-3]},
    "utd_sweep": {"utd": ["1", "1/16", "1/4", "1/2", "1/8"], "critic_width": [32, 64], "batch_size_range": [32, 128],
                  "overrides": {"agent.gamma": 0.98}},
    "fit": {"holdout": "utd>=1/2", "delta": 1e6, "k": 6},
    "verify": {"utd": "3/4", "budget": "4x"},
    "batching": "map",
}


def test_a_workflow_file_parses_to_its_typed_sections(tmp_path):
    path = _yaml(tmp_path / "wf.yaml", WORKFLOW)
    expected = Workflow(
        path=path, spec=WORKFLOW, base_path=POINTMASS.resolve(), name="typed",
        hparam_sweep=HparamSweepSpec(utd=(0.125, 0.25, 0.5), batch_size=(32, 64), lr=(1e-3, 3e-3),
                                     critic_width=(32, 64)),
        utd_sweep=UtdSweepSpec(utd=(1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0), critic_width=(32, 64),
                               batch_size_range=(32, 128), overrides=(("agent.gamma", 0.98),)),
        verify=VerifySpec(utd=0.75, budget="4x", seeds=(1000, 1001)),
        fit=FitSpec(holdout="utd>=1/2", delta=1e6, k=6.0),
        overrides=(("env.num_envs", 8), ("agent.passive_critic_widths", [16])), seeds=2, max_return=50,
        thresholds=(400.0, 600.0), n_thresholds=4, select_level=1, resamples=20, batching="map")
    wf = load_workflow(path)
    assert wf == expected
    assert type(wf.max_return) is int  # as written: the report prints 50
    with pytest.raises(dataclasses.FrozenInstanceError):
        wf.seeds = 3
    assert dataclasses.replace(wf, part=(1, 2)).part == (1, 2) and wf.part is None


def test_workflow_defaults(tmp_path):
    body = {"base": str(POINTMASS), "max_return": 1000.0, "seeds": [4, 5, 6],
            "hparam_sweep": {"utd": [1], "batch_size": [32], "lr": [1e-3], "critic_width": None},
            "utd_sweep": {"utd": [1, 4, 16], "critic_width": [32, 64]}, "verify": {"budget": 1e15, "seeds": 2}}
    wf = load_workflow(_yaml(tmp_path / "plain.yaml", body))
    assert wf.name == "plain" and wf.hparam_sweep.critic_width == () and wf.utd_sweep.critic_width == (32, 64)
    assert wf.verify == VerifySpec(utd=None, budget=1e15, seeds=2)
    assert wf.fit == FitSpec() and wf.overrides == () and wf.seeds == (4, 5, 6)
    assert (wf.thresholds, wf.n_thresholds, wf.select_level, wf.resamples, wf.batching) == (None, 5, None, 100, "auto")
    del body["verify"]["seeds"]
    assert load_workflow(_yaml(tmp_path / "plain.yaml", body)).verify.seeds == (1000, 1001, 1002)


def test_refine_defaults_off_and_stop_overrides_the_highest_threshold(tmp_path):
    body = {"base": str(POINTMASS), "max_return": 50, "thresholds": [400, 600, 500],
            "hparam_sweep": {"utd": [1], "batch_size": [32], "lr": [1e-3]},
            "utd_sweep": {"utd": [1, 4, 16]}, "verify": {"utd": 2}}
    wf = load_workflow(_yaml(tmp_path / "plain.yaml", body))
    assert wf.refine == wf_spec.RefineSpec() and not wf.refine.on and stop_overrides(wf) == {}
    wf = load_workflow(_yaml(tmp_path / "stop.yaml", {**body, "refine": {"stop_after": 8}}))
    assert wf.refine.on and wf.refine.early_stop_note(wf.thresholds) is None
    assert stop_overrides(wf) == {"run.stop_after": 8, "run.stop_return": 30.0}  # 600 of 1000 at max 50
    del body["thresholds"]  # auto-spaced thresholds: full length, and a note that says so
    wf = load_workflow(_yaml(tmp_path / "auto.yaml", {**body, "refine": {"stop_after": 8}}))
    assert stop_overrides(wf) == {} and "full length" in wf.refine.early_stop_note(wf.thresholds)


def test_record_identity_and_stage_files_are_what_existing_runs_hold(tmp_path):
    """An output directory written before the typed parse resumes: the workflow.yaml and the
    hparam stage's sweep.yaml written now are byte for byte those of before (the two learning
    rate keys share one YAML list, as the old dict did)."""
    path = _yaml(tmp_path / "wf.yaml", WORKFLOW)
    wf = load_workflow(path)
    assert wf.record == {**WORKFLOW, "base": str(POINTMASS.resolve())}
    assert wf.identity == {**WORKFLOW, "base": yaml.safe_load(POINTMASS.read_text())}
    out = tmp_path / "out"
    wf_spec.prepare_out(wf, out)
    assert (out / "workflow.yaml").read_text() == yaml.safe_dump(wf.record, sort_keys=False)
    wf_spec.prepare_out(load_workflow(path), out)  # the same workflow: resumes
    with pytest.raises(UserError, match="different workflow"):
        wf_spec.prepare_out(load_workflow(_yaml(tmp_path / "wf.yaml", {**WORKFLOW, "seeds": 3})), out)
    (out / "hparam_sweep").mkdir()
    write_sweep(wf, out / "hparam_sweep" / "sweep.yaml", {}, *hparam_grid(wf), wf.seeds)
    assert (out / "hparam_sweep" / "sweep.yaml").read_text() == f"""\
name: typed_hparam_sweep
base: {POINTMASS.resolve()}
overrides:
  env.num_envs: 8
  agent.passive_critic_widths:
  - 16
seeds: 2
grid:
  agent.utd:
  - 1/8
  - 1/4
  - 1/2
  agent.batch_size:
  - 32
  - 64
  agent.critic_width:
  - 32
  - 64
zip:
  agent.critic_lr: &id001
  - 0.001
  - 0.003
  agent.actor_lr: *id001
"""


def _without(section: str, key: str) -> dict:
    return {**WORKFLOW, section: {k: v for k, v in WORKFLOW[section].items() if k != key}}


def _with(section: str | None, **kw) -> dict:
    if section is None:
        return {**WORKFLOW, **kw}
    return {**WORKFLOW, section: {**WORKFLOW[section], **kw}}


BAD_WORKFLOWS = [
    (_with(None, bogus=1), "unknown key 'bogus'"),
    ({k: v for k, v in WORKFLOW.items() if k != "verify"}, "missing key 'verify'"),
    ({k: v for k, v in WORKFLOW.items() if k != "hparam_sweep"}, "missing key 'hparam_sweep'"),
    ({k: v for k, v in WORKFLOW.items() if k != "max_return"}, "missing key 'max_return'"),
    (_with(None, base="nope.yaml"), "base config not found"),
    (_with(None, base=5), "workflow: base must be the path"),
    (_with(None, hparam_sweep=[1, 2]), "workflow section hparam_sweep must be a mapping"),
    (_with("hparam_sweep", foo=1), "unknown key 'foo' in workflow section hparam_sweep"),
    (_without("hparam_sweep", "lr"), "missing key hparam_sweep.lr"),
    (_with("hparam_sweep", lr=[]), "missing key hparam_sweep.lr"),
    (_with("hparam_sweep", utd=0.5), r"hparam_sweep.utd must be a non-empty list"),
    (_with("hparam_sweep", utd=["fast"]), r"hparam_sweep.utd: not a UTD: 'fast'"),
    (_with("hparam_sweep", utd=["1/0"]), r"hparam_sweep.utd: not a UTD"),
    (_with("hparam_sweep", utd=[-1]), r"hparam_sweep.utd: UTD must be a finite number > 0"),
    (_with("hparam_sweep", batch_size=["big"]), r"hparam_sweep.batch_size must be an integer > 0, got 'big'"),
    (_with("hparam_sweep", batch_size=[32.5]), r"hparam_sweep.batch_size must be an integer"),
    (_with("hparam_sweep", batch_size=[True]), r"hparam_sweep.batch_size must be an integer"),
    (_with("hparam_sweep", lr=["slow"]), r"hparam_sweep.lr must be a number > 0"),
    (_with("hparam_sweep", lr=[0]), r"hparam_sweep.lr must be a number > 0"),
    (_with("hparam_sweep", critic_width=64), r"hparam_sweep.critic_width must be a non-empty list"),
    (_without("utd_sweep", "utd"), "missing key utd_sweep.utd"),
    (_with("utd_sweep", utd=[1, 2, 4]), r"utd_sweep.utd must span >= 16x"),
    (_with("utd_sweep", utd=[1, 16, 16]), r"utd_sweep.utd needs at least 3 distinct UTDs"),
    (_with("utd_sweep", utd=["1/16", "one"]), r"utd_sweep.utd: not a UTD"),
    (_with("utd_sweep", critic_width=64), r"utd_sweep.critic_width must be a non-empty list"),
    (_with("utd_sweep", critic_width=["wide"]), r"utd_sweep.critic_width must be an integer"),
    (_with("utd_sweep", batch_size_range=[128, 32]), r"utd_sweep.batch_size_range must be \[low, high\]"),
    (_with("utd_sweep", batch_size_range=[32]), r"utd_sweep.batch_size_range"),
    (_with("utd_sweep", batch_size_range=["a", "b"]), r"utd_sweep.batch_size_range"),
    (_with("utd_sweep", overrides=["agent.gamma=0.9"]), r"utd_sweep.overrides must be a mapping"),
    (_with(None, overrides=["env.num_envs=8"]), r"workflow: overrides must be a mapping"),
    (_with(None, overrides={"agent.nope": 1}), "agent.nope"),
    (_with(None, fit={"kk": 1}), "unknown key 'kk' in workflow section fit"),
    (_with(None, fit={"k": "many"}), r"fit.k must be a number > 0"),
    (_with(None, fit={"delta": -1}), r"fit.delta must be a number > 0"),
    (_with(None, fit={"holdout": 3}), r"fit.holdout must be a query"),
    (_with(None, verify={"seeds": 2}), r"missing key verify.utd \(or verify.budget\)"),
    (_with(None, verify={"utd": "1/4"}), r"verify.utd must be held out"),
    (_with(None, verify={"utd": "half"}), r"verify.utd: not a UTD"),
    (_with(None, verify={"budget": "lots"}), r"verify.budget must be a positive number"),
    (_with(None, verify={"utd": 3, "seeds": "x"}), r"verify.seeds must be a count"),
    (_with(None, verify={"utd": 3, "seeds": [1, 1]}), r"verify.seeds list has duplicates"),
    (_with(None, batching="pmap"), "batching must be auto, map or vmap"),
    (_with(None, seeds=0), r"workflow: seeds must be >= 1"),
    (_with(None, seeds=[]), r"workflow: seeds must be a count or a non-empty list"),
    (_with(None, max_return="lots"), r"max_return must be a number > 0"),
    (_with(None, max_return=-50), r"max_return must be a number > 0"),
    (_with(None, thresholds=400), r"thresholds must be a list of numbers"),
    (_with(None, thresholds=["high"]), r"thresholds must be a number"),
    (_with(None, n_thresholds="some"), r"n_thresholds must be an integer"),
    (_with(None, select_level=-1), r"select_level must be an integer >= 0"),
    (_with(None, resamples=2.5), r"resamples must be an integer >= 0"),
    (_with(None, refine={"stop": 3}), "unknown key 'stop' in workflow section refine"),
    (_with(None, refine={"stop_after": -1}), r"refine.stop_after must be an integer >= 0"),
    (_with(None, refine={"stop_after": 2.5}), r"refine.stop_after must be an integer"),
    (_with(None, refine={"widen": "yes"}), r"refine.widen must be an integer >= 0"),
    (_with(None, refine={"budget": "lots"}), r"refine.budget must be a number >= 0"),
    (_with(None, refine={"round_runs": 0}), r"refine.round_runs must be an integer > 0"),
]


@pytest.mark.parametrize("body, message", BAD_WORKFLOWS, ids=range(len(BAD_WORKFLOWS)))
def test_a_malformed_workflow_file_names_its_key(tmp_path, body, message):
    with pytest.raises(UserError, match=message) as info:
        load_workflow(_yaml(tmp_path / "bad.yaml", body))
    assert "\n" not in str(info.value)


def test_the_cli_turns_a_bad_workflow_into_one_line(tmp_path, capsys):
    path = _yaml(tmp_path / "bad.yaml", _with("hparam_sweep", batch_size=["big"]))
    assert main(["workflow", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "hparam_sweep.batch_size" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("remaining, round_runs, budget", [
    (48000, 1, 24000),   # half of what is left
    (48000, 2, 32000),   # two runs of 16,000 side by side: more than half
    (96000, 2, 48000),   # half is more than two runs
    (20000, 2, 20000),   # never more than is left
    (10000, 2, 0),       # less than one run left: nothing
])
def test_a_round_spends_at_least_round_runs_runs(remaining, round_runs, budget):
    from pql_jax.workflow.refine_stage import _round_budget

    assert _round_budget(remaining, 16000, round_runs) == budget
