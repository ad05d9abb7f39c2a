"""Early stopping (`run.stop_after`): a member stops where its results first held the stop return
for k consecutive results, its rows up to there are the full run's, a group whose members all
stopped ends, a resumed run stops where an uninterrupted one does, and the curves carry a
stopped seed's last result forward."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from helpers import SHORT, interrupt_after, write_sweep

from pql_jax.config import RunConfig
from pql_jax.run import launch
from pql_jax.run.early_stop import EarlyStop
from pql_jax.scaling.curves import run_groups

pytestmark = pytest.mark.slow  # the table tests compile and train a population

SWEEP = {"seeds": 2, "grid": {"utd": ["1/16"]}}
LONG = [*SHORT, "run.total_env_steps=7200"]  # 9 chunks: room to stop before the end
TIMING = {"wall_time", "env_steps_per_s", "updates_per_s", "chunk_seconds"}


def expected_stop(returns, level: float, after: int) -> int | None:
    """Index of the result that completes the first run of `after` results >= level (NaN skipped)."""
    streak = 0
    for i, value in enumerate(returns):
        if math.isnan(value):
            continue
        streak = streak + 1 if value >= level else 0
        if streak >= after:
            return i
    return None


def test_streaks_count_consecutive_results_and_skip_missing_ones():
    stop = EarlyStop(RunConfig(stop_after=3, stop_return=10.0), 2)
    assert not stop.see(0, [10.0, 11.0, 9.0])  # broken at the third result
    assert not stop.see(0, [12.0, float("nan"), 10.0])  # NaN: no result, the streak holds at 2
    assert stop.see(0, [10.5])
    assert stop.stopped == [True, False] and stop.mask(3).tolist() == [True, False, True]
    assert not stop.see(0, [0.0]) and stop.stopped[0]  # once stopped, it stays stopped
    assert EarlyStop(RunConfig(), 2).mask(2) is None and not EarlyStop(RunConfig(), 2).on
    restored = EarlyStop(RunConfig(stop_after=3, stop_return=10.0), 2, stop.state())
    assert restored.streak == stop.streak and restored.stopped == stop.stopped


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The sweep trained to full length, and a stop return that some members hold and others do not."""
    tmp = tmp_path_factory.mktemp("full")
    path = write_sweep(tmp, SWEEP)
    launch.train_sweep_file(path, tmp / "run", LONG, progress=False, log=lambda *a: None)
    table = pd.read_csv(tmp / "run" / "results.csv")
    level = float(np.nanpercentile(table["return"], 40))
    return path, table, level


def _stop_rows(table: pd.DataFrame, level: float, after: int) -> dict:
    """member -> index (row position within the member) of its expected stop, from the full table."""
    return {m: expected_stop(g["return"].to_numpy(float), level, after) for m, g in table.groupby("member")}


def test_stopped_rows_are_the_full_runs_rows_up_to_the_stop(full_run, tmp_path):
    path, full, level = full_run
    stops = _stop_rows(full, level, 2)
    assert any(s is not None for s in stops.values()), "the level must stop some member"
    launch.train_sweep_file(path, tmp_path / "run", [*LONG, "run.stop_after=2", f"run.stop_return={level!r}"],
                            progress=False, log=lambda *a: None)
    got = pd.read_csv(tmp_path / "run" / "results.csv")
    shared = [c for c in full.columns if c not in TIMING]
    for member, rows in got.groupby("member"):
        mine = full[full["member"] == member].reset_index(drop=True)
        stop = stops[member]
        expected = mine if stop is None else mine.iloc[: stop + 1]
        pd.testing.assert_frame_equal(rows[shared].reset_index(drop=True), expected[shared], check_dtype=False)
        flags = rows["stopped"].to_numpy()
        assert flags.sum() == (stop is not None) and (stop is None or flags[-1] == 1), member


def test_a_group_whose_members_all_stop_ends_and_resumes_as_ended(full_run, tmp_path):
    path, full, _ = full_run
    level = float(np.nanmin(full["return"]))  # every result holds it: each member stops at its 2nd result
    overrides = [*LONG, "run.stop_after=2", f"run.stop_return={level!r}", "run.checkpoint_every=1"]
    with interrupt_after(1), pytest.raises(KeyboardInterrupt):  # killed after chunk 1, mid-streak
        launch.train_sweep_file(path, tmp_path / "run", overrides, progress=False, log=lambda *a: None)
    launch.train_sweep_file(path, tmp_path / "run", overrides, resume=True, progress=False, log=lambda *a: None)
    got = pd.read_csv(tmp_path / "run" / "results.csv")
    assert (got.groupby("member")["stopped"].sum() == 1).all()
    assert got.groupby("member").size().eq(2).all()  # the resumed streak kept its first result
    assert got["env_steps"].max() < full["env_steps"].max()
    rows = launch.train_sweep_file(path, tmp_path / "run", overrides, resume=True, progress=False,
                                   log=lambda *a: None)
    assert rows == [] and len(pd.read_csv(tmp_path / "run" / "results.csv")) == len(got)


def test_curves_carry_a_stopped_seeds_last_result_forward():
    rows = [("a", 0, s, r, 0) for s, r in [(100, 1.0), (200, 2.0), (300, 3.0), (400, 4.0)]]
    rows += [("a", 1, 100, 5.0, 0), ("a", 1, 200, 7.0, 1)]  # seed 1 stopped at step 200
    df = pd.DataFrame(rows, columns=["env", "seed", "step", "return", "stopped"])
    (group,) = run_groups(df)
    np.testing.assert_array_equal(group.steps, [100, 200, 300, 400])
    np.testing.assert_array_equal(group.returns, [[1, 2, 3, 4], [5, 7, 7, 7]])
    (cut,) = run_groups(df.assign(stopped=0))  # without the stop the common grid ends at 200
    np.testing.assert_array_equal(cut.steps, [100, 200])
