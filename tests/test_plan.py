"""Planning from the compiled program, the evaluation schedule and share, calibration, and env-step
counters past 2^31."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import POINTMASS, ROOT, small

from pql_jax import config as cfg_mod
from pql_jax.cli import main
from pql_jax.counts import eval_chunks, eval_due
from pql_jax.run.program import metrics_to_host
from pql_jax.plan.calibrate import calibrate_group, calibration_text, eval_schedule
from pql_jax.plan.memory import GroupMemory, eval_share, group_memory
from pql_jax.run.program import GroupProgram
from pql_jax.plan.sweep import single
from pql_jax.workflow.spec import load_workflow


# ---- evaluation schedule and share ---------------------------------------------------------------

@pytest.mark.parametrize("total, every, chunks", [
    (12, 5, [4, 9, 11]),      # every 5th chunk, and the last
    (10, 5, [4, 9]),          # the last is a 5th already
    (4, 1, [0, 1, 2, 3]),     # eval_every=1: every chunk (the old behaviour)
    (3, 200, [2]),            # a run shorter than eval_every: the last chunk only
    (123, 200, [122]),
    (245, 200, [199, 244]),
])
def test_eval_schedule(total, every, chunks):
    assert eval_schedule(total, every) == chunks
    assert eval_chunks(total, every) == len(chunks)
    traced = jax.jit(lambda i: eval_due(i, total, every))  # the same rule on the device (learner.train.make_train)
    assert [i for i in range(total) if bool(traced(np.int32(i)))] == chunks


def test_eval_share_arithmetic():
    # pointmass, 9600 env steps at 32 envs x 25 steps per chunk: 12 chunks, eval every 5 -> chunks 4, 9, 11;
    # each eval is a 50-step episode: 150 eval steps vs 300 training vector steps -> 1/3.
    share = eval_share(small(["run.total_env_steps=9600", "run.eval_every=5"]))
    assert (share.chunks, share.eval_chunks, share.horizon, share.vector_steps) == (12, 3, 50, 300)
    assert share.share == pytest.approx(150 / 450)
    # the GPU config: 50M steps / (4096 envs x 100 steps) = 123 chunks = 12,300 vector steps; parallel
    # eval: 64 envs in the env call in 4 cohorts 250 steps apart, whose last episodes end at 12,300,
    # 12,050, 11,800 and 11,550: 12 + 12 + 11 + 11 = 46 results; no sequential eval steps.
    gpu = eval_share(cfg_mod.load(ROOT / "configs" / "cheetah_run.yaml"))
    assert (gpu.chunks, gpu.eval_chunks, gpu.horizon, gpu.vector_steps) == (123, 0, 1000, 12_300)
    assert (gpu.evaluations, gpu.parallel_envs, gpu.env_call_envs, gpu.share) == (46, 64, 4096, 0.0)
    # sequential, every 200 chunks: the last chunk only, 1000 eval steps vs 12,300 vector steps
    seq = ["run.eval_mode=sequential", "run.eval_every=200"]
    assert eval_share(cfg_mod.load(ROOT / "configs" / "cheetah_run.yaml", seq)).share == pytest.approx(1000 / 13_300)
    # before: every chunk evaluated -> 10 sequential eval steps per training vector step
    assert eval_share(cfg_mod.load(ROOT / "configs" / "cheetah_run.yaml", [*seq, "run.eval_every=1"])).share \
        == pytest.approx(123_000 / (123_000 + 12_300))
    assert eval_share(small(["env.episode_length=1000", "env.action_repeat=3"])).horizon == 334
    assert eval_share(small(["env.eval_envs=0"])).share == 0.0


def test_gpu_configs_default_to_a_small_eval_budget():
    """Every GPU config and GPU workflow evaluates in parallel: no sequential eval steps, eval envs
    at most a few % of the env call, 4 cohorts: about 4 results per 1000-step episode (>= 16 per run
    for the task configs, >= 40 for the workflows' curves)."""
    paths = [p for p in sorted((ROOT / "configs").glob("*.yaml")) if cfg_mod.load(p).env.num_envs >= 1024]
    assert len(paths) == 11  # 8 Playground/Brax tasks, the 2 dmc: Quadruped ports and dmc: DogStand
    for path in paths:
        share = eval_share(cfg_mod.load(path))
        assert share.share == 0.0 and share.parallel_envs / share.env_call_envs < 0.05, path.name
        assert share.cohorts == 4 and share.evaluations >= 16, path.name
    for name in ("cheetah_run", "walker_walk", "humanoid_stand", "ant"):
        spec = load_workflow(ROOT / "configs" / "workflows" / f"{name}.yaml")
        overrides = [f"{k}={v}" for k, v in spec.spec["overrides"].items() if not isinstance(v, list)]
        share = eval_share(cfg_mod.load(spec.base_path, overrides))
        assert share.share == 0.0 and share.evaluations >= 40, name
    with pytest.raises(cfg_mod.UserError, match="run.eval_every must be >= 1"):
        small(["run.eval_every=0"])


# ---- env steps past 2^31 -------------------------------------------------------------------------

def test_env_steps_are_formed_in_int64_on_the_host():
    near = 2**31 // 32 + 5  # vector steps of 32 envs just past 2^31 env steps
    metrics = metrics_to_host({"vector_steps": np.array([near, 7], np.int32), "envs_per_step": np.array([32, 32], np.int32),
                               "critic_loss": np.zeros(2, np.float32)})
    assert metrics["env_steps"].dtype == np.int64
    assert metrics["env_steps"].tolist() == [near * 32, 7 * 32] and near * 32 > 2**31
    assert list(metrics) == sorted(metrics) and "envs_per_step" not in metrics


@pytest.mark.slow
def test_chunk_counts_env_steps_past_2_31():
    """A state whose vector step is just below 2^31 / num_envs: the chunk crosses 2^31 env steps."""
    config = small()
    program = GroupProgram.build(single(config).groups[0])  # the program the other tests here compile
    start = 2**31 // config.env.num_envs - 10
    states = program.initial_state()
    states = states.replace(step=jax.numpy.full_like(states.step, start))
    _, metrics = program.step(states, start)
    metrics = {k: v[0] for k, v in metrics.items()}
    assert int(metrics["vector_steps"]) == start + 25
    assert int(metrics["env_steps"]) == (start + 25) * config.env.num_envs > 2**31
    assert (start + 25) * 32 - 2**32 < 0  # what the int32 product used to give (it wrapped to negative)


# ---- memory from the compiled chunk --------------------------------------------------------------

MEASURE = r"""
import json, sys, jax
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers import POINTMASS
from pql_jax import config as cfg_mod
from pql_jax.run.program import GroupProgram
from pql_jax.plan.sweep import single

def status(key):
    line = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":")][0]
    return int(line.split()[1]) * 1024

config = cfg_mod.load(POINTMASS, ["agent.buffer_capacity={buffer}", "run.chunk_steps=25"])
gp = GroupProgram.build(single(config).groups[0])
chunk = gp.compile()                                         # what `plan` does: nothing allocated
mem = chunk.memory_analysis()
init = gp.shared.init.lower(gp.keys, gp.hp).compile()
schedule = gp.schedule(0)
Path("/proc/self/clear_refs").write_text("5")               # reset the peak RSS (VmHWM) to the current RSS
base = status("VmRSS")
states = jax.block_until_ready(init(gp.keys, gp.hp))
states, metrics = jax.block_until_ready(chunk(states, schedule))
print(json.dumps({{"measured": status("VmHWM") - base,
                  "planned": mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                             + mem.temp_size_in_bytes, "state": mem.argument_size_in_bytes}}))
"""


@pytest.mark.slow
def test_planned_peak_matches_measured_peak(tmp_path):
    """The compiled chunk's planned peak (argument + output - alias + temp) vs the measured peak.

    On CPU the device memory is the process's heap and JAX has no device memory statistics, so
    the measured peak is the growth of the process's peak resident set (VmHWM) while the state is
    allocated and one chunk runs, in a fresh subprocess: everything compiled first (compilation's
    own memory is not counted), then the peak is reset to the current RSS (`/proc/self/clear_refs`
    = 5) and init + one chunk run. A 12M-transition replay buffer (~350 MB) makes the state dominate, so the noise
    of the baseline (runtime allocations, thread stacks: a few MB) is ~1% of the figure.
    """
    script = tmp_path / "measure.py"
    script.write_text(MEASURE.format(tests=str(ROOT / "tests"), buffer=12_000_000))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["state"] > 250e6
    assert got["measured"] == pytest.approx(got["planned"], rel=0.15), got


@pytest.mark.slow
def test_plan_compiles_once_and_training_reuses_it():
    group = single(small()).groups[0]
    memory = group_memory(group)
    program = GroupProgram.build(group)
    compiled = program.shared._compiled
    assert compiled is not None and memory.peak_bytes > memory.argument_bytes > 0
    states = program.initial_state()
    assert program.shared.compiled_chunk(states, program.schedule(0)) is compiled
    states, metrics = program.step(states, 0)
    assert int(metrics["env_steps"][0]) == small().run.chunk_steps * small().env.num_envs


def test_members_per_device_scale_with_the_peak():
    mem = GroupMemory(0, 6, 6, "vmap", argument_bytes=600, output_bytes=610, alias_bytes=600, temp_bytes=290,
                      compile_seconds=1.0, platform="cpu")
    assert mem.peak_bytes == 900  # 600 + 610 - 600 + 290: per member 150
    assert mem.members_fit(1500) == 10 and mem.members_fit(149) == 0


@pytest.mark.slow
def test_over_ask_is_refused_before_anything_is_allocated(tmp_path, capsys):
    """A state that alone exceeds the limit is refused without compiling; one whose compiled peak
    (state + temporaries) exceeds it, after the compile; both before allocating or writing."""
    args = ["train", "--config", str(POINTMASS), "--no-progress", "run.total_env_steps=4800", "run.chunk_steps=25"]
    memory = group_memory(single(small()).groups[0])  # what `plan` compiles for this config
    assert memory.temp_bytes > 0
    between = (memory.argument_bytes + memory.peak_bytes) / 2 / 2**30
    for name, limit in (("gross", 0.0001), ("fine", between)):
        out = tmp_path / name
        code = main([*args, "--out", str(out), f"run.memory_limit_gb={limit!r}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "run needs ~" in err[0] and "device has" in err[0], err
        assert not out.exists()


# ---- evaluation schedule in training, calibration --------------------------------------------------

@pytest.mark.slow
def test_eval_every_only_blanks_the_return():
    """Chunks off the schedule have a NaN return; every other number equals evaluating every chunk."""
    config = small(["run.eval_every=4"])  # 6 chunks: evaluate chunks 3 and 5
    group = single(config).groups[0]
    program = GroupProgram.build(group)
    every, sparse = program.initial_state(), program.initial_state()
    for index in range(6):
        every, a = program.step(every, index * config.run.chunk_steps)
        sparse, b = program.step(sparse, index * config.run.chunk_steps, evaluate=eval_due(index, 6, 4))
        for key in a:
            if key in ("eval_return", "eval_return_std", "eval_episode_length", "eval_env_steps"):  # one slot; -1: none
                assert (b["eval_env_steps"][0, 0] == -1) == (index not in (3, 5))
                if index in (3, 5):
                    assert a[key][0, 0] == b[key][0, 0]
            else:
                assert np.array_equal(a[key], b[key], equal_nan=True), key


@pytest.mark.slow
def test_calibrate_measures_and_projects():
    sweep = single(small())
    speed = calibrate_group(sweep.groups[0], chunks=1)
    assert speed.chunk_seconds > 0 and speed.env_steps_per_s > 0 and speed.updates_per_s > 0
    assert speed.chunks == 6 and speed.eval_chunks == 6
    assert speed.projected_seconds == pytest.approx(speed.compile_seconds + 6 * speed.chunk_seconds
                                                    + 6 * speed.eval_seconds)
    lines = calibration_text(sweep, {0: speed}, startup=2.0)
    assert lines[-1].startswith("projected wall time of the sweep:")
