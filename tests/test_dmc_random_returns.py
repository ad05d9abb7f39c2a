"""scripts/dmc_random_returns.py: the resumable random-policy comparison of a port with dm_control.

The store must survive being stopped anywhere (a Dog episode takes minutes): a resumed run ends
with the same episodes as an uninterrupted one, and a store it cannot use is refused with a
one-line error, untouched. Each episode must be a function of its index alone.
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT
from pql_jax.envs import to_control
from pql_jax.envs.dmc import reference

import dmc_random_returns as drr  # noqa: E402

SETTINGS = {"task": "QuadrupedWalk", "episode_length": 7, "solver_caps": [0, 0], "contacts": "floor",
            "actions": drr.ACTIONS}


def _side(values: dict[int, float], calls: list):
    """A fake side: episode i returns values[i]; records each call's episodes."""
    def run(episodes):
        calls.append(list(episodes))
        return [values[i] for i in episodes]
    return run


def test_resumed_store_equals_an_uninterrupted_one(tmp_path):
    values = {i: float(i * i) - 3.5 for i in range(7)}
    values[4] = math.nan  # a blow-up
    whole = tmp_path / "whole.jsonl"
    drr.fill(whole, SETTINGS, {"dm_control": (7, _side(values, [])), "port": (5, _side(values, []))}, chunk=2,
             log=lambda m: None)

    stopped, calls = tmp_path / "stopped.jsonl", []

    def dies_on_second_call(episodes):
        if calls:
            raise KeyboardInterrupt
        calls.append(list(episodes))
        return [values[i] for i in episodes]

    with pytest.raises(KeyboardInterrupt):
        drr.fill(stopped, SETTINGS, {"dm_control": (7, dies_on_second_call)}, chunk=3, log=lambda m: None)
    resumed_calls = []
    records = drr.fill(stopped, SETTINGS, {"dm_control": (7, _side(values, resumed_calls)),
                                           "port": (5, _side(values, resumed_calls))}, chunk=3, log=lambda m: None)
    assert resumed_calls == [[3, 4, 5], [6], [0, 1, 2], [3, 4]]  # only what the store lacked
    _, stored = drr.read_store(stopped, SETTINGS)
    _, reference_records = drr.read_store(whole, SETTINGS)
    for side in ("dm_control", "port"):
        assert sorted(stored[side]) == sorted(reference_records[side]) == sorted(records[side])
        for i in stored[side]:
            assert stored[side][i] == pytest.approx(reference_records[side][i], nan_ok=True)


def test_shards_fill_the_same_store_as_one_process(tmp_path):
    values = {i: 0.5 * i for i in range(9)}
    store, calls = tmp_path / "s.jsonl", []
    for k in (1, 0, 2):
        drr.fill(store, SETTINGS, {"port": (9, _side(values, calls))}, chunk=2, log=lambda m: None, shard=(k, 3))
    assert calls == [[1, 4], [7], [0, 3], [6], [2, 5], [8]]
    _, stored = drr.read_store(store, SETTINGS)
    assert stored["port"] == values


def test_statistics_against_numpy():
    returns = {0: 10.0, 1: 12.5, 2: math.nan, 3: 7.0, 4: 30.0}
    ok = np.array([10.0, 12.5, 7.0, 30.0])
    got = drr.stats(returns)
    assert got["n"] == 4 and got["blowups"] == 1
    assert got["mean"] == pytest.approx(ok.mean())
    assert got["std"] == pytest.approx(np.std(ok, ddof=1))
    assert got["se"] == pytest.approx(np.std(ok, ddof=1) / 2)
    out = drr.report(SETTINGS, {"dm_control": {0: 1.0, 1: 3.0}, "port": {0: 2.0, 1: 6.0}})
    se_dm, se_port = 1.0, 2.0  # sample SDs sqrt(2), 2*sqrt(2), n = 2
    assert out["port_vs_dm_control_in_se"] == pytest.approx((4.0 - 2.0) / math.hypot(se_dm, se_port))


def test_report_of_constant_or_single_returns_is_nan_not_an_error():
    out = drr.report(SETTINGS, {"dm_control": {0: 5.0, 1: 5.0}, "port": {0: 5.0, 1: 5.0}})
    assert out["port"]["se"] == 0 and math.isnan(out["port_vs_dm_control_in_se"])
    out = drr.report(SETTINGS, {"dm_control": {0: 5.0}, "port": {0: 4.0}})
    assert out["port"]["n"] == 1 and math.isnan(out["port"]["se"]) and math.isnan(out["port_vs_dm_control_in_se"])


@pytest.mark.parametrize("damage", ["other settings", "old action draw", "malformed line", "incomplete last line"])
def test_unusable_store_is_refused_in_one_line_and_left_alone(tmp_path, capsys, damage):
    store = tmp_path / "s.jsonl"
    written = {k: v for k, v in SETTINGS.items() if k != "actions"} if damage == "old action draw" else SETTINGS
    drr.fill(store, written, {"dm_control": (2, _side({0: 1.0, 1: 2.0}, []))}, chunk=1, log=lambda m: None)
    text = store.read_text()
    if damage == "malformed line":
        text += '{"side": "port", "episode": "x"}\n'
    elif damage == "incomplete last line":
        text += '{"side": "port", "epi'
    store.write_text(text)
    args = ["--task", "QuadrupedWalk", "--episode-length", "7" if damage != "other settings" else "8",
            "--store", str(store)]
    assert drr.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(store) in err
    if damage == "old action draw":  # a store drawn uniform in [min, max] directly (before 2026-12-07)
        assert "actions" in err and drr.ACTIONS in err
    assert store.read_text() == text


@pytest.mark.parametrize("args", [["--chunk", "0"], ["--port-solver", "4"], ["--port-solver", "0/8"],
                                  ["--dog-contacts", "self"], ["--shard", "2/2"], ["--shard", "1"], ["--report-only", "--store", "/nonexistent/s.jsonl"]])
def test_bad_arguments_exit_2(tmp_path, capsys, args):
    store = ["--store", str(tmp_path / "s.jsonl")] if "--store" not in args else []
    assert drr.main(["--task", "QuadrupedWalk", *store, *args]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "s.jsonl").exists()


class _State(NamedTuple):
    position: jax.Array
    reward: jax.Array


class _Drift:
    """A pure-JAX env: the state drifts by the action; reward -|position|^2."""

    @staticmethod
    def reset(key):
        return _State(jax.random.normal(key, (3,)), jnp.zeros(()))

    @staticmethod
    def step(state, action):
        position = state.position + action
        return _State(position, -jnp.sum(position ** 2))


def test_port_episode_is_a_function_of_its_index_alone():
    """Same returns for an episode whatever chunk (padding included) or batching computes it,
    and each return is the numpy sum of the rewards along the episode's own draws."""
    low, high = np.array([-1.0, -1.0, -0.8]), np.array([1.0, 1.1, 0.8])  # the Quadruped's kinds of range
    by = {(chunk, batching): drr.port_side(_Drift, low, high, 3, 6, batching, chunk)
          for chunk in (1, 2, 4) for batching in ("vmap", "map")}
    expect = [by[(1, "map")]([i])[0] for i in range(4)]
    np.testing.assert_allclose(by[(4, "vmap")]([0, 1, 2, 3]), expect, rtol=1e-6)
    np.testing.assert_allclose(by[(4, "map")]([2, 3, 0]), [expect[2], expect[3], expect[0]], rtol=1e-6)
    np.testing.assert_allclose(by[(2, "vmap")]([3]), [expect[3]], rtol=1e-6)
    assert len(set(np.round(expect, 4))) == 4  # different episodes differ

    key = jax.random.fold_in(jax.random.PRNGKey(3), 2)
    reset_key, action_key = jax.random.split(key)
    position, total = np.asarray(jax.random.normal(reset_key, (3,)), np.float64), 0.0
    for k in jax.random.split(action_key, 6):
        u = jax.random.uniform(k, (3,), minval=-1.0, maxval=1.0)
        position = position + np.asarray(to_control(u, jnp.float32(low), jnp.float32(high)), np.float64)
        total -= float(np.sum(position ** 2))
    assert expect[2] == pytest.approx(total, rel=1e-5)


@pytest.mark.skipif(reference.available() is not None, reason="needs dm_control")
def test_dm_control_episode_is_a_function_of_its_index_alone():
    """dm_control's episode i: same initial state and return whatever episodes ran before it."""
    env = reference.load("quadruped", "walk", seed=0)
    run = drr.dm_control_side(env, 2, 5)
    forward = run([0, 1, 2])
    backward = run([2, 1, 0])[::-1]
    assert forward == backward
    assert len(set(forward)) == 3
    other_env = drr.dm_control_side(reference.load("quadruped", "walk", seed=9), 2, 5)
    assert other_env([1]) == [forward[1]]


def test_report_only_reads_the_store(tmp_path, capsys):
    store = tmp_path / "s.jsonl"
    drr.fill(store, SETTINGS, {"dm_control": (3, _side({0: 1.0, 1: 2.0, 2: 6.0}, []))}, chunk=2, log=lambda m: None)
    assert drr.main(["--store", str(store), "--report-only", "--out", str(tmp_path / "r.json")]) == 0
    out = json.loads((tmp_path / "r.json").read_text())
    assert out["settings"] == SETTINGS and out["dm_control"]["n"] == 3 and out["dm_control"]["mean"] == pytest.approx(3.0)


class _Recorder:
    """A pure-JAX env that records every action its step receives (reward 0)."""

    def __init__(self, log: list):
        self.log = log

    @staticmethod
    def reset(key):
        return _State(jnp.zeros(3), jnp.zeros(()))

    def step(self, state, action):
        jax.debug.callback(lambda a: self.log.append(np.asarray(a)), action)
        return state


class _Ends:
    """A stand-in numpy generator: every canonical draw is `value`."""

    def __init__(self, value):
        self.value = value

    def uniform(self, low, high, size):
        assert (low, high) == (-1.0, 1.0)
        return np.full(size, self.value)


def _recording_env(env, log: list):
    step = env.step
    env.step = lambda action: (log.append(np.array(action, np.float64)), step(action))[1]
    return env


def test_port_side_receives_to_control_of_its_canonical_draws(monkeypatch):
    """The port's actions are to_control(u, min, max) of its canonical draws u ~ U[-1, 1], in
    float32 as training maps them, and u = -1 / u = 1 give exactly min / max."""
    low, high = np.array([-1.0, -1.0, -0.8]), np.array([1.0, 1.1, 0.8])
    log = []
    drr.port_side(_Recorder(log), low, high, 3, 4, "map", 1)([2])
    key = jax.random.fold_in(jax.random.PRNGKey(3), 2)
    _, action_key = jax.random.split(key)
    u = [jax.random.uniform(k, (3,), minval=-1.0, maxval=1.0) for k in jax.random.split(action_key, 4)]
    expect = [np.asarray(to_control(x, jnp.float32(low), jnp.float32(high))) for x in u]
    assert len(log) == 4 and all(a.dtype == np.float32 for a in log)
    np.testing.assert_allclose(log, expect, rtol=1e-6, atol=1e-7)
    for end, bound in ((-1.0, low), (1.0, high)):
        monkeypatch.setattr(jax.random, "uniform", lambda k, shape, minval, maxval, end=end: jnp.full(shape, end))
        log.clear()
        drr.port_side(_Recorder(log), low, high, 3, 2, "map", 1)([0])
        np.testing.assert_array_equal(log, [np.float32(bound)] * 2)


@pytest.mark.skipif(reference.available() is not None, reason="needs dm_control")
def test_dm_control_side_receives_to_control_of_its_canonical_draws(monkeypatch):
    """dm_control's actions are to_control(u, spec.minimum, spec.maximum) of the episode's
    canonical draws; u = -1 / u = 1 reach the Quadruped's [-1, 1.1] and [-0.8, 0.8] ends exactly."""
    log = []
    env = _recording_env(reference.load("quadruped", "walk", seed=0), log)
    spec = env.action_spec()
    drr.dm_control_side(env, 2, 3)([1])
    rng = np.random.default_rng([2, 1])
    expect = [to_control(rng.uniform(-1.0, 1.0, spec.shape), spec.minimum, spec.maximum) for _ in range(3)]
    np.testing.assert_array_equal(log, expect)
    for end, bound in ((-1.0, spec.minimum), (1.0, spec.maximum)):
        monkeypatch.setattr(np.random, "default_rng", lambda seed, end=end: _Ends(end))
        log.clear()
        drr.dm_control_side(env, 2, 2)([0])
        np.testing.assert_array_equal(log, [bound] * 2)
    assert (spec.maximum == 1.1).any() and (spec.minimum == -0.8).any()
