"""End-to-end learner tests on test:pointmass (compiles in seconds): learning, determinism,
resume after SIGKILL, divergence handling and the CLI's one-line errors."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import POINTMASS, run_alone

from pql_jax import config as cfg_mod
from pql_jax.cli import main
from pql_jax.run import launch
# Columns that depend only on (config, seed), not on wall-clock time.
DETERMINISTIC = ("env_steps", "critic_updates", "actor_updates", "eval_return", "online_return", "critic_loss",
                 "actor_loss", "q_mean", "critic_param_norm", "actor_param_norm", "td_train", "flops")


def small(overrides=()):
    return cfg_mod.load(POINTMASS, ["run.total_env_steps=9600", "run.chunk_steps=25", "run.checkpoint_every=2",
                                    *overrides])


def table(path: Path) -> list[dict]:
    with open(path / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def same_columns(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        for key in DETERMINISTIC:
            assert row_a[key] == row_b[key], (key, row_a["env_steps"], row_a[key], row_b[key])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted run, shared by the comparisons below."""
    out = tmp_path_factory.mktemp("ref") / "run"
    launch.train_config(small(), out, progress=False, log=lambda *a: None)
    return out


@pytest.mark.slow
def test_learns_pointmass():
    """Return clearly improves over training (random policy scores far lower)."""
    config = cfg_mod.load(POINTMASS, ["run.total_env_steps=24000"])
    returns = [float(m["eval_return"][-1]) for m in run_alone(config)]  # sequential: one result slot
    assert np.mean(returns[-3:]) > 18.0, returns
    assert np.mean(returns[-3:]) > returns[0] + 10.0, returns


@pytest.mark.slow
def test_update_counts_follow_fractional_utd(reference_run):
    """Critic updates = floor((steps - warm-up) * utd * num_envs); actor = critic // ratio."""
    config = small()
    rows = table(reference_run)
    for row in rows:
        vector_steps = int(row["vector_steps"])
        after = max(vector_steps - config.agent.warmup_steps, 0)
        expected = after * 2 // 1  # utd 1/16 at 32 envs -> 2 updates per vector step
        assert int(row["critic_updates"]) == expected
        assert int(row["actor_updates"]) == expected // config.agent.critic_actor_ratio


@pytest.mark.slow
def test_same_seed_same_numbers(reference_run, tmp_path):
    out = tmp_path / "again"
    launch.train_config(small(), out, progress=False, log=lambda *a: None)
    same_columns(table(reference_run), table(out))


@pytest.mark.slow
def test_other_seed_other_numbers(reference_run, tmp_path):
    out = tmp_path / "seed1"
    launch.train_config(small(["run.seed=1"]), out, progress=False, log=lambda *a: None)
    assert table(reference_run)[-1]["critic_loss"] != table(out)[-1]["critic_loss"]


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(reference_run, tmp_path):
    """Kill -9 a CLI run after its first checkpoint, resume it, compare with the reference."""
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "pql_jax.cli", "train", "--config", str(POINTMASS), "--out", str(out),
            "--no-progress", "run.total_env_steps=9600", "run.chunk_steps=25", "run.checkpoint_every=2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    ckpts = out / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed: " + proc.stderr.read().decode()[-500:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(table(out)) < len(table(reference_run))
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    same_columns(table(reference_run), table(out))


@pytest.mark.slow
def test_nan_stops_run_and_keeps_last_good_checkpoint(tmp_path, capsys):
    """Updates start in chunk 2 with an Inf reward scale: exit 2 naming the quantity, chunk 1's
    checkpoint stays the latest and no non-finite row is logged."""
    out = tmp_path / "nan"
    code = main(["train", "--config", str(POINTMASS), "--out", str(out), "--no-progress",
                 "run.total_env_steps=9600", "run.chunk_steps=25", "run.checkpoint_every=1",
                 "agent.warmup_steps=30", "agent.reward_scale=1e38", "agent.gamma=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "critic_loss became NaN/Inf" in err[0] and "env step 1,600" in err[0], err
    rows = table(out)
    assert len(rows) == 1 and np.isfinite(float(rows[0]["critic_loss"]))
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [25]


@pytest.mark.parametrize("args, needle", [
    (["agent.utdd=1"], "unknown config key 'agent.utdd'"),
    (["agent.utd=0"], "agent.utd must be > 0"),
    (["agent.utd=abc"], "agent.utd"),
    (["agent.batch_size=100000"], "must not exceed agent.buffer_capacity"),
    (["agent.std_min=0.9", "agent.std_max=0.1"], "agent.std_min"),
    (["env.name=brax:antt"], "unknown env 'brax:antt'; known envs: test:pointmass, brax:ant"),
    (["run.memory_limit_gb=0.000001"], "lower agent.buffer_capacity"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, needle):
    code = main(["train", "--config", str(POINTMASS), "--out", str(tmp_path / "x"), "--no-progress", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


@pytest.mark.slow
def test_existing_run_dir_is_not_overwritten(reference_run, capsys):
    before = (reference_run / "metrics.csv").read_bytes()
    code = main(["train", "--config", str(POINTMASS), "--out", str(reference_run), "--no-progress"])
    assert code == 2 and "already holds files" in capsys.readouterr().err
    assert (reference_run / "metrics.csv").read_bytes() == before


@pytest.mark.slow
def test_single_runs_share_the_results_schema_and_fit_all_reads_them(tmp_path, capsys):
    """Three UTDs x 2 seeds of `train` (one compiled program: equal shapes, ceil(utd x envs) = 1)
    give tables with the sweep's schema; `fit all` reads the six run directories as they are."""
    dirs = []
    for utd in ("1/128", "1/64", "1/32"):
        for seed in (0, 1):
            out = tmp_path / f"utd{utd.replace('/', '_')}_s{seed}"
            launch.train_config(small([f"agent.utd={utd}", f"run.seed={seed}", "run.total_env_steps=9600"]), out,
                                progress=False, log=lambda *a: None)
            dirs.append(str(out))
    rows = table(Path(dirs[0]))
    for column in ("member", "env", "seed", "utd", "utd_label", "batch_size", "critic_lr", "model_size", "step",
                   "return", "td_train", "diverged"):
        assert column in rows[0], column
    assert rows[0]["utd_label"] == "1/128" and rows[0]["env"] == "test:pointmass"
    # explicit thresholds: 9600-step curves barely rise out of their seed noise, where `fit all`
    # refuses to place automatic ones
    code = main(["fit", "all", *dirs, "--out", str(tmp_path / "fit"), "--max-return", "50", "--thresholds", "170,190",
                 "--resamples", "10", "--no-figures"])
    assert code == 0, capsys.readouterr().err
    crossings = pd.read_csv(tmp_path / "fit" / "crossings_runs.csv")
    assert sorted(crossings["utd"].unique()) == [1 / 128, 1 / 64, 1 / 32]
    assert len(crossings.drop_duplicates(["utd", "level"])) == len(crossings)  # the two seeds form one run group
    assert crossings["reached"].any()
    assert (crossings.loc[crossings["reached"], "data_std"] > 0).all()  # ... whose seed bootstrap has a spread


@pytest.mark.slow
def test_sigkill_during_an_asynchronous_checkpoint_write(tmp_path):
    """Kill -9 while orbax writes a checkpoint in the background (training goes on meanwhile): the
    half-written one never becomes the latest, and the resumed run equals an uninterrupted one."""
    big = ["run.total_env_steps=6400", "run.chunk_steps=25", "run.checkpoint_every=1",
           "agent.buffer_capacity=3000000",  # a buffer big enough that a write takes a while
           "run.checkpoint_async=true"]
    reference = tmp_path / "reference"
    # the reference checkpoints only at its end: checkpointing is host-side and leaves the numbers as
    # they are, and 8 background writes of a 3M-row buffer would double this test's time
    launch.train_config(small([*big, "run.checkpoint_every=8", "run.checkpoint_async=false"]), reference,
                        progress=False, log=lambda *a: None)
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "pql_jax.cli", "train", "--config", str(POINTMASS), "--out", str(out),
            "--no-progress", *big]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts, deadline, caught = out / "checkpoints", time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        complete = [p for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []
        writing = [p.name for p in ckpts.iterdir() if "tmp" in p.name] if ckpts.exists() else []
        if complete and writing:  # one checkpoint done, the next one half-written
            os.kill(proc.pid, signal.SIGKILL)
            caught = writing
            break
        time.sleep(0.002)
    proc.wait()
    assert caught, "never saw a checkpoint being written: " + proc.stderr.read().decode()[-500:]
    from pql_jax.run.checkpoint import Checkpointer

    latest = Checkpointer(ckpts, 2).latest_step()
    half_written = {int(m.group()) for m in (re.match(r"\d+", name) for name in caught) if m}
    assert half_written and latest is not None and latest < min(half_written), (caught, latest)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    same_columns(table(reference), table(out))


def _types(tree):
    import jax

    return [(jax.tree_util.keystr(path), leaf.shape, leaf.dtype, leaf.weak_type)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _fresh(env):
    import jax

    from pql_jax.learner.pql import make_learner
    from pql_jax.learner.state import hparams_from_config

    config = cfg_mod.load(POINTMASS, [f"env.name={env}", "env.num_envs=4", "env.eval_envs=2",
                                      "run.total_env_steps=400", "run.chunk_steps=25"])
    learner, hp = make_learner(config), hparams_from_config(config)
    return learner, hp, jax.eval_shape(learner.init, jax.random.PRNGKey(0), hp)


def test_fresh_state_has_the_types_a_chunk_returns():
    """`init`'s state has the shapes, dtypes and weak types `chunk` returns (traced, not compiled),
    so `jax.jit(learner.chunk)` compiles once, not again on its second call."""
    import jax

    from pql_jax.learner.state import PopulationSchedule

    learner, hp, fresh = _fresh("test:pointmass")
    after, _ = jax.eval_shape(learner.chunk, fresh, PopulationSchedule.of(hp, 0))
    assert _types(fresh) == _types(after)


@pytest.mark.slow
def test_fresh_state_has_no_weak_types_on_mjx():
    """MJX data from CheetahRun's reset carries a weakly typed `time`, which a chunk returns strong:
    before `strong_types` the second chunk of a Playground run compiled the whole program again
    (134 s more on CheetahRun on this CPU). The fresh state has no weak leaf."""
    import jax

    learner, _, fresh = _fresh("playground:CheetahRun")
    envs = jax.eval_shape(learner.start_envs, jax.random.PRNGKey(1), jax.random.PRNGKey(2))
    assert [p for p, *_, weak in _types(envs) if weak] == [".sim.data.time"]
    assert not [p for p, *_, weak in _types(fresh) if weak]
