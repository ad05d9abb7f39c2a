"""Public helpers of the scaling package that the workflow builds on: PowerFit to / from JSON,
the one curves -> crossings bootstrap, B*(sigma) / eta*(sigma) given to `fit all`, report text."""

import json

import numpy as np
import pandas as pd
import pytest

from pql_jax.errors import UserError
from pql_jax.scaling import (PipelineConfig, PowerFit, bootstrap_crossings, crossing_bootstrap, fit_all,
                             fit_fixed_effects, fmt, load_curves, markdown_table, read_number, run_groups,
                             write_json)
from pql_jax.scaling.synthetic import make_sweep


def _power_fit() -> PowerFit:
    df = pd.DataFrame({"env": ["a"] * 4 + ["b"] * 4, "utd": [0.25, 0.5, 1, 2] * 2,
                       "batch_size": [400, 290, 210, 150, 800, 560, 430, 300]})
    pf = fit_fixed_effects(df, "batch_size", "utd", shared=True)
    pf.bootstrap_se = {"slope": {"a": 0.02, "b": 0.02}}
    return pf


def test_power_fit_from_dict_round_trips_through_json(tmp_path):
    pf = _power_fit()
    write_json(str(tmp_path / "fit.json"), pf.to_dict())
    back = PowerFit.from_dict(json.loads((tmp_path / "fit.json").read_text()))
    assert back == pf
    u = np.array([0.1, 1.0, 3.0])
    assert np.allclose(back.predict("b", u), pf.predict("b", u))
    # a file written before "y" / "x" were stored: read off the formula
    old = {k: v for k, v in pf.to_dict().items() if k not in ("y", "x")}
    assert (PowerFit.from_dict(old).y, PowerFit.from_dict(old).x) == ("batch_size", "utd")


def test_power_fit_with_slope_near_zero_does_not_raise(tmp_path):
    pf = PowerFit("lr", "utd", {"e": 1e-6}, {"e": 3e-4}, {"e": 0.1}, {"e": 1e-5}, 0.01, 3, True)
    assert pf.beta("e") == 0.0  # (3e-4)^(1e6) underflows
    big = PowerFit("batch_size", "utd", {"e": -1e-6}, {"e": 64.0}, {"e": 0.1}, {"e": 1.0}, 0.01, 3, True)
    assert big.beta("e") == 0.0 and PowerFit("y", "x", {"e": 1e-6}, {"e": 64.0}, {}, {}, 0, 3, True).beta("e") == np.inf
    assert np.isnan(PowerFit("y", "x", {"e": 0.0}, {"e": 64.0}, {}, {}, 0, 3, True).beta("e"))
    # a real fit of a constant best value: slope ~ 0, JSON still written (beta null when infinite)
    flat = fit_fixed_effects(pd.DataFrame({"env": "e", "utd": [0.25, 0.5, 1.0], "lr": [1e-3, 1.0001e-3, 1e-3]}),
                             "lr", "utd")
    write_json(str(tmp_path / "flat.json"), flat.to_dict())
    back = PowerFit.from_dict(json.loads((tmp_path / "flat.json").read_text()))
    assert np.allclose(back.predict("e", 0.5), 1e-3, rtol=1e-3)


def test_power_fit_for_groups_shares_one_fit():
    pf = PowerFit("batch_size", "utd", {"x": 0.3}, {"x": 100.0}, {"x": 0.01}, {"x": 2.0}, 0.01, 3, True,
                  {"slope": {"x": 0.02}})
    both = pf.for_groups(["a", "b"])
    assert both.coef == {"a": 100.0, "b": 100.0} and both.bootstrap_se == {"slope": {"a": 0.02, "b": 0.02}}
    with pytest.raises(UserError):
        _power_fit().for_groups(["c"])


def _curves(**kw):
    df, _ = load_curves(make_sweep(n_envs=1, seeds=4, points=60, **kw))
    return df


def test_crossing_bootstrap_is_groups_thresholds_and_bootstrap():
    df = _curves(utds=(0.25, 1, 4), batch_sizes=(64, 256), lrs=(5e-4,))
    cb = crossing_bootstrap(df, [600, 300], resamples=20, seed=3)
    assert list(cb.thresholds["*"]) == [300, 600] and cb.keys[0] == "env"
    assert len(cb.table) == len(cb.groups) == 6 and list(cb.table.columns) == cb.keys
    assert np.array_equal(cb.D, bootstrap_crossings(run_groups(df), cb.thresholds, 20, 3), equal_nan=True)
    auto = crossing_bootstrap(df, None, resamples=0, n_thresholds=3)
    assert auto.D.shape == (6, 1, 3) and np.isfinite(auto.D).all()


def test_fit_all_uses_given_batch_size_and_learning_rate_laws():
    """A UTD sweep at one (B, eta) per UTD has no B*(sigma) of its own: the given one drives compute."""
    df = _curves(utds=(0.25, 0.5, 1, 2, 4), batch_sizes=(256,), lrs=(5e-4,))
    cfg = dict(max_return=1000.0, n_thresholds=3, resamples=10, figures=False)
    plain = fit_all(df, PipelineConfig(**cfg))
    assert "fit_batch_size" not in plain.fits
    given = PowerFit("batch_size", "utd", {"elsewhere": 0.5}, {"elsewhere": 300.0}, {"elsewhere": 0.05},
                     {"elsewhere": 10.0}, 0.01, 5, True)
    res = fit_all(df, PipelineConfig(**cfg, hparam_fits={"batch_size": given}, hparam_fits_source="test"))
    fb = res.fits["fit_batch_size"]
    assert fb["source"] == "test" and set(fb["params"]) == {"env0"} and fb["params"]["env0"]["coef"] == 300.0
    # compute = k N B(sigma) sigma D: the given law changes it
    assert not np.allclose(res.tables["budget"]["compute"], plain.tables["budget"]["compute"])
    with pytest.raises(UserError, match="unknown law"):
        fit_all(df, PipelineConfig(**cfg, hparam_fits={"lr": given}))


def test_markdown_table_and_fmt():
    df = pd.DataFrame({"utd": ["1/4", "1/2"], "data": [12345.678, np.nan], "n": [3, 4], "ok": [True, False]})
    text = markdown_table(df, ["utd", "data", "n", "ok", "absent"], digits=3)
    assert text.splitlines() == ["| utd | data | n | ok |", "|---|---|---|---|",
                                 "| 1/4 | 1.23e+04 | 3 | True |", "| 1/2 | n/a | 4 | False |"]
    assert markdown_table(df.iloc[:0], ["utd"]) == "(none)"
    assert (fmt(0.123456), fmt(None), fmt(float("inf")), fmt("x")) == ("0.1235", "n/a", "inf", "x")


def test_read_number_is_the_config_parser_with_user_errors():
    assert read_number("1/64") == 1 / 64 and read_number("1e-3/2") == 5e-4 and read_number(3) == 3.0
    for bad in ("abc", "1/0", "nan"):
        with pytest.raises(UserError, match="not a number"):
            read_number(bad)
