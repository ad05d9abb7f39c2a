"""`run.eval_mode: parallel`: eval envs ride in the training env call with a policy snapshot.

The reference is an independent rollout: from a state at a cohort boundary, the eval envs (the
last rows of `state.env`, fresh there) are stepped alone for one episode with that state's policy;
its mean return is what the chunk that finishes the cohort must report, at that state's step.
"""

import jax
import numpy as np
import pytest

from conftest import run_alone, small
from pql_jax.errors import UserError
from pql_jax.learner.pql import num_chunks
from pql_jax.run.program import GroupProgram
from pql_jax.run.sweep import single

PARALLEL = ["run.eval_mode=parallel", "env.val_envs=4", "env.eval_envs=6"]


def _rollout_return(learner, state, horizon):
    """Mean return of one episode per eval env, stepped alone with `state`'s policy."""
    n, v, q = learner.env_rows
    env_state = jax.tree.map(lambda x: x[n + v:], state.env)
    assert (np.asarray(env_state.episode_step) == 0).all()  # fresh at a boundary
    total, alive = np.zeros(q), np.ones(q, bool)
    for _ in range(horizon):
        env_state, out = learner.env.step(env_state, learner.policy(state, env_state.obs))
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
    # chunks of one episode (50 vector steps): every chunk starts a cohort and finishes it
    config = small([*PARALLEL, "run.chunk_steps=50"])
    learner, starts, rows = _states_and_metrics(config)
    n = config.env.num_envs
    assert learner.env_rows == (n, 4, 6) and starts[0].env.obs.shape[0] == n + 10
    for start, row in zip(starts, rows):
        assert row["eval_env_steps"] == int(start.step) * n  # the snapshot's step, not the chunk's end
        assert row["env_steps"] == row["eval_env_steps"] + 50 * n
        np.testing.assert_allclose(row["eval_return"], _rollout_return(learner, start, 50), rtol=1e-5)
    assert len({round(float(r["eval_return"]), 6) for r in rows}) == len(rows)  # the policy changed


def test_parallel_eval_phase_ends_the_last_episode_with_the_run():
    # 6 chunks of 25 vector steps = 150 steps, episodes of 50: a cohort finishes every other chunk,
    # the last one in the last chunk; with 7 chunks (175 steps) the first starts at step 25.
    for total, finished in ((4800, [1, 3, 5]), (5600, [2, 4, 6])):
        config = small([*PARALLEL, f"run.total_env_steps={total}"])
        rows = run_alone(config)
        assert [i for i, r in enumerate(rows) if np.isfinite(r["eval_return"])] == finished
        ends = [int(rows[i]["vector_steps"]) for i in finished]
        assert [int(rows[i]["eval_env_steps"]) // config.env.num_envs for i in finished] == [e - 50 for e in ends]
        assert ends[-1] == len(rows) * config.run.chunk_steps


def test_parallel_eval_needs_one_episode():
    with pytest.raises(UserError, match="at least one episode"):
        small([*PARALLEL, "run.total_env_steps=500"])
