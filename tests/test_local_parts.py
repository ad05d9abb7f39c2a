"""A sweep trained by local worker processes side by side (pql_jax.run.local_parts) and merged."""

from __future__ import annotations

import os

import pytest
import yaml

from helpers import SHORT, write_sweep
from pql_jax.errors import UserError
from pql_jax.plan import parts
from pql_jax.plan.costs import sweep_costs
from pql_jax.plan.sweep import load_sweep
from pql_jax.run import launch
from pql_jax.run.local_parts import default_workers, launch_local, log_path
from pql_jax.run.submit import part_dir
from pql_jax.run.tables import read_rows

TIMING = ("wall_time", "env_steps_per_s", "updates_per_s")  # as tests/test_parts.py compares tables
QUIET = dict(progress=False, log=lambda *a: None, batching="map")
OVERRIDES = [*SHORT, "run.total_env_steps=2400"]


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def whole_and_local(tmp_path_factory):
    """2 groups (batch sizes) x 2 seeds, trained in this process and by 2 workers (one group each)."""
    root = tmp_path_factory.mktemp("local_parts")
    path = write_sweep(root, {"grid": {"batch_size": [64, 128]}, "seeds": 2})
    launch.train_sweep_file(path, root / "whole", OVERRIDES, **QUIET)
    table = launch_local(path, root / "local", OVERRIDES, count=2, **QUIET)
    return root, path, table


@pytest.mark.slow
def test_local_workers_give_the_in_process_table(whole_and_local):
    root, _, table = whole_and_local
    assert table == root / "local" / "results.csv"
    whole, merged = read_rows(root / "whole" / "results.csv"), read_rows(table)
    assert len(merged) == len(whole)
    assert _strip(merged) == _strip(whole)  # same rows, same order, bit-identical numbers (map batching)
    records = [yaml.safe_load((part_dir(root / "local", i, 2) / parts.PART_FILE).read_text()) for i in (1, 2)]
    assert [len(r["part_members"]) for r in records] == [2, 2]  # one whole group each: no compile paid twice
    assert sorted(p.name for p in (root / "local" / "tb").iterdir()) == sorted(p.name for p in (root / "whole" / "tb").iterdir())


@pytest.mark.slow
def test_rerun_with_finished_parts_only_merges_again(whole_and_local):
    root, path, table = whole_and_local
    before = {i: log_path(root / "local", i, 2).stat().st_mtime_ns for i in (1, 2)}
    assert launch_local(path, root / "local", OVERRIDES, count=2, resume=True, **QUIET) == table
    assert {i: log_path(root / "local", i, 2).stat().st_mtime_ns for i in (1, 2)} == before  # no worker started
    with pytest.raises(UserError, match="already holds a merged sweep"):
        launch_local(path, root / "local", OVERRIDES, count=2, **QUIET)


def test_failed_worker_is_one_line_and_nothing_merged(tmp_path, monkeypatch):
    path = write_sweep(tmp_path, {"grid": {"batch_size": [64, 128]}, "seeds": 1})
    # XLA refuses an unknown flag when a worker starts its backend: a worker that fails at once.
    monkeypatch.setenv("XLA_FLAGS", f"{os.environ.get('XLA_FLAGS', '')} --xla_pql_no_such_flag")
    with pytest.raises(UserError, match=r"2 of 2 worker\(s\) failed: part 1/2 \(exit .*xla_pql_no_such_flag") as info:
        launch_local(path, tmp_path / "out", OVERRIDES, count=2, **QUIET)
    assert "\n" not in str(info.value) and "--resume" in str(info.value)
    assert not (tmp_path / "out" / "results.csv").exists()


def test_bad_input_is_refused_before_any_worker_starts(tmp_path):
    path = write_sweep(tmp_path, {"grid": {"batch_size": [64, 128, 256]}, "seeds": 1})
    with pytest.raises(UserError, match="--workers must be >= 1"):
        launch_local(path, tmp_path / "a", OVERRIDES, count=0, **QUIET)
    with pytest.raises(UserError):
        launch_local(path, tmp_path / "b", [*OVERRIDES, "agent.no_such_key=1"], count=2, **QUIET)
    (tmp_path / "c" / "parts").mkdir(parents=True)
    with pytest.raises(UserError, match="pass --resume"):
        launch_local(path, tmp_path / "c", OVERRIDES, count=2, **QUIET)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert 1 <= default_workers(path, OVERRIDES) <= 3  # never more workers than members


def test_workers_split_whole_groups_only(tmp_path):
    """3 batch sizes on 2 parts: the FLOP model halves the largest group, so one part compiles all
    3 programs; local workers (parts.WHOLE_GROUPS) keep each group, and its compile, in one part.
    The default split (job arrays, `--part`) is unchanged."""
    path = write_sweep(tmp_path, {"grid": {"batch_size": [32, 64, 128], "utd": ["1/16", "1/4", "1"]}, "seeds": 1})
    spec = load_sweep(path, SHORT)
    costs = sweep_costs(spec)
    default = parts.split(spec, costs, 2)
    assert sum(len(s.groups) for s in default) == 4  # one group in both parts: compiled twice
    assert parts.split(spec, costs, 2, whole_groups=False) == default
    whole = parts.split(spec, costs, 2, whole_groups=True)
    assert sorted(g.index for s in whole for g in s.groups) == [0, 1, 2]
    assert [[g.index for g in s.groups] for s in whole] == [[2], [0, 1]]
    assert len(parts.split(spec, costs, 4, whole_groups=True)) == 4  # more parts than groups: halving as before
