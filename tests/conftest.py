"""Fixtures and hooks of the test run (helpers tests import live in tests/helpers.py).

One compile cache serves the whole test run: in-process, every run goes through
`pql_jax.run.program.shared_program` (keyed by shapes only); subprocesses started by tests share a
persistent JAX compilation cache in a session temp directory (inherited through the environment).
"""

from __future__ import annotations

import os

# Tests compile ~100 small XLA programs and run each for seconds: compiling dominates the suite.
# LLVM's -O1 instead of its default -O2 compiles them ~30% faster and runs them little slower.
# Semantics are the same; bit-for-bit comparisons in the tests compare programs built at one level
# (subprocesses inherit this through the environment; `env_with_xla_flags` adds to it). Set before JAX
# creates its CPU client, which reads XLA_FLAGS once.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=1"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true",
                     help="also run the `long` tests (paper-scale workflow files, MJX ports stepped against "
                          "dm_control): minutes to tens of minutes each on CPU")


HEAVY_FIRST = ("test_workflow.py", "test_population.py", "test_train_e2e.py", "test_distributed.py",
               "test_parts.py", "test_early_stop.py", "test_local_parts.py", "test_compile_cache.py",
               "test_nonfinite_and_start.py", "test_parallel_eval.py", "test_gpu_hour.py", "test_dmc_ports.py",
               "test_tensorboard.py", "test_cpu_fusion.py", "test_plan.py")
"""Test files by their share of the suite's time, largest first (benchmarks/RESULTS.md#test-suite-time).
pytest-xdist (`-n 2 --dist loadfile --no-loadscope-reorder`, in pyproject.toml) hands whole files to
its two workers in collection order: the long ones first leave the short ones to fill the end,
instead of one worker finishing the workflow test while the other idles."""


def pytest_collection_modifyitems(config, items):
    """Heavy files first (HEAVY_FIRST, then the rest in their order); `long` tests compile MJX
    programs that take minutes each on 2 cores (several per paper-scale workflow), beyond the
    suite's 10-minute budget: they run only with --long."""
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long test: run with --long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a file's last test (its module fixtures gone), drop the cached programs if this
    worker holds over half of the kernel's memory-map limit, as a long workflow does before a new
    program (`program.release_if_mapped_out`): one worker runs dozens of files' programs, and
    executables read back from the compile cache map their kernels too."""
    yield
    if nextitem is None or nextitem.path != item.path:
        from pql_jax.run import program
        program.release_if_mapped_out()


@pytest.fixture(scope="session", autouse=True)
def shared_compile_cache(tmp_path_factory):
    """A persistent compilation cache for the whole test run, inherited by subprocesses and shared
    by pytest-xdist's workers (their temp folders have one parent): a program one worker compiled
    is read back by the other. JAX writes an entry once and a reader that finds a half-written one
    warns and compiles instead, so the two need no lock."""
    base = tmp_path_factory.getbasetemp()
    path = base.parent / "jax_cache" if os.environ.get("PYTEST_XDIST_WORKER") else base / "jax_cache"
    path.mkdir(exist_ok=True)
    old = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                "jax_persistent_cache_min_compile_time_secs")}
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield path
    for key, value in old.items():
        jax.config.update(key, value)
