"""Cached programs are dropped before the process runs out of memory mappings (XLA's CPU kernels
each hold mapped sections; a long workflow hit Linux's vm.max_map_count and aborted)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pql_jax.run import program as P


def _maps() -> int:
    with open("/proc/self/maps", "rb") as handle:
        return sum(1 for _ in handle)


def _compile_toy(n: int) -> None:
    """Compile (and run) a function with many kernels; keep no reference to it."""
    def f(x):
        for i in range(60):
            x = jnp.tanh(x @ x.T * (1 + i)) + jnp.sin(x) * i
        return x.sum()
    jax.jit(jax.grad(f))(jnp.ones((n, n))).block_until_ready()


@pytest.mark.skipif(P._map_limit() is None, reason="needs Linux /proc (vm.max_map_count)")
def test_release_frees_mappings_when_over_the_headroom(monkeypatch):
    sentinel = object()
    monkeypatch.setattr(P, "_PROGRAMS", {("sentinel",): sentinel})  # this worker's own cache stays
    before = _maps()
    _compile_toy(5)
    grown = _maps()
    assert grown > before + 200  # the compiled executable maps its kernels (~540 here)

    monkeypatch.setattr(P, "_map_limit", lambda: 10 * grown)  # far below half: nothing dropped
    assert P.release_if_mapped_out() is False and P._PROGRAMS.get(("sentinel",)) is sentinel

    monkeypatch.setattr(P, "_map_limit", lambda: grown)  # over half of the limit: drop
    assert P.release_if_mapped_out() is True
    assert ("sentinel",) not in P._PROGRAMS
    assert _maps() < grown - 200  # the executable's mappings are gone


def test_no_limit_known_means_no_release(monkeypatch):
    sentinel = object()
    monkeypatch.setattr(P, "_PROGRAMS", {("sentinel",): sentinel})
    monkeypatch.setattr(P, "_map_limit", lambda: None)
    assert P.release_if_mapped_out() is False and P._PROGRAMS[("sentinel",)] is sentinel
