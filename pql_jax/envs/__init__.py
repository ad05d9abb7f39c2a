"""Brax, MuJoCo Playground and our MJX ports of dm_control tasks (`dmc:`, pql_jax.envs.dmc) behind
one functional, vectorised, auto-resetting API.

Actions: the learner acts in [-1, 1]; where an env hands its action to the actuators' controls
(Brax, Playground's DM Control suite, the `dmc:` ports) and an actuator's control range is another
finite interval, the adapter maps [-1, 1] affinely onto it, as dm_control's and gym's RL wrappers
do (`to_control`). Playground's locomotion and manipulation tasks scale their actions themselves.

Time-limit truncation and true termination are kept apart: `terminal` means the MDP ended
(no bootstrap), `truncated` means the time limit cut the episode (bootstrap from `next_obs`).
A step whose observation, reward or physics state (qpos/qvel) is not finite, or whose observation
or reward exceeds `env.blowup_bound` in magnitude (a diverging simulation passes through huge
finite values before it reaches NaN), is neither: it is `nonfinite`, its env is reset, and its
reward and next observation are replaced by 0 and the step's own observation, so nothing
non-finite or blown up leaves the adapter (the learner never samples such a transition, see
pql_jax.learner.replay, and its observation never enters the normaliser's statistics).
With `action_repeat` > 1 the sub-steps stop at the first one that ends the episode (terminal or
non-finite): its rewards up to there are summed, and the step ends as that sub-step did.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pql_jax.config import EnvConfig
from pql_jax.envs.families import (BRAX_ENVS, DMC_ENVS, TEST_ENVS, check_env_name, control_range, cpu_loops,
                                   family_options, known_envs, load_sim, reward_range, warn_deadlocking_jaxlib)
from pql_jax.errors import UserError

__all__ = ["BRAX_ENVS", "DMC_ENVS", "TEST_ENVS", "EnvState", "StepOut", "VecEnv", "adapt", "check_env_name",
           "check_options", "check_trainable", "compiler_options", "control_range", "env_batching",
           "known_envs", "make_env", "over_copies", "reward_range", "to_control", "warn_deadlocking_jaxlib"]


class EnvState(struct.PyTreeNode):
    """Vectorised env state plus our own episode bookkeeping (all leaves have a leading env axis)."""

    sim: Any
    """The simulator's own state pytree."""
    obs: jax.Array
    """Current observation [E, obs]."""
    episode_step: jax.Array
    """Steps taken in the current episode [E]."""
    episode_return: jax.Array
    """Undiscounted return so far in the current episode [E]."""
    key: jax.Array
    """PRNG key per env for resets [E, 2]."""


class StepOut(NamedTuple):
    """One vector step's transition, for the learner."""

    next_obs: jax.Array
    """Observation after the action (the final one when the episode ended), [E, obs]."""
    reward: jax.Array
    terminal: jax.Array
    """True termination: do not bootstrap."""
    truncated: jax.Array
    """Time limit reached without termination: bootstrap from next_obs."""
    episode_return: jax.Array
    """Return of episodes that ended this step (0 where none ended; where `nonfinite` that of the
    cut episode, possibly NaN: count only terminal or truncated episodes)."""
    nonfinite: jax.Array
    """The step's observation or reward was not finite: not terminal, not truncated, env reset;
    reward 0 and next_obs = the step's own observation (finite)."""


class VecEnv(NamedTuple):
    """A pure, vmapped env: `reset(key, n) -> EnvState`, `step(state, action, reset=None) -> (EnvState,
    StepOut)`; `reset` ([E] bool) also restarts those envs after this step, whatever their episode."""

    name: str
    obs_size: int
    action_size: int
    reset: Callable[[jax.Array, int], EnvState]
    step: Callable[[EnvState, jax.Array], tuple[EnvState, StepOut]]


def _flat_obs(obs: Any) -> jax.Array:
    if isinstance(obs, dict):  # playground locomotion: actor sees 'state'
        obs = obs["state"]
    return obs


def over_copies(fn: Callable, batching: str, in_axes=0) -> Callable:
    """`fn` mapped over the leading axis of its arguments, with `jax.vmap`'s contract: batched
    (`vmap`) or a `lax.map` loop of single calls (`map`). An `in_axes` entry of None shares that
    argument across the copies. One helper for env copies (`env.batching`) and population
    members (`--member-batching`).

    XLA vectorises some reductions differently once a batch axis exists, so vmapped copies agree
    with single calls only to float rounding (~1e-7 relative), which chaotic training amplifies;
    `map` runs the very same single-copy program, bit-identical to a single call."""
    if batching == "vmap":
        return jax.vmap(fn, in_axes=in_axes)

    def mapped(*args):
        shared = [i for i in range(len(args)) if isinstance(in_axes, (tuple, list)) and in_axes[i] is None]
        per_copy = tuple(a for i, a in enumerate(args) if i not in shared)

        def one(xs):
            it = iter(xs)
            return fn(*[args[i] if i in shared else next(it) for i in range(len(args))])

        return jax.lax.map(one, per_copy)

    return mapped


def env_batching(config: EnvConfig) -> str:
    """`env.batching` resolved: `auto` is `map` on the CPU for a port that declares `cpu_loops`,
    else `vmap`."""
    if config.batching != "auto":
        return config.batching
    return "map" if cpu_loops(config.name) and jax.default_backend() == "cpu" else "vmap"


def compiler_options(config: EnvConfig) -> dict[str, str] | None:
    """Per-program XLA options for programs that step this env on the default backend (None:
    XLA's defaults): fusion off on the CPU where `env.cpu_fusion` resolves to off."""
    fusion = config.cpu_fusion
    if fusion == "auto":
        fusion = "off" if cpu_loops(config.name) else "on"
    if fusion == "off" and jax.default_backend() == "cpu":
        return {"xla_disable_hlo_passes": "fusion"}
    return None


def check_options(config: EnvConfig) -> None:
    """UserError naming an `env.options` key or value the env's family does not take."""
    family_options(config)


def check_trainable(config: EnvConfig) -> None:
    """UserError where the env's options do not apply to it (`check_options`), or this backend
    cannot build its training program: a `cpu_loops` port on the CPU without XLA's fusion
    (`env.cpu_fusion` auto/off), whose learner-plus-env program crashes XLA's CPU compiler (a stack
    overflow in a compiler thread; benchmarks/RESULTS.md#dog-through-train); its env step alone
    compiles and runs unfused (the port scripts use it)."""
    check_options(config)
    if cpu_loops(config.name) and compiler_options(config) is not None:
        raise UserError(
            f"{config.name} does not train on the CPU with env.cpu_fusion={config.cpu_fusion}: XLA's CPU compiler "
            "crashes (stack overflow) on its unfused training program; env.cpu_fusion=on compiles but "
            "trains too slowly to be of use (benchmarks/RESULTS.md#dog-through-train): train it "
            "on a GPU")


def to_control(action, low, high):
    """Canonical actions in [-1, 1] mapped affinely onto [low, high] per entry (numpy or JAX);
    entries whose range is [-1, 1] pass unchanged, bit for bit. Written as an interpolation
    between the ends so that -1 and 1 give exactly `low` and `high` in any precision
    (`low + (action + 1) * (high - low) / 2` gave 1.0999999 for 1.1 in float32)."""
    xp = jnp if isinstance(action, jax.Array) else np
    identity = (low == -1.0) & (high == 1.0)
    mapped = (low * ((1.0 - action) / 2.0) + high * ((1.0 + action) / 2.0)).astype(action.dtype)
    return xp.where(identity, action, mapped)


def _physics_finite(sim_state) -> jax.Array:
    """Whether the simulator's positions and velocities are finite ([] per env: call per env):
    Playground signals `done` on NaN qpos/qvel while the observation may still be finite."""
    data = getattr(sim_state, "data", None)
    data = getattr(sim_state, "pipeline_state", None) if data is None else data
    arrays = [getattr(data, n) for n in ("qpos", "qvel", "q", "qd") if getattr(data, n, None) is not None]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays])) if arrays else jnp.bool_(True)


def _bad_step(sim_state, bound: float) -> jax.Array:
    """Whether one env's step is non-finite or blown up (see the module docstring)."""
    obs, reward = _flat_obs(sim_state.obs), sim_state.reward
    bad = ~jnp.isfinite(reward) | ~jnp.all(jnp.isfinite(obs)) | ~_physics_finite(sim_state)
    if bound > 0:
        bad = bad | (jnp.abs(reward) > bound) | jnp.any(jnp.abs(obs) > bound)
    return bad


def make_env(config: EnvConfig) -> VecEnv:
    """Build the vectorised, auto-resetting env described by `config`."""
    check_env_name(config.name)
    sim = load_sim(config)
    return adapt(sim, config)


def adapt(sim, config: EnvConfig) -> VecEnv:
    """The vectorised, auto-resetting env of a simulator with Brax's / Playground's single-env
    `reset(key)` / `step(state, action)` interface."""
    obs_size = sim.observation_size
    if isinstance(obs_size, dict):
        obs_size = obs_size["state"]
    obs_size = int(obs_size if isinstance(obs_size, int) else obs_size[0])
    action_size = int(sim.action_size)
    episode_length = config.episode_length
    action_repeat = config.action_repeat

    batch = functools.partial(over_copies, batching=env_batching(config))
    sim_reset = batch(sim.reset)
    ranges = control_range(config.name, sim)
    bound = config.blowup_bound

    def one_step(state, act):
        """One env's step: `action_repeat` sub-steps, stopping at the first that ends the episode;
        returns the state with the summed reward and whether the step is bad (non-finite/blown up)."""
        if action_repeat == 1:
            state = sim.step(state, act)
            return state, _bad_step(state, bound)

        def body(carry, _):
            s, total, ended, bad = carry
            nxt = sim.step(s, act)
            nxt_bad = _bad_step(nxt, bound)
            s = jax.tree.map(lambda old, new: jnp.where(ended, old, new), s, nxt)
            total = total + jnp.where(ended, 0.0, nxt.reward)
            bad = bad | (~ended & nxt_bad)
            return (s, total, ended | nxt_bad | (nxt.done > 0.5), bad), None

        init = (state, jnp.zeros(()), jnp.bool_(False), jnp.bool_(False))
        (state, total, ended, bad), _ = jax.lax.scan(body, init, None, length=action_repeat)
        return state.replace(reward=total, done=ended.astype(state.done.dtype)), bad

    def sim_step(states, action):
        if ranges is not None:
            action = to_control(action, *(jnp.asarray(x, action.dtype) for x in ranges))
        return batch(one_step)(states, action)

    def reset(key: jax.Array, num: int) -> EnvState:
        keys = jax.random.split(key, num * 2).reshape(num, 2, -1)
        states = sim_reset(keys[:, 0])
        return EnvState(sim=states, obs=_flat_obs(states.obs), episode_step=jnp.zeros(num, jnp.int32),
                        episode_return=jnp.zeros(num), key=keys[:, 1])

    def step(state: EnvState, action: jax.Array, reset: jax.Array | None = None) -> tuple[EnvState, StepOut]:
        sim_state, nonfinite = sim_step(state.sim, action)
        next_obs = _flat_obs(sim_state.obs)
        reward = sim_state.reward.astype(jnp.float32)
        next_obs = jnp.where(nonfinite[:, None], state.obs, next_obs)
        episode_step = state.episode_step + action_repeat
        terminal = (sim_state.done > 0.5) & ~nonfinite
        truncated = (episode_step >= episode_length) & ~terminal & ~nonfinite
        done = terminal | truncated | nonfinite
        if reset is not None:
            done = done | reset
        episode_return = state.episode_return + reward
        split = jax.vmap(jax.random.split)(state.key)
        new_key, reset_key = split[:, 0], split[:, 1]

        def with_resets(_):
            fresh = sim_reset(reset_key)
            pick = lambda new, old: jnp.where(done.reshape(done.shape + (1,) * (new.ndim - 1)), new, old)
            return jax.tree.map(pick, fresh, sim_state)

        # Skip the reset work on steps where no episode ended (every step but the last of an
        # episode in fixed-length tasks); under vmap of a population this becomes a select.
        sim_state = jax.lax.cond(jnp.any(done), with_resets, lambda _: sim_state, None)
        # A non-finite reward only reaches episode_return: the learner counts returns of terminal or
        # truncated episodes only, and the reset discards it.
        out = StepOut(next_obs=next_obs, reward=jnp.where(nonfinite, 0.0, reward), terminal=terminal,
                      truncated=truncated, episode_return=jnp.where(done, episode_return, 0.0), nonfinite=nonfinite)
        new_state = EnvState(sim=sim_state, obs=_flat_obs(sim_state.obs),
                             episode_step=jnp.where(done, 0, episode_step),
                             episode_return=jnp.where(done, 0.0, episode_return), key=new_key)
        return new_state, out

    return VecEnv(config.name, obs_size, action_size, reset, step)
