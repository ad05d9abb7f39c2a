"""Brax, MuJoCo Playground and our MJX ports of dm_control tasks (`dmc:`, pql_jax.envs.dmc) behind
one functional, vectorised, auto-resetting API.

Time-limit truncation and true termination are kept apart: `terminal` means the MDP ended
(no bootstrap), `truncated` means the time limit cut the episode (bootstrap from `next_obs`).
A step whose observation or reward is not finite (a physics blow-up: Playground signals `done`
on NaN qpos/qvel) is neither: it is `nonfinite`, its env is reset, and its reward and next
observation are replaced by 0 and the step's own observation, so nothing non-finite leaves the
adapter (the learner never samples such a transition, see pql_jax.learner.replay).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from pql_jax.config import EnvConfig
from pql_jax.errors import UserError

BRAX_ENVS = ("ant", "halfcheetah", "hopper", "humanoid", "humanoidstandup", "inverted_pendulum",
             "inverted_double_pendulum", "pusher", "reacher", "swimmer", "walker2d")


DMC_ENVS = ("QuadrupedWalk", "QuadrupedRun", "DogStand", "DogWalk")
"""dm_control tasks ported to MJX here (pql_jax.envs.dmc), named `dmc:<task>`."""

TEST_ENVS = ("test:pointmass", "test:pointmass_nan")
"""Pure-JAX test tasks (pql_jax.envs.pointmass); `_nan` injects non-finite steps."""


def known_envs(include_playground: bool = True) -> list[str]:
    """Every env name this build accepts (importing Playground's registry takes seconds)."""
    names = ["test:pointmass"] + [f"brax:{n}" for n in BRAX_ENVS] + ["test:pointmass_nan"]
    names += [f"dmc:{n}" for n in DMC_ENVS]
    if not include_playground:
        return names
    try:
        from mujoco_playground import registry

        names += [f"playground:{n}" for n in registry.dm_control_suite.ALL_ENVS]
        names += [f"playground:{n}" for n in registry.locomotion.ALL_ENVS]
        names += [f"playground:{n}" for n in registry.manipulation.ALL_ENVS]
    except Exception:  # noqa: BLE001 - playground optional at listing time
        pass
    return names


def reward_range(name: str) -> tuple[float, float] | None:
    """Bounds of one env step's reward where they are known, else None: the test tasks,
    Playground's DM Control suite and the `dmc:` ports give rewards in [0, 1] (dm_control builds
    them from `rewards.tolerance` values in [0, 1])."""
    kind, _, task = name.partition(":")
    if name in TEST_ENVS or (kind == "dmc" and task in DMC_ENVS):
        return 0.0, 1.0
    if kind == "playground":
        try:
            from mujoco_playground import registry

            if task in registry.dm_control_suite.ALL_ENVS:
                return 0.0, 1.0
        except Exception:  # noqa: BLE001 - playground optional
            pass
    return None


def check_env_name(name: str) -> None:
    """Raise UserError (listing the known envs) unless `name` is a known env."""
    if name in known_envs(include_playground=False):
        return
    known = known_envs()
    if name not in known:
        raise UserError(f"unknown env {name!r}; known envs: {', '.join(known)}")


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


@functools.lru_cache(maxsize=None)
def _load_sim(name: str, brax_backend: str, playground_impl: str, episode_length: int, solver_caps=(0, 0),
              dog_contacts: str = "floor"):
    """Instantiate the raw simulator env (cached: building an env parses its model); `solver_caps`:
    (iterations, line-search iterations) of the `dmc:` ports' solver, 0 for the model's own;
    `dog_contacts`: the Dog ports' contact set (`env.dog_contacts`)."""
    kind, _, task = name.partition(":")
    if name in TEST_ENVS:
        from pql_jax.envs.pointmass import PointMass, PointMassNaN

        return PointMassNaN() if name == "test:pointmass_nan" else PointMass()
    if kind == "brax":
        from brax import envs as brax_envs

        return brax_envs.get_environment(task, backend=brax_backend)
    if kind == "playground":
        from mujoco_playground import registry

        overrides = {"impl": playground_impl}
        return registry.load(task, config_overrides=overrides)
    if kind == "dmc":
        if playground_impl != "jax":
            raise UserError(f"{name} runs on MJX's jax implementation only: set env.playground_impl: jax")
        from pql_jax.envs import dmc

        return dmc.load(task, solver_caps=solver_caps, contacts=dog_contacts)
    raise UserError(f"unknown env {name!r}")


#: jaxlib releases whose CPU LAPACK kernels can deadlock concurrent batched calls (pyproject.toml)
DEADLOCKING_JAXLIB = ("0.10.", "0.11.0")


def warn_deadlocking_jaxlib() -> str | None:
    """Warn (and return the message) where the installed jaxlib is one that pyproject.toml
    excludes because batched LAPACK calls on the CPU can hang (installed against the pins)."""
    import warnings
    from importlib.metadata import version

    v = version("jaxlib")
    if not v.startswith(DEADLOCKING_JAXLIB) or jax.default_backend() != "cpu":
        return None
    msg = (f"jaxlib {v} can deadlock batched LAPACK calls on the CPU (MJX's constraint solver at 256+ envs "
           "hung forever); install jaxlib 0.9.2 or >= 0.11.1 (pyproject.toml's pins)")
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return msg


def _sequential(fn: Callable) -> Callable:
    """`fn` over the leading axis of its arguments as a loop of single-env calls (`lax.map`):
    `jax.vmap`'s contract, for `env.batching: map`."""
    return lambda *args: jax.lax.map(lambda xs: fn(*xs), args)


def over_envs(batching: str) -> Callable[[Callable], Callable]:
    """The transform that maps a single-env function over env copies for `env.batching`:
    `jax.vmap` for `vmap`, a `lax.map` loop for `map`."""
    return jax.vmap if batching == "vmap" else _sequential


def compiler_options(config: EnvConfig) -> dict[str, str] | None:
    """Per-program XLA options for programs that step this env on the default backend (None:
    XLA's defaults): fusion off on the CPU where `env.cpu_fusion` resolves to off."""
    fusion = config.cpu_fusion
    if fusion == "auto":
        fusion = "off" if config.name.startswith("dmc:Dog") else "on"
    if fusion == "off" and jax.default_backend() == "cpu":
        return {"xla_disable_hlo_passes": "fusion"}
    return None


def make_env(config: EnvConfig) -> VecEnv:
    """Build the vectorised, auto-resetting env described by `config`."""
    check_env_name(config.name)
    if not config.name.startswith("brax:") or config.brax_backend == "mjx":
        warn_deadlocking_jaxlib()
    sim = _load_sim(config.name, config.brax_backend, config.playground_impl, config.episode_length,
                    (config.solver_iterations, config.solver_ls_iterations), config.dog_contacts)
    obs_size = sim.observation_size
    if isinstance(obs_size, dict):
        obs_size = obs_size["state"]
    obs_size = int(obs_size if isinstance(obs_size, int) else obs_size[0])
    action_size = int(sim.action_size)
    episode_length = config.episode_length
    action_repeat = config.action_repeat

    batch = over_envs(config.batching)
    sim_reset = batch(sim.reset)

    def sim_step(states, action):
        def one(state, act):
            def body(carry, _):
                s, total = carry
                s = sim.step(s, act)
                return (s, total + s.reward), None

            (state, total), _ = jax.lax.scan(body, (state, jnp.zeros(())), None, length=action_repeat)
            return state.replace(reward=total)

        return batch(one)(states, action)

    def reset(key: jax.Array, num: int) -> EnvState:
        keys = jax.random.split(key, num * 2).reshape(num, 2, -1)
        states = sim_reset(keys[:, 0])
        return EnvState(sim=states, obs=_flat_obs(states.obs), episode_step=jnp.zeros(num, jnp.int32),
                        episode_return=jnp.zeros(num), key=keys[:, 1])

    def step(state: EnvState, action: jax.Array, reset: jax.Array | None = None) -> tuple[EnvState, StepOut]:
        sim_state = sim_step(state.sim, action)
        next_obs = _flat_obs(sim_state.obs)
        reward = sim_state.reward.astype(jnp.float32)
        nonfinite = ~jnp.isfinite(reward) | ~jnp.all(jnp.isfinite(next_obs), axis=-1)
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
