"""Isotonic crossings on hand-made curves, run grouping, thresholds, bootstrap determinism."""

import numpy as np
import pandas as pd
import pytest

from pql_jax.scaling import curves as cv
from pql_jax.scaling.hparams import best_hparams, cell_crossings


def test_first_crossing_interpolates_between_logging_points():
    steps = np.array([0.0, 10.0, 20.0, 30.0])
    iso = np.array([[0.0, 100.0, 300.0, 300.0]])
    got = cv.first_crossings(steps, iso, [50.0, 100.0, 200.0, 300.0, 400.0])[0]
    # by hand: 50 is half way from 0 to 100 (step 5); 100 is hit at step 10; 200 is half way
    # between 100 (step 10) and 300 (step 20); 300 at step 20; 400 never
    np.testing.assert_allclose(got[:4], [5.0, 10.0, 15.0, 20.0])
    assert np.isnan(got[4])


def test_crossing_already_reached_at_first_point_is_the_first_step():
    got = cv.first_crossings(np.array([5.0, 10.0]), np.array([[50.0, 60.0]]), [40.0])
    assert got[0, 0] == 5.0


def test_isotonic_pools_violators_then_crossing():
    iso = cv.isotonic_rows(np.array([1.0, 3.0, 2.0, 4.0]))[0]
    np.testing.assert_allclose(iso, [1.0, 2.5, 2.5, 4.0])  # PAVA by hand: (3 + 2) / 2
    # 2.0 lies between 1.0 (step 0) and 2.5 (step 1): 2/3 of the way
    np.testing.assert_allclose(cv.first_crossings(np.arange(4.0), iso[None], [2.0])[0, 0], 2.0 / 3.0)


def test_isotonic_rows_in_one_call_equal_one_fit_per_row():
    from scipy.optimize import isotonic_regression

    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(0.3, 20, (50, 80)), axis=1) + rng.normal(0, 300, (50, 1))
    np.testing.assert_allclose(cv.isotonic_rows(y), [isotonic_regression(r).x for r in y], atol=1e-8)


def _curves(n_seeds=4, utds=(1, 2, 4), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    steps = np.arange(1, 21) * 100.0
    for u in utds:
        for b in (64, 256):
            for s in range(n_seeds):
                ret = 1000 * (1 - np.exp(-steps * u / (800 * (1 + s * 0.1) * (b / 64) ** 0.2)))
                rows.append(pd.DataFrame({"env": "e", "seed": s, "step": steps, "utd": u, "batch_size": b,
                                          "return": ret + rng.normal(0, 20, len(steps))}))
    return pd.concat(rows, ignore_index=True)


def test_bootstrap_is_deterministic_and_seeded_per_group():
    groups = cv.run_groups(_curves())
    thr = {"*": np.array([300.0, 600.0])}
    a = cv.bootstrap_crossings(groups, thr, 50, seed=3)
    b = cv.bootstrap_crossings(groups, thr, 50, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(np.nan_to_num(a), np.nan_to_num(cv.bootstrap_crossings(groups, thr, 50, seed=4)))
    # a group's resamples do not depend on which other groups are present
    c = cv.bootstrap_crossings(groups[::-1], thr, 50, seed=3)[::-1]
    np.testing.assert_array_equal(a, c)
    # row 0 is the plain seed mean, resamples scatter around it
    assert np.isfinite(a[:, 0]).all() and np.nanstd(a[:, 1:], axis=1).max() > 0


def test_resample_means_are_rescaled_means_of_drawn_seeds():
    g = cv.run_groups(_curves())[0]
    n = len(g.returns)
    m = cv.resample_means(g, 5, seed=0)
    np.testing.assert_allclose(m[0], g.returns.mean(0))
    counts = cv.group_rng(0, g.key).multinomial(n, np.full(n, 1 / n), size=5)
    drawn = counts @ g.returns / n
    np.testing.assert_allclose(m[1:], m[0] + np.sqrt(n / (n - 1)) * (drawn - m[0]))
    # the resampled means have the variance of the seed mean, s^2 / n (plain bootstrap: (n-1)/n of it)
    many = cv.resample_means(g, 20000, seed=1)[1:]
    np.testing.assert_allclose(many.var(0), g.returns.var(0, ddof=1) / n, rtol=0.06)


def test_seeds_with_different_logging_steps_are_aligned():
    df = pd.DataFrame({"env": "e", "seed": [0, 0, 0, 1, 1], "step": [0, 10, 20, 0, 20],
                       "return": [0.0, 10.0, 20.0, 0.0, 40.0], "utd": 1.0})
    g = cv.run_groups(df)[0]
    np.testing.assert_allclose(g.steps, [0, 10, 20])
    np.testing.assert_allclose(g.returns[1], [0, 20, 40])  # filled by interpolation


def test_auto_thresholds_between_start_and_common_best_level():
    groups = cv.run_groups(_curves())
    thr = cv.auto_thresholds(groups, ["env", "utd", "batch_size"], n=3)["e"]
    assert len(thr) == 3 and np.all(np.diff(thr) > 0)
    finals = {}
    for g in groups:
        finals.setdefault(g.key[1], []).append(cv.isotonic_rows(g.returns.mean(0))[0, -1])
    assert thr[-1] < min(max(v) for v in finals.values())


def test_best_batch_size_is_bootstrap_mean_of_argmin():
    gdf = pd.DataFrame({"env": "e", "utd": 1.0, "batch_size": [64.0, 256.0], "lr": 1e-3})
    # resample k: crossings of the two batch sizes; best = 64, 256, 64, NaN-free
    D = np.array([[[10.0], [1.0], [5.0], [1.0]], [[20.0], [2.0], [1.0], [9.0]]])
    table, per = best_hparams(gdf, D, 0)
    np.testing.assert_allclose(per["batch_size"][0], [64.0, 256.0, 64.0])  # resamples 1..3
    assert table["batch_size"][0] == pytest.approx((64 + 256 + 64) / 3)
    cells, Dc = cell_crossings(gdf, D, {"*": np.array([500.0])})
    np.testing.assert_allclose(Dc[0, :, 0], [10.0, 1.0, 1.0, 1.0])


def test_d4_averages_best_batch_size_over_learning_rates():
    gdf = pd.DataFrame({"env": "e", "utd": 1.0, "batch_size": [64.0, 256.0, 64.0, 256.0],
                        "lr": [1e-4, 1e-4, 1e-3, 1e-3]})
    D = np.zeros((4, 2, 1))
    D[:, 1, 0] = [1.0, 2.0, 3.0, 1.0]  # lr=1e-4: best 64; lr=1e-3: best 256
    table, _ = best_hparams(gdf, D, 0)
    assert table["batch_size"][0] == pytest.approx((64 + 256) / 2)
