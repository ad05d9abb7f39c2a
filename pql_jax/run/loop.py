"""Drives one training run on the host: plan, init or resume, jitted chunks, logs, checkpoints."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from pql_jax import config as cfg_mod
from pql_jax.run.checkpoint import Checkpointer
from pql_jax.config import Config
from pql_jax.run.plan import Costs, device_memory_bytes, format_bytes, run_costs
from pql_jax.errors import UserError
from pql_jax.run.tables import MetricsTable, TensorBoard
from pql_jax.learner.pql import Learner, compiled, hparams_from_config, make_train, metrics_to_host

CONFIG_FILE = "config.yaml"
TABLE_FILE = "metrics.csv"


class DivergedError(UserError):
    """A loss or parameter became NaN/Inf; the run stopped before saving anything bad."""


def check_memory(costs: Costs, config: Config, members: int = 1) -> str:
    """One-line memory plan; raises UserError if it exceeds the device (or run.memory_limit_gb)."""
    limit = config.run.memory_limit_gb * 2**30 or device_memory_bytes()
    need = costs.total_bytes * members
    line = (f"memory: buffer {format_bytes(costs.buffer_bytes * members)}, networks "
            f"{format_bytes(costs.network_bytes * members)}, activations ~{format_bytes(costs.activation_bytes * members)};"
            f" total ~{format_bytes(need)} of {format_bytes(limit)} available")
    if need > limit:
        raise UserError(f"run needs ~{format_bytes(need)} but the device has {format_bytes(limit)}; "
                        "lower agent.buffer_capacity, env.num_envs or agent.batch_size")
    return line


def nonfinite_quantity(row: dict) -> str:
    """Name of the first quantity that is NaN/Inf in a metrics row."""
    for name in ("critic_loss", "actor_loss", "critic_param_norm", "actor_param_norm", "q_mean"):
        if not np.isfinite(row.get(name, 0.0)):
            return name
    return "parameters"


def prepare_run_dir(out: Path, config: Config | None, resume: bool, overrides: list[str]) -> Config:
    """Create or reopen a run directory; returns the config to train with."""
    saved = out / CONFIG_FILE
    if resume:
        if not saved.is_file():
            raise UserError(f"{out} holds no run to resume (no {CONFIG_FILE})")
        bad = [o for o in overrides if not o.startswith("run.total_env_steps=")]
        if bad:
            raise UserError(f"--resume only accepts run.total_env_steps=... overrides, not {bad[0]!r}")
        return cfg_mod.load(saved, overrides)
    if saved.exists() or (out.exists() and any(out.iterdir())):
        raise UserError(f"{out} already holds files; use --resume {out} or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(cfg_mod.dump(config))
    return config


def host_row(metrics: dict, costs: Costs, num_envs: int, wall: float, chunk_time: float, prev: dict | None) -> dict:
    """A table row from a chunk's device metrics plus host-side derived columns."""
    row = {k: (float(v) if np.ndim(v) == 0 else v) for k, v in metrics.items()}
    row["env_steps"] = int(row["env_steps"])
    row["vector_steps"] = int(row["vector_steps"])
    row["critic_updates"] = int(row["critic_updates"])
    row["actor_updates"] = int(row["actor_updates"])
    row["flops"] = row["critic_updates"] * costs.flops_per_critic_update + row["actor_updates"] * costs.flops_per_actor_update
    done_steps = row["env_steps"] - (prev["env_steps"] if prev else 0)
    done_updates = row["critic_updates"] - (prev["critic_updates"] if prev else 0)
    row["env_steps_per_s"] = done_steps / max(chunk_time, 1e-9)
    row["updates_per_s"] = done_updates / max(chunk_time, 1e-9)
    row["wall_time"] = wall
    return row


def plan_run(config: Config) -> tuple[Learner, Costs]:
    """Build the learner and print its size and memory; UserError if it cannot fit."""
    learner = make_train(config)
    costs = run_costs(config, learner.env.obs_size, learner.env.action_size)
    print(f"critic parameters N = {costs.critic_params:,}; actor {costs.actor_params:,}")
    print(check_memory(costs, config))
    return learner, costs


def train_run(config: Config, out: Path, resume: bool = False, progress: bool = True,
              stop_after_chunks: int | None = None, planned: tuple[Learner, Costs] | None = None) -> dict:
    """Train (or resume) one run into `out`; returns the last metrics row.

    `stop_after_chunks` ends the process's work early (used to test resume).
    """
    learner, costs = planned or plan_run(config)
    ckpt = Checkpointer(out / "checkpoints", config.run.keep_checkpoints, config.run.checkpoint_buffer)
    hp = hparams_from_config(config)
    init = compiled(learner, "init")
    state = init(jax.random.PRNGKey(config.run.seed), hp)
    start_chunk, wall_offset = 0, 0.0
    if resume and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        start_chunk, wall_offset = meta["chunk"], meta.get("wall_time", 0.0)
        print(f"resumed from chunk {start_chunk} (env step {meta['env_steps']:,})")
    resume_step = int(state.step) if resume else None
    table = MetricsTable(out / TABLE_FILE, resume_step if resume else None)
    tb = TensorBoard(out / "tb", purge_step=int(state.step) * config.env.num_envs if resume else None)
    chunk = compiled(learner, "chunk", donate_argnums=0)
    total = learner.num_chunks()
    bar = _progress(total * config.run.chunk_steps * config.env.num_envs, start_chunk * config.run.chunk_steps
                    * config.env.num_envs, progress)
    row, prev = {}, None
    started = time.perf_counter() - wall_offset
    try:
        for index in range(start_chunk, total):
            if stop_after_chunks is not None and index - start_chunk >= stop_after_chunks:
                break
            tick = time.perf_counter()
            state, metrics = chunk(state)
            metrics = metrics_to_host(metrics)
            chunk_time = time.perf_counter() - tick
            row = host_row(metrics, costs, config.env.num_envs, time.perf_counter() - started, chunk_time, prev)
            if row["nonfinite"]:
                raise DivergedError(
                    f"{nonfinite_quantity(row)} became NaN/Inf in the chunk ending at env step {row['env_steps']:,}"
                    f" (vector step {row['vector_steps']:,}); last good checkpoint: step "
                    f"{(ckpt.latest_step() or 0) * config.env.num_envs:,} in {out / 'checkpoints'}")
            table.append([row])
            tb.scalars(row, row["env_steps"])
            bar.update(row["env_steps"] - bar.n)
            bar.set_postfix(steps_s=f"{row['env_steps_per_s']:.0f}", upd_s=f"{row['updates_per_s']:.0f}",
                            ret=f"{row['eval_return']:.1f}")
            prev = row
            every = config.run.checkpoint_every
            if index + 1 == total or (every and (index + 1) % every == 0):
                ckpt.save(row["vector_steps"], state, {"chunk": index + 1, "env_steps": row["env_steps"],
                                                       "wall_time": row["wall_time"],
                                                       "with_buffer": config.run.checkpoint_buffer})
    finally:
        bar.close()
        if row:
            tb.hparams(_hparams(config), {k: row[k] for k in ("eval_return", "online_return") if k in row})
        tb.close()
        ckpt.close()
    return row


def _hparams(config: Config) -> dict:
    flat = {}
    for section in ("env", "agent"):
        for key, value in dataclasses.asdict(getattr(config, section)).items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", unit_scale=True, disable=not enabled,
                dynamic_ncols=True, desc="train")
