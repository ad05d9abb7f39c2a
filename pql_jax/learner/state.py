"""The training state pytree and its array-valued hyperparameters."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from pql_jax.learner import replay
from pql_jax.config import MEMBER, Config, field_keys, get_value
from pql_jax.counts import utd_fraction
from pql_jax.envs import EnvState
from pql_jax.learner.normalize import RunningStats

F32 = jnp.float32


class HParams(struct.PyTreeNode):
    """Per-member hyperparameters as arrays ([] for one run, [K] for a population), so members of
    one program may differ in them: one field per `member(...)` field of the config (pql_jax.config,
    where each is documented), by its short name, except the UTD, which becomes the exact rate
    `rate_num / rate_den` critic updates per vector step, and the seed, which becomes the PRNG key.
    A test checks these fields against the config's declarations."""

    rate_num: jax.Array
    rate_den: jax.Array
    critic_actor_ratio: jax.Array
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
    warmup_steps: jax.Array


def hparams_from_config(config: Config) -> HParams:
    """The per-member hyperparameters of one run, as arrays (derived from the config's declarations)."""
    values = {}
    for key in field_keys(MEMBER):
        name = key.split(".")[1]
        if key == "run.seed":
            continue
        if key == "agent.utd":
            rate = utd_fraction(config.agent.utd, config.env.num_envs)
            values["rate_num"] = jnp.asarray(rate.numerator, jnp.int32)
            values["rate_den"] = jnp.asarray(rate.denominator, jnp.int32)
            continue
        value = get_value(config, key)
        values[name] = jnp.asarray(value, jnp.int32 if isinstance(value, int) else F32)
    return HParams(**values)


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
    """Every env of the one env call: training, then validation, then parallel-eval envs."""
    cohort: Any
    """The parallel evaluation's state (`pql_jax.learner.evaluate.Cohort`), or None."""
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
    """The update schedules of the members a chunk runs together ([K] arrays), unbatched.

    A chunk runs an update slot when any of them needs it, so steps where none updates are
    skipped. Under vmap they are a device's block of members; under lax.map and in a single run,
    the member alone (`program.chunk_over_members`).
    """

    step: jax.Array
    """Vector steps all members of the group have done (they advance together)."""
    rate_num: jax.Array
    rate_den: jax.Array
    warmup_steps: jax.Array
    critic_actor_ratio: jax.Array
    evaluate: jax.Array
    """Whether this chunk runs its sequential evaluation episode (bool scalar; see `counts.eval_due`)."""
    eval_phase: jax.Array
    """Vector step of the first parallel-eval episode start (`counts.eval_phase`; int32 scalar)."""

    @classmethod
    def of(cls, hp: HParams, step, evaluate=True, eval_phase=0) -> "PopulationSchedule":
        """The schedule of members whose stacked hyperparameters are `hp` ([K] arrays, or one member's)."""
        vec = lambda x: jnp.reshape(x, (-1,))
        return cls(jnp.asarray(step, jnp.int32), vec(hp.rate_num), vec(hp.rate_den), vec(hp.warmup_steps),
                   vec(hp.critic_actor_ratio), jnp.asarray(evaluate, jnp.bool_), jnp.asarray(eval_phase, jnp.int32))


def make_optimizer(learning_rate, weight_decay, max_norm):
    """Clip by global norm, then AdamW. The arguments may be per-member arrays (`HParams`): the
    transformation is rebuilt from them at each update, so they live in `TrainState.hp` only and
    the optimiser state holds the moments alone."""
    return optax.chain(optax.clip_by_global_norm(max_norm), optax.adamw(learning_rate, weight_decay=weight_decay))
