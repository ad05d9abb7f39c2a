"""The persistent compilation cache is on by default for the CLI, JAX's own setting wins, and a
second process running the same program compiles nothing new."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import POINTMASS

PROBE = ("import jax; from pql_jax.run import compile_cache; "
         "print(compile_cache.enable(), jax.config.jax_compilation_cache_dir)")


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "PQL_JAX_COMPILE_CACHE", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    return {**env, **extra}


def _probe(env) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    return out.stdout.split()


def test_default_dir_override_off_and_jax_setting_wins(tmp_path):
    assert _probe(_env(XDG_CACHE_HOME=str(tmp_path))) == [str(tmp_path / "pql_jax" / "jax")] * 2
    assert _probe(_env(PQL_JAX_COMPILE_CACHE=str(tmp_path / "mine"))) == [str(tmp_path / "mine")] * 2
    assert _probe(_env(PQL_JAX_COMPILE_CACHE="off")) == ["None", "None"]
    assert _probe(_env(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax"), PQL_JAX_COMPILE_CACHE=str(tmp_path / "x"))) \
        == ["None", str(tmp_path / "jax")]


@pytest.mark.slow
def test_second_process_compiles_nothing_new(tmp_path):
    cache = tmp_path / "cache"
    env = _env(PQL_JAX_COMPILE_CACHE=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

    def train(name):
        cmd = [sys.executable, "-m", "pql_jax.cli", "train", "--config", str(POINTMASS), "--out", str(tmp_path / name),
               "--no-progress", "run.total_env_steps=1600", "run.chunk_steps=25"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-1000:]
        return sorted(p.name for p in cache.iterdir())

    first = train("a")
    assert first, "the first run wrote no compiled program to the cache"
    assert train("b") == first  # every program of the second run was a cache hit
