"""The run's arithmetic, once: vector steps, chunks, update counts, buffer rows, evaluation phases.

Everything here is exact integer arithmetic on a config's fields (read duck-typed: this module sits
below `config`, beside `values`), so the learner (inside jit), the host loop and the planner agree
by construction. Where the learner needs a quantity inside a compiled program and the planner
needs it in NumPy, one definition serves both through its array module (`xp`): `update_schedule`.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

# ---- run length ------------------------------------------------------------------------------


def episode_vector_steps(env) -> int:
    """Vector steps of one episode without termination: ceil(episode_length / action_repeat)."""
    return -(-env.episode_length // env.action_repeat)


def num_chunks(config) -> int:
    """Chunks of `run.chunk_steps` vector steps that cover `run.total_env_steps`."""
    return -(-config.run.total_env_steps // (config.run.chunk_steps * config.env.num_envs))


def run_vector_steps(config) -> int:
    """Vector steps of a whole run: `run.total_env_steps` rounded up to whole chunks."""
    return num_chunks(config) * config.run.chunk_steps


# ---- update schedule -------------------------------------------------------------------------


def utd_fraction(utd: float, num_envs: int) -> Fraction:
    """Critic updates per vector step, utd * num_envs, as an exact fraction."""
    return (Fraction(utd).limit_denominator(1 << 24) * num_envs).limit_denominator(1 << 20)


def max_updates_per_step(rate: Fraction) -> int:
    """The most updates any single vector step needs at `rate` updates per vector step."""
    return max(1, math.ceil(rate))


def updates_needed(config) -> int:
    """Update slots per vector step one member's UTD needs: ceil(utd * num_envs)."""
    return max_updates_per_step(utd_fraction(config.agent.utd, config.env.num_envs))


def first_update_step(warmup_steps, n_step: int, xp=np):
    """The first vector step with updates: warm-up is over and a full n-step window is written."""
    return xp.maximum(warmup_steps, n_step - 1)


def update_schedule(step, start, rate_num, rate_den, xp=np):
    """(updates due at vector step `step`, updates done before it) at rate_num / rate_den updates
    per vector step from vector step `start` on.

    floor((t+1) r) - floor(t r) with t = step - start, in integer arithmetic, so the total after T
    steps is exactly floor(T r) with no floating-point drift for rates like 1/8 or 7/3. Only t mod
    rate_den enters a product, which keeps int32 products small inside compiled programs. `xp` is
    numpy (the planner) or jax.numpy (the learner): one definition for both.
    """
    after = xp.maximum(step - start, 0)
    phase = after % rate_den
    due = (phase + 1) * rate_num // rate_den - phase * rate_num // rate_den
    before = (after // rate_den) * rate_num + phase * rate_num // rate_den
    return xp.where(step >= start, due, 0), before


def update_counts(config, steps: int) -> np.ndarray:
    """Critic updates at each of the first `steps` vector steps of one member (NumPy)."""
    rate = utd_fraction(config.agent.utd, config.env.num_envs)
    start = first_update_step(config.agent.warmup_steps, config.agent.n_step)
    return update_schedule(np.arange(steps, dtype=np.int64), start, rate.numerator, rate.denominator)[0]


# ---- replay buffer ---------------------------------------------------------------------------


def buffer_rows(agent, env) -> int:
    """Vector-step rows of the replay ring: capacity / num_envs, at least one n-step window + 1."""
    return max(agent.buffer_capacity // env.num_envs, agent.n_step + 1)


def val_buffer_rows(agent, env) -> int:
    """Rows of the validation buffer: a batch's worth (no more than the replay ring's), or the
    smallest legal buffer where there are no validation envs."""
    if not env.val_envs:
        return agent.n_step + 1
    return max(min(buffer_rows(agent, env), agent.batch_size), agent.n_step + 1)


# ---- evaluation ------------------------------------------------------------------------------


def eval_due(index, total: int, every: int):
    """Whether chunk `index` (0-based) of `total` runs a sequential evaluation: every `every`-th
    chunk and the last. Works on Python ints and on traced int32 arrays alike."""
    return ((index + 1) % every == 0) | (index == total - 1)


def eval_chunks(total: int, every: int) -> int:
    """How many of `total` chunks evaluate (see `eval_due`)."""
    return total // every + (1 if total % every else 0)


def eval_phase(total_vector_steps: int, env) -> int:
    """Parallel evaluation: cohort 0's first episode start in a run of `total_vector_steps`, so
    that its last episode ends with the run."""
    return total_vector_steps % episode_vector_steps(env)


def cohort_phases(phase, horizon: int, cohorts: int, xp=np):
    """Each cohort's first episode start [cohorts]: cohort g runs floor(g * horizon / cohorts)
    steps ahead of cohort 0."""
    offsets = (xp.arange(cohorts) * horizon) // cohorts
    return (phase - offsets) % horizon


def evaluations(total_vector_steps: int, horizon: int, cohorts: int) -> int:
    """Finished cohort episodes of a whole run from phase `total % horizon` (each cohort's last
    one ends floor(g * horizon / cohorts) steps before the run does)."""
    return sum((total_vector_steps - (g * horizon) // cohorts) // horizon for g in range(cohorts))


def result_slots(chunk_steps: int, horizon: int, cohorts: int) -> int:
    """The most cohort episodes one chunk can finish: each cohort ends one every `horizon` steps,
    so at most ceil(chunk_steps / horizon) in any window of `chunk_steps` steps."""
    return cohorts * -(-chunk_steps // horizon)
