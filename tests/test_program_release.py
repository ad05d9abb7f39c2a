"""Cached programs are dropped before the process runs out of memory mappings (XLA's CPU kernels
hold mapped sections; a long workflow hit Linux's vm.max_map_count and aborted in LLVM).

The policy is tested with the mapping count and limit stubbed: how many mappings a compile adds
depends on the XLA version and on what the process freed before (sections are reused), so the
effect itself is a measurement (benchmarks/RESULTS.md#width-axis)."""

from __future__ import annotations

import pytest

from pql_jax.run import program as P


@pytest.fixture
def cache(monkeypatch):
    """A program cache of its own (the worker's cached programs stay) and a spy on JAX's clear."""
    sentinel = object()
    cleared = []
    monkeypatch.setattr(P, "_PROGRAMS", {("sentinel",): sentinel})
    monkeypatch.setattr(P.jax, "clear_caches", lambda: cleared.append(True))
    return sentinel, cleared


@pytest.mark.parametrize("held, limit, dropped", [
    (100, 65530, False),      # far below the headroom
    (32764, 65530, False),    # just below half
    (32765, 65530, True),     # at half of Linux's default limit
    (60000, 65530, True),
    (100, None, False),       # limit unknown (not Linux): never
])
def test_release_policy(cache, monkeypatch, held, limit, dropped):
    sentinel, cleared = cache
    monkeypatch.setattr(P, "_count_lines", lambda path: held)
    monkeypatch.setattr(P, "_map_limit", lambda: limit)
    assert P.release_if_mapped_out() is dropped
    assert (("sentinel",) in P._PROGRAMS) is not dropped
    assert cleared == ([True] if dropped else [])


def test_the_real_counts_are_read_on_linux():
    """On Linux both numbers come from /proc; the suite itself stays under the headroom."""
    limit, held = P._map_limit(), P._count_lines("/proc/self/maps")
    if limit is None:
        pytest.skip("no /proc/sys/vm/max_map_count here")
    assert limit > 0 and 0 < held < P.MAP_HEADROOM * limit
