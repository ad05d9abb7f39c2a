"""The installed JAX does not deadlock batched LAPACK calls on the CPU.

jaxlib 0.10.0-0.11.0 split a batched LAPACK call over XLA's intra-op thread pool and block on
the pieces; as many independent batched Cholesky factorisations as the pool has threads then
wait for each other forever (MJX's constraint solver under vmap: dmc:QuadrupedWalk hung at 256
envs on 2 cores). pyproject.toml excludes those releases; this runs the reproducer (hangs on
jaxlib 0.10.2 on a 2-core machine, finishes in well under a second on 0.9.2 and 0.12.0.1) in a
subprocess with a time limit, so that a wrong pin fails here instead of hanging a training run."""

import importlib.metadata
import os
import subprocess
import sys

import pytest

from pql_jax import envs

REPRO = """
import os, jax, jax.numpy as jnp
n = 2 * max(os.cpu_count() or 1, 2)  # more concurrent calls than the pool has threads
keys = jax.random.split(jax.random.PRNGKey(0), n)
def spd(key):
    a = jax.random.normal(key, (1024, 22, 22))  # a batch above jaxlib's split threshold (128 < t <= 256)
    return a @ jnp.swapaxes(a, -1, -2) + 22 * jnp.eye(22)
mats = [spd(k) for k in keys]
factor = jax.jit(lambda *ms: [jnp.linalg.cholesky(m * (i + 1)) for i, m in enumerate(ms)])
for _ in range(5):
    out = jax.block_until_ready(factor(*mats))
print("finished", jax.__version__)
"""


def test_concurrent_batched_cholesky_finishes():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    try:
        done = subprocess.run([sys.executable, "-c", REPRO], capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        raise AssertionError("concurrent batched Cholesky factorisations did not finish in 120 s: this jaxlib "
                             "deadlocks its CPU LAPACK kernels (see pyproject.toml's JAX pins)") from None
    assert done.returncode == 0 and "finished" in done.stdout, done.stderr[-2000:]


def test_warning_names_an_excluded_jaxlib(monkeypatch):
    """Installed against the pins (e.g. --no-deps), an excluded jaxlib is named when an MJX env is built."""
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.10.2" if name == "jaxlib" else real(name))
    with pytest.warns(RuntimeWarning, match="jaxlib 0.10.2 can deadlock"):
        assert "0.9.2 or >= 0.11.1" in envs.warn_deadlocking_jaxlib()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.11.1" if name == "jaxlib" else real(name))
    assert envs.warn_deadlocking_jaxlib() is None
