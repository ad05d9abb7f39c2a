"""Evaluation of the deterministic policy, two ways (`run.eval_mode`).

- sequential: after a chunk whose schedule says so, one episode of `eval_envs` fresh envs in its
  own lax.scan: ceil(episode_length / action_repeat) sequential env steps that training waits for.
- parallel: `eval_envs` more envs ride in the training envs' own env call (the last rows of
  `TrainState.env`), in `run.eval_cohorts` equal cohorts. A cohort's envs run in lockstep, acting
  with a snapshot of the policy (actor parameters and observation statistics) taken when their
  episode starts; its episodes run back to back. Cohort 0's last episode ends with the run's last
  vector step; cohort g runs g/k of an episode ahead, so k cohorts give k results per episode
  length. No sequential step is added; each result belongs to the policy at its snapshot's step.

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
    """The parallel evaluation's state: k cohorts of eval envs, each with its own policy snapshot
    and running returns (leading axis k = `run.eval_cohorts`)."""

    actor_params: Any
    """Actor parameters at each cohort's current episode start [k, ...]."""
    obs_stats: RunningStats
    """Observation statistics at each cohort's current episode start [k, ...]."""
    total: jax.Array
    """Return so far of each eval env's episode [k, eval_envs / k]."""
    alive: jax.Array
    """Whether each eval env's episode is still running [k, eval_envs / k]."""
    start: jax.Array
    """Vector step at which each cohort's current episode (and its snapshot) started [k]."""
    last_return: jax.Array
    """Mean return of the last finished episode of any cohort (NaN before the first)."""
    last_start: jax.Array
    """Vector step of the last finished episode's snapshot."""


def init_cohort(actor_params, obs_stats: RunningStats, eval_envs: int, cohorts: int) -> Cohort:
    """Cohorts holding the initial policy; their results count only from their first boundary on."""
    tile = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (cohorts,) + x.shape), tree)
    shape = (cohorts, eval_envs // cohorts)
    return Cohort(tile(actor_params), tile(obs_stats), jnp.zeros(shape), jnp.zeros(shape, jnp.bool_),
                  jnp.zeros(cohorts, jnp.int32), F32(jnp.nan), jnp.zeros((), jnp.int32))


def cohort_phases(phase, horizon: int, cohorts: int):
    """Each cohort's first episode start [k]: cohort g runs `g * horizon / k` steps ahead of cohort
    0, whose last episode ends with the run (`phase` = run length mod horizon)."""
    offsets = (jnp.arange(cohorts, dtype=jnp.int32) * horizon) // cohorts
    return (phase - offsets) % horizon


def boundary(step, phase, horizon: int):
    """Whether an episode starts at vector step `step` (elementwise over `phase`): episodes of
    `horizon` steps back to back from `phase` on."""
    return (step >= phase) & ((step - phase) % horizon == 0)


def eval_phase(total_vector_steps: int, env_config) -> int:
    """Cohort 0's first episode start in a run of `total_vector_steps`: its last one ends the run."""
    return total_vector_steps % episode_vector_steps(env_config)


def evaluations(total_vector_steps: int, horizon: int, cohorts: int) -> int:
    """Finished cohort episodes of a whole run (cohort g's last one ends g * horizon / k steps early)."""
    return sum((total_vector_steps - (g * horizon) // cohorts) // horizon for g in range(cohorts))


def cohort_actions(cohort: Cohort, actor, obs, agent_config):
    """Each cohort's snapshot policy's deterministic actions for its eval envs' observations [q, obs]."""
    k = cohort.start.shape[0]

    def act(params, stats, cohort_obs):
        return actor.apply(params, normalize(stats, cohort_obs, agent_config.obs_clip, agent_config.normalize_obs))

    grouped = obs.reshape((k, -1) + obs.shape[1:])
    actions = jax.vmap(act)(cohort.actor_params, cohort.obs_stats, grouped)
    return actions.reshape((obs.shape[0],) + actions.shape[2:])


def cohort_begin(cohort: Cohort, starts, actor_params, obs_stats: RunningStats, step) -> Cohort:
    """Cohorts at a boundary (`starts`, [k]) snapshot the current policy and zero their returns."""
    def pick(new, old):
        return jax.tree.map(lambda a, b: jnp.where(starts.reshape((-1,) + (1,) * (b.ndim - 1)), a[None], b), new, old)

    return cohort.replace(actor_params=pick(actor_params, cohort.actor_params),
                          obs_stats=pick(obs_stats, cohort.obs_stats),
                          total=jnp.where(starts[:, None], 0.0, cohort.total), alive=cohort.alive | starts[:, None],
                          start=jnp.where(starts, step, cohort.start))


def cohort_record(cohort: Cohort, reward, ended, finishes) -> Cohort:
    """Add a step's rewards ([q]); cohorts whose episode `finishes` ([k]; the step before their
    next boundary) store its mean return and snapshot step (the latest snapshot if several)."""
    k = finishes.shape[0]
    total = cohort.total + jnp.where(cohort.alive, reward.reshape(k, -1), 0.0)
    alive = cohort.alive & ~ended.reshape(k, -1) & ~finishes[:, None]
    latest = jnp.argmax(jnp.where(finishes, cohort.start, -1))
    done = jnp.any(finishes)
    return cohort.replace(total=total, alive=alive,
                          last_return=jnp.where(done, jnp.mean(total[latest]), cohort.last_return),
                          last_start=jnp.where(done, cohort.start[latest], cohort.last_start))


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


def chunk_metrics(state, finished, sequential_due, sequential, parallel: bool) -> dict:
    """A chunk's `eval_return` (NaN without a result) and `eval_vector_step`, the evaluated
    policy's vector step: the finished cohort's snapshot (parallel) or the chunk's end
    (sequential, whose episode `sequential()` runs only when `sequential_due`)."""
    if parallel:
        cohort = state.cohort
        return {"eval_return": jnp.where(finished, cohort.last_return, jnp.nan), "eval_vector_step": cohort.last_start}
    # a real branch (the flag is the same for every member), so a chunk without eval skips it
    value = jax.lax.cond(sequential_due, sequential, lambda: F32(jnp.nan))
    return {"eval_return": value, "eval_vector_step": state.step}


def eval_due(index, total: int, every: int):
    """Whether chunk `index` (0-based) of `total` evaluates: every `every`-th chunk and the last.

    Works on Python ints and on traced int32 arrays alike."""
    return ((index + 1) % every == 0) | (index == total - 1)


def eval_chunks(total: int, every: int) -> int:
    """How many of `total` chunks evaluate (see `eval_due`)."""
    return total // every + (1 if total % every else 0)
