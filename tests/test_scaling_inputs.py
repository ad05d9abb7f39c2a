"""Issue 31, sections 2-4, as a user sees them: a SAC-style CSV read by its own column names,
unused hyperparameter columns named, `1:4` UTDs, thresholds that no run reaches, `--select-level`
out of range, and proposals for a data target, with the threshold of a budget row, its unit,
over-budget rows and learning rates no law gives. Every bad input: one `error:` line, exit 2,
nothing written or lost."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from pql_jax.cli import main
from pql_jax.scaling import PipelineConfig, fit_all, load_curves
from pql_jax.scaling.synthetic import PLANTED, make_sweep

UTDS = (0.25, 0.5, 1, 2, 4)
SWEEP = dict(n_envs=1, utds=UTDS, batch_sizes=(32, 128, 512, 2048), lrs=(1e-4, 5e-4, 2.5e-3), seeds=3, points=40,
             seed=2)
FAST = ["--resamples", "20", "--no-figures"]


def _sac(df: pd.DataFrame) -> pd.DataFrame:
    """A SAC user's table: one task (no env column), env_step, eval_return, batch, UTDs as 1:4."""
    out = df.drop(columns=["env"]).rename(columns={"step": "env_step", "return": "eval_return", "batch_size": "batch"})
    out["utd"] = out["utd"].map({0.25: "1:4", 0.5: "1:2", 1: "1", 2: "2", 4: "4"})
    return out[["env_step", "eval_return", "batch", "lr", "seed", "utd"]]


@pytest.fixture(scope="module")
def sweep():
    return make_sweep(**SWEEP)


@pytest.fixture(scope="module")
def sac_fit(sweep, tmp_path_factory):
    """`fit all` of the SAC-style CSV by its own names (aliases), and its printed output."""
    d = tmp_path_factory.mktemp("sac")
    path = d / "sac.csv"
    _sac(sweep).to_csv(path, index=False)
    out = d / "out"
    code, printed = _run(["fit", "all", str(path), "--out", str(out), *FAST])
    assert code == 0, printed
    return path, out, printed


def _run(argv):
    import contextlib
    import io

    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        code = main(argv)
    return code, so.getvalue() + se.getvalue()


def _bad(argv) -> str:
    """The one `error:` line of a refused command (exit 2)."""
    import contextlib
    import io

    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        code = main(argv)
    err = se.getvalue().strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err, so.getvalue())
    return err[0]


# -- 2. their own curves in ------------------------------------------------------------------------

def test_sac_csv_is_read_by_its_own_names_and_recovers_the_planted_batch_law(sac_fit):
    _, out, printed = sac_fit
    assert "note: read column(s) env_step as step, eval_return as return, batch as batch_size" in printed
    assert "note: no env column: the curves are read as one task, named 'all'" in printed
    best = pd.read_csv(out / "best_hparams.csv")
    assert set(best["env"]) == {"all"} and sorted(best["utd"]) == list(UTDS)  # 1:4 read as 0.25
    law = json.loads((out / "fit_batch_size.json").read_text())
    lo, hi = law["interval"]["slope"]["all"]
    assert lo < PLANTED["batch_slope"] < hi  # the planted B* slope, through the user's own column names


def test_columns_mapping_inline_and_yaml_gives_the_same_fit(sweep, sac_fit, tmp_path):
    path, out, _ = sac_fit
    other = _sac(sweep).rename(columns={"env_step": "t", "eval_return": "R", "batch": "bs"})
    other["task"] = "all"  # the same name: the bootstrap of a run is seeded by its key
    p = tmp_path / "other.csv"
    other.to_csv(p, index=False)
    o1 = tmp_path / "inline"
    code, printed = _run(["fit", "all", str(p), "--out", str(o1), "--columns", "step=t,return=R,batch_size=bs", *FAST])
    assert code == 0, printed
    assert "note: read column(s) task as env" in printed
    mine = pd.read_csv(o1 / "best_hparams.csv")
    pd.testing.assert_frame_equal(mine, pd.read_csv(out / "best_hparams.csv"))
    (tmp_path / "cols.yaml").write_text("step: t\nreturn: R\nbatch_size: bs\nenv: task\n")
    o2 = tmp_path / "yaml"
    code, printed = _run(["fit", "all", str(p), "--out", str(o2), "--columns", str(tmp_path / "cols.yaml"), *FAST])
    assert code == 0, printed
    pd.testing.assert_frame_equal(pd.read_csv(o2 / "best_hparams.csv"), mine)


def test_an_unmapped_hyperparameter_column_is_named(sweep, tmp_path):
    """`bs` unmapped: its runs look like duplicates (seeds 0..2 of every batch size), or, seeds
    numbered across the sweep, like more seeds of one setting; both are refused naming `bs`."""
    df = _sac(sweep).rename(columns={"batch": "bs"})
    out = tmp_path / "out"
    msg = _bad(["fit", "all", _write(tmp_path, df), "--out", str(out), *FAST])
    assert msg.startswith("error: curves: duplicate rows for one run at env=all seed=0 step=")
    assert "they differ in column 'bs', which is not used" in msg and "--columns NAME=bs" in msg
    seeds = df.assign(seed=df["seed"] + 10 * df["bs"].map({32: 0, 128: 1, 512: 2, 2048: 3}))
    msg = _bad(["fit", "all", _write(tmp_path, seeds), "--out", str(out), *FAST])
    assert "column 'bs' is not used but splits the seeds of one setting (env=all utd=0.25 lr=0.0001: bs = 32, 128" \
           in msg and "--columns NAME=bs" in msg and "--columns ignore=bs" in msg
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["in.csv"]
    # mapped, it is used: the same fit as the SAC table's `batch`
    code, printed = _run(["fit", "all", _write(tmp_path, df), "--out", str(out), "--columns", "batch_size=bs", *FAST])
    assert code == 0, printed


def test_run_labels_and_metrics_are_not_taken_for_hyperparameters(sweep):
    """A run id (one value per seed), our tables' member / group columns, a per-step metric and a
    learning rate tied to `lr` are not refused."""
    df = sweep.copy()
    df["run_id"] = df["seed"].astype(str) + "-" + df["utd"].astype(str) + df["batch_size"].astype(str) + df["lr"].astype(str)
    df["group"] = df["seed"] % 2  # compiled groups: several seeds each
    df["member"] = "m"
    df["online_return"] = np.random.default_rng(0).normal(size=len(df))
    df["actor_lr"] = df["lr"]
    got, _ = load_curves(df)
    assert len(got) == len(df)


@pytest.mark.parametrize("columns, expect", [
    ("stp=env_step", "--columns: unknown name 'stp'; the names are env, seed, step, return"),
    ("step=env_stp", "--columns: no column 'env_stp' in the curves (found: env_step, eval_return, batch, lr, seed, "
                     "utd); did you mean 'env_step'?"),
    ("step", "--columns: expected NAME=COLUMN,..."),
    ("step=env_step,lr", "--columns: 'lr' is not NAME=COLUMN"),
    ("step=env_step,return=env_step", "--columns: column 'env_step' is mapped to more than one name"),
])
def test_bad_column_mappings(sweep, tmp_path, columns, expect):
    out = tmp_path / "out"
    msg = _bad(["fit", "all", _write(tmp_path, _sac(sweep)), "--out", str(out), "--columns", columns, *FAST])
    assert expect in msg, msg
    assert not out.exists()


def test_a_missing_column_says_how_to_map_it(sweep, tmp_path):
    df = _sac(sweep).rename(columns={"env_step": "timestep"})
    msg = _bad(["fit", "all", _write(tmp_path, df), "--out", str(tmp_path / "o"), *FAST])
    assert msg == ("error: curves: missing column(s) step (found: timestep, eval_return, batch, lr, seed, utd); "
                   "did you mean 'timestep' for 'step'?; map your names with --columns step=timestep")
    msg = _bad(["fit", "all", _write(tmp_path, df.rename(columns={"timestep": "frames"})), "--out", str(tmp_path / "o")])
    assert msg.endswith("map your names with --columns step=COLUMN")


def test_utd_ratio_forms_are_read_alike_everywhere(sweep, sac_fit, tmp_path):
    _, out, _ = sac_fit
    for form in ("1:4,1", "1/4,1", "0.25,1"):
        assert main(["propose", str(out), "--utd", form, "--out", str(tmp_path / f"{form[:3].replace('/', '_')}.csv")]) == 0
    tables = [pd.read_csv(tmp_path / f"{f}.csv") for f in ("1:4", "1_4", "0.2")]
    assert tables[0]["utd"].tolist() == [0.25, 1.0]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    pd.testing.assert_frame_equal(tables[0], tables[2])
    msg = _bad(["propose", str(out), "--utd", "1;4"])
    assert "not a number: '1;4' (write e.g. 0.25, 5e-4, 1/4 or 1:4)" in msg
    df = _sac(sweep)
    df.loc[3, "utd"] = "quarter"
    msg = _bad(["fit", "all", _write(tmp_path, df), "--out", str(tmp_path / "o"), *FAST])
    assert "non-numeric value 'quarter' in column 'utd' (row 5; write e.g. 0.25, 5e-4, 1/4 or 1:4)" in msg


# -- 3. thresholds that nothing reaches ------------------------------------------------------------

def test_a_threshold_no_run_reaches_is_dropped_and_never_picks_best_values(sweep, tmp_path):
    path = _write(tmp_path, sweep)
    top = float(load_curves(sweep)[0].groupby(["utd", "batch_size", "lr", "step"])["return"].mean().max())
    out = tmp_path / "out"
    code, printed = _run(["fit", "all", path, "--out", str(out), "--thresholds", "500,990", *FAST])
    assert code == 0, printed
    line = next(x for x in printed.splitlines() if "J=990" in x)
    assert line.startswith("  threshold J=990: dropped: no run reaches it (the highest seed-mean return is ")
    highest = float(line.split("return is ")[1].split(",")[0])
    assert 800 < highest <= top + 1e-6  # the isotonic seed-mean curve's top: at most the best raw seed mean
    summary = json.loads((out / "summary.json").read_text())
    assert summary["thresholds"] == {"*": [500.0]} and summary["select_level"] == 0
    assert set(pd.read_csv(out / "crossings_runs.csv")["threshold"]) == {500.0}
    assert (out / "fit_batch_size.json").exists() and "best batch_size at the edge" not in printed
    flags = pd.read_csv(out / "flags.csv")
    assert (flags["param"] == "J=990").sum() == 1


def test_no_threshold_reached_names_the_highest_return(sweep, tmp_path):
    msg = _bad(["fit", "all", _write(tmp_path, sweep), "--out", str(tmp_path / "o"), "--thresholds", "980,990", *FAST])
    assert msg.startswith("error: no threshold is reached by any run (thresholds 980, 990; the highest seed-mean "
                          "return is ") and " at env=env0 utd=" in msg


@pytest.mark.parametrize("args, expect", [
    (["--select-level", "7"], "--select-level 7: there are 5 threshold levels, so it must be 0 (the lowest) to 4"),
    (["--select-level", "-1"], "--select-level -1: there are 5 threshold levels, so it must be 0 (the lowest) to 4"),
    (["--thresholds", "300,600", "--select-level", "2"],
     "--select-level 2: there are 2 threshold levels (--thresholds 300,600), so it must be 0 (the lowest) to 1"),
    (["--thresholds", "500,990", "--select-level", "1"],
     "--select-level 1: 1 threshold level is reached: 0 (500); 990 dropped (no run reaches it)"),
    (["--n-thresholds", "0"], "--n-thresholds must be at least 1, got 0"),
])
def test_select_level_out_of_range_is_refused(sweep, tmp_path, args, expect):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    msg = _bad(["fit", "all", _write(tmp_path, sweep), "--out", str(out), *args, *FAST])
    assert expect in msg, msg
    assert os.listdir(out) == ["mine.txt"]


def test_default_level_is_one_every_cell_reaches(sweep, tmp_path):
    """A threshold reached by some (env, utd) cells only does not pick the best values by default."""
    top = load_curves(sweep)[0].groupby(["utd", "batch_size", "lr", "step"])["return"].mean().groupby("utd").max()
    assert top[0.25] < 890 < 900 < top.drop(0.25).min() - 20  # 900: reached by every utd but 1/4
    res = fit_all(sweep, PipelineConfig(thresholds=[400, 500, 900], resamples=10, figures=False))
    assert res.summary["select_level"] == 1
    assert "best values picked at threshold 500 (level 1), the middle one of the 2 levels that every env/utd cell " \
           "reaches (some miss 900); choose another with --select-level" in res.notes
    res = fit_all(sweep, PipelineConfig(thresholds=[400, 900], resamples=10, figures=False))
    assert res.summary["select_level"] == 0  # not 900, which utd 1/4 never reaches (the middle of two: 1)
    res = fit_all(sweep, PipelineConfig(thresholds=[890, 900], resamples=10, figures=False))
    assert res.summary["select_level"] == 0 and "no threshold level is reached by every cell: best values picked at " \
        "the lowest, where env=env0 utd=1/4 reaches none: lower the thresholds or train longer" in res.notes


# -- 4. proposals a user can act on ----------------------------------------------------------------

def test_propose_data_target_gives_the_cheapest_setting_per_threshold(sac_fit, tmp_path):
    _, out, _ = sac_fit
    front = pd.read_csv(out / "pareto.csv")
    D = float(front.groupby("level")["data"].min().max() * 2)  # every threshold reachable
    code, printed = _run(["propose", str(out), "--data", f"{D:g}", "--out", str(tmp_path / "p.csv")])
    assert code == 0, printed
    table = pd.read_csv(tmp_path / "p.csv")
    J = sorted(front["threshold"].unique())
    assert table["threshold"].tolist() == pytest.approx(J) and (table["data_target"] == float(f"{D:g}")).all()
    assert (table["data_pred"] <= float(f"{D:g}") * (1 + 1e-9)).all()
    for r in table.itertuples():  # no point of the frontier reaching J within D is cheaper
        f = front[np.isclose(front["threshold"], r.threshold) & (front["data"] <= float(f"{D:g}"))]
        assert r.compute_pred <= f["compute"].min() * (1 + 1e-9)
        assert r.compute_pred >= f["compute"].min() * 0.95  # refined between grid points, not beyond them
    assert table["batch_size"].notna().all() and (table["batch_size"] % 16 == 0).all() and table["lr"].notna().all()
    assert (table["budget_unit"] == "FLOPs per critic parameter").all()
    assert "note: budget and compute are FLOPs per critic parameter, because the curves had no model_size column" \
        in printed
    least = float(front["data"].min())
    msg = _bad(["propose", str(out), "--data", f"{least / 2:g}", "--out", str(tmp_path / "p.csv")])
    assert f"propose --data {least / 2:g}: no threshold is reached within" in msg and "the least data: all J=" in msg
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "p.csv"), table)  # the earlier proposals are kept
    for bad in (["--data", "-5"], ["--data", "1e6", "--utd", "1"], ["--data", "lots"]):
        _bad(["propose", str(out), *bad, "--out", str(tmp_path / "p.csv")])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "p.csv"), table)


def test_budget_rows_name_their_threshold_and_flag_compute_over_the_budget(sac_fit, tmp_path):
    _, out, _ = sac_fit
    budget = pd.read_csv(out / "budget.csv").sort_values("budget")
    F = float(np.sqrt(budget["budget"].iloc[1] * budget["budget"].iloc[2]))
    code, printed = _run(["propose", str(out), "--budget", f"{F:.6g}", "--out", str(tmp_path / "b.csv")])
    assert code == 0, printed
    row = pd.read_csv(tmp_path / "b.csv").iloc[0]
    assert budget["threshold"].iloc[1] < row["threshold"] < budget["threshold"].iloc[2]
    assert row["threshold_source"].startswith(f"between the optima of J={budget['threshold'].iloc[1]:g}")
    assert row["budget_unit"] == "FLOPs per critic parameter" and not row["over_budget"]
    assert f"note: --budget {float(f'{F:.6g}'):g} was read as FLOPs per critic parameter" in printed
    code, printed = _run(["propose", str(out), "--budget", "1e15", "--out", str(tmp_path / "b.csv")])
    assert code == 0, printed
    row = pd.read_csv(tmp_path / "b.csv").iloc[0]
    assert row["compute_pred"] > 1e15 and row["over_budget"]
    assert row["threshold_source"].startswith(f"at least J={budget['threshold'].max():g}")
    assert f"warning: all: the predicted compute {row['compute_pred']:.3g} exceeds the budget 1e+15" in printed
    assert "this row is not a setting for that budget (over_budget)" in printed


def test_a_learning_rate_no_law_gives_comes_from_the_nearest_swept_utd(tmp_path):
    """Every best lr at the top of the grid: no lr law; the proposal's lr is the best value of the
    nearest swept utd, its source column and a note say so. Without an lr column it stays NaN,
    and its source says why."""
    df = make_sweep(**{**SWEEP, "lrs": (1e-5, 3e-5, 1e-4)})
    out = tmp_path / "out"
    assert _run(["fit", "all", _write(tmp_path, df), "--out", str(out), *FAST])[0] == 0
    assert not (out / "fit_learning_rate.json").exists()
    code, printed = _run(["propose", str(out), "--utd", "1/3,3"])
    assert code == 0, printed
    table = pd.read_csv(out / "proposals.csv")
    assert table["lr"].tolist() == [1e-4, 1e-4] and (table["batch_size_source"] == "law").all()
    assert table["lr_source"].tolist() == [
        "no lr law: best value at the nearest swept utd 1/4, a bound: high edge of the grid",
        "no lr law: best value at the nearest swept utd 4, a bound: high edge of the grid"]
    assert "note: lr is the best value at the nearest swept utd (best_hparams.csv): learning_rate law not fitted" \
        in printed
    code, printed = _run(["propose", str(out), "--budget", "3e8"])
    assert code == 0 and np.isfinite(pd.read_csv(out / "proposals.csv")["lr"]).all()
    # no lr column at all
    out2 = tmp_path / "nolr"
    one = make_sweep(**{**SWEEP, "lrs": (5e-4,)}).drop(columns="lr")
    assert _run(["fit", "all", _write(tmp_path, one), "--out", str(out2), *FAST])[0] == 0
    assert main(["propose", str(out2), "--utd", "1"]) == 0
    row = pd.read_csv(out2 / "proposals.csv").iloc[0]
    assert np.isnan(row["lr"]) and row["lr_source"] == "no lr law; none: the curves have no lr column"


def _write(tmp_path, df, name="in.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return str(path)


def test_api_takes_the_column_mapping_as_a_dict(sweep):
    df = _sac(sweep).rename(columns={"batch": "bs", "env_step": "t"})
    res = fit_all(df, PipelineConfig(columns={"batch_size": "bs", "step": "t"}, resamples=5, figures=False))
    assert "batch_size" in res.tables["best_hparams"] and set(res.tables["best_hparams"]["env"]) == {"all"}
    got, notes = load_curves(df.assign(host="a"), columns={"batch_size": "bs", "step": "t", "ignore": ["host"]})
    assert "host" in got.columns and notes[0] == "read column(s) eval_return as return (map others with --columns " \
                                                 "NAME=COLUMN)"


def test_fill_nearest_is_the_one_rule_for_values_no_law_gives():
    from pql_jax.scaling.propose import fill_nearest

    best = pd.DataFrame({"utd": [0.25, 1.0, 4.0], "batch_size": [500.0, 300.0, np.nan], "lr": [1e-3, 5e-4, 3e-4],
                         "lr_edge": ["", "high", ""]})
    prop = pd.DataFrame({"utd": [0.4, 3.0], "batch_size": [np.nan, 128], "lr": [np.nan, np.nan]})
    out, filled = fill_nearest(prop, best)
    assert out["batch_size"].tolist() == [496, 128] and out["lr"].tolist() == [1e-3, 3e-4]
    assert out["batch_size_source"].tolist() == ["no batch_size law: best value at the nearest swept utd 1/4", "law"]
    assert out["lr_source"].tolist()[1] == "no lr law: best value at the nearest swept utd 4"
    assert filled == [["batch_size", "lr"], ["lr"]]
    out, _ = fill_nearest(pd.DataFrame({"utd": [1.5], "batch_size": [64], "lr": [np.nan]}), best)
    assert out["lr_source"].iloc[0] == "no lr law: best value at the nearest swept utd 1, a bound: high edge of the grid"
