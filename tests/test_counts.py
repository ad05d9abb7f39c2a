"""The run's arithmetic (pql_jax.counts) against brute force, and its NumPy and JAX forms against
each other exhaustively (the planner's counts must be the learner's)."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pql_jax import counts


@pytest.mark.parametrize("rate", [Fraction(1, 512), Fraction(1, 16), Fraction(3, 8), Fraction(1), Fraction(7, 3),
                                  Fraction(16)])
@pytest.mark.parametrize("start", [0, 2, 33])
def test_update_schedule_numpy_equals_jax_and_floor_of_rate(rate, start):
    steps = np.arange(0, 2000, dtype=np.int64)
    due, before = counts.update_schedule(steps, start, rate.numerator, rate.denominator)
    jit = jax.jit(lambda s: counts.update_schedule(s, jnp.int32(start), jnp.int32(rate.numerator),
                                                   jnp.int32(rate.denominator), xp=jnp))
    jdue, jbefore = jit(jnp.asarray(steps, jnp.int32))
    np.testing.assert_array_equal(due, np.asarray(jdue))
    np.testing.assert_array_equal(before, np.asarray(jbefore))
    # by brute force: after t = step - start steps, floor(t r) updates are done, exactly
    t = np.maximum(steps - start, 0)
    total = np.array([int(x * rate) for x in t + 1])
    np.testing.assert_array_equal(np.where(steps >= start, total, 0), np.cumsum(due))
    np.testing.assert_array_equal(before[steps >= start], np.array([int(x * rate) for x in t])[steps >= start])
    assert due.max() <= counts.max_updates_per_step(rate)


def test_evaluations_and_result_slots_by_brute_force():
    for horizon in (1, 7, 10, 50):
        for cohorts in {1, 2, 3, min(8, horizon), horizon}:
            for total in range(horizon, 4 * horizon + 3):
                phase = total % horizon
                starts = [s for p in counts.cohort_phases(phase, horizon, cohorts) for s in range(p, total, horizon)
                          if s + horizon <= total]
                assert counts.evaluations(total, horizon, cohorts) == len(starts)
                for chunk in (1, 3, horizon, 2 * horizon + 1):
                    most = max(sum(1 for s in starts if lo <= s + horizon - 1 < lo + chunk) for lo in range(total))
                    assert most <= counts.result_slots(chunk, horizon, cohorts)


def test_run_length_and_buffer_rows():
    from helpers import small

    config = small(["run.total_env_steps=4801"])  # 32 envs, chunks of 25: 4800 is 6 chunks, one more step 7
    assert counts.num_chunks(config) == 7 and counts.run_vector_steps(config) == 175
    assert counts.buffer_rows(config.agent, config.env) == 50000 // 32
    assert counts.val_buffer_rows(config.agent, config.env) == config.agent.n_step + 1  # no validation envs
    with_val = small(["env.val_envs=4", "agent.batch_size=64"])
    assert counts.val_buffer_rows(with_val.agent, with_val.env) == 64


def test_reading_a_sweep_file_imports_neither_jax_nor_the_learner():
    """`pql_jax.plan.sweep` parses sweep files and groups members: the run arithmetic it needs
    lives in counts, so reading a sweep (plan, job-array parts) starts no JAX and builds no network."""
    import subprocess
    import sys

    code = ("import sys, pql_jax.plan.sweep; mods = sorted(sys.modules); "
            "print([m for m in mods if m.startswith(('jax', 'flax', 'pql_jax.learner', 'pql_jax.envs'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
