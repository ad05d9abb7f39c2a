"""Device-resident FIFO ring buffer of 1-step transitions, sampled as n-step transitions.

Rows are vector steps ([rows, num_envs, ...]), so each env's transitions lie in time order
and the n-step window of a sample is the next n-1 rows of the same env. The window stops at
the first terminal or truncation: a terminal ends the return with no bootstrap, a truncation
bootstraps from that step's final observation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


class ReplayBuffer(struct.PyTreeNode):
    """Ring storage; `head` is the next row to write, `size` the rows filled."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminal: jax.Array
    truncated: jax.Array
    next_obs: jax.Array
    head: jax.Array
    size: jax.Array


class Batch(struct.PyTreeNode):
    """n-step transitions: target = nstep_return + discount * Q(next_obs, .)."""

    obs: jax.Array
    action: jax.Array
    nstep_return: jax.Array
    next_obs: jax.Array
    discount: jax.Array


def init_buffer(rows: int, num_envs: int, obs_size: int, action_size: int) -> ReplayBuffer:
    """Empty buffer of `rows` vector steps."""
    zeros = lambda *shape: jnp.zeros((rows, num_envs, *shape), jnp.float32)
    flags = jnp.zeros((rows, num_envs), jnp.bool_)
    return ReplayBuffer(zeros(obs_size), zeros(action_size), zeros(), flags, flags, zeros(obs_size),
                        jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def buffer_bytes(rows: int, num_envs: int, obs_size: int, action_size: int) -> int:
    """Bytes of device memory the buffer takes."""
    return rows * num_envs * (4 * (2 * obs_size + action_size + 1) + 2)


def insert(buf: ReplayBuffer, obs, action, reward, terminal, truncated, next_obs) -> ReplayBuffer:
    """Write one vector step (each argument has a leading env axis), overwriting the oldest row."""
    rows = buf.obs.shape[0]
    row = buf.head
    put = lambda store, value: jax.lax.dynamic_update_index_in_dim(store, value.astype(store.dtype), row, 0)
    return buf.replace(obs=put(buf.obs, obs), action=put(buf.action, action), reward=put(buf.reward, reward),
                       terminal=put(buf.terminal, terminal), truncated=put(buf.truncated, truncated),
                       next_obs=put(buf.next_obs, next_obs), head=(row + 1) % rows,
                       size=jnp.minimum(buf.size + 1, rows))


def sampleable_rows(buf: ReplayBuffer, n_step: int):
    """Rows whose full n-step window is already written (the newest n-1 rows are not)."""
    return jnp.maximum(buf.size - (n_step - 1), 0)


def nstep_window(buf: ReplayBuffer, start_rows, envs, n_step: int, gamma, reward_scale):
    """n-step return, bootstrap observation and discount for (row, env) index pairs."""
    rows = buf.obs.shape[0]
    offsets = jnp.arange(n_step)
    window = (start_rows[:, None] + offsets[None, :]) % rows  # [B, n]
    env_idx = envs[:, None]
    rewards = buf.reward[window, env_idx] * reward_scale
    ended = buf.terminal[window, env_idx] | buf.truncated[window, env_idx]
    # alive[k]: no episode end strictly before step k of the window.
    alive = jnp.concatenate([jnp.ones_like(ended[:, :1]), jnp.cumprod(~ended[:, :-1], axis=1).astype(bool)], 1)
    powers = gamma ** offsets.astype(jnp.float32)
    nstep_return = jnp.sum(jnp.where(alive, rewards * powers, 0.0), axis=1)
    length = jnp.sum(alive, axis=1)  # steps used: up to and including the first end
    last = jnp.take_along_axis(window, (length - 1)[:, None], axis=1)[:, 0]
    terminal = buf.terminal[last, envs]
    discount = jnp.where(terminal, 0.0, gamma ** length.astype(jnp.float32))
    return nstep_return, buf.next_obs[last, envs], discount


def sample(buf: ReplayBuffer, key, batch_size: int, n_step: int, gamma, reward_scale=1.0) -> Batch:
    """Uniform n-step transitions with replacement over the sampleable rows and all envs."""
    rows, num_envs = buf.obs.shape[:2]
    row_key, env_key = jax.random.split(key)
    valid = jnp.maximum(sampleable_rows(buf, n_step), 1)
    offset = jax.random.randint(row_key, (batch_size,), 0, valid)
    oldest = (buf.head - buf.size) % rows
    start = (oldest + offset) % rows
    envs = jax.random.randint(env_key, (batch_size,), 0, num_envs)
    nstep_return, next_obs, discount = nstep_window(buf, start, envs, n_step, gamma, reward_scale)
    return Batch(buf.obs[start, envs], buf.action[start, envs], nstep_return, next_obs, discount)
