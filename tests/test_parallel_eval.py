"""`run.eval_mode: parallel`: eval envs ride in the training env call with a policy snapshot.

The reference is an independent rollout: from a state at a cohort boundary, the eval envs (the
last rows of `state.env`, fresh there) are stepped alone for one episode with that state's policy;
its mean return is what the chunk that finishes the cohort must report, at that state's step.
"""

import functools

import jax
import numpy as np
import pytest

from conftest import small
from pql_jax.errors import UserError
from pql_jax.learner.pql import num_chunks
from pql_jax.run.program import GroupProgram
from pql_jax.run.sweep import single

PARALLEL = ["run.eval_mode=parallel", "env.val_envs=4", "env.eval_envs=6"]


@functools.cache
def _jitted(learner):
    """The learner's env step and policy, jitted once per learner (a bound method is a new
    function object at each access, so `jax.jit(learner.env.step)` per rollout traced it anew)."""
    return jax.jit(learner.env.step), jax.jit(learner.policy)


def _rollout_return(learner, state, horizon, first=None, count=None):
    """Mean return of one episode per eval env (rows `first` .. `first + count` of the env call;
    default: every eval env), stepped alone with `state`'s policy."""
    n, v, q = learner.env_rows
    first, count = (n + v, q) if first is None else (first, count)
    env_state = jax.tree.map(lambda x: x[first:first + count], state.env)
    assert (np.asarray(env_state.episode_step) == 0).all()  # fresh at a boundary
    total, alive = np.zeros(count), np.ones(count, bool)
    step, policy = _jitted(learner)
    for _ in range(horizon):
        env_state, out = step(env_state, policy(state, env_state.obs))
        total += np.where(alive, np.asarray(out.reward), 0.0)
        alive &= ~np.asarray(out.terminal | out.truncated | out.nonfinite)
    return total.mean()


def _states_and_metrics(config):
    program = GroupProgram.build(single(config).groups[0], "map")
    states, starts, rows = program.initial_state(), [], []
    for index in range(num_chunks(config)):
        starts.append(jax.tree.map(lambda x: x[0], states))
        states, metrics = program.step(states, index * config.run.chunk_steps)
        rows.append({k: v[0] for k, v in metrics.items()})
    return program.learner, starts, rows


def test_parallel_eval_reports_the_snapshot_policy_return_at_its_step():
    # episodes of 50 vector steps, chunks of 25, 150 steps: one cohort, episodes [0, 50), [50, 100),
    # [100, 150): results in chunks 1, 3, 5, each the return of the policy at the episode's start
    config = small(PARALLEL)
    learner, starts, rows = _states_and_metrics(config)
    n = config.env.num_envs
    assert learner.env_rows == (n, 4, 6) and starts[0].env.obs.shape[0] == n + 10
    assert [i for i, r in enumerate(rows) if np.isfinite(r["eval_return"])] == [1, 3, 5]
    for i in (1, 3, 5):
        snapshot = starts[i - 1]
        assert rows[i]["eval_env_steps"] == int(snapshot.step) * n  # the snapshot's step, not the chunk's end
        assert rows[i]["env_steps"] == rows[i]["eval_env_steps"] + 50 * n
        np.testing.assert_allclose(rows[i]["eval_return"], _rollout_return(learner, snapshot, 50), rtol=1e-5)
    assert len({round(float(rows[i]["eval_return"]), 6) for i in (1, 3, 5)}) == 3  # the policy changed


def test_parallel_eval_phase_ends_the_last_episode_with_the_run():
    # 7 chunks (175 steps; same program as above): the first episode starts at step 25, so the last
    # one ends with the run
    config = small([*PARALLEL, "run.total_env_steps=5600"])
    _, _, rows = _states_and_metrics(config)
    finished = [i for i, r in enumerate(rows) if np.isfinite(r["eval_return"])]
    assert finished == [2, 4, 6]
    assert [int(rows[i]["eval_env_steps"]) // config.env.num_envs for i in finished] == [25, 75, 125]


def test_parallel_eval_needs_one_episode():
    with pytest.raises(UserError, match="at least one episode"):
        small([*PARALLEL, "run.total_env_steps=500"])


def test_cohorts_spread_results_over_the_episode():
    # 2 cohorts of 3 envs, episodes of 50 steps, chunks of 25, 150 steps: cohort 0 episodes
    # [0, 50), [50, 100), [100, 150), cohort 1 (25 steps ahead) [25, 75), [75, 125): a result in
    # every chunk but the first, each the return of its snapshot's policy on its own envs.
    config = small([*PARALLEL, "run.eval_cohorts=2"])
    learner, starts, rows = _states_and_metrics(config)
    n, v, q = learner.env_rows
    assert [i for i, r in enumerate(rows) if np.isfinite(r["eval_return"])] == [1, 2, 3, 4, 5]
    for i in range(1, 6):
        snapshot = (i + 1) * 25 - 50
        assert rows[i]["eval_env_steps"] == snapshot * n
        first = n + v + (0 if snapshot % 50 == 0 else q // 2)
        state = starts[snapshot // 25]
        np.testing.assert_allclose(rows[i]["eval_return"], _rollout_return(learner, state, 50, first, q // 2),
                                   rtol=1e-5)


@pytest.mark.parametrize("overrides", [["run.eval_cohorts=4"], ["run.eval_cohorts=0"], ["run.eval_cohorts=60"]])
def test_cohorts_must_divide_the_eval_envs(overrides):
    with pytest.raises(UserError, match="run.eval_cohorts"):
        small([*PARALLEL, *overrides])
