"""Running observation statistics over all env observations (mean / variance)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


class RunningStats(struct.PyTreeNode):
    """Mean, variance and sample count of everything seen so far."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array


def init_stats(size: int) -> RunningStats:
    """Stats of no data: mean 0, variance 1 and a tiny count (as gym's RunningMeanStd)."""
    return RunningStats(jnp.zeros(size), jnp.ones(size), jnp.asarray(1e-4, jnp.float32))


@jax.named_scope("obs_stats")
def update_stats(stats: RunningStats, batch: jax.Array) -> RunningStats:
    """Merge a batch [B, size] into the stats (Chan et al. parallel variance)."""
    batch_mean = batch.mean(0)
    batch_var = batch.var(0)
    batch_count = jnp.asarray(batch.shape[0], stats.count.dtype)
    total = stats.count + batch_count
    delta = batch_mean - stats.mean
    mean = stats.mean + delta * batch_count / total
    m2 = stats.var * stats.count + batch_var * batch_count + delta**2 * stats.count * batch_count / total
    return RunningStats(mean, m2 / total, total)


def normalize(stats: RunningStats, obs: jax.Array, clip: float, enabled=True) -> jax.Array:
    """(obs - mean) / std clipped to [-clip, clip]; obs unchanged when not enabled."""
    normed = jnp.clip((obs - stats.mean) / jnp.sqrt(stats.var + 1e-8), -clip, clip)
    return jnp.where(enabled, normed, obs)
