"""Evaluation of the deterministic policy, two ways (`run.eval_mode`).

- sequential: after a chunk whose schedule says so, one episode of `eval_envs` fresh envs in its
  own lax.scan: ceil(episode_length / action_repeat) sequential env steps that training waits for.
- parallel: `eval_envs` more envs ride in the training envs' own env call (the last rows of
  `TrainState.env`), acting with a snapshot of the policy (actor parameters and observation
  statistics) taken when their episode starts. Episodes ("cohorts") run back to back, all eval envs
  in lockstep, phased so that the last one ends with the run's last vector step. No sequential
  step is added; each result belongs to the policy at its snapshot's vector step.

Both report the mean undiscounted return over the eval envs of one episode each; an env's return
stops at its first terminal, truncation or non-finite step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from pql_jax.config import episode_vector_steps
from pql_jax.learner.normalize import RunningStats, normalize

F32 = jnp.float32


class Cohort(struct.PyTreeNode):
    """The parallel evaluation's state: the policy snapshot and its episode's running returns."""

    actor_params: Any
    """Actor parameters at the current episode's start."""
    obs_stats: RunningStats
    """Observation statistics at the current episode's start."""
    total: jax.Array
    """Return so far of each eval env's episode [eval_envs]."""
    alive: jax.Array
    """Whether each eval env's episode is still running [eval_envs]."""
    start: jax.Array
    """Vector step at which the current episode (and its snapshot) started."""
    last_return: jax.Array
    """Mean return of the last finished episode (NaN before the first)."""
    last_start: jax.Array
    """Vector step of the last finished episode's snapshot."""


def init_cohort(actor_params, obs_stats: RunningStats, eval_envs: int) -> Cohort:
    """A cohort holding the initial policy; its results count only from the first boundary on."""
    zero = jnp.zeros((), jnp.int32)
    return Cohort(actor_params, obs_stats, jnp.zeros(eval_envs), jnp.zeros(eval_envs, jnp.bool_), zero,
                  F32(jnp.nan), zero)


def boundary(step, phase, horizon: int):
    """Whether a cohort episode starts at vector step `step`: episodes of `horizon` steps back to
    back from `phase` on (`phase` = run length mod horizon, so that the last one ends the run)."""
    return (step >= phase) & ((step - phase) % horizon == 0)


def eval_phase(total_vector_steps: int, env_config) -> int:
    """First cohort start of a run of `total_vector_steps`: the last cohort ends with the run."""
    return total_vector_steps % episode_vector_steps(env_config)


def cohort_actions(cohort: Cohort, actor, obs, agent_config):
    """The snapshot policy's deterministic actions for the eval envs' observations."""
    normed = normalize(cohort.obs_stats, obs, agent_config.obs_clip, agent_config.normalize_obs)
    return actor.apply(cohort.actor_params, normed)


def cohort_begin(cohort: Cohort, starts, actor_params, obs_stats: RunningStats, step) -> Cohort:
    """At a boundary (`starts`), snapshot the current policy and zero the running returns."""
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(starts, a, b), new, old)
    return cohort.replace(actor_params=pick(actor_params, cohort.actor_params),
                          obs_stats=pick(obs_stats, cohort.obs_stats),
                          total=jnp.where(starts, 0.0, cohort.total), alive=cohort.alive | starts,
                          start=jnp.where(starts, step, cohort.start))


def cohort_record(cohort: Cohort, reward, ended, finishes) -> Cohort:
    """Add a step's rewards; when the episode `finishes` (the step before the next boundary),
    store its mean return and snapshot step."""
    total = cohort.total + jnp.where(cohort.alive, reward, 0.0)
    alive = cohort.alive & ~ended & ~finishes
    return cohort.replace(total=total, alive=alive,
                          last_return=jnp.where(finishes, jnp.mean(total), cohort.last_return),
                          last_start=jnp.where(finishes, cohort.start, cohort.last_start))


def sequential_return(env, policy, env_config, key):
    """Mean undiscounted return of one episode of `policy` per eval env, in its own scan."""
    def body(carry, _):
        env_state, total, alive = carry
        env_state, out = env.step(env_state, policy(env_state.obs))
        total = total + jnp.where(alive, out.reward, 0.0)
        return (env_state, total, alive & ~(out.terminal | out.truncated | out.nonfinite)), None

    start = env.reset(key, env_config.eval_envs)
    init = (start, jnp.zeros(env_config.eval_envs), jnp.ones(env_config.eval_envs, jnp.bool_))
    (_, total, _), _ = jax.lax.scan(body, init, None, length=episode_vector_steps(env_config))
    return jnp.mean(total)
