"""Evaluation of the deterministic policy, two ways (`run.eval_mode`).

- sequential: after a chunk whose schedule says so, one episode of `eval_envs` fresh envs in its
  own lax.scan: ceil(episode_length / action_repeat) sequential env steps that training waits for.
- parallel: `eval_envs` more envs ride in the training envs' own env call (the last rows of
  `TrainState.env`), in `run.eval_cohorts` equal cohorts. A cohort's envs run in lockstep, acting
  with a snapshot of the policy (actor parameters and observation statistics) taken when their
  episode starts; its episodes run back to back. Cohort 0's last episode ends with the run's last
  vector step; cohort g runs g/k of an episode ahead, so k cohorts give k results per episode
  length. No sequential step is added; each result belongs to the policy at its snapshot's step.

Both report, over the eval envs of one episode each, the mean undiscounted return, its standard
deviation across the eval envs and the mean episode length (env steps, as `env_steps` counts them:
one per policy action); an env's episode stops at its first terminal, truncation or non-finite
step (that step counted). A chunk returns every result it finished (`result_slots` of them at
most, NaN-padded), each with its policy's vector step. Nothing here feeds back into training: the
same config and seed train bit-identically with or without these statistics.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from pql_jax.counts import episode_vector_steps
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
    length: jax.Array
    """Steps so far of each eval env's episode, counted while it runs [k, eval_envs / k]."""
    start: jax.Array
    """Vector step at which each cohort's current episode (and its snapshot) started [k]."""
    results: jax.Array
    """Mean returns of the episodes finished in the current chunk, in finishing order, NaN-padded
    [result_slots]."""
    result_std: jax.Array
    """Each result's standard deviation of the return across its eval envs [result_slots]."""
    result_length: jax.Array
    """Each result's mean episode length over its eval envs [result_slots]."""
    result_starts: jax.Array
    """Vector step of each result's snapshot (-1 in unused slots) [result_slots]."""
    count: jax.Array
    """Results finished in the current chunk."""



def init_cohort(actor_params, obs_stats: RunningStats, eval_envs: int, cohorts: int, slots: int) -> Cohort:
    """Cohorts holding the initial policy; their results count only from their first boundary on."""
    tile = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (cohorts,) + x.shape), tree)
    shape = (cohorts, eval_envs // cohorts)
    return clear_results(Cohort(tile(actor_params), tile(obs_stats), jnp.zeros(shape), jnp.zeros(shape, jnp.bool_),
                                jnp.zeros(shape, jnp.int32), jnp.zeros(cohorts, jnp.int32), jnp.zeros(slots),
                                jnp.zeros(slots), jnp.zeros(slots), jnp.zeros(slots, jnp.int32),
                                jnp.zeros((), jnp.int32)))


def clear_results(cohort: Cohort) -> Cohort:
    """The cohorts with no result finished yet (at a chunk's start)."""
    return cohort.replace(results=jnp.full_like(cohort.results, jnp.nan),
                          result_std=jnp.full_like(cohort.result_std, jnp.nan),
                          result_length=jnp.full_like(cohort.result_length, jnp.nan),
                          result_starts=jnp.full_like(cohort.result_starts, -1), count=jnp.zeros_like(cohort.count))



def boundary(step, phase, horizon: int):
    """Whether an episode starts at vector step `step` (elementwise over `phase`): episodes of
    `horizon` steps back to back from `phase` on."""
    return (step >= phase) & ((step - phase) % horizon == 0)




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
                          length=jnp.where(starts[:, None], 0, cohort.length),
                          start=jnp.where(starts, step, cohort.start))


def cohort_record(cohort: Cohort, reward, ended, finishes) -> Cohort:
    """Add a step's rewards ([q]); cohorts whose episode `finishes` ([k]; the step before their
    next boundary) append its return statistics and snapshot step to the chunk's results."""
    k = finishes.shape[0]
    total = cohort.total + jnp.where(cohort.alive, reward.reshape(k, -1), 0.0)
    length = cohort.length + cohort.alive
    alive = cohort.alive & ~ended.reshape(k, -1) & ~finishes[:, None]
    # finishing cohorts take the next free slots in cohort order; the others write out of range
    slot = jnp.where(finishes, cohort.count + jnp.cumsum(finishes) - 1, cohort.results.shape[0])
    put = lambda slots, values: slots.at[slot].set(values, mode="drop")
    return cohort.replace(total=total, alive=alive, length=length,
                          results=put(cohort.results, jnp.mean(total, axis=1)),
                          result_std=put(cohort.result_std, jnp.std(total, axis=1)),
                          result_length=put(cohort.result_length, jnp.mean(length, axis=1, dtype=F32)),
                          result_starts=cohort.result_starts.at[slot].set(cohort.start, mode="drop"),
                          count=cohort.count + jnp.sum(finishes, dtype=cohort.count.dtype))


def sequential_return(env, policy, env_config, key):
    """(mean undiscounted return, its std across the eval envs, mean episode length) of one
    episode of `policy` per eval env, in its own scan."""
    def body(carry, _):
        env_state, total, alive, length = carry
        env_state, out = env.step(env_state, policy(env_state.obs))
        total = total + jnp.where(alive, out.reward, 0.0)
        return (env_state, total, alive & ~(out.terminal | out.truncated | out.nonfinite), length + alive), None

    n = env_config.eval_envs
    init = (env.reset(key, n), jnp.zeros(n), jnp.ones(n, jnp.bool_), jnp.zeros(n, jnp.int32))
    (_, total, _, length), _ = jax.lax.scan(body, init, None, length=episode_vector_steps(env_config))
    return jnp.mean(total), jnp.std(total), jnp.mean(length, dtype=F32)


def chunk_metrics(state, sequential_due, sequential, parallel: bool) -> dict:
    """A chunk's evaluation results, each [slots] (NaN where none): `eval_return`, `eval_return_std`
    (across the eval envs), `eval_episode_length` (mean), and `eval_vector_step`, the evaluated
    policy's vector step (-1 where none): every finished cohort episode's (parallel), or the
    chunk's end (sequential: one slot, whose episode `sequential()` runs only when
    `sequential_due`)."""
    if parallel:
        c = state.cohort
        return {"eval_return": c.results, "eval_return_std": c.result_std, "eval_episode_length": c.result_length,
                "eval_vector_step": c.result_starts}
    # a real branch (the flag is the same for every member), so a chunk without eval skips it
    mean, std, length = jax.lax.cond(sequential_due, sequential, lambda: (F32(jnp.nan),) * 3)
    return {"eval_return": mean[None], "eval_return_std": std[None], "eval_episode_length": length[None],
            "eval_vector_step": jnp.where(sequential_due, state.step, -1)[None]}


