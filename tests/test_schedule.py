"""Exact fractional update schedule (pql_jax.counts, in its JAX form) and mixed-exploration stds, against Fraction / numpy references."""

import math
from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest

from pql_jax.counts import max_updates_per_step, update_schedule, utd_fraction
from pql_jax.learner.schedule import exploration_stds


def updates_at_step(step, rate_num, rate_den):
    """The learner's form of the schedule (jax.numpy) from step 0: updates due at `step`."""
    return update_schedule(jnp.asarray(step, jnp.int32), 0, rate_num, rate_den, xp=jnp)[0]

RATES = [Fraction(1, 512), Fraction(1, 8), Fraction(1, 3), Fraction(7, 3), Fraction(8), Fraction(5, 2)]


@pytest.mark.parametrize("rate", RATES, ids=str)
def test_schedule_totals_are_exact_floor(rate):
    # Long enough to pass several full periods of the slowest rate (den 512) plus a ragged end.
    T = 3 * 512 + 77
    steps = jnp.arange(T, dtype=jnp.int32)
    counts = np.asarray(updates_at_step(steps, rate.numerator, rate.denominator))
    totals = np.cumsum(counts)
    for t in range(1, T + 1):
        assert totals[t - 1] == math.floor(t * rate), (rate, t)
    # Every step does floor(r) or ceil(r) updates, never anything else.
    assert set(np.unique(counts).tolist()) <= {math.floor(rate), math.ceil(rate)}
    assert counts.max() <= max_updates_per_step(rate)


@pytest.mark.parametrize("rate", RATES, ids=str)
def test_schedule_per_step_definition(rate):
    # Direct definition floor((t+1) r) - floor(t r), including steps far beyond one period.
    steps = [0, 1, 2, 3, 511, 512, 513, 1023, 100_000, 1_000_003, 2**30 + 5]
    got = [int(updates_at_step(t, rate.numerator, rate.denominator)) for t in steps]
    want = [math.floor((t + 1) * rate) - math.floor(t * rate) for t in steps]
    assert got == want


def test_max_updates_per_step():
    assert max_updates_per_step(Fraction(1, 512)) == 1
    assert max_updates_per_step(Fraction(8)) == 8
    assert max_updates_per_step(Fraction(7, 3)) == 3
    assert max_updates_per_step(Fraction(5, 2)) == 3


@pytest.mark.parametrize("utd, num_envs, want", [
    (1 / 512, 4096, Fraction(8)),
    (1 / 65536, 128, Fraction(1, 512)),
    (1 / 65536, 4096, Fraction(1, 16)),
    (1 / 1024, 4096, Fraction(4)),
    (1.0, 3, Fraction(3)),
    (1 / 3, 7, Fraction(7, 3)),
])
def test_utd_fraction_is_exact(utd, num_envs, want):
    got = utd_fraction(utd, num_envs)
    assert isinstance(got, Fraction)
    assert got == want


@pytest.mark.parametrize("n", [1, 2, 7, 4096])
def test_exploration_stds_equal_linspace(n):
    got = np.asarray(exploration_stds(n, 0.05, 0.8))
    assert got.shape == (n,)
    np.testing.assert_allclose(got, np.linspace(0.05, 0.8, n), rtol=1e-6, atol=1e-7)
    assert got[0] == pytest.approx(0.05, rel=1e-6)
    if n > 1:
        assert got[-1] == pytest.approx(0.8, rel=1e-6)
        assert np.all(np.diff(got) > 0)


def test_exploration_stds_single_env_uses_std_min():
    # numpy's linspace(a, b, 1) == [a]
    np.testing.assert_allclose(np.asarray(exploration_stds(1, 0.3, 0.9)), np.linspace(0.3, 0.9, 1))


def test_exploration_stds_equal_bounds():
    np.testing.assert_allclose(np.asarray(exploration_stds(5, 0.2, 0.2)), np.full(5, 0.2), rtol=1e-6)
