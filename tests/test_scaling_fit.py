"""The fitting engine against planted parameters, brute-force grids and direct least squares."""

import itertools

import numpy as np
import pandas as pd
import pytest

from pql_jax.scaling import fit as F
from pql_jax.scaling.datafit import bootstrap_refit, fit_data_efficiency
from pql_jax.scaling.laws import BATCH_SIGMA_N, DATA_SIGMA, DATA_SIGMA_N

ISAAC_UTD = np.array([1 / 1024, 1 / 2048, 1 / 4096, 1 / 8192, 1 / 16384, 1 / 32768, 1 / 65536])


def _dense_profiled_min(law, df, spans):
    """Brute force: the profiled loss on a dense grid (scale solved exactly)."""
    lx = {k: np.log(df[k].to_numpy(float)) for k in law.inputs}
    ly = np.log(df["data"].to_numpy(float))
    pts = np.array(list(itertools.product(*spans)))
    return F._profiled_loss(law, lx, ly, [pts[:, j:j + 1] for j in range(pts.shape[1])]).min()


def test_data_sigma_recovers_planted_with_fractional_utd():
    rng = np.random.default_rng(1)
    p = {"d_min": 6.8e7, "b": 2.0e-3, "a": 0.87}  # b inside the range so it is identifiable
    y = DATA_SIGMA.predict(p, utd=ISAAC_UTD) * np.exp(rng.normal(0, 0.01, len(ISAAC_UTD)))
    fit = F.fit_law(DATA_SIGMA, pd.DataFrame({"env": "isaac", "utd": ISAAC_UTD, "data": y}))
    got = fit.params["isaac"]
    assert got["a"] == pytest.approx(0.87, rel=0.1)
    assert got["b"] == pytest.approx(2.0e-3, rel=0.25)
    assert got["d_min"] == pytest.approx(6.8e7, rel=0.15)
    assert fit.loss < 2e-4 and all(np.isfinite(list(fit.se["isaac"].values())))


def test_engine_reaches_global_minimum_on_published_isaac_law():
    """Seed 001's Isaac Gym fit, D_J = 6.8e7 (1 + (sigma / 1.88)^-0.87), at the published
    fractional UTDs with noise: b lies far outside the data, the loss has a long flat ridge."""
    rng = np.random.default_rng(0)
    y = DATA_SIGMA.predict({"d_min": 6.8e7, "b": 1.88, "a": 0.87}, utd=ISAAC_UTD) * np.exp(
        rng.normal(0, 0.05, len(ISAAC_UTD)))
    df = pd.DataFrame({"env": "isaac", "utd": ISAAC_UTD, "data": y})
    with np.errstate(all="raise"):  # no overflow warnings anywhere in the fit
        fit = F.fit_law(DATA_SIGMA, df)
    dense = _dense_profiled_min(DATA_SIGMA, df, [np.linspace(np.log(1e-7), np.log(1e3), 500),
                                                 np.log(np.geomspace(0.01, 5, 500))])
    assert fit.loss <= dense + 1e-10


def test_data_sigma_n_recovers_planted_and_beats_grid():
    rng = np.random.default_rng(2)
    p = {"d_min": 1e5, "a": 0.45, "alpha": 0.74, "b": 3e5, "beta": 0.6}
    u, n = np.meshgrid([0.25, 0.5, 1, 2, 4, 8.0], [1e5, 4e5, 1.6e6, 6.4e6])
    df = pd.DataFrame({"env": "e", "utd": u.ravel(), "model_size": n.ravel()})
    df["data"] = DATA_SIGMA_N.predict(p, utd=df["utd"], model_size=df["model_size"]) * np.exp(
        rng.normal(0, 0.01, len(df)))
    fit = F.fit_law(DATA_SIGMA_N, df)
    got = fit.params["e"]
    for k in ("alpha", "beta"):
        assert got[k] == pytest.approx(p[k], rel=0.15)
    assert got["d_min"] == pytest.approx(1e5, rel=0.1)
    assert fit.loss < 2e-4


def test_batch_sigma_n_recovers_planted():
    rng = np.random.default_rng(3)
    p = {"a": 400.0, "alpha": 0.47, "n_half": 2e5, "beta": 0.8}
    u, n = np.meshgrid([0.25, 0.5, 1, 2, 4, 8.0], [3e4, 1e5, 3e5, 1e6, 3e6])
    df = pd.DataFrame({"env": "e", "utd": u.ravel(), "model_size": n.ravel()})
    df["batch_size"] = BATCH_SIGMA_N.predict(p, utd=df["utd"], model_size=df["model_size"]) * np.exp(
        rng.normal(0, 0.01, len(df)))
    got = F.fit_law(BATCH_SIGMA_N, df, y="batch_size").params["e"]
    assert got["alpha"] == pytest.approx(0.47, rel=0.05)
    assert got["beta"] == pytest.approx(0.8, rel=0.2)
    assert got["n_half"] == pytest.approx(2e5, rel=0.3)


def test_fixed_effects_slope_matches_direct_least_squares():
    rng = np.random.default_rng(4)
    rows = []
    for env, c in (("a", 300.0), ("b", 500.0), ("c", 200.0)):
        for u in (0.25, 1, 4, 8):
            rows.append({"env": env, "utd": u, "batch_size": c * u ** -0.47 * np.exp(rng.normal(0, 0.1))})
    df = pd.DataFrame(rows)
    pf = F.fit_fixed_effects(df, "batch_size")
    X = np.column_stack([pd.get_dummies(df["env"]).to_numpy(float), np.log(df["utd"])])
    sol = np.linalg.lstsq(X, np.log(df["batch_size"]), rcond=None)[0]
    assert pf.slope["a"] == pytest.approx(-sol[-1], rel=1e-10)
    assert pf.coef["b"] == pytest.approx(np.exp(sol[1]), rel=1e-10)
    per = F.fit_fixed_effects(df, "batch_size", shared=False)
    one = np.polyfit(np.log(df[df.env == "c"]["utd"]), np.log(df[df.env == "c"]["batch_size"]), 1)
    assert per.slope["c"] == pytest.approx(-one[0], rel=1e-10)


def _crossings(noise=0.02, envs=(("a", 1e5), ("b", 3e5), ("c", 5e4)), seed=5):
    rng = np.random.default_rng(seed)
    rows = []
    for env, dmin in envs:
        for lv, mult in enumerate((1.0, 2.0, 3.0)):
            for u in (0.25, 0.5, 1, 2, 4, 8.0):
                d = DATA_SIGMA.predict({"d_min": dmin * mult, "b": 0.45 * (1 + lv / 2), "a": 0.74}, utd=u)
                rows.append({"env": env, "threshold": 300 + 200 * lv, "utd": u, "data": d * np.exp(rng.normal(0, noise))})
    return pd.DataFrame(rows)


def test_shared_exponents_constrained_and_recovered():
    df = _crossings()
    free, _ = fit_data_efficiency(df)
    shared, _ = fit_data_efficiency(df, shared=True)
    for lv in free.fits:
        assert shared.fits[lv].loss >= free.fits[lv].loss - 1e-12
        a = {shared.fits[lv].params[e]["a"] for e in "abc"}
        assert len(a) == 1 and a.pop() == pytest.approx(0.74, rel=0.2)


def test_median_normalisation_and_holdout_extrapolation():
    df = _crossings(noise=0.01)
    fit, pred = fit_data_efficiency(df, normalise="median", holdout="utd>=8")
    assert fit.holdout["n"] == 9 and fit.holdout["max_abs_rel_error"] < 0.1
    assert pred["held_out"].sum() == 9 and np.isfinite(pred["data_fit"]).all()
    np.testing.assert_allclose(pred["data_fit"], pred["data"], rtol=0.1)


def test_bootstrap_refit_matches_full_fits():
    df = _crossings(envs=(("a", 1e5),))
    fit, _ = fit_data_efficiency(df)
    sub = df[df["threshold"] == 300]
    lx = {"utd": np.log(sub["utd"].to_numpy())}
    rng = np.random.default_rng(6)
    LY = np.log(sub["data"].to_numpy())[None] + rng.normal(0, 0.03, (4, len(sub)))
    theta = bootstrap_refit(fit.fits[0], "a", lx, LY)
    for i in range(4):
        _, best = F.fit_one(DATA_SIGMA, lx, LY[i])
        loss = np.mean((LY[i] - DATA_SIGMA.log_predict(lx, theta[i])) ** 2)
        assert loss <= best + 1e-9
