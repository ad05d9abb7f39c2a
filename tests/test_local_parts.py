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
from pql_jax.run.local_parts import _claim, default_workers, launch_local, log_path
from pql_jax.run.submit import part_dir
from pql_jax.run.tables import read_rows

TIMING = ("wall_time", "env_steps_per_s", "updates_per_s")  # as tests/test_parts.py compares tables
QUIET = dict(progress=False, log=lambda *a: None, batching="map")
OVERRIDES = [*SHORT, "run.total_env_steps=2400"]


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def whole_and_local(tmp_path_factory):
    """2 groups (batch sizes) x 2 UTDs, trained in this process and by 2 workers (4 pieces of one
    member: the UTD 1/16 one runs in its group's program of 8 update slots)."""
    root = tmp_path_factory.mktemp("local_parts")
    path = write_sweep(root, {"grid": {"batch_size": [64, 128], "utd": ["1/16", "1/4"]}, "seeds": 1})
    launch.train_sweep_file(path, root / "whole", OVERRIDES, **QUIET)
    table = launch_local(path, root / "local", OVERRIDES, count=2, **QUIET)
    return root, path, table


@pytest.mark.slow
def test_local_workers_give_the_in_process_table(whole_and_local):
    root, path, table = whole_and_local
    assert table == root / "local" / "results.csv"
    whole, merged = read_rows(root / "whole" / "results.csv"), read_rows(table)
    assert len(merged) == len(whole)
    assert _strip(merged) == _strip(whole)  # same rows, same order, bit-identical numbers (map batching)
    pieces = parts.queue(load_sweep(path, OVERRIDES), sweep_costs(load_sweep(path, OVERRIDES)), 2)
    records = [yaml.safe_load((part_dir(root / "local", i, len(pieces)) / parts.PART_FILE).read_text())
               for i in range(1, len(pieces) + 1)]
    assert [list(r["part_members"]) for r in records] == [[m.name for m in p.members] for p in pieces]
    assert [p.groups[0].max_updates for p in pieces] == [8] * 4  # ceil(1/4 x 32 envs), not 2 at UTD 1/16
    logs = [log_path(root / "local", k, 2).read_text() for k in (1, 2)]
    taken = sorted(int(line.split()[1].split("/")[0]) for text in logs for line in text.splitlines()
                   if line.startswith("piece "))
    assert taken == list(range(1, len(pieces) + 1))  # every piece trained once, by one worker
    assert sorted(p.name for p in (root / "local" / "tb").iterdir()) == sorted(p.name for p in (root / "whole" / "tb").iterdir())


@pytest.mark.slow
def test_rerun_with_finished_parts_only_merges_again(whole_and_local):
    root, path, table = whole_and_local
    before = {i: log_path(root / "local", i, 2).stat().st_mtime_ns for i in (1, 2)}
    assert launch_local(path, root / "local", OVERRIDES, count=2, resume=True, **QUIET) == table
    assert {i: log_path(root / "local", i, 2).stat().st_mtime_ns for i in (1, 2)} == before  # no worker started
    with pytest.raises(UserError, match="already holds a merged sweep"):
        launch_local(path, root / "local", OVERRIDES, count=2, **QUIET)


@pytest.mark.slow
def test_resume_trains_only_the_lost_piece_past_the_last_launchs_claims(whole_and_local, tmp_path):
    """A copy of the finished launch with one piece's run directory gone (a worker killed before
    it wrote anything): the rerun clears the old claims, trains that piece alone in one worker,
    and merges the same table."""
    import shutil

    root, path, table = whole_and_local
    copy = tmp_path / "local"
    shutil.copytree(root / "local", copy)
    pieces = len(list((copy / "parts").glob("part-*-of-*.claim")))
    shutil.rmtree(part_dir(copy, 3, pieces))
    logs = [log_path(copy, k, 2).read_text() for k in (1, 2)]
    assert launch_local(path, copy, OVERRIDES, count=2, resume=True, **QUIET) == copy / "results.csv"
    assert yaml.safe_load((copy / "parts" / "queue.yaml").read_text()) == {"pieces": pieces, "todo": [3]}
    after = [log_path(copy, k, 2).read_text() for k in (1, 2)]
    assert after[0].startswith(logs[0]) and after[0][len(logs[0]):].count("piece ") == 1  # one worker, one piece
    assert f"piece 3/{pieces}" in after[0][len(logs[0]):] and after[1] == logs[1]
    assert _strip(read_rows(copy / "results.csv")) == _strip(read_rows(table))


def test_failed_worker_is_one_line_and_nothing_merged(tmp_path, monkeypatch):
    path = write_sweep(tmp_path, {"grid": {"batch_size": [64, 128]}, "seeds": 1})
    # XLA refuses an unknown flag when a worker starts its backend: a worker that fails at once.
    monkeypatch.setenv("XLA_FLAGS", f"{os.environ.get('XLA_FLAGS', '')} --xla_pql_no_such_flag")
    with pytest.raises(UserError, match=r"2 of 2 worker\(s\) failed: worker 1/2 \(exit .*xla_pql_no_such_flag") as info:
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


def test_queue_cuts_groups_into_equal_pieces_and_leads_with_distinct_groups(tmp_path):
    """3 batch sizes x 3 UTDs x 2 seeds (3 groups of 6): pieces of at most 18 / (2 W) members,
    equal within a group (one program), every member once; costliest first, the first W from W
    different groups."""
    path = write_sweep(tmp_path, {"grid": {"batch_size": [32, 64, 128], "utd": ["1/16", "1/4", "1"]}, "seeds": 2})
    spec = load_sweep(path, SHORT)
    costs = sweep_costs(spec)
    work = lambda p: sum(parts.member_cost(m, costs[m.index]) for m in p.members)
    for workers, size in ((2, 3), (3, 3), (4, 3), (6, 2)):  # ceil(18 / 2W), rounded down to a divisor of 6
        pieces = parts.queue(spec, costs, workers)
        assert [len(p.members) for p in pieces] == [size] * (18 // size)
        assert sorted(m.name for p in pieces for m in p.members) == sorted(m.name for m in spec.members)
        assert all(len(p.groups) == 1 for p in pieces)
        assert [p.groups[0].max_updates for p in pieces] == [spec.groups[p.groups[0].index].max_updates for p in pieces]
        lead = pieces[:workers]
        assert len({p.groups[0].index for p in lead}) == min(workers, 3)
        rest = [work(p) for p in pieces[min(workers, 3):]]
        assert rest == sorted(rest, reverse=True) and work(pieces[0]) == max(map(work, pieces))
    assert parts.queue(spec, costs, 1) == [spec]  # one worker: the sweep whole
    five = load_sweep(write_sweep(tmp_path, {"grid": {"utd": ["1/16", "1/4"]}, "seeds": 5}, "five.yaml"), SHORT)
    assert [len(p.members) for p in parts.queue(five, sweep_costs(five), 2)] == [2] * 5  # 10 members, at most 2


def test_workers_take_pieces_in_order_and_never_a_taken_one(tmp_path):
    (tmp_path / "parts").mkdir()
    queue = {"pieces": 5, "todo": [4, 1, 3]}  # a resumed launch: piece 2 and 5 finished before
    assert [_claim(tmp_path, queue) for _ in range(4)] == [4, 1, 3, None]
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == [f"part-{i}-of-5.claim" for i in (1, 3, 4)]
