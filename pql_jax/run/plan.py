"""Estimated device memory and FLOPs of a run, from its config alone (no compile)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pql_jax.config import Config
from pql_jax.learner.networks import hidden_widths, mlp_param_count
from pql_jax.learner.replay import buffer_bytes


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
