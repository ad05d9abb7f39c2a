"""The training state pytree and its array-valued hyperparameters."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from pql_jax.learner import replay
from pql_jax.config import Config, utd_fraction
from pql_jax.envs import EnvState
from pql_jax.learner.normalize import RunningStats

F32 = jnp.float32


class HParams(struct.PyTreeNode):
    """Array-valued hyperparameters: may differ between vmapped members of one program."""

    rate_num: jax.Array
    """Critic updates per vector step = rate_num / rate_den (exact utd * num_envs)."""
    rate_den: jax.Array
    critic_actor_ratio: jax.Array
    warmup_steps: jax.Array
    gamma: jax.Array
    tau: jax.Array
    critic_lr: jax.Array
    actor_lr: jax.Array
    weight_decay: jax.Array
    max_grad_norm: jax.Array
    std_min: jax.Array
    std_max: jax.Array
    target_noise: jax.Array
    target_noise_clip: jax.Array
    reward_scale: jax.Array


def hparams_from_config(config: Config) -> HParams:
    """The array-valued hyperparameters of one run."""
    a = config.agent
    rate = utd_fraction(a.utd, config.env.num_envs)
    i32 = lambda v: jnp.asarray(v, jnp.int32)
    f32 = lambda v: jnp.asarray(v, F32)
    return HParams(i32(rate.numerator), i32(rate.denominator), i32(a.critic_actor_ratio), i32(a.warmup_steps),
                   f32(a.gamma), f32(a.tau), f32(a.critic_lr), f32(a.actor_lr), f32(a.weight_decay),
                   f32(a.max_grad_norm), f32(a.std_min), f32(a.std_max), f32(a.target_noise),
                   f32(a.target_noise_clip), f32(a.reward_scale))


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue bit-identically: one pytree."""

    hp: HParams
    actor_params: Any
    actor_opt: Any
    critic_params: Any
    critic_target: Any
    critic_opt: Any
    passive_params: tuple
    passive_opt: tuple
    obs_stats: RunningStats
    env: EnvState
    val_env: EnvState
    buffer: replay.ReplayBuffer
    val_buffer: replay.ReplayBuffer
    key: jax.Array
    step: jax.Array
    """Vector steps done."""
    critic_updates: jax.Array
    actor_updates: jax.Array
    diverged: jax.Array
    """Set once a loss or parameter became NaN/Inf; a diverged state is frozen."""


# TrainState fields that updates change; masking an update selects over these only.
LEARNED = ("actor_params", "actor_opt", "critic_params", "critic_target", "critic_opt", "passive_params",
           "passive_opt", "critic_updates", "actor_updates")


class PopulationSchedule(struct.PyTreeNode):
    """Every member's update schedule, passed unbatched to a vmapped chunk ([K] arrays)."""

    step: jax.Array
    """Vector steps all members of the group have done (they advance together)."""
    rate_num: jax.Array
    rate_den: jax.Array
    warmup_steps: jax.Array
    critic_actor_ratio: jax.Array


def _optimizer(learning_rate, weight_decay, max_norm):
    return optax.chain(optax.clip_by_global_norm(max_norm), optax.adamw(learning_rate, weight_decay=weight_decay))


# Learning rate, weight decay and clip norm live in the optimiser state, so they can be vmapped.
make_optimizer = optax.inject_hyperparams(_optimizer)
