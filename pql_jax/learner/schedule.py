"""PQL's mixed-exploration noise levels (the update schedule is run arithmetic: pql_jax.counts)."""

from __future__ import annotations


import jax.numpy as jnp




def exploration_stds(num_envs: int, std_min, std_max):
    """PQL's mixed exploration: env i has a fixed noise std linspace(std_min, std_max, num_envs)[i]."""
    if num_envs == 1:
        return jnp.asarray([std_min], jnp.float32) * 1.0
    frac = jnp.arange(num_envs, dtype=jnp.float32) / (num_envs - 1)
    return std_min + (std_max - std_min) * frac
