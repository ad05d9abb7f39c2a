"""Forking (pql_jax/scaling/forking.py) changes no output of `fit all`: the same files, CSV and
JSON byte for byte (summary.json and report.md but for their timings), the same figures, with
the figures drawn by forked children, in this process, or here after the children failed."""

import subprocess
import sys

import pytest

SCRIPT = r"""
import json, os, sys
from pql_jax.scaling import api, forking, plots
from pql_jax.scaling.pipeline import PipelineConfig
from pql_jax.scaling.synthetic import make_sweep

assert "jax" not in sys.modules  # where JAX is loaded, the library does not fork
work = sys.argv[1]
curves = os.path.join(work, "curves.csv")
make_sweep(n_envs=2, utds=(0.25, 1, 4), batch_sizes=(32, 128, 512, 2048), lrs=(1e-4, 5e-4, 2.5e-3), seeds=4,
           points=60, seed=1).to_csv(curves, index=False)
cfg = PipelineConfig(resamples=20, n_thresholds=3)
if not forking.fork_safe():
    print("no-fork")
    sys.exit(0)
forks, real_fork, real_safe, real_render = [], forking.fork, forking.fork_safe, plots.render
forking.fork = lambda *a: forks.append(os.getpid()) or real_fork(*a)
api.fit_all_file(curves, os.path.join(work, "forked"), cfg)
forking.fork_safe = lambda: False
api.fit_all_file(curves, os.path.join(work, "here"), cfg)
forking.fork_safe, parent = real_safe, os.getpid()

def render(res, fn):  # every child fails: the parent draws all the figures
    if os.getpid() != parent:
        raise MemoryError
    return real_render(res, fn)

plots.render = render
api.fit_all_file(curves, os.path.join(work, "rescued"), cfg)

def files(d):
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)

def content(d, name):
    path = os.path.join(d, name)
    if name == "summary.json":
        s = json.load(open(path))
        assert set(s.pop("timings")) >= {"load", "figures"}
        return s
    if name == "report.md":
        lines = open(path).read().splitlines()
        i = lines.index("## Stage timings (s)")
        return lines[:i + 2] + lines[i + 3:]
    return open(path, "rb").read()

ref = os.path.join(work, "forked")
names = files(ref)
for other in ("here", "rescued"):
    assert files(os.path.join(work, other)) == names, other
    for name in names:
        assert content(ref, name) == content(os.path.join(work, other), name), (other, name)
print(len(forks), len([n for n in names if n.endswith(".png")]), len([n for n in names if n.endswith((".csv", ".json"))]))
"""


def test_fit_all_outputs_are_the_same_with_and_without_forking(tmp_path):
    """In a fresh interpreter (the test session has JAX loaded, where the library does not fork)."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    if out.stdout.split() == ["no-fork"]:
        pytest.skip("forking is not safe here (fewer than 2 cores or no fork)")
    forks, pngs, tables = map(int, out.stdout.split())
    assert forks == 2  # the painter child of the forked and of the rescued run (its helper forks in the child)
    assert pngs >= 6 and tables >= 10


def test_no_fork_where_jax_is_loaded():
    """Forking a process with JAX's threads running can deadlock: `fit all` in a process that
    imported JAX (a workflow's, or this test session) draws its figures itself."""
    import jax  # noqa: F401

    from pql_jax.scaling import forking

    assert not forking.fork_safe()
