"""Networks: parameter counts against hand-computed formulas, taper, independent critic heads, tanh actor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pql_jax.learner.networks import (MLP, Actor, BroNet, DoubleCritic, hidden_widths, mlp_param_count, param_count,
                                      trunk, trunk_param_count)


def mlp(widths, out_dim, layer_norm=False):
    """An ELU MLP trunk spec."""
    return MLP, (tuple(widths), out_dim, "elu", layer_norm)


def _shapes(model, *inputs):
    """Parameter shapes without compiling anything (counts need only shapes)."""
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)


def _init_apply(model, *inputs):
    """Initialise and run once, in a single compiled program."""
    def f(key, *x):
        params = model.init(key, *x)
        return params, model.apply(params, *x)
    return jax.jit(f)(jax.random.PRNGKey(0), *inputs)


def _hand_count(in_dim, widths, out_dim, layer_norm):
    """Dense: fan_in * fan_out weights + fan_out biases per layer; LayerNorm: scale + bias per hidden unit."""
    total, prev = 0, in_dim
    for w in widths:
        total += prev * w + w + (2 * w if layer_norm else 0)
        prev = w
    return total + prev * out_dim + out_dim


@pytest.mark.parametrize("taper, want", [(True, (512, 256, 128)), (False, (512, 512, 512))])
def test_hidden_widths(taper, want):
    assert hidden_widths(512, 3, taper) == want


def test_hidden_widths_edges():
    assert hidden_widths(64, 1, True) == (64,)
    assert hidden_widths(4, 4, True) == (4, 2, 1, 1)  # never below one unit
    assert hidden_widths(7, 2, True) == (7, 3)


def test_mlp_param_count_hand_cases():
    # 4 -> 3 -> 2: 4*3+3 + 3*2+2 = 23; LayerNorm on the hidden layer adds 2*3.
    assert mlp_param_count(4, (3,), 2, False) == 23
    assert mlp_param_count(4, (3,), 2, True) == 29
    # 3 -> 8 -> 4 -> 2: 32 + 36 + 10 = 78; LayerNorm adds 2*(8+4) = 24.
    assert mlp_param_count(3, (8, 4), 2, False) == 78
    assert mlp_param_count(3, (8, 4), 2, True) == 102
    assert mlp_param_count(10, (), 1, True) == 11


@pytest.mark.parametrize("layer_norm", [False, True])
def test_actor_param_count(layer_norm):
    widths = (16, 8, 4)
    actor = Actor(mlp(widths, 3, layer_norm))
    params = _shapes(actor, jnp.zeros((1, 5)))
    want = _hand_count(5, widths, 3, layer_norm)
    assert param_count(params) == want == mlp_param_count(5, widths, 3, layer_norm)


@pytest.mark.parametrize("layer_norm, out_dim", [(False, 1), (True, 1), (False, 11)])
def test_double_critic_param_count_two_heads(layer_norm, out_dim):
    widths = (16, 8)
    critic = DoubleCritic(mlp(widths, out_dim, layer_norm))
    params = _shapes(critic, jnp.zeros((1, 5)), jnp.zeros((1, 2)))
    want = 2 * _hand_count(5 + 2, widths, out_dim, layer_norm)
    assert param_count(params) == want == 2 * mlp_param_count(7, widths, out_dim, layer_norm)


def test_param_count_hand_tree():
    tree = {"a": jnp.zeros((3, 4)), "b": [jnp.zeros(5), {"c": jnp.zeros((2, 1, 2))}]}
    assert param_count(tree) == 12 + 5 + 4


def test_critic_heads_are_independent():
    critic = DoubleCritic(mlp((16, 8), 1))
    rng = np.random.default_rng(1)
    obs, act = rng.normal(size=(32, 5)).astype(np.float32), rng.uniform(-1, 1, (32, 2)).astype(np.float32)
    params, out = _init_apply(critic, obs, act)
    leaves = jax.tree.leaves(params)
    assert leaves and all(leaf.shape[0] == 2 for leaf in leaves)
    # Each stacked parameter differs between the two heads (biases start at zero, kernels do not).
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if "kernel" in str(path[-1])]
    assert kernels and all(not np.allclose(k[0], k[1]) for k in kernels)
    out = np.asarray(out)
    assert out.shape == (2, 32, 1)
    assert not np.allclose(out[0], out[1])
    # Each head is a plain ELU MLP on concat(obs, action) with its own slice of the params (numpy forward).
    (vmapped,) = params["params"].values()  # the one vmapped MLP holding both heads
    layers = [vmapped[f"Dense_{i}"] for i in range(3)]
    for h in range(2):
        x = np.concatenate([obs, act], -1).astype(np.float64)
        for i, layer in enumerate(layers):
            x = x @ np.asarray(layer["kernel"][h]) + np.asarray(layer["bias"][h])
            if i < 2:
                x = np.where(x > 0, x, np.expm1(x))
        np.testing.assert_allclose(x, out[h], rtol=1e-4, atol=1e-5)


def test_actor_outputs_bounded():
    actor = Actor(mlp((16, 8), 4))
    obs = 100.0 * np.random.default_rng(3).normal(size=(64, 6)).astype(np.float32)  # saturating inputs
    _, out = _init_apply(actor, obs)
    out = np.asarray(out)
    assert out.shape == (64, 4)
    assert np.all(out >= -1.0) and np.all(out <= 1.0)
    assert np.abs(out).max() > 0.9  # tanh really saturates rather than being rescaled


def test_categorical_critic_output_shape():
    critic = DoubleCritic(mlp((8,), 51))
    params = _shapes(critic, jnp.zeros((3, 4)), jnp.zeros((3, 2)))
    out = jax.eval_shape(critic.apply, params, jnp.ones((3, 4)), jnp.ones((3, 2)))
    assert out.shape == (2, 3, 51)


def _layer_norm(x, p):
    """flax LayerNorm (epsilon 1e-6) in numpy."""
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * np.asarray(p["scale"]) + np.asarray(p["bias"])


@pytest.mark.parametrize("width, blocks, out_dim", [(16, 1, 1), (8, 3, 11)])
def test_bro_param_count_matches_closed_form(width, blocks, out_dim):
    critic = DoubleCritic(trunk("bro", width, blocks, True, out_dim, "relu", False))
    params = _shapes(critic, jnp.zeros((1, 5)), jnp.zeros((1, 2)))
    # hand count: input Dense + LN, two Dense + LN per block, output Dense; two heads
    layer = (7 * width + width + 2 * width, width * width + width + 2 * width)
    hand = layer[0] + blocks * 2 * layer[1] + width * out_dim + out_dim
    assert param_count(params) == 2 * hand == 2 * trunk_param_count("bro", 7, width, blocks, True, out_dim, False)
    actor = Actor(trunk("bro", width, blocks, True, 3, "relu", False))
    assert param_count(_shapes(actor, jnp.zeros((1, 5)))) == trunk_param_count("bro", 5, width, blocks, True, 3, False)


def test_bro_forward_is_the_residual_network():
    """Both heads equal a numpy forward of BRO's trunk: Dense-LN-relu, then x + LN(Dense(relu(LN(Dense(x)))))."""
    critic = DoubleCritic(trunk("bro", 16, 2, False, 1, "relu", False))
    rng = np.random.default_rng(4)
    obs, act = rng.normal(size=(32, 5)).astype(np.float32), rng.uniform(-1, 1, (32, 2)).astype(np.float32)
    params, out = _init_apply(critic, obs, act)
    (net,) = params["params"].values()
    relu = lambda x: np.maximum(x, 0.0)
    for h in range(2):
        p = jax.tree.map(lambda leaf: np.asarray(leaf[h], np.float64), net)
        dense = lambda x, i: x @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"]
        x = relu(_layer_norm(dense(np.concatenate([obs, act], -1).astype(np.float64), 0), p["LayerNorm_0"]))
        for b in range(2):
            inner = relu(_layer_norm(dense(x, 1 + 2 * b), p[f"LayerNorm_{1 + 2 * b}"]))
            x = x + _layer_norm(dense(inner, 2 + 2 * b), p[f"LayerNorm_{2 + 2 * b}"])
        np.testing.assert_allclose(dense(x, 5), np.asarray(out[h]), rtol=1e-4, atol=1e-5)
    assert critic.net[0] is BroNet


def test_bad_arch_is_one_line():
    from helpers import small
    from pql_jax.errors import UserError

    with pytest.raises(UserError, match="critic_arch"):
        small(["agent.critic_arch=resnet"])


@pytest.mark.parametrize("overrides", [[], ["agent.critic_arch=bro", "agent.actor_arch=bro", "agent.critic_depth=2",
                                            "agent.actor_depth=1", "agent.passive_critic_widths=[16]"]])
def test_planned_parameter_counts_equal_the_learner_networks(overrides):
    """The plan's closed-form N (critic, actor, passive critics) equals the initialised networks'."""
    from helpers import small
    from pql_jax.learner.pql import make_learner
    from pql_jax.learner.state import hparams_from_config
    from pql_jax.plan.costs import run_costs

    config = small(overrides)
    learner = make_learner(config)
    state = jax.eval_shape(learner.init, jax.random.PRNGKey(0), hparams_from_config(config))
    costs = run_costs(config, learner.env.obs_size, learner.env.action_size)
    assert costs.critic_params == param_count(state.critic_params)
    assert costs.actor_params == param_count(state.actor_params)
    assert costs.passive_params == param_count(state.passive_params)
