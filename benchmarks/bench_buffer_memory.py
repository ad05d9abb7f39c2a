"""Replay memory: bytes per stored transition in the PQL regime (4096 envs, 5M transitions,
1000-step episodes) for three observation sizes, with the buffer's real nbytes, and the
`memory_analysis()` of a compiled test:pointmass chunk with a 2M-transition buffer.

    python benchmarks/bench_buffer_memory.py            # table + compiled chunk, float32 and bfloat16
"""

from __future__ import annotations

import json

import jax

from pql_jax import config as cfg_mod
from pql_jax.learner import replay
from pql_jax.learner.pql import make_learner
from pql_jax.learner.state import PopulationSchedule, hparams_from_config

TASKS = (("pointmass-like", 5, 2), ("CheetahRun", 17, 6), ("HumanoidStand", 67, 21))


def bytes_table(envs: int = 4096, capacity: int = 5_000_000, episode: int = 1000) -> list[str]:
    rows = capacity // envs
    lines = [f"{envs} envs x {rows} rows = {rows * envs:,} transitions, {episode}-step episodes "
             f"(final-observation FIFO entries per env: {replay.end_slots(rows, episode)} + {replay.end_slots(rows, episode)})",
             "| task (obs, action) | obs + next_obs (before) | obs once, float32 | ratio | obs once, bfloat16 | ratio "
             "| real nbytes float32 / bfloat16 (before) |", "|---|---|---|---|---|---|---|"]
    for name, obs, act in TASKS:
        before = 4 * (2 * obs + act + 1) + 2  # the former layout: obs, next_obs, action, reward (f32), 2 bool flags
        per, real = {}, {}
        for dtype in ("float32", "bfloat16"):
            buf = replay.init_buffer(rows, envs, obs, act, dtype, episode)
            real[dtype] = sum(x.nbytes for x in jax.tree.leaves(buf))
            assert real[dtype] == replay.buffer_bytes(rows, envs, obs, act, dtype, episode)
            per[dtype] = real[dtype] / (rows * envs)
            del buf
        lines.append(f"| {name} ({obs}, {act}) | {before} B | {per['float32']:.2f} B | {before / per['float32']:.2f}x "
                     f"| {per['bfloat16']:.2f} B | {before / per['bfloat16']:.2f}x | {real['float32'] / 1e6:.0f} / "
                     f"{real['bfloat16'] / 1e6:.0f} MB ({before * rows * envs / 1e6:.0f} MB) |")
    return lines


def compiled_chunk(dtype: str) -> dict:
    config = cfg_mod.load("configs/pointmass.yaml", ["agent.buffer_capacity=2000000", "env.num_envs=1024",
                                                     f"agent.buffer_dtype={dtype}"])
    learner = make_learner(config)
    hp = hparams_from_config(config)
    state = jax.eval_shape(learner.init, jax.random.PRNGKey(0), hp)
    m = jax.jit(learner.chunk, donate_argnums=0).lower(state, PopulationSchedule.of(hp, 0)).compile().memory_analysis()
    return {"dtype": dtype, "buffer_bytes": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.buffer)),
            "argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes, "temp": m.temp_size_in_bytes,
            "alias": m.alias_size_in_bytes}


if __name__ == "__main__":
    print("\n".join(bytes_table()))
    for dtype in ("float32", "bfloat16"):
        print(json.dumps(compiled_chunk(dtype)))
