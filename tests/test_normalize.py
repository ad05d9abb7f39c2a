"""Running observation statistics against numpy over the concatenated data; normalisation clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pql_jax.learner import normalize as _normalize
from pql_jax.learner.normalize import RunningStats, init_stats

update_stats = jax.jit(_normalize.update_stats)
normalize = jax.jit(_normalize.normalize)

PRIOR = 1e-4  # init_stats' pseudo-count of a (mean 0, var 1) prior, as gym's RunningMeanStd


def _batches(seed=0):
    rng = np.random.default_rng(seed)
    loc = np.array([3.0, -1.0, 0.0, 100.0], np.float32)
    scale = np.array([2.0, 0.1, 1.0, 5.0], np.float32)
    sizes = [64, 1, 17, 64, 17, 1]  # uneven sizes, few distinct shapes (one compile each)
    return [(loc + scale * rng.standard_normal((n, 4))).astype(np.float32) for n in sizes]


def test_running_stats_match_numpy_over_concatenation():
    batches = _batches()
    stats = init_stats(4)
    for b in batches:
        stats = update_stats(stats, jnp.asarray(b))
    data = np.concatenate(batches).astype(np.float64)
    # Plain numpy over all data. The prior pseudo-point (weight 1e-4, mean 0, var 1) shifts the
    # variance by at most about PRIOR * (1 + mean^2) / N, which bounds the tolerance.
    prior_shift = PRIOR * (1 + data.mean(0) ** 2) / len(data)
    np.testing.assert_allclose(np.asarray(stats.mean), data.mean(0), rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(np.asarray(stats.var) - data.var(0)) <= 1e-4 * data.var(0) + 1.5 * prior_shift)
    assert float(stats.count) == pytest.approx(len(data) + PRIOR, rel=1e-6)


def test_running_stats_equal_weighted_pooling_with_prior():
    # Exact law: the stats equal the weighted mean/variance of the data plus one pseudo-point
    # of weight PRIOR carrying mean 0 and variance 1.
    batches = _batches(1)
    stats = init_stats(4)
    for b in batches:
        stats = update_stats(stats, jnp.asarray(b))
    data = np.concatenate(batches).astype(np.float64)
    total = len(data) + PRIOR
    mean = data.sum(0) / total
    var = (((data - mean) ** 2).sum(0) + PRIOR * (1.0 + mean**2)) / total
    np.testing.assert_allclose(np.asarray(stats.mean), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(stats.var), var, rtol=1e-4, atol=1e-7)


def test_batch_order_does_not_matter():
    batches = _batches(2)
    fwd, rev = init_stats(4), init_stats(4)
    for b in batches:
        fwd = update_stats(fwd, jnp.asarray(b))
    for b in reversed(batches):
        rev = update_stats(rev, jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(fwd.mean), np.asarray(rev.mean), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(fwd.var), np.asarray(rev.var), rtol=1e-4)


def test_normalize_values_and_clipping():
    stats = RunningStats(jnp.array([1.0, -2.0]), jnp.array([4.0, 0.25]), jnp.asarray(10.0))
    obs = jnp.array([[3.0, -2.0], [1.0 + 2 * 10.0, -2.0 - 0.5 * 10.0], [1.0 - 2 * 7.0, -1.0]])
    got = np.asarray(normalize(stats, obs, 5.0))
    # (obs - mean) / sqrt(var): [1, 0], [10, -10] -> clipped to [5, -5], [-7, 2] -> [-5, 2]
    want = np.array([[1.0, 0.0], [5.0, -5.0], [-5.0, 2.0]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(got).max() <= 5.0


def test_normalize_disabled_returns_obs_unchanged():
    stats = RunningStats(jnp.array([1.0, -2.0]), jnp.array([4.0, 0.25]), jnp.asarray(10.0))
    obs = jnp.array([[30.0, -20.0], [0.5, 0.25]])
    np.testing.assert_array_equal(np.asarray(normalize(stats, obs, 5.0, enabled=False)), np.asarray(obs))


def test_normalized_stream_has_unit_stats_within_clip():
    batches = _batches(3)
    stats = init_stats(4)
    for b in batches:
        stats = update_stats(stats, jnp.asarray(b))
    data = np.concatenate(batches)
    normed = np.asarray(normalize(stats, jnp.asarray(data), 1e6))
    np.testing.assert_allclose(normed.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(normed.std(0), 1.0, rtol=1e-3)
