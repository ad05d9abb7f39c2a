"""The refinement's verdict on the B*(utd) / lr*(utd) laws (workflow.refine_hparams): a clear
planted slope is determinable, a flat one with seed noise is not (cheaply: nothing trained), a
best value at a grid edge is left out, a fitted determined law gets no row, and seeds that all
pick one grid value still carry the grid's rounding variance."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd

from pql_jax.workflow.refine_hparams import hparam_undetermined

UTDS = [1 / 16, 1 / 4, 1.0]
GRID = SimpleNamespace(utd=tuple(UTDS), batch_size=(32, 64, 128, 256, 512), lr=(1e-3,), critic_width=())


def _out(tmp_path, batch, std, edge=(None, None, None), fitted=None):
    """A workflow OUT with fit_hparams' best values per UTD (3 seeds) and 1,000-step hparam runs."""
    (tmp_path / "fit_hparams").mkdir(parents=True)
    (tmp_path / "hparam_sweep").mkdir()
    pd.DataFrame({"env": "e", "utd": UTDS, "model_size": 1e4, "batch_size": batch, "batch_size_std": std,
                  "n_batch_size": 3, "batch_size_edge": list(edge), "lr": 1e-3, "lr_std": 0.0, "n_lr": 3,
                  "lr_edge": None, "threshold": 600.0}).to_csv(tmp_path / "fit_hparams" / "best_hparams.csv", index=False)
    pd.DataFrame({"member": ["m0", "m0", "m1"], "env_steps": [500, 1000, 1000]}).to_csv(
        tmp_path / "hparam_sweep" / "results.csv", index=False)
    if fitted:
        slope, se = fitted
        (tmp_path / "fit_hparams" / "fit_batch_size.json").write_text(json.dumps(
            {"params": {"e": {"coef": 100.0, "slope": slope}}, "se": {"e": {"slope": se}}}))
    return tmp_path


def _wf(budget):
    return SimpleNamespace(hparam_sweep=GRID, seeds=3, refine=SimpleNamespace(budget=budget))


def test_a_clear_slope_is_determinable_and_named_runs_cost_whole_grids(tmp_path):
    batch = [128.0, 64.0, 32.0]  # planted B* = 32 utd^-0.5
    slope = -np.polyfit(np.log(UTDS), np.log(batch), 1)[0]  # by numpy
    out = _out(tmp_path, batch, batch)  # seed SD as large as the value: 3 seeds leave the slope open
    (row,) = hparam_undetermined(_wf(200_000), out, (1 / 128, 8.0))
    assert row["law"] == "B*(utd)" and "determinable within the refinement budget" in row["reason"]
    assert np.isclose(row["value"], slope) and np.isclose(slope, 0.5)
    assert row["env_steps"] % (5 * 1000) == 0 and 0 < row["env_steps"] <= 200_000  # whole 5-run grids
    groups = re.findall(r"x(\d+) seed\(s\) of the grid \((\d+) runs\)", row["runs_that_would_determine"])
    assert groups and all(int(runs) == 5 * int(seeds) for seeds, runs in groups)
    assert sum(int(runs) for _, runs in groups) * 1000 == row["env_steps"]
    quiet = _out(tmp_path / "q", batch, [0.1 * b for b in batch])  # 10% seed SD: settled by the cells
    (row,) = hparam_undetermined(_wf(200_000), quiet, (1 / 128, 8.0))
    assert "determined by these cells already" in row["reason"] and row["env_steps"] == 0


def test_a_flat_noisy_law_is_found_undeterminable_and_nothing_is_planned(tmp_path):
    batch = [120.0, 130.0, 125.0]
    out = _out(tmp_path, batch, [60.0, 60.0, 60.0])
    (row,) = hparam_undetermined(_wf(200_000), out, (1 / 128, 8.0))
    assert "not determinable within budget" in row["reason"] and row["env_steps"] == 0
    assert abs(row["value"]) < 0.1


def test_edges_are_left_out_and_a_determined_law_gets_no_row(tmp_path):
    out = _out(tmp_path, [32.0, 64.0, 512.0], [1.0, 1.0, 1.0], edge=("low", None, "high"))
    (row,) = hparam_undetermined(_wf(200_000), out, (1 / 128, 8.0))
    assert row["reason"].startswith("1 UTD(s) with the best batch_size inside the grid")
    determined = _out(tmp_path / "d", [128.0, 64.0, 32.0], [5.0] * 3, fitted=(0.5, 0.05))
    assert hparam_undetermined(_wf(200_000), determined, (1 / 128, 8.0)) == []
    # a fitted law whose slope fit_hparams flagged (its flags.csv, as the report shows it) is judged
    (determined / "fit_hparams" / "flags.csv").write_text(
        "quantity,group,param,problem\nbatch_size law,e,slope,no dependence on utd within the noise\n")
    (row,) = hparam_undetermined(_wf(200_000), determined, (1 / 128, 8.0))
    assert row["law"] == "B*(utd)" and row["reason"]


def test_identical_seeds_still_carry_the_grids_rounding_variance(tmp_path):
    # every seed picks the same value at each UTD (std 0) and B* drifts by 2^0.1 over 16x in UTD:
    # without the floor (ln 2)^2 / 12 on the seed variance this slope (-0.025) would look exactly
    # determined; with it its SE is ~0.06, and a budget below one grid seed cannot shrink it
    out = _out(tmp_path, [64.0, 64.0, 64.0 * 2 ** 0.1], [0.0, 0.0, 0.0])
    (row,) = hparam_undetermined(_wf(1_000), out, (1 / 128, 8.0))
    assert "not determinable" in row["reason"] and row["value"] < 0
