"""Helpers tests share: paths, small configs, sweep files, the ways tests train a member, and
interrupting a training run from outside. (conftest sets XLA's flags before JAX starts; it runs
before any test module imports this one.)"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import jax
import yaml

from pql_jax import config as cfg_mod
from pql_jax.learner.shapes import program_config
from pql_jax.counts import num_chunks, updates_needed
from pql_jax.learner.train import make_train
from pql_jax.learner.state import hparams_from_config
from pql_jax.run import program
from pql_jax.run.program import GroupProgram, metrics_to_host

ROOT = Path(__file__).resolve().parents[1]
POINTMASS = ROOT / "configs" / "pointmass.yaml"
SHORT = ["run.total_env_steps=4800", "run.chunk_steps=25", "run.checkpoint_every=2"]
"""Overrides for a seconds-scale pointmass run: 6 chunks of 25 vector steps at 32 envs."""


def env_with_xla_flags(flags: str, **extra) -> dict:
    """This process's environment for a subprocess, with `flags` added to XLA_FLAGS (and `extra`)."""
    return {**os.environ, **extra, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}


def small(overrides=(), base=POINTMASS):
    """A validated pointmass config with `SHORT` (and then `overrides`) applied."""
    return cfg_mod.load(base, [*SHORT, *overrides])


def write_sweep(tmp_path: Path, body: dict, name: str = "sweep.yaml") -> Path:
    """A sweep file on the pointmass base config with the given keys (grid, zip, seeds ...)."""
    path = Path(tmp_path) / name
    path.write_text(yaml.safe_dump({"base": str(POINTMASS), **body}))
    return path


def run_group(group, batching: str = "map", devices=None) -> list[dict]:
    """Train a group with the host loop's program; metrics per chunk as numpy [members]."""
    program = GroupProgram.build(group, batching, devices)
    states, out = program.initial_state(), []
    for index in range(num_chunks(group.config)):
        states, metrics = program.step(states, index * group.config.run.chunk_steps)
        out.append(metrics)
    return out


_WHOLE_RUNS: dict = {}


def run_alone(config) -> list[dict]:
    """Train one member with the pure whole-run function `jax.jit(make_train(config))`; metrics per
    chunk. The jitted function is shared by configs of equal shape, update slots and length."""
    chunks = num_chunks(config)
    key = (program_config(config), updates_needed(config), chunks, config.run.eval_every)
    if key not in _WHOLE_RUNS:
        _WHOLE_RUNS[key] = jax.jit(make_train(config))
    _, metrics = _WHOLE_RUNS[key](jax.random.PRNGKey(config.run.seed), hparams_from_config(config))
    metrics = metrics_to_host(metrics)
    return [{k: v[i] for k, v in metrics.items()} for i in range(chunks)]



INTERRUPT_AFTER = """
from pql_jax.run import program as _program
_real_step, _calls = _program.GroupProgram.step, [0]
def _step(self, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] > {chunks}:
        raise SystemExit(0)
    return _real_step(self, *args, **kwargs)
_program.GroupProgram.step = _step
"""
"""Code for a subprocess (`python -c`) that ends it, exit status 0, when it starts its chunk
number `chunks` + 1, as an interrupted process would stop between chunks."""


@contextlib.contextmanager
def interrupt_after(chunks: int):
    """Raise KeyboardInterrupt (what a user's Ctrl-C raises) when the host loop starts its chunk
    number `chunks` + 1 in this process: chunks 1..`chunks` are trained, written and checkpointed."""
    real, calls = program.GroupProgram.step, [0]

    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > chunks:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    program.GroupProgram.step = step
    try:
        yield
    finally:
        program.GroupProgram.step = real
