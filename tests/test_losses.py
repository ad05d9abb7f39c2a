"""PQL losses against plain-numpy references written from the definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pql_jax.learner import losses as _losses


class losses:  # noqa: N801 - jitted views of the module's functions (one compile each instead of op-by-op)
    support = staticmethod(_losses.support)
    smoothed_target_action = staticmethod(jax.jit(_losses.smoothed_target_action))
    scalar_target = staticmethod(jax.jit(_losses.scalar_target))
    project_categorical = staticmethod(jax.jit(_losses.project_categorical))
    categorical_target = staticmethod(jax.jit(_losses.categorical_target))
    td_loss = staticmethod(jax.jit(_losses.td_loss, static_argnames="categorical"))
    expected_q = staticmethod(jax.jit(_losses.expected_q))
    actor_loss = staticmethod(jax.jit(_losses.actor_loss))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _project_ref(probs, ret, disc, v_min, v_max, K):
    """Classic C51 projection (Bellemare et al. 2017) with floor/ceil neighbours and the l == u fix."""
    dz = (v_max - v_min) / (K - 1)
    z = v_min + dz * np.arange(K)
    out = np.zeros((len(ret), K))
    for b in range(len(ret)):
        for j in range(K):
            tz = min(max(ret[b] + disc[b] * z[j], v_min), v_max)
            pos = (tz - v_min) / dz
            lo, up = int(np.floor(pos)), int(np.ceil(pos))
            if lo == up:
                out[b, lo] += probs[b, j]
            else:
                out[b, lo] += probs[b, j] * (up - pos)
                out[b, up] += probs[b, j] * (pos - lo)
    return out


# ----------------------------------------------------------------------------------------------
# Target policy smoothing

def test_smoothed_target_action_matches_reference():
    key = jax.random.PRNGKey(0)
    pa = np.random.default_rng(0).uniform(-1, 1, (256, 3)).astype(np.float32)
    pa[:8] = 0.99  # near the bound: must be clamped
    pa[8:16] = -0.99
    std, clip = 0.8, 0.2
    got = np.asarray(losses.smoothed_target_action(jnp.asarray(pa), key, std, clip))
    z = np.asarray(jax.jit(jax.random.normal, static_argnums=1)(key, pa.shape))  # the same Gaussian draw
    want = np.clip(pa + np.clip(std * z, -clip, clip), -1.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_smoothing_noise_is_clipped_and_actions_bounded():
    shape = (256, 3)  # one shape for all smoothing calls: one compile
    got = np.asarray(losses.smoothed_target_action(jnp.zeros(shape), jax.random.PRNGKey(1), 0.8, 0.2))
    assert np.abs(got).max() <= 0.2 + 1e-7
    # N(0, 0.8) exceeds 0.2 most of the time: the clip is active on both sides.
    assert np.mean(np.isclose(got, 0.2)) > 0.3 and np.mean(np.isclose(got, -0.2)) > 0.3
    edge = np.asarray(losses.smoothed_target_action(jnp.full(shape, 0.95), jax.random.PRNGKey(2), 0.8, 0.2))
    assert edge.max() <= 1.0 and edge.min() >= 0.75 - 1e-6
    assert np.mean(edge == 1.0) > 0.3
    # No noise: the policy action itself (clamped).
    pa = np.tile(np.array([0.3, -1.5, 2.0], np.float32), (256, 1))
    same = losses.smoothed_target_action(jnp.asarray(pa), jax.random.PRNGKey(3), 0.0, 0.2)
    np.testing.assert_allclose(np.asarray(same), np.tile([0.3, -1.0, 1.0], (256, 1)), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Scalar critic

def test_scalar_target_and_td_loss_match_numpy():
    rng = np.random.default_rng(1)
    B = 32
    target_out = rng.normal(size=(2, B, 1)).astype(np.float32)
    ret = rng.normal(size=B).astype(np.float32)
    disc = rng.choice([0.0, 0.99**3, 0.99], size=B).astype(np.float32)
    y = ret + disc * np.minimum(target_out[0, :, 0], target_out[1, :, 0])
    got_y = np.asarray(losses.scalar_target(jnp.asarray(target_out), jnp.asarray(ret), jnp.asarray(disc)))
    np.testing.assert_allclose(got_y, y, rtol=1e-6, atol=1e-6)

    q = rng.normal(size=(2, B, 1)).astype(np.float32)
    want = np.mean((q[0, :, 0] - y) ** 2) + np.mean((q[1, :, 0] - y) ** 2)
    got = float(losses.td_loss(jnp.asarray(q), jnp.asarray(y), categorical=False))
    assert got == pytest.approx(want, rel=1e-5)


def test_scalar_target_hand_case():
    target_out = jnp.array([[[1.0], [5.0]], [[3.0], [-2.0]]])  # heads x batch x 1
    y = losses.scalar_target(target_out, jnp.array([0.5, 1.0]), jnp.array([0.5, 0.0]))
    np.testing.assert_allclose(np.asarray(y), [0.5 + 0.5 * 1.0, 1.0])


def test_actor_loss_scalar():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(2, 64, 1)).astype(np.float32)
    want = -np.mean(np.minimum(q[0, :, 0], q[1, :, 0]))
    assert float(losses.actor_loss(jnp.asarray(q))) == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Categorical (C51) critic

@pytest.mark.parametrize("K, v_min, v_max", [(51, -10.0, 10.0), (11, -2.0, 3.0), (2, 0.0, 1.0)])
def test_projection_matches_classic_reference(K, v_min, v_max):
    rng = np.random.default_rng(K)
    B = 64
    probs = _softmax(rng.normal(size=(B, K)) * 2).astype(np.float32)
    span = v_max - v_min
    ret = rng.uniform(v_min - span, v_max + span, B).astype(np.float32)  # many out of range
    disc = rng.choice([0.0, 0.5, 0.97, 1.0], size=B).astype(np.float32)
    atoms = losses.support(K, v_min, v_max)
    got = np.asarray(losses.project_categorical(jnp.asarray(probs), jnp.asarray(ret), jnp.asarray(disc), atoms))
    want = _project_ref(probs.astype(np.float64), ret, disc, v_min, v_max, K)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # Mass conservation and non-negativity.
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    assert got.min() >= 0.0


def test_projection_on_grid_points_exact():
    # Shifted atoms that land on atoms move all their mass there (the l == u case).
    atoms = losses.support(5, -2.0, 2.0)  # -2 -1 0 1 2
    probs = jnp.array([[0.1, 0.2, 0.3, 0.25, 0.15]])
    got = np.asarray(losses.project_categorical(probs, jnp.array([1.0]), jnp.array([1.0]), atoms))
    # shifted: -1 0 1 2 3->2 (clipped)
    np.testing.assert_allclose(got, [[0.0, 0.1, 0.2, 0.3, 0.4]], atol=1e-6)
    got = np.asarray(losses.project_categorical(probs, jnp.array([0.0]), jnp.array([0.5]), atoms))
    # shifted: -1 -0.5 0 0.5 1 -> -1: .1 + .1, 0: .1 + .3 + .125, 1: .125 + .15
    np.testing.assert_allclose(got, [[0.0, 0.2, 0.525, 0.275, 0.0]], atol=1e-6)


@pytest.mark.parametrize("ret, mass", [
    (2.0, {30: 1.0}),                    # on an atom
    (3.3, {33: 0.75, 34: 0.25}),         # between 3.2 and 3.6
    (25.0, {50: 1.0}),                   # above v_max: clipped
    (-40.0, {0: 1.0}),                   # below v_min: clipped
])
def test_terminal_puts_all_mass_on_clipped_return(ret, mass):
    atoms = losses.support(51, -10.0, 10.0)
    probs = jnp.asarray(_softmax(np.random.default_rng(0).normal(size=(1, 51))).astype(np.float32))
    got = np.asarray(losses.project_categorical(probs, jnp.array([ret]), jnp.array([0.0]), atoms))[0]
    want = np.zeros(51)
    for i, m in mass.items():
        want[i] = m
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert float(np.dot(got, np.asarray(atoms))) == pytest.approx(np.clip(ret, -10, 10), abs=1e-4)


def test_projection_preserves_mean_when_in_range():
    # Linear interpolation between neighbours keeps the mean: E = R + d * E[Z] when nothing clips.
    rng = np.random.default_rng(5)
    atoms = losses.support(51, -10.0, 10.0)
    probs = _softmax(rng.normal(size=(16, 51))).astype(np.float32)
    ret = rng.uniform(-0.9, 0.9, 16).astype(np.float32)
    disc = rng.uniform(0.0, 0.9, 16).astype(np.float32)
    got = np.asarray(losses.project_categorical(jnp.asarray(probs), jnp.asarray(ret), jnp.asarray(disc), atoms))
    z = np.linspace(-10, 10, 51)
    np.testing.assert_allclose(got @ z, ret + disc * (probs @ z), atol=1e-4)


def test_categorical_target_uses_lower_expected_head():
    rng = np.random.default_rng(3)
    K, B, v_min, v_max = 21, 40, -5.0, 5.0
    logits = rng.normal(size=(2, B, K)).astype(np.float32) * 2
    ret = rng.uniform(-3, 3, B).astype(np.float32)
    disc = rng.choice([0.0, 0.9], size=B).astype(np.float32)
    atoms = losses.support(K, v_min, v_max)
    got = np.asarray(losses.categorical_target(jnp.asarray(logits), jnp.asarray(ret), jnp.asarray(disc), atoms))
    p = _softmax(logits.astype(np.float64))
    z = np.linspace(v_min, v_max, K)
    values = p @ z  # [2, B]
    chosen = np.where((values[0] <= values[1])[:, None], p[0], p[1])
    want = _project_ref(chosen, ret, disc, v_min, v_max, K)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # Both heads get picked somewhere, so the test tells them apart.
    assert (values[0] < values[1]).any() and (values[1] < values[0]).any()


def test_categorical_td_loss_and_actor_loss_match_numpy():
    rng = np.random.default_rng(4)
    K, B = 11, 24
    logits = rng.normal(size=(2, B, K)).astype(np.float32)
    target = _softmax(rng.normal(size=(B, K))).astype(np.float32)
    logp = np.log(_softmax(logits.astype(np.float64)))
    want = -np.mean(np.sum(target * logp[0], -1)) - np.mean(np.sum(target * logp[1], -1))
    got = float(losses.td_loss(jnp.asarray(logits), jnp.asarray(target), categorical=True))
    assert got == pytest.approx(want, rel=1e-5)

    atoms = losses.support(K, -1.0, 1.0)
    q = _softmax(logits.astype(np.float64)) @ np.linspace(-1.0, 1.0, K)
    np.testing.assert_allclose(np.asarray(losses.expected_q(jnp.asarray(logits), atoms)), q, atol=1e-6)
    want_actor = -np.mean(np.minimum(q[0], q[1]))
    assert float(losses.actor_loss(jnp.asarray(logits), atoms)) == pytest.approx(want_actor, rel=1e-5, abs=1e-7)


def test_categorical_td_loss_minimised_at_target():
    # Cross-entropy is minimised when each head's softmax equals the target distribution.
    target = jnp.asarray(_softmax(np.random.default_rng(6).normal(size=(8, 5))).astype(np.float32))
    at_target = jnp.asarray(np.log(np.stack([target, target])))
    base = float(losses.td_loss(at_target, target, categorical=True))
    t = np.asarray(target, np.float64)
    entropy = -float(np.sum(t * np.log(t)) / 8)
    assert base == pytest.approx(2 * entropy, rel=1e-5)
    grad = jax.jit(jax.grad(lambda x: _losses.td_loss(x, target, True)))(at_target)
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-6)
