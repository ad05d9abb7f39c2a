"""PQL losses: clipped double-Q TD targets (scalar or C51), TD losses, actor loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_target_action(policy_action, key, noise_std, noise_clip):
    """a' = clip(pi(s') + clip(N(0, noise_std), -noise_clip, noise_clip), -1, 1)."""
    noise = jnp.clip(noise_std * jax.random.normal(key, policy_action.shape), -noise_clip, noise_clip)
    return jnp.clip(policy_action + noise, -1.0, 1.0)


def support(num_atoms: int, v_min: float, v_max: float):
    """Atom values of the categorical critic."""
    return jnp.linspace(v_min, v_max, num_atoms)


def expected_q(critic_out, atoms=None):
    """Q values [heads, B] from critic output [heads, B, 1] (scalar) or logits [heads, B, K]."""
    if atoms is None:
        return critic_out[..., 0]
    return jnp.sum(jax.nn.softmax(critic_out, axis=-1) * atoms, axis=-1)


def scalar_target(target_out, nstep_return, discount):
    """y = R_n + discount * min_heads Q_target(s', a')."""
    return nstep_return + discount * jnp.min(target_out[..., 0], axis=0)


def project_categorical(probs, nstep_return, discount, atoms):
    """C51 projection of the distribution of R_n + discount * Z onto the fixed atoms.

    Each shifted atom's mass is split between its two neighbours by linear interpolation
    (a triangular kernel of width one atom spacing), after clipping to [v_min, v_max].
    """
    v_min, v_max = atoms[0], atoms[-1]
    delta = atoms[1] - atoms[0]
    shifted = jnp.clip(nstep_return[:, None] + discount[:, None] * atoms[None, :], v_min, v_max)  # [B, K]
    weight = jnp.clip(1.0 - jnp.abs(shifted[:, :, None] - atoms[None, None, :]) / delta, 0.0, 1.0)  # [B, K, K]
    return jnp.einsum("bi,bij->bj", probs, weight)


def categorical_target(target_logits, nstep_return, discount, atoms):
    """Projected target distribution from the target head with the lower expected value."""
    probs = jax.nn.softmax(target_logits, axis=-1)  # [heads, B, K]
    values = jnp.sum(probs * atoms, axis=-1)  # [heads, B]
    lower = jnp.argmin(values, axis=0)  # [B]
    chosen = jnp.take_along_axis(probs, lower[None, :, None], axis=0)[0]
    return project_categorical(chosen, nstep_return, discount, atoms)


def td_loss(critic_out, target, categorical: bool):
    """Sum over heads of the mean TD loss: squared error, or cross-entropy for C51."""
    if categorical:
        log_probs = jax.nn.log_softmax(critic_out, axis=-1)
        return -jnp.sum(jnp.mean(jnp.sum(target[None] * log_probs, axis=-1), axis=1))
    return jnp.sum(jnp.mean((critic_out[..., 0] - target[None]) ** 2, axis=1))


def actor_loss(critic_out, atoms=None):
    """-mean over the batch of min over heads of Q(s, pi(s))."""
    return -jnp.mean(jnp.min(expected_q(critic_out, atoms), axis=0))
