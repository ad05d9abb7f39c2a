"""`pql-jax fit ...` / `pql-jax propose` end to end, and every bad input: exit 2, one line,
nothing half-written."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from pql_jax.cli import main
from pql_jax.errors import UserError
from pql_jax.scaling.laws import DATA_SIGMA, DATA_SIGMA_N
from pql_jax.scaling.synthetic import make_sweep


@pytest.fixture(scope="module")
def sweep_csv(tmp_path_factory):
    df = make_sweep(n_envs=2, utds=(0.25, 1, 4), batch_sizes=(32, 128, 512, 2048), lrs=(1e-4, 5e-4, 2.5e-3), seeds=4,
                    points=60, seed=1)
    path = tmp_path_factory.mktemp("sweep") / "curves.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def fitted(sweep_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "out"
    assert main(["fit", "all", str(sweep_csv), "--out", str(out), "--resamples", "20", "--n-thresholds", "3"]) == 0
    return out


def _write(tmp_path, df, name="in.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return str(path)


def _crossings_df(n_model=False):
    rows = []
    for u in ("1/256", "1/1024", "1/4096", "1/16384", "1/65536"):
        for n in ((1e5, 4e5, 1.6e6) if n_model else (None,)):
            uf = eval(u)
            d = (DATA_SIGMA_N.predict({"d_min": 1e6, "a": 2e-3, "alpha": 0.8, "b": 3e5, "beta": 0.6}, utd=uf,
                                      model_size=n) if n else DATA_SIGMA.predict({"d_min": 1e6, "b": 2e-3, "a": 0.8}, utd=uf))
            rows.append({"env": "push", "utd": u, "data": float(d), **({"model_size": n} if n else {})})
    return pd.DataFrame(rows)


def test_fit_data_efficiency_with_fraction_strings(tmp_path, capsys):
    out = tmp_path / "de"
    assert main(["fit", "data-efficiency", _write(tmp_path, _crossings_df()), "--out", str(out)]) == 0
    fit = json.loads((out / "fit.json").read_text())
    assert fit["form"] == "data_sigma" and fit["loss"] < 1e-8
    pred = pd.read_csv(out / "predictions.csv")
    np.testing.assert_allclose(pred["data_fit"], pred["data"], rtol=1e-3)
    assert "push" in capsys.readouterr().out
    out2 = tmp_path / "de2"
    assert main(["fit", "data-efficiency", _write(tmp_path, _crossings_df(True)), "--out", str(out2),
                 "--holdout", "utd < 2e-5"]) == 0
    fit = json.loads((out2 / "fit.json").read_text())
    assert fit["form"] == "data_sigma_n" and fit["holdout"]["n"] == 3


def test_fit_batch_size_command(tmp_path):
    df = pd.DataFrame({"env": ["a"] * 3 + ["b"] * 3, "utd": [1, 2, 4] * 2,
                       "batch_size": [512, 512 * 2 ** -0.5, 256, 256, 256 * 2 ** -0.5, 128]})
    assert main(["fit", "batch-size", _write(tmp_path, df), "--out", str(tmp_path / "b")]) == 0
    fit = json.loads((tmp_path / "b" / "fit.json").read_text())
    assert fit["params"]["a"]["slope"] == pytest.approx(0.5)


def test_fit_all_writes_everything_and_propose(fitted, capsys):
    names = set(os.listdir(fitted))
    for f in ("report.md", "fit.json", "predictions.csv", "crossings.csv", "crossings_runs.csv",
              "best_hparams.csv", "budget.csv", "pareto.csv", "fit_budget.json", "fit_batch_size.json",
              "fit_learning_rate.json", "summary.json"):
        assert f in names, f
    assert {"isotonic_curves.png", "data_efficiency.png", "pareto.png", "batch_size_fit.png",
            "sigma_star.png"} <= set(os.listdir(fitted / "figures"))
    report = (fitted / "report.md").read_text()
    assert "figures/pareto.png" in report and "Precision of the optimum" in report
    assert not [n for n in os.listdir(fitted.parent) if ".tmp-" in n]
    assert main(["propose", str(fitted), "--utd", "1/4,1,8"]) == 0
    table = pd.read_csv(fitted / "proposals.csv")
    assert len(table) == 6 and (table["batch_size"] % 16 == 0).all()
    # the sweep's utds span 1/4 .. 4: utd 8 is an extrapolation, and the output says so
    assert (table["extrapolated"] == (table["utd"] > 4)).all()
    assert "outside the fitted" in capsys.readouterr().out
    assert main(["propose", str(fitted), "--budget", "1e12", "--env", "env0"]) == 0
    assert len(pd.read_csv(fitted / "proposals.csv")) == 1


def test_fit_all_with_model_size_and_results_table_columns(tmp_path):
    df = make_sweep(n_envs=1, utds=(0.5, 1, 2, 4), batch_sizes=(128,), lrs=(5e-4,), seeds=3, points=50,
                    model_sizes=(1e5, 4e5, 1.6e6))
    df = df.rename(columns={"lr": "critic_lr"})
    df["member"] = 0
    df["critic_updates"] = df["step"] * df["utd"]
    df["flops"] = 12 * df["model_size"] * 128 * df["critic_updates"]
    df["diverged"] = 0
    df.loc[(df["seed"] == 2) & (df["utd"] == 4) & (df["model_size"] == 1e5), "diverged"] = 1
    df.loc[df.index[::7], "return"] = np.nan  # steps without eval
    out = tmp_path / "out"
    assert main(["fit", "all", _write(tmp_path, df), "--out", str(out), "--resamples", "10",
                 "--n-thresholds", "3", "--delta", "1e9", "--no-figures"]) == 0
    fit = json.loads((out / "fit.json").read_text())
    assert fit["form"] == "data_sigma_n"
    summary = json.loads((out / "summary.json").read_text())
    assert any("diverged" in n for n in summary["notes"])
    assert json.loads((out / "fit_budget.json").read_text())["k"] == pytest.approx(12)
    assert "model_size_5pct_ratio" in pd.read_csv(out / "budget.csv")


def _bad(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def _curves(n=3):
    rng = np.random.default_rng(0)
    rows = []
    for u in (1.0, 2.0, 4.0)[:n]:
        for s in range(3):
            steps = np.arange(1, 11) * 10.0
            rows.append(pd.DataFrame({"env": "e", "seed": s, "step": steps, "utd": u,
                                      "return": 100 * (1 - np.exp(-steps * u / 30)) + rng.normal(0, 2, 10)}))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("mutate, expect", [
    (lambda d: d.rename(columns={"return": "retrun"}), "missing column(s) return"),
    (lambda d: d.drop(columns=["seed"]), "missing column(s) seed"),
    (lambda d: d.assign(step=d["step"].astype(object).where(d.index != 3, "ten")), "non-numeric value 'ten' in column 'step'"),
    (lambda d: d.assign(utd=d["utd"].where(d.index != 2, -1.0)), "'utd' must be positive"),
    (lambda d: d.assign(step=d["step"].where(d.index != 2, np.nan)), "NaN in column 'step'"),
    (lambda d: d.assign(**{"return": d["return"].where(d.index != 4, np.inf)}), "Inf in column 'return'"),
    (lambda d: d[d["utd"] == 1.0], "at least 3 distinct utd values"),
    (lambda d: d.assign(**{"return": d["return"] * 0 + np.tile(np.linspace(0, 50, 10), 9)}), "all seeds are identical"),
    (lambda d: d.assign(seed=0), "duplicate rows"),
])
def test_fit_all_bad_input(tmp_path, capsys, mutate, expect):
    out = tmp_path / "out"
    msg = _bad(capsys, ["fit", "all", _write(tmp_path, mutate(_curves())), "--out", str(out)])
    assert expect in msg
    assert not out.exists() and os.listdir(tmp_path) == ["in.csv"]


def test_no_threshold_reached_and_existing_dir_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    msg = _bad(capsys, ["fit", "all", _write(tmp_path, _curves()), "--out", str(out), "--thresholds", "5000"])
    assert "no threshold is reached" in msg
    assert os.listdir(out) == ["mine.txt"] and (out / "mine.txt").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["in.csv", "out"]


def test_crossings_bad_input(tmp_path, capsys):
    good = _crossings_df()
    cases = [(good.rename(columns={"data": "dat"}), "missing column(s) data"),
             (good.assign(data=-1.0), "'data' must be positive"),
             (good.assign(utd="1/1024"), "at least 3 distinct utd values"),
             (good.assign(data="x"), "non-numeric value 'x'")]
    for df, expect in cases:
        assert expect in _bad(capsys, ["fit", "data-efficiency", _write(tmp_path, df), "--out", str(tmp_path / "o")])
        assert not (tmp_path / "o").exists()
    assert "not found" in _bad(capsys, ["fit", "data-efficiency", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")])
    assert "holdout" in _bad(capsys, ["fit", "data-efficiency", _write(tmp_path, good), "--out", str(tmp_path / "o"),
                                      "--holdout", "utd >"])


def test_propose_bad_input(tmp_path, capsys, fitted):
    assert "no such directory" in _bad(capsys, ["propose", str(tmp_path / "none"), "--utd", "1"])
    assert "exactly one" in _bad(capsys, ["propose", str(fitted)])
    assert "unknown env" in _bad(capsys, ["propose", str(fitted), "--utd", "1", "--env", "zzz"])
    assert "not a number" in _bad(capsys, ["propose", str(fitted), "--utd", "one"])


def test_console_script_exit_keeps_output_and_status(tmp_path):
    """The `pql-jax` entry point (``cli.entry``): what `fit` printed to a pipe (block-buffered)
    arrives, files are complete, and a bad input exits 2 with its one line."""
    import subprocess
    import sys

    def run(*args):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe buffers stdout
        return subprocess.run([sys.executable, "-m", "pql_jax.cli", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300, env=env)

    out = tmp_path / "de"
    done = run("fit", "data-efficiency", _write(tmp_path, _crossings_df()), "--out", str(out))
    assert done.returncode == 0 and "push" in done.stdout, done.stderr
    assert json.loads((out / "fit.json").read_text())["form"] == "data_sigma"
    bad = run("fit", "data-efficiency", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o"))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "not found" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_fit_all_targets_reach_the_pipeline(tmp_path, capsys, monkeypatch):
    from pql_jax.scaling import cli

    seen = {}

    def fake(curves, out, cfg):
        seen["targets"] = cfg.targets
        raise UserError("stop here")

    monkeypatch.setattr(cli, "fit_all_file", fake)
    path = _write(tmp_path, _curves())
    _bad(capsys, ["fit", "all", path, "--out", str(tmp_path / "o"), "--target-utd", "1/4,8"])
    assert seen["targets"] == {"utd": [0.25, 8.0]}
    _bad(capsys, ["fit", "all", path, "--out", str(tmp_path / "o")])
    assert seen["targets"] is None
    seen.clear()
    for bad in ("0", "-2", "x", "inf"):
        msg = _bad(capsys, ["fit", "all", path, "--out", str(tmp_path / "o"), "--target-utd", bad])
        assert "--target-utd needs positive numbers" in msg and repr(bad) in msg
    assert not seen  # refused before anything is fitted
