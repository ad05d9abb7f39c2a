"""benchmarks/gpu_hour.py (its phases in gpu_hour_phases.py), the first GPU hour's one command, run
shrunk on the CPU: its JSON's keys and numbers, its deadline guard, its one-line refusals and the
README's CUDA line it checks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from helpers import POINTMASS, ROOT, env_with_xla_flags

SCRIPT = ROOT / "benchmarks" / "gpu_hour.py"
import gpu_hour  # noqa: E402
import gpu_hour_phases  # noqa: E402

TINY = ["run.chunk_steps=8", "run.eval_mode=parallel", "env.eval_envs=2", "agent.critic_width=16",
        "agent.actor_width=16", "agent.critic_depth=1", "agent.actor_depth=1", "agent.batch_size=16",
        "agent.buffer_capacity=512", "agent.warmup_steps=4"]
"""A pointmass small enough that each phase's process compiles in seconds."""


@pytest.mark.parametrize("argv, words", [
    (["--members", "0"], "--members must be >= 1"),
    (["--phases", "single,bogus"], "--phases must list"),
    (["--deadline", "-3"], "--deadline must be"),
    (["--chunks", "x"], "invalid int value"),
    (["--phases", "warm,population"], "the warm phase reads the cache"),
    ([f"--config={POINTMASS}", "agent.nope=1"], "unknown config key 'agent.nope'"),
    ([f"--config={POINTMASS}", "agent.utd"], "not of the form section.key=value"),
])
def test_bad_arguments_say_one_line_and_exit_2(argv, words, capsys):
    assert gpu_hour.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpu_hour: error: ") and words in err, err


def test_deadline_skips_phases_and_still_writes_the_json(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert gpu_hour.main([f"--config={POINTMASS}", "--deadline", "1", "--min-phase", "20", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["complete"] and set(data["skipped"]) == set(gpu_hour.PHASES)
    assert all(data["phases"][p]["status"] == "skipped" for p in gpu_hour.PHASES)
    assert data["summary"]["single_env_steps_per_s"] is None
    assert "single: skipped" in capsys.readouterr().out


def test_a_phase_past_the_deadline_is_killed_and_leaves_its_log(tmp_path):
    args = gpu_hour.parse_args([f"--config={POINTMASS}", "--out", str(tmp_path / "g.json")])
    tick = time.time()
    rec = gpu_hour.run_child(args, "single", time.time() + 1.0, str(tmp_path / "cache"), tmp_path, tmp_path)
    assert time.time() - tick < 30
    assert rec["status"] == "killed" and rec["error"] == "killed at the deadline"
    assert rec["log"] == str(tmp_path / "g.single.log") and Path(rec["log"]).is_file()


def test_readme_cuda_line_is_pyprojects_jax_range(tmp_path):
    req = gpu_hour_phases.install_requirement(ROOT / "README.md")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    jax_spec = next(d for d in deps if d.startswith("jax>") or d.startswith("jax="))
    assert req == "jax[cuda12]" + jax_spec[len("jax"):]
    readme = tmp_path / "README.md"
    readme.write_text("no install line here\n")
    args = gpu_hour.parse_args(["--readme", str(readme)])
    rec = gpu_hour_phases.install_check(args, timeout=5)
    assert rec["ok"] is False and "no `pip install" in rec["error"]


@pytest.mark.slow
def test_shrunk_run_on_cpu(tmp_path):
    """Every model phase in its own process on pointmass (4 envs, K=2, 2 timed chunks), install check
    skipped: ~45 s on 2 busy cores, at XLA's -O0 (compiling is nearly all of it)."""
    out = tmp_path / "gpu_hour.json"
    cmd = [sys.executable, str(SCRIPT), "--config", str(POINTMASS), "--envs", "4", "--members", "2", "--chunks", "2",
           "--skip-install-check", "--out", str(out), *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400,
                          env=env_with_xla_flags("--xla_backend_optimization_level=0"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines[1:-1]] == ["single", "warm", "population", "eval_off"], proc.stdout

    data = json.loads(out.read_text())
    assert {"schema", "date", "command", "machine", "settings", "phases", "skipped", "summary", "elapsed_s",
            "complete"} <= set(data)
    assert data["complete"] and data["skipped"] == {}
    assert data["machine"]["device"]["platform"] == "cpu" and data["machine"]["packages"]["jax"]
    phases = data["phases"]
    assert {p: phases[p]["status"] for p in phases} == {p: "ok" for p in gpu_hour.MODEL_PHASES}
    assert (phases["single"]["members"], phases["population"]["members"]) == (1, 2)
    assert phases["eval_off"]["eval_envs"] == 0 and phases["single"]["eval_mode"] == "parallel"

    # cold: a fresh cache, nothing read from it; warm: the chunk read back from it, nothing compiled anew
    assert phases["single"]["compile_cache"]["hits"] == 0 and phases["single"]["compile_cache"]["misses"] > 0
    assert phases["warm"]["compile_cache"]["misses"] == 0 and phases["warm"]["compile_cache"]["hits"] > 0
    for p in gpu_hour.MODEL_PHASES:
        assert phases[p]["compile_s"] > 0 and math.isfinite(phases[p]["compile_s"])
        assert phases[p]["planned_peak_bytes"] > 0
    for p in ("single", "population", "eval_off"):
        rec = phases[p]
        assert rec["chunks_timed"] == 2 and len(rec["chunk_s"]) == 2
        assert rec["env_steps_per_s"] > 0 and math.isfinite(rec["env_steps_per_s"])
        assert rec["timed_env_steps"] == 2 * 8 * 4 * rec["members"]
        assert rec["measured_peak_bytes"] is None and "cpu" in rec["measured_peak_reason"]  # no stats on CPU
    assert phases["population"]["planned_peak_bytes"] > phases["single"]["planned_peak_bytes"]

    s = data["summary"]
    for key in ("single_env_steps_per_s", "population_env_steps_per_s", "eval_off_env_steps_per_s",
                "population_over_single", "eval_on_over_off", "cold_compile_s", "warm_compile_s"):
        assert s[key] > 0 and math.isfinite(s[key]), key
    assert s["planned_peak_bytes"]["population"] > 0 and s["cuda_install_ok"] is None
