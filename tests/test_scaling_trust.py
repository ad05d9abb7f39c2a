"""Predictions you can trust: flat laws, thresholds inside the noise, best values at the grid edge,
undetermined / exactly determined / bound / failed fits, hold-out that holds out, interval
coverage on planted laws, shared exponents with one pooled bootstrap SE, extrapolation flags."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import OptimizeResult

from pql_jax.cli import main
from pql_jax.scaling import PipelineConfig, fit_all, fit_law, load_curves
from pql_jax.scaling import curves as cv
from pql_jax.scaling import fit as fit_module
from pql_jax.scaling.budget import BudgetModel
from pql_jax.scaling.datafit import bootstrap_refit, joint_bootstrap_refit
from pql_jax.scaling.diagnostics import law_flags, power_flags
from pql_jax.scaling.hparams import best_hparams, fit_hparam_law
from pql_jax.scaling.laws import DATA_SIGMA
from pql_jax.scaling.powerlaw import add_bootstrap, fit_fixed_effects, percentile_interval
from pql_jax.scaling.synthetic import make_sweep


def test_flat_batch_size_law_is_a_result_not_a_crash(tmp_path, capsys):
    path = tmp_path / "best.csv"
    pd.DataFrame({"utd": [0.25, 1, 4], "batch_size": [256, 255, 254]}).to_csv(path, index=False)
    assert main(["fit", "batch-size", str(path), "--out", str(tmp_path / "o")]) == 0
    assert "no dependence on utd within the noise" in capsys.readouterr().out
    fit = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert fit["flat"] == {"all": True} and fit["params"]["all"]["beta"] is None
    # a flat law predicts one constant: its value at the geometric centre of the fitted utds (1 here)
    pred = pd.read_csv(tmp_path / "o" / "predictions.csv")["batch_size_fit"]
    np.testing.assert_allclose(pred, fit["params"]["all"]["coef"])
    # a clear dependence is not flat: B* halves over a 16x utd range
    steep = fit_fixed_effects(pd.DataFrame({"env": "e", "utd": [0.25, 1, 4], "b": [512, 362, 256]}), "b")
    assert steep.flat == {"e": False} and steep.slope["e"] == pytest.approx(0.25)


def test_auto_thresholds_are_refused_inside_the_seed_noise(tmp_path, capsys):
    df = make_sweep(n_envs=1, utds=(0.25, 1, 4), batch_sizes=(64, 256), lrs=(5e-4,), seeds=4, points=60)
    flat = df.assign(**{"return": 300 + np.random.default_rng(0).normal(0, 20, len(df))})
    flat.to_csv(tmp_path / "flat.csv", index=False)
    assert main(["fit", "all", str(tmp_path / "flat.csv"), "--out", str(tmp_path / "o"), "--resamples", "5"]) == 2
    err = capsys.readouterr().err
    assert "inside the seed noise" in err and err.count("\n") == 1
    # given thresholds are used, but flagged, and the laws through that noise say so (no crash, no silence)
    assert main(["fit", "all", str(tmp_path / "flat.csv"), "--out", str(tmp_path / "o"), "--resamples", "5",
                 "--thresholds", "302,305,308", "--no-figures"]) == 0
    flags = pd.read_csv(tmp_path / "o" / "flags.csv")
    assert (flags["quantity"] == "threshold").sum() == 3 and flags["quantity"].str.startswith("D_J law").any()
    assert "warning:" in capsys.readouterr().out
    # the same sweep with its planted rise is accepted
    cb = cv.crossing_bootstrap(load_curves(df)[0], resamples=2)
    assert len(next(iter(cb.thresholds.values()))) == 5


def _edge_case_table(best=None):
    """5 utds x batch sizes (64, 128, 256[, 512]), log D quadratic in log B about B*: at utd 1/4,
    1/2 the crossings fall with B up to the top of the grid, at utd 4 they rise from its bottom
    (bounds); elsewhere the best B lies inside the grid."""
    rows, D = [], []
    best = best or {0.25: 1e9, 0.5: 1e9, 1: 128, 2: 128, 4: 20}
    for u, b_star in best.items():
        for b in (64, 128, 256, 512)[: 3 if u < 1 else 4]:
            rows.append({"env": "e", "utd": u, "batch_size": float(b)})
            D.append([1000 * np.exp(0.3 * np.log(b / b_star) ** 2)] * 3)
    return pd.DataFrame(rows), np.array(D)[:, :, None]


def test_best_value_at_the_grid_edge_is_a_bound_left_out_of_the_law():
    gdf, D = _edge_case_table()
    best, per = best_hparams(gdf, D, 0)
    assert list(best["batch_size_edge"]) == ["high", "high", "", "", "low"]
    # picked at the edge, but the crossings bracket the optimum (B* = 80 between 64 and 128): an optimum
    bracketed, _ = best_hparams(*_edge_case_table({1: 80, 2: 300, 4: 450}), 0)
    assert list(bracketed["batch_size"]) == [64, 256, 512] and list(bracketed["batch_size_edge"]) == ["", "", ""]
    pf, notes, flags, excluded = fit_hparam_law(best, per, "batch_size", "batch_size")
    assert pf is None and excluded == [0.25, 0.5, 4]  # only 2 interior utds remain: no law
    assert any("bound" in f["problem"] for f in flags) and any("not fitted" in n for n in notes)
    # with a third interior utd the law is fitted through the interior cells only
    gdf2 = pd.concat([gdf, pd.DataFrame({"env": "e", "utd": 8.0, "batch_size": [64.0, 128.0, 256.0]})])
    D2 = np.concatenate([D, np.array([[1500.0] * 3, [1000.0] * 3, [1500.0] * 3])[:, :, None]])
    best2, per2 = best_hparams(gdf2, D2, 0)
    pf2, _, _, excluded2 = fit_hparam_law(best2, per2, "batch_size", "batch_size")
    assert pf2 is not None and pf2.n == 3 and excluded2 == [0.25, 0.5, 4]


def test_exactly_determined_at_bound_and_failed_fits_are_flagged(monkeypatch):
    u = np.array([0.25, 1.0, 4.0])
    exact = fit_law(DATA_SIGMA, pd.DataFrame({"env": "e", "utd": u, "data": 1e4 * (1 + (0.5 / u) ** 0.8)}))
    assert all(np.isnan(v) for v in exact.se["e"].values())
    assert any("no uncertainty estimate" in f["problem"] for f in law_flags("D_J", exact))
    two = fit_fixed_effects(pd.DataFrame({"env": "e", "utd": [1.0, 4.0], "b": [300.0, 200.0]}), "b")
    assert any("no uncertainty estimate" in f["problem"] for f in power_flags("B*", two))
    u6 = np.geomspace(0.125, 8, 6)
    steep = fit_law(DATA_SIGMA, pd.DataFrame({"env": "e", "utd": u6, "data": 1e4 * (1 + (0.5 / u6) ** 14)}))
    assert {"group": "e", "param": "a", "problem": "at the search bound (the optimum may lie outside)"} in steep.flags

    real = fit_module.minimize

    def stopped(*args, **kwargs):
        res = real(*args, **kwargs)
        return OptimizeResult(x=res.x, fun=res.fun, jac=res.jac, status=1, message="iteration limit")

    monkeypatch.setattr(fit_module, "minimize", stopped)
    failed = fit_law(DATA_SIGMA, pd.DataFrame({"env": "e", "utd": u6, "data": 1e4 * (1 + (0.5 / u6) ** 0.8)}))
    assert any("optimiser: iteration limit" in f["problem"] for f in failed.flags)


@pytest.fixture(scope="module")
def small_sweep():
    return make_sweep(n_envs=2, utds=(0.25, 0.5, 1, 2, 4), batch_sizes=(32, 128, 512, 2048),
                      lrs=(1e-4, 5e-4, 2.5e-3), seeds=4, points=50, seed=3)


def test_holdout_learns_nothing_from_the_held_out_rows(small_sweep):
    cfg = dict(resamples=12, figures=False)
    held = fit_all(small_sweep, PipelineConfig(holdout="utd >= 4", **cfg))
    deleted = fit_all(small_sweep[small_sweep["utd"] < 4], PipelineConfig(**cfg))
    for name in ("fit", "fit_batch_size", "fit_learning_rate"):
        a, b = held.fits.get(name, {}), deleted.fits.get(name, {})
        if name == "fit":
            a, b = a["levels"], b["levels"]
        assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str), name
    assert held.summary["thresholds"] == deleted.summary["thresholds"]
    pred = held.tables["predictions"]
    h = pred[pred["held_out"]]
    assert len(h) and (h["utd"] == 4).all() and held.objects["data"].holdout["n"] == len(h.dropna(subset=["data"]))
    assert np.isfinite(h["data_fit_lo"]).all() and (h["data_fit_lo"] <= h["data_fit_hi"]).all()


def test_90_percent_intervals_cover_planted_values(small_sweep):
    """Repeated draws of seeds around planted laws; the library's seed resampling, fits and
    percentile intervals must cover the planted slope of B* and exponent of D_J ~90% of the time."""
    rng = np.random.default_rng(0)
    utd = np.array([0.25, 0.5, 1, 2, 4, 8])
    draws, n_seeds, hits_b, hits_a = 60, 6, 0, 0
    for i in range(draws):
        seeds_b = 300 * utd ** -0.47 * np.exp(rng.normal(0, 0.3, (n_seeds, len(utd))))
        means = cv.resample_means(cv.RunGroup(("e", i), utd, seeds_b), 100, seed=i)
        df = pd.DataFrame({"env": "e", "utd": utd, "b": means[0]})
        pf = fit_fixed_effects(df, "b")
        add_bootstrap(pf, df, means[1:].T)
        lo, hi = pf.interval["slope"]["e"]
        hits_b += lo <= 0.47 <= hi
        seeds_d = 1e4 * (1 + (0.5 / utd) ** 0.8) * np.exp(rng.normal(0, 0.2, (n_seeds, len(utd))))
        means = cv.resample_means(cv.RunGroup(("d", i), utd, seeds_d), 100, seed=i)
        lf = fit_law(DATA_SIGMA, pd.DataFrame({"env": "e", "utd": utd, "data": means[0]}))
        theta = bootstrap_refit(lf, "e", {"utd": np.log(utd)}, np.log(means[1:]))
        lo, hi = percentile_interval(np.exp(theta[:, 2]))
        hits_a += lo <= 0.8 <= hi
    # 60 draws: binomial SD of the coverage ~0.04 around 0.9
    assert 0.78 <= hits_b / draws <= 0.98 and 0.78 <= hits_a / draws <= 0.98


def test_shared_exponent_bootstrap_is_one_joint_refit_with_a_pooled_se():
    rng = np.random.default_rng(2)
    u = np.geomspace(0.125, 8, 6)
    df = pd.concat([pd.DataFrame({"env": e, "utd": u, "data": d * (1 + (b / u) ** 0.7) * np.exp(rng.normal(0, 0.03, 6))})
                    for e, d, b in (("x", 1e4, 0.4), ("y", 1e5, 0.8), ("z", 3e4, 0.5))], ignore_index=True)
    lf = fit_law(DATA_SIGMA, df, shared=("a",))
    assert len({lf.se[g]["a"] for g in lf.params}) == 1  # one SE for the one shared exponent
    LY = np.log(df["data"].to_numpy())[None] + rng.normal(0, 0.03, (2, len(df)))
    thetas = joint_bootstrap_refit(lf, df, LY)
    for r in range(2):
        ref = fit_law(DATA_SIGMA, df.assign(data=np.exp(LY[r])), shared=("a",))
        assert np.exp(thetas["x"][r, 2]) == pytest.approx(ref.params["x"]["a"], rel=1e-3)
        assert thetas["x"][r, 2] == thetas["z"][r, 2]


def test_extrapolated_optimum_and_dominated_frontier_are_marked():
    data = lambda s, n: 1e4 * (1 + (0.5 / s) ** 0.8) * np.ones(np.shape(n))  # noqa: E731
    m = BudgetModel("e", 0, 500.0, data, lambda s, n: np.full(np.broadcast(s, n).shape, 256.0), 10.0, 1e11,
                    (1.0, 8.0), 1e5)
    opt = m.solve_budget()  # delta large: data is expensive, the optimum utd lies above the fitted 8
    assert opt["utd"] > 8 and opt["extrapolated"]
    # Problem 3.1: a compute cap that only utd above the fitted range meets is marked too
    cap = m.max_data_efficiency(float(m.compute(30.0)))
    assert cap["utd"] == pytest.approx(30.0, rel=1e-6) and cap["extrapolated"]
    assert not m.max_data_efficiency(float(m.compute(4.0)))["extrapolated"]
    f = m.frontier(300)
    c, d = f["compute"].to_numpy(), f["data"].to_numpy()
    brute = np.array([((c <= c[i]) & (d <= d[i]) & ((c < c[i]) | (d < d[i]))).any() for i in range(len(f))])
    np.testing.assert_array_equal(f["dominated"].to_numpy(), brute)
    np.testing.assert_array_equal(f["extrapolated"].to_numpy(), (f["utd"] < 1) | (f["utd"] > 8))


def test_data_at_fitted_best_batch_size_removes_the_minimum_over_grid_bias():
    """Noise-free planted sweep, 4x batch grid: D_J measured at the fitted B* (interpolated across
    the grid) recovers the planted exponent; the minimum over the grid is biased by where the grid
    happens to sit relative to B*(utd) at each utd."""
    df = make_sweep(n_envs=2, utds=(0.125, 0.25, 0.5, 1, 2, 4, 8), batch_sizes=(16, 64, 256, 1024, 4096), lrs=(5e-4,),
                    seeds=2, points=400, seed_noise=0.0, obs_noise=0.0, planted={"lr_slope": 0.0})
    err = {}
    for mode in ("at_best", "min"):
        res = fit_all(df, PipelineConfig(crossings=mode, resamples=0, figures=False, n_thresholds=3))
        err[mode] = max(abs(p["a"] - 0.74) for lf in res.objects["data"].fits.values() for p in lf.params.values())
        if mode == "at_best":
            cr = res.tables["crossings"]
            assert (cr["procedure"] == "at B*, eta* (interpolated)").all()
            np.testing.assert_allclose(cr["at_batch_size"], res.objects["batch_size"].predict(cr["env"].iloc[0], cr["utd"])
                                       if cr["env"].nunique() == 1 else
                                       [res.objects["batch_size"].predict(e, u) for e, u in zip(cr["env"], cr["utd"])])
    assert err["at_best"] < 0.01 and err["min"] > 3 * err["at_best"], err


UTDS = 2.0 ** -np.arange(1, 11)  # 1/2 ... 1/1024: across the published b = 1.42e-2


def test_offset_form_recovers_the_published_pql_batch_law_and_wins_the_comparison():
    """Seed 001's PQL fit B* = 38.6 (1 + (sigma / 1.42e-2)^-0.68) with 3% noise at UTDs around its
    b: the offset form recovers it and is preferred; on a pure power law the power law is."""
    from pql_jax.scaling.forms import compare_forms
    from pql_jax.scaling.laws import OFFSET_POWER

    rng = np.random.default_rng(1)
    noise = np.exp(rng.normal(0, 0.03, len(UTDS)))
    b = OFFSET_POWER.predict({"c": 38.6, "b": 1.42e-2, "a": 0.68}, utd=UTDS) * noise
    df = pd.DataFrame({"env": "push", "utd": UTDS, "batch_size": b})
    cmp = compare_forms(df, "batch_size", fit_fixed_effects(df, "batch_size"))
    p, se = cmp["offset"]["params"]["push"], cmp["offset"]["se"]["push"]
    assert abs(p["a"] - 0.68) < 2 * se["a"] + 0.02 and abs(np.log(p["c"] / 38.6)) < 0.15
    assert cmp["preferred"] == "offset" and cmp["criterion"] == "aicc"
    assert cmp["forms"]["offset"]["loo_mean_abs_log_error"] < cmp["forms"]["power"]["loo_mean_abs_log_error"]
    pure = df.assign(batch_size=300 * UTDS ** 0.3 * noise)
    assert compare_forms(pure, "batch_size", fit_fixed_effects(pure, "batch_size"))["preferred"] == "power"


def test_budget_power_law_exponent_interval_from_the_resamples_optima():
    from pql_jax.scaling.budget import budget_power_laws

    rng = np.random.default_rng(5)
    F = np.geomspace(1e9, 1e12, 6)
    exps = rng.normal(-0.5, 0.05, 200)  # resample r: utd* = 3 F^exps[r] exactly
    table = pd.DataFrame({"env": "e", "level": range(6), "budget": F, "utd": 3 * F ** -0.5, "data": F / 10,
                          "compute": F / 2, "model_size": 1.0})
    samples = {("e", i): {"budget": np.full(200, f), "utd": 3 * f ** exps, "data": np.full(200, f / 10),
                          "compute": np.full(200, f / 2)} for i, f in enumerate(F)}
    law = budget_power_laws(table, samples=samples)["utd"]
    assert law["exponent"] == pytest.approx(-0.5) and law["n_held_out"] == 2
    lo, hi = np.percentile(exps, [5, 95])
    assert law["exponent_lo"] == pytest.approx(lo) and law["exponent_hi"] == pytest.approx(hi)
    assert law["exponent_bootstrap_se"] == pytest.approx(np.std(exps, ddof=1))


def _three_envs(exponents, seed: int, noise: float = 0.05) -> pd.DataFrame:
    """D_J = 1e5 (1 + (8 / utd)^a_env) at 7 utds over 0.25-16, log-normal noise."""
    from pql_jax.scaling.laws import DATA_SIGMA

    rng = np.random.default_rng(seed)
    u = np.geomspace(0.25, 16, 7)
    return pd.concat([pd.DataFrame({"env": env, "utd": u, "data": DATA_SIGMA.predict(
        {"d_min": 1e5, "b": 8.0, "a": a}, utd=u) * np.exp(rng.normal(0, noise, len(u)))})
        for env, a in zip("xyz", exponents)], ignore_index=True)


def test_shared_exponent_that_the_envs_do_not_share_is_flagged_poor():
    """A D_J exponent shared across envs is checked against the per-env fits (F-test of the
    nested fits): planted exponents 0.4 / 0.7 / 1.2 are flagged in (nearly) every draw, a truly
    shared 0.7 in (nearly) none (1% false flags by construction)."""
    from pql_jax.scaling.fit import fit_law
    from pql_jax.scaling.laws import DATA_SIGMA

    def flagged(exponents, seed):
        flags = fit_law(DATA_SIGMA, _three_envs(exponents, seed), shared=("a",)).flags
        return any("sharing a across groups is rejected" in f["problem"] for f in flags)

    assert sum(flagged((0.4, 0.7, 1.2), s) for s in range(10)) >= 9
    assert sum(flagged((0.7, 0.7, 0.7), s) for s in range(20)) <= 1
