"""The whole run as one pure, jittable function of (key, hyperparameters), as purejaxrl's
`make_train(config)`: for the Python API and tests. `pql-jax train` and `sweep` run the same
chunks from a host loop (pql_jax.run.loop), which checkpoints, logs and can stop between them;
tests check the two agree.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from pql_jax import counts
from pql_jax.config import Config
from pql_jax.learner.pql import Learner, make_learner
from pql_jax.learner.state import HParams, PopulationSchedule, TrainState


def make_train(config: Config, max_updates: int | None = None,
               learner: Learner | None = None) -> Callable[[jax.Array, HParams], tuple[TrainState, dict]]:
    """`train(key, hp) -> (final state, metrics per chunk)` for runs of `config`'s length, chunking
    and evaluation schedule. `jax.jit(jax.vmap(train))` trains a population over seeds and
    hyperparameters; `learner` (built from `config` when None) shares an already built one."""
    learner = learner or make_learner(config, max_updates)
    chunks, every, steps = counts.num_chunks(config), config.run.eval_every, config.run.chunk_steps
    phase = counts.eval_phase(chunks * steps, config.env)

    def train(key: jax.Array, hp: HParams) -> tuple[TrainState, dict]:
        state = learner.init(key, hp)

        def body(state, index):
            due = counts.eval_due(index, chunks, every)
            return learner.chunk(state, PopulationSchedule.of(hp, index * steps, due, phase))

        return jax.lax.scan(body, state, jnp.arange(chunks, dtype=jnp.int32))

    return train
