"""Trains a whole sweep in one process: each group of equal-shaped members is one vmapped program
whose population axis is sharded over every visible device."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from jax.sharding import Mesh, PartitionSpec

from pql_jax.run.checkpoint import Checkpointer
from pql_jax.run.plan import Costs, device_memory_bytes, format_bytes, run_costs
from pql_jax.errors import UserError
from pql_jax.run.tables import MetricsTable, TensorBoard
from pql_jax.run.loop import host_row
from pql_jax.run.sweep import Group, Member, Sweep, format_value, masking_waste
from pql_jax.learner.pql import PopulationSchedule, hparams_from_config, make_train, metrics_to_host, num_chunks

RESULTS_FILE = "results.csv"
HPARAM_COLUMNS = ("env.name", "env.num_envs", "agent.utd", "agent.batch_size", "agent.critic_lr", "agent.actor_lr",
                  "agent.critic_width", "agent.critic_depth", "agent.actor_width", "agent.n_step", "agent.gamma",
                  "agent.tau", "agent.weight_decay", "agent.reward_scale", "agent.distributional")


def stack(trees):
    """Stack equal-structured pytrees along a new leading (population) axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


BATCHING = ("auto", "map", "vmap")


def resolve_batching(batching: str) -> str:
    """`auto` -> `map` on CPU (bit-identical to single runs), `vmap` on accelerators (throughput)."""
    if batching not in BATCHING:
        raise UserError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
    if batching == "auto":
        return "map" if jax.devices()[0].platform == "cpu" else "vmap"
    return batching


def over_members(fn, batching: str, in_axes):
    """Apply `fn` to every member of a local block: batched (vmap) or one after another (lax.map).

    XLA vectorises some reductions differently once a batch axis exists, so vmapped members
    agree with single runs only to float rounding (~1e-7 relative), which chaotic training then
    amplifies; lax.map runs the very same per-member program, bit-identical to a single run.
    """
    if batching == "vmap":
        return jax.vmap(fn, in_axes=in_axes)
    shared = [i for i, axis in enumerate(in_axes) if axis is None]

    def mapped(*args):
        per_member = [a for i, a in enumerate(args) if i not in shared]

        def one(xs):
            it = iter(xs)
            return fn(*[args[i] if i in shared else next(it) for i in range(len(args))])

        return jax.lax.map(one, tuple(per_member))

    return mapped


class GroupProgram:
    """The compiled programs of one group: members split over the devices with shard_map, and
    batched or mapped within each device; members padded to a multiple of the devices."""

    def __init__(self, group: Group, batching: str = "auto", devices=None):
        self.group = group
        self.batching = resolve_batching(batching)
        self.learner = make_train(group.config, max_updates=group.max_updates)
        devices = devices or jax.devices()
        self.size = -(-len(group.members) // len(devices)) * len(devices)
        padded = list(group.members) + [group.members[0]] * (self.size - len(group.members))
        mesh = Mesh(np.array(devices), ("pop",))
        pop, rep = PartitionSpec("pop"), PartitionSpec()
        self.hp = stack([hparams_from_config(m.config) for m in padded])
        self.keys = jnp.stack([jax.random.PRNGKey(m.config.run.seed) for m in padded])
        self.schedule = PopulationSchedule(jnp.zeros((), jnp.int32), self.hp.rate_num, self.hp.rate_den,
                                           self.hp.warmup_steps, self.hp.critic_actor_ratio)
        init = over_members(self.learner.init, self.batching, (0, 0))
        chunk = over_members(self.learner.chunk, self.batching, (0, None))
        self.init = jax.jit(jax.shard_map(init, mesh=mesh, in_specs=(pop, pop), out_specs=pop, check_vma=False))
        self.chunk = jax.jit(jax.shard_map(chunk, mesh=mesh, in_specs=(pop, rep), out_specs=(pop, pop),
                                           check_vma=False), donate_argnums=0)

    def initial_state(self):
        return self.init(self.keys, self.hp)

    def step(self, states, vector_steps: int):
        """One chunk of every member; metrics come back as numpy arrays [members]."""
        states, metrics = self.chunk(states, self.schedule.replace(step=jnp.asarray(vector_steps, jnp.int32)))
        metrics = metrics_to_host(metrics)
        return states, {k: v[: len(self.group.members)] for k, v in metrics.items()}


def member_costs(member: Member) -> Costs:
    """Memory and FLOPs of one member (builds the env to learn its sizes)."""
    from pql_jax.envs import make_env

    env = make_env(member.config.env)
    return run_costs(member.config, env.obs_size, env.action_size)


def member_columns(member: Member, group: Group, costs: Costs) -> dict:
    """The hyperparameter columns of a member's rows in the results table."""
    cols = {"member": member.name, "group": group.index, "seed": member.config.run.seed}
    for key in HPARAM_COLUMNS:
        section, name = key.split(".")
        cols[name if key != "env.name" else "env"] = getattr(getattr(member.config, section), name)
    for key, value in member.values.items():
        cols.setdefault(key.split(".")[-1], value)
    cols["utd_label"] = format_value(member.config.agent.utd)
    cols["model_size"] = costs.critic_params
    return cols


def plan_text(sweep: Sweep, costs: dict[int, Costs], memory_limit: float) -> list[str]:
    """The lines `pql-jax plan` prints: members, groups, memory, FLOPs, masking waste."""
    lines = [f"sweep {sweep.name}: {len(sweep.members)} members in {len(sweep.groups)} compiled program(s) "
             f"on {len(jax.devices())} {jax.devices()[0].platform} device(s)", ""]
    lines.append(f"{'member':<48} {'group':>5} {'N critic':>10} {'memory':>10} {'GFLOP/critic upd':>17}")
    for group in sweep.groups:
        for m in group.members:
            c = costs[m.index]
            lines.append(f"{m.name:<48} {group.index:>5} {c.critic_params:>10,} {format_bytes(c.total_bytes):>10} "
                         f"{c.flops_per_critic_update / 1e9:>17.3f}")
    lines.append("")
    total = sum(c.total_bytes for c in costs.values())
    for group in sweep.groups:
        waste, useful, executed = masking_waste(group)
        g_mem = sum(costs[m.index].total_bytes for m in group.members)
        lines.append(f"group {group.index}: {len(group.members)} members, up to {group.max_updates} updates/step, "
                     f"memory {format_bytes(g_mem)}, masked-UTD waste {100 * waste:.1f}% "
                     f"({useful:,} useful of {executed:,} executed critic updates)")
    lines.append(f"total memory ~{format_bytes(total)} (groups run one after another: peak "
                 f"{format_bytes(max(sum(costs[m.index].total_bytes for m in g.members) for g in sweep.groups))}) "
                 f"of {format_bytes(memory_limit)}")
    return lines


def check_sweep_memory(sweep: Sweep, costs: dict[int, Costs]) -> float:
    """UserError (before any compile) if a group cannot fit the device; returns the limit."""
    limit = sweep.base.run.memory_limit_gb * 2**30 or device_memory_bytes()
    for group in sweep.groups:
        need = sum(costs[m.index].total_bytes for m in group.members)
        if need > limit:
            raise UserError(f"group {group.index} ({len(group.members)} members) needs ~{format_bytes(need)} but the "
                            f"device has {format_bytes(limit)}; sweep fewer members or smaller buffers")
    return limit


def prepare_sweep_dir(out: Path, sweep: Sweep, source: Path, resume: bool) -> None:
    """Create the sweep directory, or check that it holds this same sweep when resuming."""
    record = {"name": sweep.name, "members": [m.name for m in sweep.members]}
    saved = out / "sweep.yaml"
    if resume:
        if not saved.is_file():
            raise UserError(f"{out} holds no sweep to resume (no sweep.yaml)")
        if (yaml.safe_load((out / "members.yaml").read_text()) or {}) != record:
            raise UserError(f"{out} holds a different sweep; resume it with its own sweep file")
        return
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already holds files; use --resume or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(source.read_text())
    (out / "members.yaml").write_text(yaml.safe_dump(record, sort_keys=False))


def run_sweep(sweep: Sweep, out: Path, costs: dict[int, Costs], resume: bool = False, progress: bool = True,
              stop_after_chunks: int | None = None, batching: str = "auto") -> list[dict]:
    """Train every group of the sweep; returns the last row of each member."""
    from tqdm.auto import tqdm

    total = sum(num_chunks(g.config) * g.config.run.chunk_steps * g.config.env.num_envs * len(g.members)
                for g in sweep.groups)
    bar = tqdm(total=total, unit="step", unit_scale=True, disable=not progress, dynamic_ncols=True, desc="sweep")
    last_rows: list[dict] = []
    budget = [stop_after_chunks]
    try:
        for group in sweep.groups:
            last_rows += _run_group(group, out, costs, resume, bar, budget, batching)
    finally:
        bar.close()
    return last_rows


def _run_group(group: Group, out: Path, costs: dict[int, Costs], resume: bool, bar, budget: list,
               batching: str) -> list[dict]:
    config = group.config
    program = GroupProgram(group, batching)
    learner = program.learner
    per_chunk = config.run.chunk_steps * config.env.num_envs * len(group.members)
    ckpt = Checkpointer(out / "checkpoints" / f"group{group.index}", config.run.keep_checkpoints,
                        config.run.checkpoint_buffer)
    states = program.initial_state()
    start, meta = 0, {}
    if resume and ckpt.latest_step() is not None:
        states, meta = ckpt.restore(states)
        start = meta["chunk"]
    bar.update(start * per_chunk)
    steps_done = start * config.run.chunk_steps
    table = MetricsTable(out / RESULTS_FILE, steps_done if resume else None,
                         keep=lambda row: int(row["group"]) != group.index)
    if meta.get("done"):
        ckpt.close()
        return []
    columns = {m.index: member_columns(m, group, costs[m.index]) for m in group.members}
    boards = {m.index: TensorBoard(out / "tb" / m.name, purge_step=steps_done * config.env.num_envs if resume else None)
              for m in group.members}
    prev: dict[int, dict] = {}
    started = time.perf_counter() - meta.get("wall_time", 0.0)
    try:
        for index in range(start, learner.num_chunks()):
            if budget[0] is not None:
                if budget[0] <= 0:
                    return []
                budget[0] -= 1
            tick = time.perf_counter()
            states, metrics = program.step(states, index * config.run.chunk_steps)
            elapsed = time.perf_counter() - tick
            rows = []
            for i, member in enumerate(group.members):
                mine = {k: v[i] for k, v in metrics.items()}
                row = host_row(mine, costs[member.index], config.env.num_envs, time.perf_counter() - started,
                               elapsed, prev.get(member.index))
                row = {**columns[member.index], "step": row["env_steps"], "return": row["eval_return"], **row}
                prev[member.index] = row
                rows.append(row)
                boards[member.index].scalars(row, row["env_steps"])
            table.append(rows)
            bar.update(per_chunk)
            bar.set_postfix(members=len(group.members), group=group.index,
                            ret=f"{np.nanmean([r['return'] for r in rows]):.1f}",
                            diverged=int(sum(r["diverged"] for r in rows)))
            done = index + 1 == learner.num_chunks()
            every = config.run.checkpoint_every
            if done or (every and (index + 1) % every == 0):
                ckpt.save(index + 1, states, {"chunk": index + 1, "done": done, "wall_time": rows[-1]["wall_time"]})
        for member in group.members:
            final = prev.get(member.index, {})
            hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                       for k, v in columns[member.index].items()}
            boards[member.index].hparams(hparams, {k: final[k] for k in ("return", "online_return", "td_train",
                                                                         "td_val", "diverged") if k in final})
    finally:
        for board in boards.values():
            board.close()
        ckpt.close()
    return list(prev.values())
