"""Job-array parts of a sweep (`pql-jax sweep --part I/N`) and `pql-jax merge`."""

from __future__ import annotations

import itertools
import shutil

import pytest
import yaml

from helpers import ROOT, SHORT, write_sweep
from pql_jax.cli import main
from pql_jax.errors import UserError
from pql_jax.plan import parts
from pql_jax.run import launch
from pql_jax.plan.costs import sweep_costs
from pql_jax.plan.sweep import load_sweep
from pql_jax.run.tables import read_rows, write_rows_atomic

SWEEP = ROOT / "configs" / "sweeps" / "pointmass_utd.yaml"  # 3 UTDs x 2 batch sizes x 2 seeds: 2 groups of 6
TIMING = ("wall_time", "env_steps_per_s", "updates_per_s")


def _loads(costs, shares):
    return [sum(parts.group_cost(g, costs) for g in s.groups) for s in shares]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_split_gives_every_member_once_whole_groups_first(n):
    spec = load_sweep(SWEEP, SHORT)
    costs = sweep_costs(spec)
    shares = parts.split(spec, costs, n)
    assert len(shares) == n
    names = [m.name for s in shares for m in s.members]
    assert sorted(names) == sorted(m.name for m in spec.members)  # each exactly once
    assert shares == parts.split(spec, costs, n)  # deterministic
    for share in shares:  # a split group keeps its index and its members' order
        for group in share.groups:
            whole = spec.groups[group.index].members
            assert list(group.members) == [m for m in whole if m in group.members]
    if n <= len(spec.groups):
        assert sum(len(s.groups) for s in shares) == len(spec.groups)  # no group split, no compile paid twice
    else:
        assert all(s.members for s in shares)


def test_split_is_within_lpt_bound_of_the_best_assignment(tmp_path):
    """LPT's guarantee (4/3 of the optimal makespan) against brute force over whole groups."""
    path = write_sweep(tmp_path, {"grid": {"batch_size": [32, 64, 128, 256, 512],
                                                           "critic_width": [16, 64]}, "seeds": 1})
    spec = load_sweep(path, SHORT)
    costs = sweep_costs(spec)
    assert len(spec.groups) == 10
    shares = parts.split(spec, costs, 3)
    unit = [parts.group_cost(g, costs) for g in spec.groups]
    best = min(max(sum(u for u, p in zip(unit, assign) if p == k) for k in range(3))
               for assign in itertools.product(range(3), repeat=len(unit)))
    assert max(_loads(costs, shares)) <= 4 / 3 * best + 1e-6


def test_lockstep_group_cost_charges_every_member_the_costliest_updates():
    """vmap batching: members step together, masked updates cost as much as real ones."""
    spec = load_sweep(SWEEP, SHORT)  # one group: utd 1/64, 1/32, 1/16 x 2 seeds
    costs = sweep_costs(spec)
    group = spec.groups[0]
    each = [parts.member_cost(m, costs[m.index]) for m in group.members]
    compile_cost = parts.COMPILE_UPDATES * costs[group.members[0].index].flops_per_critic_update
    assert max(each) > 3.5 * min(each)  # 4x span of UTDs
    assert parts.group_cost(group, costs) == pytest.approx(sum(each) + compile_cost)
    assert parts.group_cost(group, costs, lockstep=True) == pytest.approx(len(each) * max(each) + compile_cost)


def test_split_cuts_groups_when_whole_groups_balance_badly(tmp_path):
    """9 groups on 8 parts: whole groups leave one part with two of them; halving groups (each
    piece paying its own compile) shortens the busiest part, and every member is still in
    exactly one part."""
    path = write_sweep(tmp_path, {"grid": {"critic_width": list(range(16, 25))}, "seeds": 4})
    spec = load_sweep(path, [*SHORT, "run.total_env_steps=2000000"])  # planned only: training outweighs a compile
    costs = sweep_costs(spec)
    unit = lambda g: parts.group_cost(g, costs)
    whole_loads, _ = parts._lpt(list(spec.groups), unit, 8)
    shares = parts.split(spec, costs, 8)
    assert max(_loads(costs, shares)) < 0.8 * max(whole_loads)
    for count in (3, 5, 8):  # pieces of one group that land in one part are joined, in the group's order
        shares = parts.split(spec, costs, count)
        assert sorted(m.name for s in shares for m in s.members) == sorted(m.name for m in spec.members)
        for share in shares:
            assert len({g.index for g in share.groups}) == len(share.groups)
            for group in share.groups:
                assert list(group.members) == [m for m in spec.groups[group.index].members if m in group.members]


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "a/b", "1/0"])
def test_bad_part_is_one_line(text):
    with pytest.raises(UserError, match="--part"):
        parts.parse_part(text)


@pytest.fixture(scope="module")
def whole_and_parts(tmp_path_factory):
    """A sweep of 2 groups (batch sizes) x 2 seeds run whole and as 2 parts of one group each: the
    parts reuse the whole sweep's two compiled programs (splitting a group is covered above, its
    numbers by tests/test_population.py::test_neighbours_do_not_matter)."""
    root = tmp_path_factory.mktemp("parts")
    path = write_sweep(root, {"grid": {"batch_size": [64, 128]}, "seeds": 2})
    quiet = dict(progress=False, log=lambda *a: None, batching="map")
    short = [*SHORT, "run.total_env_steps=2400"]
    launch.train_sweep_file(path, root / "whole", short, **quiet)
    dirs = [root / f"part{i}" for i in (1, 2)]
    for i, d in enumerate(dirs, 1):
        launch.train_sweep_file(path, d, short, part=(i, 2), **quiet)
    return root, dirs


@pytest.mark.slow
def test_merged_parts_equal_the_whole_sweep(whole_and_parts, capsys):
    root, dirs = whole_and_parts
    records = [yaml.safe_load((d / parts.PART_FILE).read_text()) for d in dirs]
    assert [len(r["part_members"]) for r in records] == [2, 2]  # one whole group each
    assert main(["merge", *map(str, dirs), "--out", str(root / "merged")]) == 0
    whole, merged = read_rows(root / "whole" / "results.csv"), read_rows(root / "merged" / "results.csv")
    assert len(merged) == len(whole)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert strip(merged) == strip(whole)  # same rows, same order, bit-identical numbers (map batching)
    members = {r["member"] for r in whole}  # TensorBoard runs: `m000 utd=... s0` for member `m000_utd=..._seed=0`
    assert {p.name.split(" ")[0] for p in (root / "merged" / "tb").iterdir()} == {m.split("_")[0] for m in members}


@pytest.mark.slow
def test_merge_refuses_bad_parts_and_writes_nothing(whole_and_parts, tmp_path):
    root, dirs = whole_and_parts
    out = tmp_path / "out"

    def refused(args, needle):
        with pytest.raises(UserError, match=needle):
            parts.merge(args, out)
        assert not out.exists()

    refused(dirs[:1], "in no part")
    refused([*dirs, dirs[0]], "in two parts")
    refused([*dirs, root / "whole"], "no part.yaml")
    other = tmp_path / "other"
    shutil.copytree(dirs[1], other)
    record = yaml.safe_load((other / parts.PART_FILE).read_text())
    (other / parts.PART_FILE).write_text(yaml.safe_dump({**record, "overrides": ["agent.gamma=0.9"]}))
    refused([dirs[0], other], "different sweep")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(dirs[1], unfinished)
    rows = read_rows(unfinished / "results.csv")
    write_rows_atomic(unfinished / "results.csv", rows[: len(rows) // 2], list(rows[0]))
    refused([dirs[0], unfinished], "unfinished")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError, match="already holds"):
        parts.merge(dirs, tmp_path / "full")


@pytest.mark.slow
def test_workflow_sweep_stage_as_parts(whole_and_parts, tmp_path):
    """A workflow sweep stage run as 2 parts: the first waits, the second merges; the stage's
    results equal the whole sweep's."""
    from types import SimpleNamespace

    from pql_jax.workflow.sweeps import PartsPending, run_sweep_stage

    root, _ = whole_and_parts
    stage = tmp_path / "hparam_sweep"
    stage.mkdir()
    text = (root / "sweep.yaml").read_text()
    spec = yaml.safe_load(text)
    spec["overrides"] = {"run.total_env_steps": 2400, "run.chunk_steps": 25, "run.checkpoint_every": 2}
    (stage / "sweep.yaml").write_text(yaml.safe_dump(spec))
    wf = lambda i: SimpleNamespace(batching="map", part=(i, 2), launch=None, workers=1)
    quiet = dict(progress=False, log=lambda *a: None)
    with pytest.raises(PartsPending, match="part2of2"):
        run_sweep_stage(wf(1), stage, **quiet)
    assert run_sweep_stage(wf(2), stage, **quiet) == {"members": 4}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert strip(read_rows(stage / "results.csv")) == strip(read_rows(root / "whole" / "results.csv"))


@pytest.mark.slow
def test_submitit_launch_merges_to_the_whole_sweep(whole_and_parts, tmp_path):
    """`--parts 2 --launch submitit` on submitit's local executor (two job processes, the compiled
    programs from the shared cache): OUT/results.csv equals the whole sweep's; a second launch
    without --resume is refused; with --resume nothing is submitted again (both parts finished)."""
    pytest.importorskip("submitit")
    from pql_jax.run import submit

    root, _ = whole_and_parts
    out = tmp_path / "launched"
    args = (root / "sweep.yaml", out, [*SHORT, "run.total_env_steps=2400"])
    said = []
    table = submit.launch_parts(*args, count=2, cluster="local", batching="map", log=said.append)
    assert table == out / "results.csv" and "submitted 2 part(s) of 2" in said[0]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert strip(read_rows(table)) == strip(read_rows(root / "whole" / "results.csv"))
    runs = {p.name.split(" ")[0] for p in (out / "tb").iterdir()}  # `m000 ...` for member `m000_...`
    assert runs == {r["member"].split("_")[0] for r in read_rows(table)}
    with pytest.raises(UserError, match="already holds a merged sweep"):
        submit.launch_parts(*args, count=2, cluster="local", batching="map")
    said.clear()
    submit.launch_parts(*args, count=2, cluster="local", batching="map", resume=True, log=said.append)
    assert said == []  # every part finished: nothing submitted, merged again


@pytest.mark.parametrize("text,needle", [("gpus=0", "positive"), ("gpu=1", "KEY=VALUE"), ("time=ten", "int"),
                                         ("partition", "KEY=VALUE")])
def test_bad_slurm_options_are_one_line(text, needle):
    from pql_jax.run.submit import parse_slurm

    with pytest.raises(UserError, match=needle):
        parse_slurm(text)


def test_slurm_options_map_to_submitit_parameters():
    from pql_jax.run.submit import parse_slurm

    assert parse_slurm("partition=gpu, gpus=2,time=90,mem_gb=64,parallel=4") == {
        "slurm_partition": "gpu", "gpus_per_node": 2, "timeout_min": 90, "mem_gb": 64.0,
        "slurm_array_parallelism": 4}


def test_failed_parts_are_named_and_nothing_is_merged(tmp_path):
    """Parts whose jobs fail (their run directories are files, so the jobs' own checks refuse them):
    one UserError naming each failed part, its error and its log; no merged table is written."""
    pytest.importorskip("submitit")
    from pql_jax.run import submit

    out = tmp_path / "launched"
    for index in (1, 2):  # both blocked: nothing trains, the test stays seconds long
        blocker = submit.part_dir(out, index, 2)
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("not a run directory")
    with pytest.raises(UserError, match=r"2 part\(s\) failed: part 1/2 \(.*UserError: .*part-1-of-2.*; log .*"
                                        r"part 2/2 \(.*part-2-of-2"):
        submit.launch_parts(SWEEP, out, SHORT, count=2, cluster="local", resume=True, log=lambda *a: None)
    assert not (out / "results.csv").exists()


@pytest.mark.slow
def test_workflow_sweep_stage_launched_through_submitit(whole_and_parts, tmp_path):
    """A workflow sweep stage with `--parts 2 --launch submitit` (local executor): the stage
    submits, waits, merges into its run directory; its results equal the whole sweep's."""
    pytest.importorskip("submitit")
    from types import SimpleNamespace

    from pql_jax.workflow.sweeps import run_sweep_stage

    root, _ = whole_and_parts
    stage = tmp_path / "hparam_sweep"
    stage.mkdir()
    spec = yaml.safe_load((root / "sweep.yaml").read_text())
    spec["overrides"] = {"run.total_env_steps": 2400, "run.chunk_steps": 25, "run.checkpoint_every": 2}
    (stage / "sweep.yaml").write_text(yaml.safe_dump(spec))
    wf = SimpleNamespace(batching="map", part=None, launch={"count": 2, "cluster": "local"})
    assert run_sweep_stage(wf, stage, progress=False, log=lambda *a: None) == {"members": 4}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert strip(read_rows(stage / "results.csv")) == strip(read_rows(root / "whole" / "results.csv"))
    assert sorted(p.name for p in (stage / "run" / "parts").iterdir() if p.name.startswith("part")) == \
        ["part-1-of-2", "part-2-of-2"]


@pytest.mark.parametrize("args,needle", [
    (["--parts", "2"], "need --launch submitit"),
    (["--launch", "submitit"], "needs --parts N"),
    (["--launch", "submitit", "--parts", "2", "--part", "1/2"], "not both"),
    (["--launch", "submitit", "--parts", "2", "--slurm", "gpus=x"], "gpus must be int"),
    (["--launch", "submitit", "--parts", "0"], "--parts must be >= 1"),
])
def test_bad_launch_flags_are_one_line(args, needle, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(SWEEP), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_member_stopped_early_counts_as_finished(tmp_path):
    """A part's member that stopped early (`stopped` = 1 on its last row) is finished; one that
    is short of its last env step without a stop is not."""
    from pql_jax.run.tables import write_rows_atomic

    row = lambda member, steps, stopped: {"member": member, "env_steps": steps, "stopped": stopped}  # noqa: E731
    write_rows_atomic(tmp_path / "results.csv", [row("a", 400, 0), row("a", 800, 0), row("b", 400, 1),
                                                 row("c", 400, 0)], ["member", "env_steps", "stopped"])
    record = {"part": "1/2", "part_members": {"a": 800, "b": 800}}
    rows, _ = parts.finished_rows([tmp_path], [record], "results.csv")
    assert [r["member"] for r in rows] == ["a", "a", "b"]
    with pytest.raises(UserError, match="member c is unfinished"):
        parts.finished_rows([tmp_path], [{**record, "part_members": {"c": 800}}], "results.csv")


def test_which_sweep_stages_run_in_local_workers(tmp_path, monkeypatch):
    """Workers only for a stage that starts afresh under map batching in one process, without a
    job-array part; a stage this process started resumes in it."""
    from types import SimpleNamespace

    from pql_jax.workflow import sweeps

    monkeypatch.setattr(sweeps, "process_count", lambda: 1)
    wf = lambda **kw: SimpleNamespace(**{"batching": "map", "part": None, "workers": 2, **kw})  # noqa: E731
    stage = tmp_path / "stage"
    assert sweeps._local_workers(wf(), stage) == 2
    assert sweeps._local_workers(wf(workers=1), stage) == 1
    assert sweeps._local_workers(wf(part=(1, 2)), stage) == 1
    assert sweeps._local_workers(wf(batching="vmap"), stage) == 1
    (stage / "run").mkdir(parents=True)  # started in this process: resumed in it
    assert sweeps._local_workers(wf(), stage) == 1
    (stage / "run" / "parts").mkdir()  # started in workers: resumed in them
    assert sweeps._local_workers(wf(), stage) == 2
    monkeypatch.setattr(sweeps, "process_count", lambda: 2)
    assert sweeps._local_workers(wf(), stage) == 1
