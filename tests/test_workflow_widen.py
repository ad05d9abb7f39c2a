"""``refine.widen``: the hparam sweep's grid widened where the best batch size or learning rate
lies on its edge. The decision on hand-built tables (the grid's ratio outward, both directions,
both axes, the limit, interior optima, diverged values beyond an edge), then the stage through
the runner with training replaced by planted learning curves (rounds, resume between rounds,
refine off unchanged), the report lines and the plan's projection."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pql_jax import workflow
from pql_jax.plan.sweep import load_sweep
from pql_jax.workflow import sweeps, widen
from pql_jax.workflow.spec import load_workflow

ROOT = Path(__file__).resolve().parents[1]
GRID = {"batch_size": (32, 64, 128), "lr": (1e-3, 3e-3, 1e-2)}


def _runs(cells: dict) -> pd.DataFrame:
    """Swept settings: {utd: (batch sizes, lrs)} as a full grid per UTD."""
    return pd.DataFrame([{"utd": u, "utd_label": f"u{u:g}", "model_size": 1000.0, "critic_width": 32,
                          "batch_size": b, "lr": lr}
                         for u, (bs, lrs) in cells.items() for b in bs for lr in lrs])


def _best(edges: dict) -> pd.DataFrame:
    """A best_hparams table: {utd: (batch_size_edge, lr_edge)}."""
    return pd.DataFrame([{"env": "e", "utd": u, "model_size": 1000.0, "batch_size_edge": be, "lr_edge": le}
                         for u, (be, le) in edges.items()])


def test_outward_value_is_the_grids_ratio_both_ways():
    assert widen.outward_value((32, 64, 128), "high", 1, "batch_size") == 256
    assert widen.outward_value((32, 64, 128), "high", 2, "batch_size") == 512
    assert widen.outward_value((32, 64, 128), "low", 1, "batch_size") == 16
    assert widen.outward_value((1e-3, 3e-3), "high", 1, "lr") == 9e-3
    assert widen.outward_value((1e-3, 3e-3), "high", 2, "lr") == 2.7e-2
    assert math.isclose(widen.outward_value((1e-3, 3e-3), "low", 1, "lr"), 1e-3 / 3, rel_tol=1e-5)
    assert widen.outward_value((32, 64, 256), "high", 1, "batch_size") == 1024  # the ratio at that end
    assert widen.outward_value((64,), "high", 1, "batch_size") is None  # one value: no ratio
    assert widen.outward_value((1, 2), "low", 1, "batch_size") is None  # below 1


def test_planted_edges_get_the_next_value_outward_crossed_with_the_other_axis():
    runs = _runs({0.25: GRID.values(), 1.0: GRID.values()})
    edges, members = widen.decide(_best({0.25: ("low", ""), 1.0: ("high", "high")}), runs, GRID, 2, 1)
    got = {(e["utd"], e["axis"], e["side"]): e["added"] for e in edges}
    assert got == {("u0.25", "batch_size", "low"): 16, ("u1", "batch_size", "high"): 256,
                   ("u1", "lr", "high"): pytest.approx(1e-2 / 0.3)}
    at = members.groupby("utd").apply(lambda g: set(zip(g["batch_size"], g["lr"])), include_groups=False)
    assert at[0.25] == {(16, lr) for lr in GRID["lr"]}  # the new batch size at every swept lr
    # UTD 1: both axes widened, and the corner, so the cell stays a full 4 x 4 grid
    assert len(at[1.0]) == 4 * 4 - 3 * 3 and (256, 0.0333333) in at[1.0]  # 6 s.f.
    assert set(members["utd_label"]) == {"u0.25", "u1"} and (members["critic_width"] == 32).all()


def test_nothing_added_inside_the_grid_and_the_limit_holds():
    runs = _runs({0.25: GRID.values()})
    edges, members = widen.decide(_best({0.25: ("", "")}), runs, GRID, 2, 1)
    assert edges == [] and members.empty
    # two values already added above the grid's top lr: the limit (2) is reached, nothing is added
    wide = _runs({0.25: (GRID["batch_size"], GRID["lr"] + (3e-2, 9e-2))})
    edges, members = widen.decide(_best({0.25: ("", "high")}), wide, GRID, 2, 3)
    assert members.empty and len(edges) == 1 and np.isnan(edges[0]["added"])
    assert "limit refine.widen = 2" in edges[0]["why"]
    # ... but a third is allowed with widen 3, at the grid's own ratio (3e-3 -> 1e-2: 3.33x)
    edges, members = widen.decide(_best({0.25: ("", "high")}), wide, GRID, 3, 3)
    assert edges[0]["added"] == pytest.approx(1e-2 * (1e-2 / 3e-3) ** 3, rel=1e-5) and len(members) == 3


def test_a_diverged_value_beyond_the_edge_brackets_it():
    wide = _runs({1.0: (GRID["batch_size"], GRID["lr"] + (3e-2,))})
    used = wide[wide["lr"] < 2e-2]  # every seed at lr 3e-2 diverged: the pick never saw it
    edges, members = widen.decide(_best({1.0: ("", "high")}), wide, GRID, 2, 2, used)
    assert edges == [] and members.empty


# --------------------------------------------------------------------------------------------
# The stage, with training replaced by planted curves

#: Planted optima per UTD: (best batch size, best lr). UTD 1/4: batch below the grid, lr inside;
#: UTD 1: lr far above the grid (widened to the limit), batch size just above it (bracketed by 256).
OPTIMA = {0.25: (6.0, 3e-3), 1.0: (200.0, 10.0)}
STEPS = np.arange(50, 12001, 50)


def _curve(utd: float, b: float, lr: float, seed: int) -> np.ndarray:
    """Normalised return rising at a rate that falls off in log b and log lr from the planted
    optimum, so that log D_J is a parabola in each with its minimum there."""
    b0, lr0 = OPTIMA[utd]
    rate = np.exp(-0.05 * np.log(lr / lr0) ** 2 - 0.1 * np.log(b / b0) ** 2) * (1 + 0.01 * seed)
    return np.minimum(1000.0, rate * STEPS)


def _fake_train(calls: list, stop_at: str | None = None):
    """A stand-in for ``train_sweep_file``: the sweep's members with planted curves in ``out``'s
    results.csv (what ``run_sweep_stage`` copies); KeyboardInterrupt when training ``stop_at``."""
    def train(sweep_file, out, resume=False, **kw):
        stage = Path(sweep_file).parent.name
        calls.append(stage)
        if stage == stop_at:
            raise KeyboardInterrupt(stage)
        sweep = load_sweep(sweep_file)
        rows = []
        for g in sweep.groups:
            for m in g.members:
                a = m.config.agent
                ret = _curve(a.utd, a.batch_size, a.critic_lr, m.config.run.seed) * 50 / 1000
                rows.append(pd.DataFrame({
                    "member": m.name, "group": g.index, "env": m.config.env.name, "seed": m.config.run.seed,
                    "utd": a.utd, "utd_label": "1/4" if a.utd == 0.25 else "1", "batch_size": a.batch_size,
                    "critic_lr": a.critic_lr, "actor_lr": a.actor_lr, "critic_width": a.critic_width,
                    "model_size": 1000, "step": STEPS, "return": ret, "diverged": 0.0}))
        Path(out).mkdir(parents=True, exist_ok=True)
        pd.concat(rows).to_csv(Path(out) / "results.csv", index=False)
        return [{"member": m.name} for m in sweep.members]
    return train


def _workflow(tmp: Path, refine: dict | None) -> Path:
    spec = {"name": "w", "base": str(ROOT / "configs" / "pointmass.yaml"), "seeds": 2, "max_return": 50,
            "thresholds": [300, 500], "resamples": 20,
            "hparam_sweep": {"utd": ["1/4", "1"], "batch_size": [32, 64, 128], "lr": [1e-3, 3e-3, 1e-2]},
            "utd_sweep": {"utd": ["1/16", "1/4", "1"]}, "verify": {"utd": "1/2"}}
    if refine is not None:
        spec["refine"] = refine
    path = tmp / f"w{abs(hash(str(refine)))}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run(monkeypatch, wf: Path, out: Path, calls: list, stop_at: str | None = None, last="hparam_sweep") -> None:
    monkeypatch.setattr(sweeps, "train_sweep_file", _fake_train(calls, stop_at))
    with pytest.raises((RuntimeError, KeyboardInterrupt)):
        workflow.run_workflow(wf, out, progress=False, log=lambda *a: None, fail_after=last)


def _files(d: Path) -> dict:
    """A stage directory's files (but its done.json, which holds times) as bytes."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != "done.json"}


@pytest.fixture(scope="module")
def widened(tmp_path_factory):
    """The stage with refine.widen 2, killed while training round 2, then resumed."""
    tmp = tmp_path_factory.mktemp("widen")
    wf, out, calls = _workflow(tmp, {"widen": 2}), tmp / "out", []
    mp = pytest.MonkeyPatch()
    try:
        _run(mp, wf, out, calls, stop_at="widen2")
        first = list(calls)
        _run(mp, wf, out, calls, last="fit_hparams")
        whole = tmp / "whole"
        _run(mp, wf, whole, [])
    finally:
        mp.undo()
    return wf, out, first, calls[len(first):], whole


def test_rounds_add_outward_values_until_inside_or_the_limit(widened):
    _, out, _, _, _ = widened
    d = out / "hparam_sweep"
    t = pd.read_csv(d / "widened.csv", dtype={"utd": str})
    added = {(r.utd, r.axis, r.side, r.round): r.added for r in t[t["added"].notna()].itertuples()}
    assert added == {("1/4", "batch_size", "low", 1): 16, ("1/4", "batch_size", "low", 2): 8,
                     ("1", "lr", "high", 1): pytest.approx(0.0333333, rel=1e-5),
                     ("1", "lr", "high", 2): pytest.approx(0.111111, rel=1e-5),
                     ("1", "batch_size", "high", 1): 256}
    left = t[t["added"].isna()]
    assert {(r.utd, r.axis) for r in left.itertuples()} == {("1/4", "batch_size"), ("1", "lr")}
    assert left["why"].str.contains("limit refine.widen = 2").all()
    # results.csv: the grid's rows, then every round's (members prefixed), the grid's own table untouched
    res = pd.read_csv(d / "results.csv")
    grid = pd.read_csv(d / "run" / "results.csv")
    assert len(grid["member"].unique()) == 2 * 9 * 2
    assert res["member"].str.startswith("widen1/").any() and res["member"].str.startswith("widen2/").any()
    assert res.groupby("member")["group"].nunique().max() == 1 and res["group"].nunique() > grid["group"].nunique()
    sweep1 = yaml.safe_load((d / "widen1" / "sweep.yaml").read_text())
    assert sweep1["seeds"] == 2 and not sweep1["grid"] and "agent.critic_lr" in sweep1["zip"]
    # UTD 1 after round 1: 4 batch sizes x 4 lrs; UTD 1/4: 4 x 3, every seed
    r1 = res[res["member"].str.startswith(("m", "widen1/"))].drop_duplicates("member")
    assert len(r1) == (4 * 4 + 4 * 3) * 2
    marker = workflow.read_marker(out, "hparam_sweep")
    assert marker["widen_rounds"] == 2 and marker["members"] == res["member"].nunique()
    # fit_hparams picks from the widened table: batch size 256 at UTD 1 brackets the optimum (200)
    best = pd.read_csv(out / "fit_hparams" / "best_hparams.csv", keep_default_na=False).set_index("utd")
    assert best.loc[1.0, "lr"] == pytest.approx(0.111111) and best.loc[1.0, "lr_edge"] == "high"
    assert 128 <= best.loc[1.0, "batch_size"] <= 256 and best.loc[1.0, "batch_size_edge"] == ""
    assert best.loc[0.25, "lr"] == pytest.approx(3e-3) and best.loc[0.25, "lr_edge"] == ""


def test_resume_does_not_retrain_finished_rounds(widened):
    _, out, first, resumed, whole = widened
    assert first == ["hparam_sweep", "widen1", "widen2"]
    assert resumed == ["widen2"]  # the grid and round 1 were finished: not trained again
    assert _files(out / "hparam_sweep") == _files(whole / "hparam_sweep")


def test_refine_off_trains_the_grid_alone(tmp_path, monkeypatch):
    runs = {}
    for name, refine in (("absent", None), ("zero", {"widen": 0})):
        calls = []
        _run(monkeypatch, _workflow(tmp_path, refine), tmp_path / name, calls)
        assert calls == ["hparam_sweep"]
        runs[name] = _files(tmp_path / name / "hparam_sweep")
    assert runs["absent"] == runs["zero"]
    assert sorted(runs["absent"]) == ["results.csv", "run/results.csv", "sweep.yaml"]
    assert runs["absent"]["results.csv"] == runs["absent"]["run/results.csv"]
    wf = load_workflow(_workflow(tmp_path, None))
    grid, zipped = sweeps.hparam_grid(wf)
    spec = yaml.safe_load(runs["absent"]["sweep.yaml"])
    assert spec["grid"] == grid and spec["zip"] == zipped and "refine" not in str(spec)


def test_report_shows_the_grid_as_swept_and_as_widened(widened):
    wf, out, _, _, _ = widened
    lines = widen.report_lines(load_workflow(wf), out)
    text = "\n".join(lines)
    assert "2 round(s)" in text
    assert "- utd 1: lr swept 0.001, 0.003, 0.01; widened +0.0333 (round 1: best at the high edge), +0.111 " \
           "(round 2: best at the high edge); best still at the high edge: limit refine.widen = 2 reached" in text
    assert "- utd 1/4: batch_size swept 32, 64, 128; widened +16 (round 1" in text
    assert widen.report_lines(load_workflow(wf), out / "nowhere") == []


def test_plan_projects_the_widening(tmp_path):
    wf = load_workflow(_workflow(tmp_path, {"widen": 2}))
    # per UTD: (3 + 2) x (3 + 2) - 9 = 16 settings one way, (3 + 4)^2 - 9 = 40 both ways; 2 UTDs, 2 seeds
    assert widen.max_added_members(wf, 2) == (64, 160)


def test_plan_of_a_widening_workflow_says_so(tmp_path):
    from types import SimpleNamespace

    from pql_jax.workflow.plan import project_workflow

    # the planned hparam sweep as project_workflow reads it (planning the real one compiles it)
    seeds = [SimpleNamespace(config=SimpleNamespace(run=SimpleNamespace(seed=s))) for s in (0, 1)]
    sweep = SimpleNamespace(members=seeds * 18, groups=[None] * 3)
    text = "\n".join(project_workflow(load_workflow(_workflow(tmp_path, {"widen": 2})), sweep, None))
    assert "refine.widen = 2: widening the hparam grid where a best value lies on its edge may add up to 64 " \
           "members (160 if" in text
    assert "widen" not in "\n".join(project_workflow(load_workflow(_workflow(tmp_path, None)), sweep, None))
