"""Non-finite physics steps (test:pointmass_nan) do not kill a run; randomised initial episode steps;
the C51 support check; the planned buffer bytes equal the learner's real buffers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import small

from pql_jax.envs import make_env
from pql_jax.counts import num_chunks
from pql_jax.learner.pql import make_learner
from pql_jax.learner.train import make_train
from pql_jax.learner.state import hparams_from_config
from pql_jax.plan.costs import plan_text, run_costs, support_warning
from pql_jax.plan.memory import sweep_memory
from pql_jax.plan.sweep import single


def _rollout_nonfinite(env, env_state, steps: int) -> int:
    """Non-finite steps of `steps` vector steps with zero actions (test:pointmass_nan's blow-ups
    and episode ends do not depend on the actions)."""
    def body(state, _):
        state, out = env.step(state, jnp.zeros((state.obs.shape[0], env.action_size)))
        return state, jnp.sum(out.nonfinite)

    return int(jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps)[1].sum())(env_state))


def test_adapter_resets_nonfinite_envs_and_returns_finite_values():
    env = make_env(small(["env.name=test:pointmass_nan"]).env)
    step = jax.jit(env.step)
    state, seen = env.reset(jax.random.PRNGKey(0), 64), 0
    for _ in range(80):
        new, out = step(state, jnp.ones((64, env.action_size)))
        bad = np.asarray(out.nonfinite)
        for x in (out.next_obs, out.reward, new.obs):
            assert np.isfinite(np.asarray(x)).all()
        np.testing.assert_array_equal(np.asarray(out.next_obs)[bad], np.asarray(state.obs)[bad])
        assert (np.asarray(out.reward)[bad] == 0).all()
        assert not (np.asarray(out.terminal) | np.asarray(out.truncated))[bad].any()
        assert (np.asarray(new.episode_step)[bad] == 0).all() and (np.asarray(new.episode_return)[bad] == 0).all()
        seen += bad.sum()
        state = new
    assert seen > 0


@pytest.mark.slow
def test_nonfinite_steps_do_not_kill_a_run():
    """NaN observations and rewards at random steps: the run stays finite, never diverges, and
    counts exactly the injected steps (of training and validation envs). One compiled run with
    the options that touch the same paths (bfloat16 buffer, random starts, validation envs); a
    second, plain float32 run cost the suite 18 s for no path this one misses."""
    config = small(["env.name=test:pointmass_nan", "agent.buffer_dtype=bfloat16", "env.random_episode_start=true",
                    "env.val_envs=4"])
    learner = make_learner(config)
    key, hp = jax.random.PRNGKey(config.run.seed), hparams_from_config(config)
    state, metrics = jax.jit(make_train(config, learner=learner))(key, hp)
    metrics = jax.device_get(metrics)
    start = jax.jit(learner.init)(key, hp)
    steps = num_chunks(config) * config.run.chunk_steps
    injected = _rollout_nonfinite(learner.env, start.env, steps)  # training and validation envs: one env call
    assert injected > 0
    assert int(metrics["nonfinite_transitions"].sum()) == injected
    assert not metrics["diverged"].any() and not metrics["nonfinite"].any()
    for name in ("critic_loss", "actor_loss", "td_train", "eval_return", "critic_param_norm"):
        assert np.isfinite(metrics[name][1:]).all(), name
    assert np.isfinite(metrics["online_return"][metrics["episodes"] > 0]).all()
    for tree in (state.critic_params, state.actor_params, state.obs_stats, state.buffer):
        assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(tree))


def test_random_episode_start_spreads_training_envs_only():
    config = small(["env.random_episode_start=true", "env.val_envs=8", "env.action_repeat=2", "env.eval_envs=4"])
    learner = make_learner(config)
    key, hp = jax.random.PRNGKey(0), hparams_from_config(config)
    state = jax.jit(learner.init)(key, hp)
    start = np.asarray(state.env.episode_step)
    assert start.shape == (config.env.num_envs + 8,)  # training then validation envs, one env call
    assert ((start >= 0) & (start < 50) & (start % 2 == 0)).all()
    assert len(set(start[: config.env.num_envs].tolist())) >= config.env.num_envs // 4
    assert len(set(start[config.env.num_envs:].tolist())) >= 2
    # Their first truncations come at different vector steps (in lockstep without the option).
    def first_truncation(env_state):
        def body(s, _):
            s, out = learner.env.step(s, jnp.zeros((s.obs.shape[0], 2)))
            return s, out.truncated
        return np.argmax(np.asarray(jax.lax.scan(body, env_state, None, length=25)[1]), axis=0)

    assert len(set(first_truncation(state.env).tolist())) >= 8
    plain = make_learner(small(["env.val_envs=8", "env.action_repeat=2", "env.eval_envs=4"]))
    fixed = jax.jit(plain.init)(key, hp)
    assert (np.asarray(fixed.env.episode_step) == 0).all()
    assert len(set(first_truncation(fixed.env).tolist())) == 1
    # Evaluation envs start at 0 either way: the same evaluation with and without the option.
    eval_key = jax.random.PRNGKey(3)
    with_option, without = jax.jit(learner.evaluate)(state, eval_key), jax.jit(plain.evaluate)(state, eval_key)
    assert [float(x) for x in with_option] == [float(x) for x in without]  # mean, std, episode length


def test_c51_support_check_one_line():
    base = ["agent.distributional=true"]
    assert support_warning(single(small(["agent.distributional=false"]))) == []
    lines = support_warning(single(small(base)))  # rewards in [0, 1], gamma 0.99: returns up to 100
    assert len(lines) == 1 and "[0, 100]" in lines[0] and "v_max" in lines[0]
    assert support_warning(single(small([*base, "agent.v_max=100"]))) == []
    assert support_warning(single(small([*base, "agent.reward_scale=0.1"]))) == []  # 0.1 / 0.01 = 10
    assert len(support_warning(single(small([*base, "env.action_repeat=2", "agent.reward_scale=0.1"])))) == 1
    assert len(support_warning(single(small([*base, "agent.v_min=1", "agent.v_max=200"])))) == 1  # returns can be 0
    # unknown reward range (brax): no claim
    assert support_warning(single(small([*base, "env.name=brax:ant"]))) == []
    # the plan prints it
    sweep = single(small(base))
    costs = {0: run_costs(sweep.base, 4, 2)}
    assert lines[0] in plan_text(sweep, costs, 2**40, sweep_memory(sweep.groups))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_planned_buffer_bytes_equal_learner_buffers(dtype):
    config = small([f"agent.buffer_dtype={dtype}", "env.val_envs=3", "env.episode_length=30"])
    learner = make_learner(config)
    shapes = jax.eval_shape(learner.init, jax.random.PRNGKey(0), hparams_from_config(config))
    real = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((shapes.buffer, shapes.val_buffer)))
    assert run_costs(config, learner.env.obs_size, learner.env.action_size).buffer_bytes == real


def test_sequential_env_batching_steps_as_vmap():
    """env.batching: map (a loop of single-env programs, for models whose vectorised compile XLA
    cannot finish) gives vmap's transitions: episode ends, resets and non-finite resets included."""
    def rollout(batching):
        env = make_env(small(["env.name=test:pointmass_nan", "env.episode_length=25",
                              f"env.batching={batching}"]).env)
        actions = jax.random.uniform(jax.random.PRNGKey(1), (60, 32, env.action_size), minval=-1, maxval=1)

        def body(state, action):
            state, out = env.step(state, action)
            return state, (out.next_obs, out.reward, out.truncated, out.nonfinite, state.obs)

        return jax.jit(lambda s: jax.lax.scan(body, s, actions)[1])(env.reset(jax.random.PRNGKey(0), 32))

    def reset_jaxpr(batching):
        env = make_env(small(["env.name=test:pointmass_nan", f"env.batching={batching}"]).env)
        return str(jax.make_jaxpr(lambda key: env.reset(key, 4))(jax.random.PRNGKey(0)))

    assert "scan" in reset_jaxpr("map") and "scan" not in reset_jaxpr("vmap")  # map: a loop over copies
    vmapped, mapped = rollout("vmap"), rollout("map")
    assert mapped[2].any() and mapped[3].any()  # the check covers time-limit and non-finite resets
    for a, b in zip(vmapped, mapped):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-6)


def test_env_batching_must_be_auto_vmap_or_map():
    from pql_jax.config import validate
    from pql_jax.errors import UserError

    with pytest.raises(UserError, match="env.batching must be auto, vmap or map"):
        validate(small(["env.batching=scan"]))


@pytest.mark.parametrize("name, want", [("dmc:DogStand", "map"), ("dmc:DogWalk", "map"), ("dmc:QuadrupedWalk", "vmap"),
                                        ("test:pointmass", "vmap")])
def test_env_batching_auto_asks_the_env(name, want):
    """On the CPU `auto` loops the Dog's env copies (its vmapped program does not compile in useful
    time) and vmaps everything else; an explicit value is kept."""
    from pql_jax.config import EnvConfig
    from pql_jax.envs import env_batching

    assert env_batching(EnvConfig(name=name)) == want
    assert env_batching(EnvConfig(name=name, batching="vmap")) == "vmap"


@pytest.mark.slow
def test_huge_finite_steps_are_treated_as_non_finite_ones():
    """test:pointmass_spike emits one observation and reward of 1e6 (finite) where
    test:pointmass_nan emits NaN (same reset keys, same steps): guarded by env.blowup_bound, the two
    runs are the same run, bit for bit (normaliser, critic, buffer). Unguarded (bound 0), the one
    huge observation leaves its dimensions' std orders of magnitude above the guarded run's.
    The options are test_nonfinite_steps_do_not_kill_a_run's, so its NaN run's program is read
    back from the compile cache instead of compiled again."""
    base = ["agent.buffer_dtype=bfloat16", "env.random_episode_start=true", "env.val_envs=4"]

    def run(name, *extra):
        config = small([f"env.name={name}", *base, *extra])
        key, hp = jax.random.PRNGKey(config.run.seed), hparams_from_config(config)
        state, metrics = jax.jit(make_train(config))(key, hp)
        return jax.device_get(state), jax.device_get(metrics)

    nan_state, nan_metrics = run("test:pointmass_nan")
    spike_state, spike_metrics = run("test:pointmass_spike")
    assert int(spike_metrics["nonfinite_transitions"].sum()) == int(nan_metrics["nonfinite_transitions"].sum()) > 0
    for field in ("obs_stats", "critic_params", "actor_params", "buffer"):
        jax.tree.map(np.testing.assert_array_equal, getattr(spike_state, field), getattr(nan_state, field))
    guarded_std = np.sqrt(spike_state.obs_stats.var)
    assert (guarded_std < 3).all()  # the point's coordinates lie in [-2, 2]
    loose_state, loose_metrics = run("test:pointmass_spike", "env.blowup_bound=0")
    assert int(loose_metrics["nonfinite_transitions"].sum()) == 0
    assert (np.sqrt(loose_state.obs_stats.var) > 100 * guarded_std).all()


def test_updates_wait_for_a_full_window_after_the_buffer_is_lost():
    """A run resumed without its checkpointed buffer starts from an empty one: its first n-1 vector
    steps have no n-step window to sample, so they do no update. By hand, at one update per vector
    step (utd 1/32 at 32 envs) and n = 3: 25 - 2 updates in each 25-step chunk that starts empty."""
    from pql_jax.learner.state import PopulationSchedule

    config = small(["agent.n_step=3", "agent.utd=1/32", "agent.warmup_steps=0"])
    learner = make_learner(config)
    key, hp = jax.random.PRNGKey(0), hparams_from_config(config)
    init, chunk = jax.jit(learner.init), jax.jit(learner.chunk)
    state, metrics = chunk(init(key, hp), PopulationSchedule.of(hp, 0))
    assert int(metrics["critic_updates"]) == 23
    state, metrics = chunk(state, PopulationSchedule.of(hp, 25))
    assert int(metrics["critic_updates"]) == 23 + 25
    state = state.replace(buffer=init(key, hp).buffer)  # what a resume without the buffer restores
    state, metrics = chunk(state, PopulationSchedule.of(hp, 50))
    assert int(metrics["critic_updates"]) == 23 + 25 + 23
