"""Actor, double-Q critic (scalar or categorical) and their parameter counts."""

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


class Actor(nn.Module):
    """Deterministic policy with tanh-squashed actions in [-1, 1]."""

    widths: Sequence[int]
    action_size: int
    activation: str = "elu"
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs):
        return jnp.tanh(MLP(self.widths, self.action_size, self.activation, self.layer_norm)(obs))


class DoubleCritic(nn.Module):
    """Two independent Q networks on concat(obs, action); output [2, ..., out_dim].

    out_dim is 1 for a scalar critic and num_atoms (logits) for a categorical one.
    """

    widths: Sequence[int]
    out_dim: int = 1
    activation: str = "elu"
    layer_norm: bool = False
    num_heads: int = 2

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], axis=-1)
        heads = nn.vmap(MLP, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=None, out_axes=0, axis_size=self.num_heads)
        return heads(self.widths, self.out_dim, self.activation, self.layer_norm)(x)


def param_count(params) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def mlp_param_count(in_dim: int, widths: Sequence[int], out_dim: int, layer_norm: bool) -> int:
    """Closed-form parameter count of an MLP (used for planning without building it)."""
    sizes = [in_dim, *widths, out_dim]
    dense = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return dense + (2 * sum(widths) if layer_norm else 0)
