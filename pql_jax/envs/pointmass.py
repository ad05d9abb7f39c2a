"""`test:pointmass`: a tiny pure-JAX reaching task for tests and smoke runs.

Written by hand because every Brax / Playground env takes 10-25 s to compile on a CPU, which
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
