"""Populations: member alone == member in population, divergence isolation, exact masked
fractional UTD counts, grouping by shape, sharding over 2 CPU devices, results table, resume."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import interrupt_after
from helpers import ROOT, SHORT, env_with_xla_flags, run_alone, run_group, small, write_sweep

from pql_jax.cli import main
from pql_jax.counts import num_chunks, update_counts
from pql_jax.learner.train import make_train
from pql_jax.run.program import metrics_to_host
from pql_jax.learner.state import hparams_from_config
from pql_jax.plan import sweep
from pql_jax.run import launch
from pql_jax.run.program import _PROGRAMS, GroupProgram, shared_program, stack

pytestmark = pytest.mark.slow  # every test here compiles and trains populations


UTD_SWEEP = {"seeds": 2, "grid": {"utd": ["1/64", "1/32", "1/16"]}}


@pytest.fixture(scope="module")
def utd_sweep(tmp_path_factory):
    """3 fractional UTDs spanning 4x, 2 seeds: one group of 6 members."""
    path = write_sweep(tmp_path_factory.mktemp("utd"), UTD_SWEEP)
    spec = sweep.load_sweep(path, SHORT)
    return spec, run_group(spec.groups[0])


def test_member_alone_equals_member_in_population(utd_sweep):
    """The pure whole-run `jax.jit(make_train(config))` of a member equals its rows in the host loop's
    population program, bit for bit (map batching on CPU)."""
    spec, population_metrics = utd_sweep
    for position in (0, 5):  # slowest and fastest UTD
        member = spec.groups[0].members[position]
        alone = run_alone(member.config)
        for chunk, (mine, theirs) in enumerate(zip(alone, population_metrics)):
            for key, value in mine.items():
                assert np.array_equal(value, theirs[key][position], equal_nan=True), (member.name, chunk, key)


def test_neighbours_do_not_matter(utd_sweep):
    """The same member in a population of 2 with a different neighbour and max UTD."""
    spec, population_metrics = utd_sweep
    members = spec.groups[0].members
    pair = sweep.Group(0, (members[3], members[0]))  # utd 1/32 seed 1 first, then utd 1/64 seed 0
    for mine, theirs in zip(run_group(pair), population_metrics):
        for key in mine:
            assert np.array_equal(mine[key][0], theirs[key][3], equal_nan=True), key
            assert np.array_equal(mine[key][1], theirs[key][0], equal_nan=True), key


def test_masked_fractional_utd_counts_are_exact(utd_sweep):
    spec, population_metrics = utd_sweep
    group = spec.groups[0]
    for position, member in enumerate(group.members):
        steps = int(population_metrics[-1]["vector_steps"][position])
        expected = update_counts(member.config, steps).sum()
        assert int(population_metrics[-1]["critic_updates"][position]) == expected
        assert int(population_metrics[-1]["actor_updates"][position]) == expected // 2
    waste, useful, executed = sweep.masking_waste(group)
    assert useful == sum(int(population_metrics[-1]["critic_updates"][i]) for i in range(len(group.members)))
    # UTDs 1/64, 1/32, 1/16 at 32 envs: 0.5, 1 and 2 updates per step; the group runs 2 slots a step.
    assert executed == len(group.members) * 2 * (steps - max(member.config.agent.warmup_steps, 2))
    assert waste == pytest.approx(1 - (0.5 + 1 + 2) / 6, abs=0.01)
    assert sweep.masking_waste(group, lockstep=False) == (0.0, useful, useful)  # lax.map: own slots only


def test_vmap_batching_agrees_to_float_rounding(utd_sweep):
    """vmap changes XLA's reduction order: equal counters, first chunk equal to ~1e-5."""
    spec, mapped = utd_sweep
    batched = run_group(spec.groups[0], "vmap")
    for key in ("env_steps", "critic_updates", "actor_updates"):
        assert np.array_equal(batched[-1][key], mapped[-1][key])
    for key in ("critic_loss", "q_mean", "eval_return", "td_train"):
        np.testing.assert_allclose(batched[0][key], mapped[0][key], rtol=1e-5, atol=1e-6)


def test_divergent_member_is_frozen_and_flagged_others_unaffected(tmp_path):
    path = write_sweep(tmp_path, {"zip": {"reward_scale": [1.0, 1e38], "gamma": [0.99, 1.0]}})
    spec = sweep.load_sweep(path, SHORT)
    assert len(spec.groups) == 1 and len(spec.groups[0].members) == 2
    metrics = run_group(spec.groups[0])
    healthy = run_alone(spec.groups[0].members[0].config)
    assert metrics[-1]["diverged"][1] and not metrics[-1]["diverged"][0]
    frozen_at = int(metrics[0]["env_steps"][1])
    assert all(int(m["env_steps"][1]) == frozen_at for m in metrics)  # no progress after diverging
    for mine, theirs in zip(healthy, metrics):
        for key, value in mine.items():
            assert np.array_equal(value, theirs[key][0], equal_nan=True), key


def test_groups_split_by_shape_only(tmp_path):
    path = write_sweep(tmp_path, {"seeds": [3, 4], "grid": {"utd": ["1/32", "1/16"], "batch_size": [64, 128],
                                                          "critic_lr": [1e-4, 3e-4], "critic_width": [32, 64]}})
    spec = sweep.load_sweep(path, SHORT)
    assert len(spec.members) == 32
    assert len(spec.groups) == 4  # batch_size x critic_width
    for group in spec.groups:
        shapes = {(m.config.agent.batch_size, m.config.agent.critic_width) for m in group.members}
        assert len(shapes) == 1 and len(group.members) == 8
        assert {m.config.run.seed for m in group.members} == {3, 4}


def test_sharded_over_two_cpu_devices_matches_unsharded(utd_sweep, tmp_path):
    """Subprocess with 2 forced host devices: the fixture's population split over the devices (3
    members each) gives the numbers of the 1-device run in this process (counters exactly; XLA's
    per-device CPU code rounds floats differently, ~1e-6)."""
    spec, one = utd_sweep
    script = tmp_path / "shard.py"
    script.write_text(f"""
import json, sys, jax
sys.path.insert(0, {str(ROOT / 'tests')!r})
from helpers import run_group, write_sweep, SHORT
from pathlib import Path
from pql_jax.plan import sweep
assert len(jax.devices()) == 2
spec = sweep.load_sweep(write_sweep(Path({str(tmp_path)!r}), {UTD_SWEEP!r}), SHORT)
two = run_group(spec.groups[0], "map", jax.devices())
print(json.dumps([{{k: v.tolist() for k, v in m.items()}} for m in two]))
""")
    env = env_with_xla_flags("--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(two) == len(one) and len(two[0]["env_steps"]) == len(spec.groups[0].members) == 6
    for mine, theirs in zip(two, one):
        for key in ("env_steps", "critic_updates", "actor_updates", "diverged"):
            assert mine[key] == theirs[key].tolist(), key
    for key in ("critic_loss", "q_mean", "eval_return", "online_return"):
        np.testing.assert_allclose(two[0][key], one[0][key], rtol=1e-5, atol=1e-5)


def test_sweep_cli_table_tensorboard_and_resume(tmp_path, capsys):
    path = write_sweep(tmp_path, {"seeds": 1, "grid": {"utd": ["1/32", "1/16"], "batch_size": [64, 128]}})
    out, ref = tmp_path / "killed", tmp_path / "ref"
    assert main(["sweep", str(path), "--out", str(ref), "--no-progress", *SHORT]) == 0
    rows = list(csv.DictReader(open(ref / "results.csv")))
    spec = sweep.load_sweep(path, SHORT)
    chunks = num_chunks(spec.base)
    assert len(rows) == len(spec.members) * chunks
    for column in ("member", "env", "seed", "utd", "batch_size", "critic_lr", "model_size", "step", "return",
                   "online_return", "critic_updates", "flops", "td_train", "diverged"):
        assert column in rows[0], column
    assert {r["utd_label"] for r in rows} == {"1/32", "1/16"}
    assert len(list((ref / "tb").iterdir())) == len(spec.members)
    # Interrupt after 3 chunks (mid group 0), then resume: the same table.
    with interrupt_after(3), pytest.raises(KeyboardInterrupt):
        launch.train_sweep_file(path, out, SHORT, progress=False, log=lambda *a: None)
    assert main(["sweep", str(path), "--out", str(out), "--resume", "--no-progress", *SHORT]) == 0
    resumed = list(csv.DictReader(open(out / "results.csv")))
    key = lambda r: (r["member"], int(r["vector_steps"]))
    for a, b in zip(sorted(rows, key=key), sorted(resumed, key=key)):
        for column in ("return", "critic_loss", "critic_updates", "q_mean"):
            assert a[column] == b[column], (a["member"], column)


@pytest.mark.parametrize("body, needle", [
    ({"grid": {"utdd": [1]}}, "unknown sweep axis 'utdd'"),
    ({"grid": {"utd": []}}, "sweep axis 'utd' is empty"),
    ({"grid": {"batch_size": ["big"]}}, "agent.batch_size"),
    ({"grid": {"utd": [0.1, -1]}}, "agent.utd must be > 0"),
    ({"zip": {"utd": [1, 2], "critic_lr": [1e-3]}}, "equal lengths"),
    ({"grid": {"buffer_capacity": [10**11]}}, "needs ~"),
    ({"seeds": 0}, "seeds must be >= 1"),
    ({"grids": {}}, "unknown key 'grids' in sweep file"),
])
def test_bad_sweep_is_one_line_exit_2_before_any_run(tmp_path, capsys, body, needle):
    path = write_sweep(tmp_path, body)
    out = tmp_path / "out"
    code = main(["sweep", str(path), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_vmapped_whole_run_over_seeds_and_hyperparameters():
    """`jax.jit(jax.vmap(make_train(config)))` over seeds and learning rates / UTDs equals each member's
    own whole run: counters exactly, float metrics to vmap's rounding."""
    # one update slot each, SHORT's length: the alone-runs share the whole-run compile of
    # test_member_alone_equals_member_in_population's utd-1/64 member
    configs = [small([f"run.seed={s}", f"agent.utd={u}", f"agent.critic_lr={lr}"])
               for s, u, lr in ((0, "1/32", 3e-4), (1, "1/64", 1e-3))]
    train = make_train(configs[0])
    keys = jax.numpy.stack([jax.random.PRNGKey(c.run.seed) for c in configs])
    hp = stack([hparams_from_config(c) for c in configs])
    _, batched = jax.jit(jax.vmap(train))(keys, hp)
    batched = metrics_to_host(batched)
    for i, config in enumerate(configs):
        alone = run_alone(config)
        for chunk, mine in enumerate(alone):
            for key in ("env_steps", "critic_updates", "actor_updates"):
                assert batched[key][i, chunk] == mine[key], (i, chunk, key)
        for key in ("critic_loss", "q_mean", "eval_return"):
            np.testing.assert_allclose(batched[key][i, 0], alone[0][key], rtol=1e-4, atol=1e-5)


def test_program_cache_is_keyed_by_shape_only():
    """Runs that differ in per-member values or run length share one compiled program; a shape
    change gets its own."""
    base = small()
    variants = [small(o) for o in (["agent.critic_lr=1e-3"], ["run.seed=5", "agent.gamma=0.9"],
                                    ["run.total_env_steps=9600"])]
    first = shared_program(*_program_args(base))
    assert all(shared_program(*_program_args(v)) is first for v in variants)
    assert shared_program(*_program_args(small(["agent.batch_size=64"]))) is not first
    assert len({id(p) for p in _PROGRAMS.values()}) == len(_PROGRAMS)


def _program_args(config):
    from pql_jax.learner.shapes import program_config

    return program_config(config), sweep.single(config).groups[0].max_updates, 1, "map"


def test_learner_cannot_read_per_member_values():
    """The learner's config view has shape fields only: reading gamma or the UTD from it fails."""
    learner = GroupProgram.build(sweep.single(small()).groups[0]).learner
    assert learner.config.agent.batch_size == 128
    for section, name in (("agent", "gamma"), ("agent", "utd"), ("agent", "critic_lr"), ("run", "seed"),
                          ("run", "total_env_steps")):
        with pytest.raises(AttributeError):
            getattr(getattr(learner.config, section), name)


def test_per_member_fields_declared_once():
    """HParams, the grouping and the table columns all follow the config's member(...) declarations."""
    from pql_jax.config import MEMBER, field_keys

    members = field_keys(MEMBER)
    hp = hparams_from_config(small())
    names = {k.split(".")[1] for k in members} - {"utd", "seed"} | {"rate_num", "rate_den"}
    assert {f.name for f in dataclasses.fields(hp)} == names
    base = small()
    for key in members:  # changing any per-member field keeps the group; a shape field splits it
        other = base
        value = base.agent.utd * 2 if key == "agent.utd" else None
        from pql_jax import config as C

        current = C.get_value(base, key)
        value = value if value is not None else (current + 1 if isinstance(current, int) else current * 0.5)
        other = C.set_value(base, key, value)
        assert sweep.group_key(other) == sweep.group_key(base), key
    assert sweep.group_key(C.set_value(base, "agent.batch_size", 64)) != sweep.group_key(base)
    assert sweep.group_key(C.set_value(base, "run.total_env_steps", 9600)) != sweep.group_key(base)
