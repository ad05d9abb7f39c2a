"""`test:pointmass`: a tiny pure-JAX reaching task for tests and smoke runs.

Written by hand because every Brax / Playground env takes many seconds to compile on a CPU, which
would make the test suite (determinism, resume, populations, learning) far too slow. It has the
same `reset(rng)` / `step(state, action)` interface as those envs, a true terminal (leaving the
arena) and relies on the time limit for truncation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


class PointState(struct.PyTreeNode):
    pos: jax.Array
    target: jax.Array


class State(struct.PyTreeNode):
    pipeline_state: PointState
    obs: jax.Array
    reward: jax.Array
    done: jax.Array


class PointMass:
    """Move a point in the plane onto a random target; reward exp(-2 * distance) per step.

    Observation: (position, target - position); action: a 2-D step in [-1, 1] scaled by 0.1.
    Leaving the arena |pos| > 2 terminates the episode with reward 0.
    """

    observation_size = 4
    action_size = 2

    def _obs(self, s: PointState):
        return jnp.concatenate([s.pos, s.target - s.pos])

    def reset(self, rng) -> State:
        pos_key, target_key = jax.random.split(rng)
        s = PointState(jax.random.uniform(pos_key, (2,), minval=-1, maxval=1),
                       jax.random.uniform(target_key, (2,), minval=-1, maxval=1))
        return State(s, self._obs(s), jnp.zeros(()), jnp.zeros(()))

    def step(self, state: State, action) -> State:
        s = state.pipeline_state
        pos = s.pos + 0.1 * jnp.clip(action, -1, 1)
        s = s.replace(pos=pos)
        outside = jnp.any(jnp.abs(pos) > 2.0)
        reward = jnp.where(outside, 0.0, jnp.exp(-2.0 * jnp.linalg.norm(s.target - pos)))
        return State(s, self._obs(s), reward, outside.astype(jnp.float32))


class BlowUpState(struct.PyTreeNode):
    pos: jax.Array
    target: jax.Array
    step: jax.Array
    """Steps since reset."""
    blow_up: jax.Array
    """The step at which this episode's physics blows up (drawn at reset; may lie past the time limit)."""


class PointMassNaN(PointMass):
    """`test:pointmass_nan`: PointMass whose physics blows up at a random step of some episodes.

    At reset each episode draws `blow_up` uniformly from 1..`horizon`; at that step the
    observation and reward are NaN and `done` is 1 (as Playground does for NaN qpos/qvel), and
    the state stays NaN until the adapter resets it. There is no terminal (the point is clipped
    to the arena), so episode boundaries and blow-ups depend only on the reset keys, not on the
    actions: a test can count the blow-ups of a run by stepping the same envs with any actions.
    """

    def __init__(self, horizon: int = 400):
        self.horizon = horizon

    def reset(self, rng) -> State:
        pos_key, target_key, blow_key = jax.random.split(rng, 3)
        s = BlowUpState(jax.random.uniform(pos_key, (2,), minval=-1, maxval=1),
                        jax.random.uniform(target_key, (2,), minval=-1, maxval=1), jnp.zeros((), jnp.int32),
                        jax.random.randint(blow_key, (), 1, self.horizon + 1))
        return State(s, self._obs(s), jnp.zeros(()), jnp.zeros(()))

    def step(self, state: State, action) -> State:
        s = state.pipeline_state
        step = s.step + 1
        nan = jnp.where(step == s.blow_up, jnp.nan, 0.0)
        pos = jnp.clip(s.pos + 0.1 * jnp.clip(action, -1, 1), -2.0, 2.0) + nan
        s = s.replace(pos=pos, step=step)
        reward = jnp.exp(-2.0 * jnp.linalg.norm(s.target - pos))
        return State(s, self._obs(s), reward, jnp.isnan(reward).astype(jnp.float32))


class UnitReward(PointMass):
    """`test:unit_reward`: PointMass with reward 1 at every step and no terminal (the point is
    clipped to the arena), so the return of any whole episode is its length, by hand: evaluation
    and `action_repeat` bookkeeping are checked against that count."""

    def step(self, state: State, action) -> State:
        s = state.pipeline_state
        s = s.replace(pos=jnp.clip(s.pos + 0.1 * jnp.clip(action, -1, 1), -2.0, 2.0))
        return State(s, self._obs(s), jnp.ones(()), jnp.zeros(()))


class PointMassSpike(PointMassNaN):
    """`test:pointmass_spike`: PointMassNaN's schedule, but at the drawn step the observation and
    reward are huge and finite (`SPIKE`) for that one step, as a diverging simulator passes through
    before it reaches NaN; the physics itself stays clean and the episode goes on."""

    SPIKE = 1e6

    def step(self, state: State, action) -> State:
        s = state.pipeline_state
        step = s.step + 1
        pos = jnp.clip(s.pos + 0.1 * jnp.clip(action, -1, 1), -2.0, 2.0)
        s = s.replace(pos=pos, step=step)
        spike = step == s.blow_up
        reward = jnp.where(spike, self.SPIKE, jnp.exp(-2.0 * jnp.linalg.norm(s.target - pos)))
        return State(s, jnp.where(spike, self.SPIKE, self._obs(s)), reward, jnp.zeros(()))


TASKS = {"test:pointmass": PointMass, "test:pointmass_nan": PointMassNaN, "test:pointmass_spike": PointMassSpike,
         "test:unit_reward": UnitReward}
"""The test tasks by env name (the one list: `pql_jax.envs.TEST_ENVS` reads it)."""
