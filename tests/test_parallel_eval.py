"""`run.eval_mode: parallel`: eval envs ride in the training env call with a policy snapshot.

The reference is an independent rollout: from a state at a cohort boundary, the eval envs (the
last rows of `state.env`, fresh there) are stepped alone for one episode with that state's policy;
its mean return is what the chunk that finishes the cohort must report, at that state's step.
"""

import csv
import functools

import jax
import numpy as np
import pytest

from helpers import POINTMASS, SHORT, small
from pql_jax.cli import main
from pql_jax.errors import UserError
from pql_jax.counts import episode_vector_steps, eval_phase, num_chunks
from pql_jax.learner.evaluate import sequential_return
from pql_jax.plan.memory import eval_share
from pql_jax.run.loop import eval_results
from pql_jax.run.program import GroupProgram
from pql_jax.plan.sweep import single
from test_tensorboard import scalars

PARALLEL = ["run.eval_mode=parallel", "env.val_envs=4", "env.eval_envs=6"]


@functools.cache
def _jitted(learner):
    """The learner's env step and policy, jitted once per learner (a bound method is a new
    function object at each access, so `jax.jit(learner.env.step)` per rollout traced it anew)."""
    return jax.jit(learner.env.step), jax.jit(learner.policy)


def _rollout_stats(learner, state, horizon, first=None, count=None):
    """(mean return, its std across the envs, mean episode length) of one episode per eval env
    (rows `first` .. `first + count` of the env call; default: every eval env), stepped alone with
    `state`'s policy."""
    n, v, q = learner.env_rows
    first, count = (n + v, q) if first is None else (first, count)
    env_state = jax.tree.map(lambda x: x[first:first + count], state.env)
    assert (np.asarray(env_state.episode_step) == 0).all()  # fresh at a boundary
    total, alive, length = np.zeros(count), np.ones(count, bool), np.zeros(count)
    step, policy = _jitted(learner)
    for _ in range(horizon):
        env_state, out = step(env_state, policy(state, env_state.obs))
        total += np.where(alive, np.asarray(out.reward), 0.0)
        length += alive
        alive &= ~np.asarray(out.terminal | out.truncated | out.nonfinite)
    return total.mean(), total.std(), length.mean()


def _rollout_return(learner, state, horizon, first=None, count=None):
    """Mean return of one episode per eval env (see `_rollout_stats`)."""
    return _rollout_stats(learner, state, horizon, first, count)[0]


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
    results = _results(rows)
    assert [i for i, _, _ in results] == [1, 3, 5]
    for (i, step, ret), (_, _, std, length) in zip(results, _stats(rows)):
        snapshot = starts[i - 1]
        assert step == int(snapshot.step) * n  # the snapshot's step, not the chunk's end
        assert rows[i]["env_steps"] == step + 50 * n
        # the return's mean and spread over the eval envs and their mean episode length
        np.testing.assert_allclose((ret, std, length), _rollout_stats(learner, snapshot, 50), rtol=1e-5, atol=1e-6)
        assert std > 0
    assert len({round(r, 6) for _, _, r in results}) == 3  # the policy changed


def test_parallel_eval_phase_ends_the_last_episode_with_the_run():
    # 7 chunks (175 steps; same program as above): the first episode starts at step 25, so the last
    # one ends with the run
    config = small([*PARALLEL, "run.total_env_steps=5600"])
    _, _, rows = _states_and_metrics(config)
    results = _results(rows)
    assert [i for i, _, _ in results] == [2, 4, 6]
    assert [s // config.env.num_envs for _, s, _ in results] == [25, 75, 125]


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
    results = _results(rows)
    assert [i for i, _, _ in results] == [1, 2, 3, 4, 5]
    for i, step, ret in results:
        snapshot = (i + 1) * 25 - 50
        assert step == snapshot * n
        first = n + v + (0 if snapshot % 50 == 0 else q // 2)
        state = starts[snapshot // 25]
        np.testing.assert_allclose(ret, _rollout_return(learner, state, 50, first, q // 2), rtol=1e-5)


@pytest.mark.parametrize("overrides", [["run.eval_cohorts=4"], ["run.eval_cohorts=0"], ["run.eval_cohorts=60"]])
def test_cohorts_must_divide_the_eval_envs(overrides):
    with pytest.raises(UserError, match="run.eval_cohorts"):
        small([*PARALLEL, *overrides])


def _results(rows):
    """(chunk index, env step of the evaluated policy, return) of every result of every chunk."""
    return [(i, s, r) for i, row in enumerate(rows) for s, r in eval_results(row["eval_return"], row["eval_env_steps"])]


def _stats(rows):
    """(chunk index, env step, return std, mean episode length) of every result of every chunk."""
    return [(i, s, std, length) for i, row in enumerate(rows)
            for s, _, std, length in eval_results(row["eval_return"], row["eval_env_steps"], row["eval_return_std"],
                                                  row["eval_episode_length"])]


def _hand_count(total: int, horizon: int, cohorts: int, phase: int) -> list[int]:
    """Vector steps of the snapshots of every whole cohort episode of a run, counted by brute force:
    cohort g's episodes start at phase - floor(g * horizon / cohorts) mod horizon, back to back."""
    starts = []
    for g in range(cohorts):
        first = (phase - g * horizon // cohorts) % horizon
        starts += [s for s in range(first, total) if (s - first) % horizon == 0 and s + horizon <= total]
    return sorted(starts)


UNIT = ["env.name=test:unit_reward", "env.episode_length=10", "env.eval_envs=8", "run.eval_mode=parallel"]


@pytest.mark.parametrize("cohorts", [1, 4, 8])
def test_every_cohort_episode_of_a_chunk_is_reported(cohorts):
    # episodes of 10 vector steps, chunks of 25: up to 3 results per cohort per chunk. Reward 1 per
    # step, so a whole episode returns 10 (a partial one less); every snapshot step is counted by hand
    config = small([*UNIT, f"run.eval_cohorts={cohorts}"])
    _, _, rows = _states_and_metrics(config)
    n, total = config.env.num_envs, 150
    got = _results(rows)
    assert [s // n for _, s, _ in got] == _hand_count(total, 10, cohorts, eval_phase(total, config.env))
    assert all(r == 10.0 for _, _, r in got)
    assert [(std, length) for _, _, std, length in _stats(rows)] == [(0.0, 10.0)] * len(got)  # by hand
    assert len(got) == eval_share(config).evaluations  # what `plan` announces
    for chunk, step, _ in got:  # each reported by the chunk in which its episode ended
        assert chunk == (step // n + 10 - 1) // 25


def test_the_table_and_tensorboard_get_every_result(tmp_path):
    config = small([*UNIT, "run.eval_cohorts=8"])
    out = tmp_path / "run"
    assert main(["train", "--config", str(POINTMASS), "--out", str(out), "--no-progress",
                 *SHORT, *UNIT, "run.eval_cohorts=8"]) == 0
    with (out / "metrics.csv").open() as handle:
        table = list(csv.DictReader(handle))
    results = [(int(r["step"]), float(r["return"])) for r in table if r["return"] != "nan"]
    n = config.env.num_envs
    assert [s // n for s, _ in results] == _hand_count(150, 10, 8, eval_phase(150, config.env))
    assert all(r == 10.0 for _, r in results)
    assert len(table) - len(results) == num_chunks(config) - len({int(r["vector_steps"]) for r in table
                                                                  if r["return"] != "nan"})
    assert list(table[0])[-4:] == ["eval_return", "eval_env_steps", "eval_return_std", "eval_episode_length"]
    evaluated = [r for r in table if r["return"] != "nan"]
    assert {(r["eval_return_std"], r["eval_episode_length"]) for r in evaluated} == {("0.0", "10.0")}
    tb = scalars(out / "tb")
    assert tb["return/eval"] == results
    assert tb["test/episode_length"] == [(s, 10.0) for s, _ in results]
    assert tb["test/return_std"] == [(s, 0.0) for s, _ in results]


def test_extending_a_run_on_resume_keeps_whole_episodes(tmp_path):
    # The reproduction: horizon 10, 2 cohorts, reward 1 per step; a run of 150 vector steps
    # resumed from its end as one of 175 (whose own phase would be 175 % 10 = 5, not 0)
    args = ["--no-progress", *SHORT, *UNIT, "run.eval_cohorts=2"]
    out = tmp_path / "run"
    assert main(["train", "--config", str(POINTMASS), "--out", str(out), *args]) == 0
    assert main(["train", "--resume", str(out), "--no-progress", "run.total_env_steps=5600"]) == 0
    with (out / "metrics.csv").open() as handle:
        table = [r for r in csv.DictReader(handle) if r["return"] != "nan"]
    steps = [int(r["step"]) // 32 for r in table]
    assert all(float(r["return"]) == 10.0 for r in table)  # whole episodes only
    assert len(steps) == len(set(steps))  # each reported once
    # the first run's phase (150 % 10 = 0) holds on: every whole episode of the 175 steps
    assert steps == _hand_count(175, 10, 2, 0)


def test_sequential_eval_statistics_by_hand():
    # a policy that walks every point outwards: each env leaves the arena (|pos| > 2, a terminal)
    # at its own step, from its own start; return, spread and length counted here by hand
    config = small(["env.eval_envs=8"])
    learner = GroupProgram.build(single(config).groups[0], "map").learner
    key = jax.random.PRNGKey(3)
    policy = lambda obs: np.ones((obs.shape[0], 2), np.float32)
    mean, std, length = jax.jit(lambda k: sequential_return(learner.env, policy, config.env, k))(key)
    start = learner.env.reset(key, 8)
    pos, target = np.asarray(start.obs[:, :2], np.float64), np.asarray(start.obs[:, 2:] + start.obs[:, :2])
    total, steps, alive = np.zeros(8), np.zeros(8), np.ones(8, bool)
    for _ in range(episode_vector_steps(config.env)):
        pos = pos + 0.1
        outside = (np.abs(pos) > 2.0).any(axis=1)
        total += np.where(alive & ~outside, np.exp(-2.0 * np.linalg.norm(target - pos, axis=1)), 0.0)
        steps += alive
        alive &= ~outside
    assert len(set(steps)) > 1 and steps.max() < episode_vector_steps(config.env)  # lengths differ
    np.testing.assert_allclose((mean, std, length), (total.mean(), total.std(), steps.mean()), rtol=1e-4)
