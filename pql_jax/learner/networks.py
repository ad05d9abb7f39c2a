"""Actor, double-Q critic (scalar or categorical) and their parameter counts.

Two trunks (`agent.critic_arch`, `agent.actor_arch`): `mlp`, PQL's plain (optionally tapered) MLP,
and `bro`, the residual network of BRO (Nauman et al., 2024, "Bigger, Regularized, Optimistic"),
the architecture the value-based scaling papers widen: Dense -> LayerNorm -> act, then `blocks`
residual blocks x + LN(Dense(act(LN(Dense(x))))), then the output layer. Written here because no
maintained JAX library ships it (flax has the layers, not the block).
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS: dict[str, Callable] = {"elu": nn.elu, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu,
                                    "tanh": jnp.tanh}


def hidden_widths(width: int, depth: int, taper: bool) -> tuple[int, ...]:
    """Hidden layer sizes: constant `width`, or halved at each layer (512 -> 512, 256, 128)."""
    if taper:
        return tuple(max(1, width // (2**i)) for i in range(depth))
    return (width,) * depth


class MLP(nn.Module):
    """Dense layers with optional LayerNorm after each hidden layer."""

    widths: Sequence[int]
    out_dim: int
    activation: str = "elu"
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        for width in self.widths:
            x = nn.Dense(width)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = act(x)
        return nn.Dense(self.out_dim)(x)


class BroNet(nn.Module):
    """BRO's residual trunk of constant `width` with `blocks` residual blocks, then a linear output."""

    width: int
    blocks: int
    out_dim: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        x = act(nn.LayerNorm()(nn.Dense(self.width)(x)))
        for _ in range(self.blocks):
            inner = act(nn.LayerNorm()(nn.Dense(self.width)(x)))
            x = x + nn.LayerNorm()(nn.Dense(self.width)(inner))
        return nn.Dense(self.out_dim)(x)


def trunk(arch: str, width: int, depth: int, taper: bool, out_dim: int, activation: str, layer_norm: bool):
    """(module class, its arguments) of a trunk: `mlp` of `depth` hidden layers (tapered or not), or
    `bro` with `depth` residual blocks of `width`."""
    if arch == "bro":
        return BroNet, (width, depth, out_dim, activation)
    return MLP, (hidden_widths(width, depth, taper), out_dim, activation, layer_norm)


class Actor(nn.Module):
    """Deterministic policy with tanh-squashed actions in [-1, 1] on a `trunk(...)`."""

    net: tuple
    """(module class, arguments) from `trunk`, whose out_dim is the action size."""

    @nn.compact
    def __call__(self, obs):
        cls, args = self.net
        return jnp.tanh(cls(*args)(obs))


class DoubleCritic(nn.Module):
    """Two independent Q networks on concat(obs, action); output [2, ..., out_dim].

    out_dim (in `net`) is 1 for a scalar critic and num_atoms (logits) for a categorical one.
    """

    net: tuple
    """(module class, arguments) from `trunk`."""
    num_heads: int = 2

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], axis=-1)
        cls, args = self.net
        heads = nn.vmap(cls, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=None, out_axes=0, axis_size=self.num_heads)
        return heads(*args)(x)


def param_count(params) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def mlp_param_count(in_dim: int, widths: Sequence[int], out_dim: int, layer_norm: bool) -> int:
    """Closed-form parameter count of an MLP (used for planning without building it)."""
    sizes = [in_dim, *widths, out_dim]
    dense = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return dense + (2 * sum(widths) if layer_norm else 0)


def trunk_param_count(arch: str, in_dim: int, width: int, depth: int, taper: bool, out_dim: int,
                      layer_norm: bool) -> int:
    """Closed-form parameter count of `trunk(arch, ...)` with input size `in_dim`."""
    if arch == "bro":
        layer = lambda a, b: a * b + b + 2 * b  # Dense then LayerNorm (scale and bias)
        return layer(in_dim, width) + depth * 2 * layer(width, width) + width * out_dim + out_dim
    return mlp_param_count(in_dim, hidden_widths(width, depth, taper), out_dim, layer_norm)
