"""benchmarks/width_report.py: scores per (architecture, width) checked against numpy by hand."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "width_report.py"
import width_report as W  # noqa: E402

STEPS = [1000, 2000, 3000, 4000, 5000]


def table(unfinished=False):
    """2 archs x 2 widths x 3 seeds; returns = base + 10 * seed + the eval index."""
    rows = []
    for arch, width, n, base in (("mlp", 64, 100, 50.0), ("mlp", 512, 5000, 20.0),
                                 ("bro", 64, 300, 60.0), ("bro", 512, 20000, 90.0)):
        for seed in range(3):
            steps = STEPS[:3] if unfinished and (arch, width, seed) == ("bro", 512, 2) else STEPS
            for i, step in enumerate(steps):
                rows.append({"member": f"{arch}{width}_s{seed}", "seed": seed, "critic_arch": arch,
                             "critic_width": width, "model_size": n, "step": step,
                             "return": base + 10 * seed + i})
    # a row without an evaluation (NaN return) is not an evaluation
    rows.append(dict(rows[0], step=500, **{"return": float("nan")}))
    return pd.DataFrame(rows)


def test_scores_and_widening_match_numpy():
    budget, cells, unfinished = W.summarize(W.member_scores(table(), last=3))
    assert budget == 5000 and unfinished == []
    cell = {(c["arch"], c["width"]): c for c in cells}
    seeds = np.array([20.0 + 10 * s + np.mean([2, 3, 4]) for s in range(3)])  # mlp 512, last 3 evals
    mean, se, n = cell[("mlp", 512)]["score"]
    assert n == 3 and mean == pytest.approx(seeds.mean())
    assert se == pytest.approx(np.std(seeds, ddof=1) / math.sqrt(3))
    all_mean = np.mean([20.0 + 10 * s + np.mean(range(5)) for s in range(3)])
    assert cell[("mlp", 512)]["all_evals"][0] == pytest.approx(all_mean)
    w0, w1, diff, diff_se = W.widening(cells)["bro"]
    assert (w0, w1, diff) == (64, 512, pytest.approx(30.0))
    assert diff_se == pytest.approx(math.sqrt(2) * 10 / math.sqrt(3))  # both cells: seeds 10 apart
    assert W.widening(cells)["mlp"][2] == pytest.approx(-30.0)


def test_unfinished_runs_are_left_out_and_named():
    budget, cells, unfinished = W.summarize(W.member_scores(table(unfinished=True), last=3))
    assert unfinished == ["bro512_s2"]
    cell = {(c["arch"], c["width"]): c for c in cells}
    assert cell[("bro", 512)]["score"][2] == 2 and cell[("bro", 64)]["score"][2] == 3
    assert "bro512_s2" in W.markdown(budget, cells, unfinished, 3)


def test_cli_table_figure_and_bad_input(tmp_path):
    table().to_csv(tmp_path / "results.csv", index=False)
    figure = tmp_path / "widths.png"
    assert W.main([str(tmp_path), "--figure", str(figure)]) == 0
    assert figure.stat().st_size > 0
    table().drop(columns=["critic_width"]).to_csv(tmp_path / "bad.csv", index=False)
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "bad.csv")], capture_output=True, text=True)
    assert out.returncode == 2 and "critic_width" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_non_numeric_values_are_one_line_and_exit_2(tmp_path, capsys):
    bad = table()
    bad["return"] = bad["return"].astype(object)
    bad.loc[3, "return"] = "oops"
    bad.to_csv(tmp_path / "results.csv", index=False)
    assert W.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'return'" in err and len(err.strip().splitlines()) == 1
