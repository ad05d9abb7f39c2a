"""What a run or a sweep will cost before it starts: parameters, memory and FLOPs per member (from
the config and the env's sizes), the one memory check, and the plan `pql-jax plan` prints."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pql_jax.config import Config
from pql_jax.errors import UserError
from pql_jax.learner.networks import hidden_widths, mlp_param_count
from pql_jax.learner.replay import buffer_bytes
from pql_jax.run.sweep import Member, Sweep, masking_waste


@dataclass(frozen=True)
class Costs:
    """What one run needs."""

    critic_params: int
    """Parameters of the double-Q critic (both heads): the model size N of the scaling laws."""
    actor_params: int
    passive_params: int
    buffer_bytes: int
    network_bytes: int
    """Params, target, AdamW moments (and passive critics)."""
    activation_bytes: int
    """Rough peak activations of one update (forward + backward at batch_size)."""
    flops_per_critic_update: float
    flops_per_actor_update: float

    @property
    def total_bytes(self) -> int:
        return self.buffer_bytes + self.network_bytes + self.activation_bytes


def run_costs(config: Config, obs_size: int, action_size: int) -> Costs:
    """Memory and FLOPs of `config` for an env with the given observation and action sizes.

    FLOPs count 2 per multiply-add over the dense layers: a critic update is a forward and
    backward (3x forward) pass of the critic, a target critic forward and an actor forward on the
    next observations; an actor update is an actor forward and backward plus a critic forward and
    backward to the actions. Passive critics add their own forward and backward passes.
    """
    a, e = config.agent, config.env
    out = a.num_atoms if a.distributional else 1
    c_widths = hidden_widths(a.critic_width, a.critic_depth, a.taper)
    critic = 2 * mlp_param_count(obs_size + action_size, c_widths, out, a.layer_norm)
    actor = mlp_param_count(obs_size, hidden_widths(a.actor_width, a.actor_depth, a.taper), action_size, a.layer_norm)
    passive = sum(2 * mlp_param_count(obs_size + action_size, hidden_widths(w, a.critic_depth, a.taper), out,
                                      a.layer_norm) for w in a.passive_critic_widths)
    rows = max(a.buffer_capacity // e.num_envs, a.n_step + 1)
    buf = buffer_bytes(rows, e.num_envs, obs_size, action_size)
    if e.val_envs:
        buf += buffer_bytes(max(min(rows, a.batch_size), a.n_step + 1), e.val_envs, obs_size, action_size)
    nets = 4 * (critic * 4 + actor * 3 + passive * 3)
    widest = max(a.critic_width, a.actor_width, *a.passive_critic_widths, out, 1)
    layers = max(a.critic_depth, a.actor_depth) + 1
    activations = 4 * a.batch_size * widest * layers * 2 * 6
    batch = a.batch_size
    critic_flops = 2.0 * batch * (3 * critic + critic + actor) + 2.0 * batch * 3 * passive
    actor_flops = 2.0 * batch * (3 * actor + 3 * critic)
    return Costs(critic, actor, passive, buf, nets, activations, critic_flops, actor_flops)


def device_memory_bytes() -> int:
    """Memory of the default JAX device (host RAM for the CPU backend)."""
    import jax

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
    from pql_jax.envs import make_env  # noqa: PLC0415 - envs import Playground lazily; keep planning light

    env = make_env(member.config.env)
    return run_costs(member.config, env.obs_size, env.action_size)


def sweep_costs(sweep: Sweep) -> dict[int, Costs]:
    """Costs of every member, by member index."""
    return {m.index: member_costs(m) for m in sweep.members}


def memory_limit(config: Config) -> float:
    """Bytes a group may use: run.memory_limit_gb, else the device's memory."""
    return config.run.memory_limit_gb * 2**30 or device_memory_bytes()


def check_memory(sweep: Sweep, costs: dict[int, Costs]) -> float:
    """UserError (before anything is compiled or written) if a group cannot fit; returns the limit."""
    limit = memory_limit(sweep.base)
    for group in sweep.groups:
        need = sum(costs[m.index].total_bytes for m in group.members)
        if need > limit:
            who = f"group {group.index} ({len(group.members)} members)" if len(sweep.members) > 1 else "run"
            raise UserError(f"{who} needs ~{format_bytes(need)} but the device has {format_bytes(limit)}; "
                            "lower agent.buffer_capacity, env.num_envs or agent.batch_size, or sweep fewer members")
    return limit


def plan_text(sweep: Sweep, costs: dict[int, Costs], limit: float) -> list[str]:
    """The plan `pql-jax plan` and `train` print: members, groups, memory, FLOPs, masking waste."""
    import jax  # noqa: PLC0415 - only for the device line

    if len(sweep.members) == 1:
        c = costs[sweep.members[0].index]
        return [f"critic parameters N = {c.critic_params:,}; actor {c.actor_params:,}",
                f"memory: buffer {format_bytes(c.buffer_bytes)}, networks {format_bytes(c.network_bytes)}, "
                f"activations ~{format_bytes(c.activation_bytes)}; total ~{format_bytes(c.total_bytes)} of "
                f"{format_bytes(limit)} available"]
    lines = [f"sweep {sweep.name}: {len(sweep.members)} members in {len(sweep.groups)} compiled program(s) "
             f"on {len(jax.devices())} {jax.devices()[0].platform} device(s)", ""]
    lines.append(f"{'member':<48} {'group':>5} {'N critic':>10} {'memory':>10} {'GFLOP/critic upd':>17}")
    for group in sweep.groups:
        for m in group.members:
            c = costs[m.index]
            lines.append(f"{m.name:<48} {group.index:>5} {c.critic_params:>10,} {format_bytes(c.total_bytes):>10} "
                         f"{c.flops_per_critic_update / 1e9:>17.3f}")
    lines.append("")
    group_bytes = {g.index: sum(costs[m.index].total_bytes for m in g.members) for g in sweep.groups}
    for group in sweep.groups:
        waste, useful, executed = masking_waste(group)
        lines.append(f"group {group.index}: {len(group.members)} members, up to {group.max_updates} updates/step, "
                     f"memory {format_bytes(group_bytes[group.index])}, masked-UTD waste {100 * waste:.1f}% "
                     f"({useful:,} useful of {executed:,} executed critic updates)")
    lines.append(f"total memory ~{format_bytes(sum(group_bytes.values()))} (groups run one after another: peak "
                 f"{format_bytes(max(group_bytes.values()))}) of {format_bytes(limit)}")
    return lines
