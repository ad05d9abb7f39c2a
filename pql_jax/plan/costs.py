"""What a run or a sweep will cost before it starts: parameters, buffer bytes and FLOPs per member
(from the config and the env's sizes), the memory check against each group's compiled chunk
(`pql_jax.plan.memory`, nothing allocated), and the plan `pql-jax plan` prints."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import jax

from pql_jax import envs
from pql_jax.config import Config
from pql_jax.counts import buffer_rows, episode_vector_steps, val_buffer_rows
from pql_jax.errors import UserError
from pql_jax.learner.networks import trunk_param_count
from pql_jax.learner.replay import buffer_bytes
from pql_jax.plan.memory import GroupMemory, eval_share
from pql_jax.plan.sweep import Member, Sweep, masking_waste
from pql_jax.run.program import resolve_batching


@dataclass(frozen=True)
class Costs:
    """What one run needs."""

    critic_params: int
    """Parameters of the double-Q critic (both heads): the model size N of the scaling laws."""
    actor_params: int
    passive_params: int
    buffer_bytes: int
    """Replay and validation buffers, as the learner allocates them."""
    flops_per_critic_update: float
    flops_per_actor_update: float


def run_costs(config: Config, obs_size: int, action_size: int) -> Costs:
    """Parameters, buffer bytes and FLOPs of `config` for an env with these observation and action sizes.

    FLOPs count 2 per multiply-add over the dense layers: a critic update is a forward and
    backward (3x forward) pass of the critic, a target critic forward and an actor forward on the
    next observations; an actor update is an actor forward and backward plus a critic forward and
    backward to the actions. Passive critics add their own forward and backward passes.
    """
    a, e = config.agent, config.env
    out = a.num_atoms if a.distributional else 1
    q_net = lambda width: 2 * trunk_param_count(a.critic_arch, obs_size + action_size, width, a.critic_depth,
                                                 a.taper, out, a.layer_norm)
    critic = q_net(a.critic_width)
    actor = trunk_param_count(a.actor_arch, obs_size, a.actor_width, a.actor_depth, a.taper, action_size, a.layer_norm)
    passive = sum(q_net(w) for w in a.passive_critic_widths)
    layout = (a.buffer_dtype, episode_vector_steps(e))  # as Learner.buffer_layout
    buf = buffer_bytes(buffer_rows(a, e), e.num_envs, obs_size, action_size, *layout)
    if e.val_envs:
        buf += buffer_bytes(val_buffer_rows(a, e), e.val_envs, obs_size, action_size, *layout)
    batch = a.batch_size
    critic_flops = 2.0 * batch * (3 * critic + critic + actor) + 2.0 * batch * 3 * passive
    actor_flops = 2.0 * batch * (3 * actor + 3 * critic)
    return Costs(critic, actor, passive, buf, critic_flops, actor_flops)


def device_memory_bytes() -> int:
    """Memory of the default JAX device (host RAM for the CPU backend)."""
    device = jax.devices()[0]
    try:
        stats = device.memory_stats()
        if stats and stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    except Exception:  # noqa: BLE001 - CPU devices have no memory stats
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def format_bytes(n: float) -> str:
    """Human-readable byte count."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024


def member_costs(member: Member) -> Costs:
    """Memory and FLOPs of one member (builds the env to learn its sizes)."""
    env = envs.make_env(member.config.env)
    return run_costs(member.config, env.obs_size, env.action_size)


def sweep_costs(sweep: Sweep) -> dict[int, Costs]:
    """Costs of every member, by member index; each distinct env is built once (a Playground env
    takes about 2 s to build: 243 members of one workflow sweep took 8 minutes one by one, and
    every job-array part computes the whole sweep's costs to find its share)."""
    sizes = {}
    for m in sweep.members:
        if m.config.env not in sizes:
            env = envs.make_env(m.config.env)
            sizes[m.config.env] = (env.obs_size, env.action_size)
    return {m.index: run_costs(m.config, *sizes[m.config.env]) for m in sweep.members}


def memory_limit(config: Config) -> float:
    """Bytes a group may use: run.memory_limit_gb, else the device's memory."""
    return config.run.memory_limit_gb * 2**30 or device_memory_bytes()


def check_memory(sweep: Sweep, memory: dict[int, GroupMemory]) -> float:
    """UserError (before anything is allocated or written) if a group's compiled chunk
    (`memory.sweep_memory`, nothing allocated) cannot fit the device; returns the limit."""
    limit = memory_limit(sweep.base)
    for group in sweep.groups:
        if group.index not in memory:
            continue  # not compiled: an earlier group is refused below
        need = memory[group.index].peak_bytes
        if need > limit:
            who = f"group {group.index} ({len(group.members)} members)" if len(sweep.members) > 1 else "run"
            fit = f"; {memory[group.index].members_fit(limit)} of its members fit a device" if len(group.members) > 1 else ""
            raise UserError(f"{who} needs ~{format_bytes(need)} but the device has {format_bytes(limit)}{fit}; "
                            "lower agent.buffer_capacity, env.num_envs or agent.batch_size, or sweep fewer members")
    return limit


def _memory_line(mem: GroupMemory, limit: float) -> str:
    return (f"compiled chunk ({mem.platform}, {mem.batching}): peak {format_bytes(mem.peak_bytes)} per device "
            f"(state {format_bytes(mem.argument_bytes)}, temporaries {format_bytes(mem.temp_bytes)}; compiled in "
            f"{mem.compile_seconds:.1f} s); {mem.members_fit(limit)} members of this shape fit "
            f"{format_bytes(limit)}")


def _eval_line(config) -> str:
    e = eval_share(config)
    if e.parallel_envs:
        return (f"evaluation: parallel, {e.parallel_envs} eval envs ({e.cohorts} cohort(s)) in the env call of "
                f"{e.env_call_envs} training envs "
                f"(+{100 * e.parallel_envs / e.env_call_envs:.1f}% env width), {e.evaluations} evaluations per run, "
                f"no sequential eval steps: share 0.0%")
    return (f"evaluation: {e.eval_chunks} of {e.chunks} chunks (run.eval_every={config.run.eval_every}), "
            f"{e.eval_steps:,} sequential eval steps vs {e.vector_steps:,} training vector steps: "
            f"share {100 * e.share:.1f}%")


def plan_text(sweep: Sweep, costs: dict[int, Costs], limit: float, memory: dict[int, GroupMemory],
              batching: str = "auto") -> list[str]:
    """The plan `pql-jax plan` and `train` print: members, groups, each group's compiled peak memory
    and members per device, FLOPs, masking waste (under `batching`), evaluation share."""
    if len(sweep.members) == 1:
        c = costs[sweep.members[0].index]
        lines = [f"critic parameters N = {c.critic_params:,}; actor {c.actor_params:,}",
                 _memory_line(memory[sweep.groups[0].index], limit)]
        return lines + [_eval_line(sweep.base)] + support_warning(sweep)
    lines = [f"sweep {sweep.name}: {len(sweep.members)} members in {len(sweep.groups)} compiled program(s) "
             f"on {len(jax.devices())} {jax.devices()[0].platform} device(s)", ""]
    lines.append(f"{'member':<48} {'group':>5} {'N critic':>10} {'GFLOP/critic upd':>17}")
    for group in sweep.groups:
        for m in group.members:
            c = costs[m.index]
            lines.append(f"{m.name:<48} {group.index:>5} {c.critic_params:>10,} "
                         f"{c.flops_per_critic_update / 1e9:>17.3f}")
    lines.append("")
    group_bytes = {g.index: memory[g.index].peak_bytes for g in sweep.groups}
    lockstep = resolve_batching(batching) == "vmap"
    for group in sweep.groups:
        waste, useful, executed = masking_waste(group, lockstep)
        what = (f"masked-UTD waste {100 * waste:.1f}% ({useful:,} useful of {executed:,} executed critic updates)"
                if lockstep else f"{useful:,} critic updates (map: each member runs only its own)")
        lines.append(f"group {group.index}: {len(group.members)} members, up to {group.max_updates} updates/step, "
                     f"memory {format_bytes(group_bytes[group.index])}, {what}")
        lines.append("  " + _memory_line(memory[group.index], limit))
        lines.append("  " + _eval_line(group.config))
    lines.append(f"total memory ~{format_bytes(sum(group_bytes.values()))} (groups run one after another: peak "
                 f"{format_bytes(max(group_bytes.values()))}) of {format_bytes(limit)}")
    return lines + support_warning(sweep)


def return_range(config: Config, reward_range: tuple[float, float]) -> tuple[float, float]:
    """Discounted returns the critic may have to represent, for per-step rewards in `reward_range`:
    truncations bootstrap, so values are infinite-horizon sums (terminals stop them at 0)."""
    a, e = config.agent, config.env
    horizon = 1.0 / (1.0 - a.gamma) if a.gamma < 1 else math.inf
    scale = e.action_repeat * a.reward_scale  # rewards of one vector step, as the critic sees them
    low, high = (r * scale for r in reward_range)
    return (min(0.0, low * horizon) if low < 0 else 0.0), (max(0.0, high * horizon) if high > 0 else 0.0)


def support_warning(sweep: Sweep) -> list[str]:
    """One line (or none) when a categorical critic's support [v_min, v_max] misses returns the
    env's reward range allows (known for the test tasks and DM Control, see `envs.reward_range`).

    A warning, not an error: the bound is that of a policy earning the extreme reward at every step
    forever, which a run may never approach; but C51 targets are clipped to the support, so values
    past v_max all look alike to the actor once returns get there."""
    bad = []
    for m in sweep.members:
        a = m.config.agent
        bounds = envs.reward_range(m.config.env.name) if a.distributional else None
        if bounds is not None:
            low, high = return_range(m.config, bounds)
            slack = 1e-9 * (abs(a.v_max) + abs(a.v_min))  # 0.1 / (1 - 0.99) is 10.000000000000002
            if high > a.v_max + slack or low < a.v_min - slack:
                bad.append((max(high / max(a.v_max, 1e-12), low / min(a.v_min, -1e-12)), m, bounds, low, high))
    if not bad:
        return []
    _, m, bounds, low, high = max(bad, key=lambda b: b[0])
    a, e = m.config.agent, m.config.env
    who = f" ({len(bad)} of {len(sweep.members)} members; worst: {m.name})" if len(sweep.members) > 1 else ""
    return [f"warning: C51 support [agent.v_min, agent.v_max] = [{a.v_min:g}, {a.v_max:g}] misses discounted "
            f"returns [{low:g}, {high:g}] of {e.name} (rewards in [{bounds[0]:g}, {bounds[1]:g}] per step x "
            f"action_repeat {e.action_repeat} x reward_scale {a.reward_scale:g} / (1 - gamma {a.gamma:g})); targets "
            f"are clipped to the support: widen it or lower agent.reward_scale{who}"]
