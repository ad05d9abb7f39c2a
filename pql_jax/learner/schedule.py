"""Exact fractional update schedule and mixed-exploration noise levels."""

from __future__ import annotations

import math
from fractions import Fraction

import jax.numpy as jnp


def updates_at_step(step, rate_num, rate_den):
    """Critic updates due at vector step `step` for a rate of rate_num / rate_den per step.

    floor((t+1) r) - floor(t r) in integer arithmetic, so the total after T steps is exactly
    floor(T r) with no floating-point drift, for fractional rates like 1/8 or 7/3. Only the
    step's phase t mod rate_den matters, which keeps the int32 products small.
    """
    phase = jnp.asarray(step, jnp.int32) % rate_den
    return (phase + 1) * rate_num // rate_den - phase * rate_num // rate_den


def max_updates_per_step(rate: Fraction) -> int:
    """The most updates any single vector step needs at this rate."""
    return max(1, math.ceil(rate))


def exploration_stds(num_envs: int, std_min, std_max):
    """PQL's mixed exploration: env i has a fixed noise std linspace(std_min, std_max, num_envs)[i]."""
    if num_envs == 1:
        return jnp.asarray([std_min], jnp.float32) * 1.0
    frac = jnp.arange(num_envs, dtype=jnp.float32) / (num_envs - 1)
    return std_min + (std_max - std_min) * frac
