"""Problems 3.1 / 3.2 and optimum precision against brute-force search on fine grids."""

import numpy as np
import pytest

from pql_jax.scaling.budget import BudgetModel, delta_from_throughput
from pql_jax.scaling.laws import DATA_SIGMA, DATA_SIGMA_N
from pql_jax.scaling.propose import round_batch, round_sig

P1 = {"d_min": 1e5, "b": 0.45, "a": 0.74}
P2 = {"d_min": 1e5, "a": 0.45, "alpha": 0.74, "b": 3e5, "beta": 0.6}


def _model_sigma(delta=3e3):
    return BudgetModel("e", 0, 500.0, lambda s, n: DATA_SIGMA.predict(P1, utd=s) * np.ones(np.shape(n)),
                       lambda s, n: 300.0 * np.asarray(s, float) ** -0.47, 10.0, delta, (0.25, 8.0), 1.0)


def _model_sigma_n(delta=3e8):
    return BudgetModel("e", 0, 500.0, lambda s, n: DATA_SIGMA_N.predict(P2, utd=s, model_size=n),
                       lambda s, n: 300.0 * np.asarray(s, float) ** -0.47 * np.ones(np.shape(n)), 10.0, delta,
                       (0.25, 8.0), 1.0, (1e5, 6.4e6))


def test_budget_optimal_utd_matches_brute_force():
    m = _model_sigma()
    opt = m.solve_budget()
    s = np.geomspace(0.25 / 8, 64, 200_001)
    F = 10 * 300 * s ** -0.47 * s * DATA_SIGMA.predict(P1, utd=s) + 3e3 * DATA_SIGMA.predict(P1, utd=s)
    assert opt["budget"] <= F.min() * (1 + 1e-9)
    assert opt["utd"] == pytest.approx(s[F.argmin()], rel=1e-3)
    assert not opt["at_edge"]


def test_budget_optimal_utd_and_model_size_match_brute_force():
    m = _model_sigma_n()
    opt = m.solve_budget()
    s, n = np.meshgrid(np.geomspace(0.25 / 8, 64, 1500), np.geomspace(1e5 / 8, 6.4e6 * 8, 1500), indexing="ij")
    D = DATA_SIGMA_N.predict(P2, utd=s, model_size=n)
    F = 10 * n * 300 * s ** -0.47 * s * D + 3e8 * D
    assert opt["budget"] <= F.min() * (1 + 1e-6)
    i, j = np.unravel_index(F.argmin(), F.shape)
    assert opt["utd"] == pytest.approx(s[i, j], rel=0.02)
    assert opt["model_size"] == pytest.approx(n[i, j], rel=0.02)


def test_problem_3_1_against_brute_force():
    m = _model_sigma()
    s = np.geomspace(0.25 / 8, 64, 400_001)
    D = DATA_SIGMA.predict(P1, utd=s)
    C = 10 * 300 * s ** 0.53 * D
    cap = np.median(C)
    got = m.max_data_efficiency(cap)
    assert got["compute"] <= cap * (1 + 1e-9)
    assert got["data"] == pytest.approx(D[C <= cap].min(), rel=1e-4)
    dcap = np.median(D)
    got = m.max_compute_efficiency(dcap)
    assert got["data"] <= dcap * (1 + 1e-9)
    assert got["compute"] == pytest.approx(C[D <= dcap].min(), rel=1e-4)
    assert not m.max_data_efficiency(C.min() / 2)["feasible"]


def test_precision_range_edges_sit_at_the_tolerance():
    m = _model_sigma()
    opt = m.solve_budget()
    prec = m.precision(opt)
    for tol in (5, 10):
        lo, hi = prec[f"utd_{tol}pct_lo"], prec[f"utd_{tol}pct_hi"]
        assert lo < opt["utd"] < hi
        for edge in (lo, hi):
            assert m.budget(edge) / opt["budget"] == pytest.approx(1 + tol / 100, abs=2e-3)
    assert prec["utd_10pct_ratio"] > prec["utd_5pct_ratio"]
    prec2 = _model_sigma_n().precision(_model_sigma_n().solve_budget())
    assert prec2["model_size_5pct_ratio"] > 1


def test_frontier_is_pareto_ordered_and_delta_from_throughput():
    f = _model_sigma().frontier()
    assert np.all(np.diff(f["data"]) < 0)  # D falls as utd grows
    assert delta_from_throughput(1e12, 1e4) == 1e8


def test_rounding_of_proposals():
    assert round_batch(100) == 96 and round_batch(104) == 112 and round_batch(3) == 16
    assert round_sig(0.000123456) == 0.000123 and round_sig(1234.5) == 1230.0
