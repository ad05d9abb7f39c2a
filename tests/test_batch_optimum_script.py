"""scripts/batch_optimum.py: the two-point B*(utd) slope recovers a planted one."""

from pathlib import Path

import numpy as np
import pytest

from pql_jax.scaling.synthetic import PLANTED, make_sweep

from batch_optimum import batch_optimum, main  # noqa: E402


@pytest.fixture(scope="module")
def sweep():
    return make_sweep(n_envs=1, utds=(0.25, 4.0), batch_sizes=tuple(2.0 ** np.arange(4, 15)), lrs=(6e-4,),
                      seeds=6, points=80, seed_noise=0.03, obs_noise=3.0, planted={"penalty": 0.6})


def test_two_point_slope_recovers_the_planted_batch_slope(sweep):
    result = batch_optimum(sweep, [300.0, 500.0], resamples=40)
    for r in result.values():
        best = {b["utd"]: b["batch_size"] for b in r["best"]}
        assert best[0.25] > best[4.0]  # more updates per env step, smaller best batch (planted)
        assert r["slope"]["mean"] == pytest.approx(-PLANTED["batch_slope"], abs=0.15)
        assert r["slope"]["p5"] <= r["slope"]["mean"] <= r["slope"]["p95"]
        assert len(r["crossings"]) == 2 * 11  # one per (utd, batch size) group


def test_cli_prints_the_table(sweep, tmp_path, capsys):
    path = tmp_path / "curves.csv"
    sweep.to_csv(path, index=False)
    assert main([str(path), "--max-return", "900", "--thresholds", "300", "--resamples", "20"]) == 0
    out = capsys.readouterr().out
    assert "two-point slope" in out and out.count("best batch size at utd") == 2


def test_malformed_curves_are_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("env,seed,step\ne,0,not-a-number\n")
    assert main([str(path), "--max-return", "900", "--thresholds", "300"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
