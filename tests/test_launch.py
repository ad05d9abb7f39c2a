"""Run directories (one setup for train, sweep and workflow) and the plan, without training."""

from __future__ import annotations

import pytest
from helpers import SHORT, small, write_sweep

from pql_jax.cli import main
from pql_jax.errors import UserError
from pql_jax.run import launch
from pql_jax.plan.costs import check_memory, plan_text, sweep_costs
from pql_jax.plan.memory import sweep_memory
from pql_jax.plan.sweep import load_sweep, single


def _files(path):
    return {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_open_run_dir_creates_checks_and_never_overwrites(tmp_path):
    out = tmp_path / "run"
    launch.open_run_dir(out, {"a.yaml": "one", "b.yaml": "two"}, resume=False)
    assert _files(out) == {p: t.encode() for p, t in ((out.relative_to(out) / "a.yaml", "one"),
                                                       (out.relative_to(out) / "b.yaml", "two"))}
    before = _files(out)
    with pytest.raises(UserError, match="already holds files"):
        launch.open_run_dir(out, {"a.yaml": "other"}, resume=False)
    launch.open_run_dir(out, {"a.yaml": "one", "b.yaml": "two"}, resume=True, same=lambda t: t == "one")
    with pytest.raises(UserError, match="different sweep"):
        launch.open_run_dir(out, {"a.yaml": "x"}, resume=True, same=lambda t: t == "x!", what="sweep")
    with pytest.raises(UserError, match="no c.yaml"):
        launch.open_run_dir(out, {"c.yaml": "x"}, resume=True)
    assert _files(out) == before
    assert not list(out.glob(".*.tmp"))


def test_sweep_resume_bad_input_is_one_line_exit_2(tmp_path, capsys):
    path = write_sweep(tmp_path, {"seeds": 2, "grid": {"utd": ["1/32", "1/16"]}})
    other = write_sweep(tmp_path, {"seeds": 3, "grid": {"utd": ["1/32", "1/16"]}}, name="other.yaml")
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["sweep", str(path), "--out", str(out), "--resume", "--no-progress", *SHORT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no sweep to resume" in err[0], err
    held = tmp_path / "held"
    spec = load_sweep(path, SHORT)
    record = launch.yaml.safe_dump({"name": spec.name, "members": [m.name for m in spec.members]}, sort_keys=False)
    launch.open_run_dir(held, {launch.MEMBERS_FILE: record, launch.SWEEP_FILE: path.read_text()}, resume=False)
    before = _files(held)
    assert main(["sweep", str(other), "--out", str(held), "--resume", "--no-progress", *SHORT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different sweep" in err[0], err
    assert _files(held) == before


def test_single_run_plan_and_memory_check_are_the_sweeps():
    spec = single(small())
    costs = sweep_costs(spec)
    memory = sweep_memory(spec.groups)
    lines = plan_text(spec, costs, check_memory(spec, memory), memory)
    per_head = (4 + 2) * 64 + 64 + 64 * 64 + 64 + 64 + 1  # obs 4 + action 2 -> 64 -> 64 -> 1
    assert lines[0].startswith(f"critic parameters N = {2 * per_head:,}")
    with pytest.raises(UserError, match="run needs ~"):
        check_memory(single(small(["run.memory_limit_gb=0.000001"])), memory)


def test_member_batching_flag_keeps_its_old_name():
    """`--member-batching` (how members share a device, not env.batching) and its old name `--batching`
    set the same option of sweep and plan; a value outside auto/map/vmap is a usage error."""
    from pql_jax.cli import build_parser

    parser = build_parser()
    for command in (["sweep", "s.yaml", "--out", "o"], ["plan", "s.yaml"]):
        for flag in ("--member-batching", "--batching"):
            assert parser.parse_args(command + [flag, "map"]).batching == "map"
        assert parser.parse_args(command).batching == "auto"
        with pytest.raises(SystemExit):
            parser.parse_args(command + ["--member-batching", "scan"])
