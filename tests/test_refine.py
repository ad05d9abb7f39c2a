"""The refinement rule (pql_jax.scaling.refine): its variance against least squares done by hand
with numpy, its Jacobian against the law's derivative written out, its candidates and costs, the
planted-law comparison with spending the same env steps uniformly (issue 32, section 3), and a
flat batch-size law that no budget determines."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pql_jax.scaling.laws import DATA_SIGMA, DATA_SIGMA_N
from pql_jax.scaling.refine import (Cell, RefineProblem, candidates, law_model, log_jacobian, param_covariance,
                                    power_model, refine_round)

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "refine_rule.py"


def _bench():
    spec = importlib.util.spec_from_file_location("refine_rule", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_imports_no_jax():
    """The rule is numpy / scipy only: importing it loads no JAX (a fresh process; the test run's has it)."""
    code = "import sys, pql_jax.scaling.refine; sys.exit('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=BENCH.parents[1]).returncode == 0


def test_covariance_matches_least_squares():
    """A line log y = c - s log utd: seed-weighted fit = s2 (X^T N X)^-1, equal weights = the
    pseudo-inverse's P diag(s2 / n) P^T, and the two-point design by hand."""
    utd = np.array([1 / 8, 1 / 4, 1, 4])
    seeds = np.array([2, 5, 3, 7])
    s2 = 0.09
    G = log_jacobian(power_model(100.0, 0.4), [np.log(100.0), 0.4], utd)
    X = np.stack([np.ones(4), -np.log(utd)], axis=1)
    np.testing.assert_allclose(G, X, atol=1e-8)
    Xw = np.sqrt(seeds)[:, None] * X
    np.testing.assert_allclose(param_covariance(G, seeds, s2, "seeds"), s2 * np.linalg.inv(Xw.T @ Xw), rtol=1e-6)
    P = np.linalg.pinv(X)
    np.testing.assert_allclose(param_covariance(G, seeds, s2, "equal"), P @ np.diag(s2 / seeds) @ P.T, rtol=1e-6)
    # log y at log utd = -1, +1, one seed each, unit variance: Var(c) = Var(s) = 1/2, Cov = 0
    two = log_jacobian(power_model(1.0, 0.0), [0.0, 0.0], np.exp([-1.0, 1.0]))
    np.testing.assert_allclose(param_covariance(two, [1, 1], 1.0), np.eye(2) / 2, atol=1e-8)


def test_jacobian_and_ridge():
    """d log D / d log(d_min, b, a) of D = d_min (1 + (b/utd)^a) written out; cells at one UTD
    leave b undetermined: a huge finite variance (the ridge), not the pseudo-inverse's small one."""
    d_min, b, a = 1000.0, 0.2, 0.7
    utd = 2.0 ** np.arange(-5, 1)
    cells = [Cell(u, 3, 0.0) for u in utd]
    model = law_model(DATA_SIGMA, {"d_min": d_min, "b": b, "a": a}, cells)
    t = (b / utd) ** a
    want = np.stack([np.ones_like(utd), a * t / (1 + t), a * np.log(b / utd) * t / (1 + t)], axis=1)
    np.testing.assert_allclose(log_jacobian(model, model.theta, utd), want, rtol=1e-6, atol=1e-9)
    flat = log_jacobian(model, model.theta, np.full(4, 0.25))
    assert param_covariance(flat, np.full(4, 3), 0.04)[1, 1] > 1e6


def test_candidates_and_costs():
    """Seeds at every cell, a UTD one grid step beyond each end at every width, a width one step
    beyond each end at every UTD; env steps = runs x run length, critic updates = env steps x utd."""
    cells = tuple(Cell(u, 3, 0.0, 0.04, n) for u in (1 / 16, 1 / 4, 1) for n in (1e4, 4e4))
    model = law_model(DATA_SIGMA_N, {"d_min": 1e3, "a": 0.3, "alpha": 0.7, "b": 2e4, "beta": 0.6}, cells)
    cands = candidates(RefineProblem(model, cells, run_env_steps=1000, runs_per_seed=2))
    new = {(c.kind, c.utd, c.model_size) for c in cands if c.kind != "more seeds"}
    assert new == {("utd below", 1 / 64, 1e4), ("utd below", 1 / 64, 4e4), ("utd above", 4.0, 1e4),
                   ("utd above", 4.0, 4e4)} | {(k, u, n) for u in (1 / 16, 1 / 4, 1)
                                               for k, n in (("width below", 2500.0), ("width above", 1.6e5))}
    above = next(c for c in cands if c.kind == "utd above")
    assert (above.seeds, above.runs, above.env_steps, above.critic_updates) == (3, 6, 6000, 24000)
    seeds = sorted((c.seeds, c.env_steps) for c in cands if c.kind == "more seeds" and c.utd == 1)
    assert seeds == [(1, 2000), (1, 2000), (3, 6000), (3, 6000)]


@pytest.mark.parametrize("name", ["knee inside the grid", "knee beyond the grid"])
def test_rule_beats_uniform_on_planted_laws(name):
    """Over 30 draws, the rule's median 90% interval of log b is narrower than that of the same
    extra env steps spent as more seeds everywhere; with the knee beyond the grid the rule finds on
    its own (the Jacobian at the plausible b) that only UTDs beyond the high end help."""
    bench = _bench()
    r = bench.compare(bench.CASES[name], draws=30, seed=1)
    print(f"\n{name}: median interval of log b: start {r['start']:.3g}, rule {r['rule']:.3g}, "
          f"uniform {r['uniform']:.3g} (ratio {r['rule'] / r['uniform']:.3g}); median |error| rule "
          f"{r['rule_err']:.3g}, uniform {r['uniform_err']:.3g}; env steps rule {r['rule_spent']:.3g}, "
          f"uniform {r['uniform_spent']:.3g}; rule's runs per draw {r['rule_runs']}")
    assert r["rule"] < r["uniform"]
    assert r["rule_spent"] <= r["uniform_spent"]
    if name == "knee beyond the grid":  # new UTDs above the sweep take most of the extra runs
        assert r["rule_runs"].get("utd above", 0) > 0.6 * sum(r["rule_runs"].values())


def _batch_problem(slope: float) -> RefineProblem:
    """B*(utd) = coef utd^-slope at the quickstart's hparam UTDs: a cell's seed is a 3 x 3 grid."""
    utd = np.array([1 / 16, 1 / 4, 1])
    cells = tuple(Cell(u, 3, np.log(80.0) - slope * np.log(u), 0.09) for u in utd)
    return RefineProblem(power_model(80.0, slope), cells, run_env_steps=16_000, runs_per_seed=9)


def test_flat_batch_law_not_determinable():
    """Slope ~0 (data efficiency flat in B): SE can never fall below |slope| within the budget,
    so nothing is spent and the report says why; a small but real slope does get runs."""
    budget = 2 * 81 * 16_000
    plan = refine_round(_batch_problem(0.004), ["slope"], budget)
    assert plan.runs == () and plan.env_steps == 0
    (u,) = plan.undetermined
    assert u.param == "slope" and u.se_best > u.limit == pytest.approx(0.004)
    assert "not determinable within budget" in u.reason
    assert u.runs == () or u.env_steps > budget
    real = refine_round(_batch_problem(0.06), ["slope"], budget)
    assert real.undetermined == () and real.runs and 0 < real.env_steps <= budget / 2
    now, after, limit = real.predicted_se["slope"]
    assert now > limit and after < now
