"""Intervals of the B*(sigma, N) law and of `propose` rows from the seed bootstrap, and the D_J
fit's check against a poor local optimum: all against planted laws."""

import numpy as np
import pandas as pd
import pytest

from pql_jax.scaling.hparams import fit_batch_size_n
from pql_jax.scaling.laws import BATCH_SIGMA_N

B_N = {"a": 400.0, "alpha": 0.47, "n_half": 2e5, "beta": 0.8}


def _seed_bootstrap(log_true: np.ndarray, rng, seeds: int = 8, sd: float = 0.2, resamples: int = 100):
    """Point estimates and resamples of per-cell best values measured over ``seeds`` seeds with
    log-normal noise: the mean over the seeds, and means over seeds drawn with replacement
    rescaled about it by sqrt(n / (n - 1)) (what curves.bootstrap_crossings does)."""
    draws = log_true[:, None] + rng.normal(0, sd, (len(log_true), seeds))
    mean = draws.mean(1)
    idx = rng.integers(0, seeds, (resamples, seeds))
    boot = mean[:, None] + (draws[:, idx].mean(2) - mean[:, None]) * np.sqrt(seeds / (seeds - 1))
    return np.exp(mean), np.exp(boot)


def _best_table(rng):
    u, n = np.meshgrid([0.25, 0.5, 1, 2, 4, 8.0], [3e4, 1e5, 3e5, 1e6])
    best = pd.DataFrame({"env": "e", "utd": u.ravel(), "model_size": n.ravel(), "batch_size_edge": ""})
    log_true = np.log(BATCH_SIGMA_N.predict(B_N, utd=best["utd"], model_size=best["model_size"]))
    best["batch_size"], boot = _seed_bootstrap(np.asarray(log_true), rng)
    return best, {"batch_size": boot}


def test_batch_size_n_bootstrap_intervals_cover_the_planted_exponents():
    """Over 20 planted sweeps (seed noise 0.2 in log B per seed, 8 seeds) the 90% intervals of
    alpha and beta contain the planted value in about 90% of them, and the bootstrap SE of
    alpha matches the spread of the estimate across the sweeps (within a factor of 1.6)."""
    rng = np.random.default_rng(0)
    hits, alphas, ses = {"alpha": 0, "beta": 0}, [], []
    for _ in range(20):
        lf, boot = fit_batch_size_n(*_best_table(rng))
        assert boot["e"].shape == (100, 4) and np.isfinite(boot["e"]).all()
        for p in hits:
            lo, hi = lf.interval["e"][p]
            hits[p] += lo <= B_N[p] <= hi
        alphas.append(lf.params["e"]["alpha"])
        ses.append(lf.bootstrap_se["e"]["alpha"])
    assert hits["alpha"] >= 15 and hits["beta"] >= 15, hits
    spread = np.std(alphas, ddof=1)
    assert spread / 1.6 < np.median(ses) < spread * 1.6, (spread, np.median(ses))


def _write(dir_, name, obj):
    from pql_jax.scaling.io import write_json

    write_json(str(dir_ / f"{name}.json"), obj)


def test_propose_intervals_cover_the_planted_batch_size_and_learning_rate(tmp_path):
    """`propose` at utd 3 (between the fitted utds) from fit files of 20 planted sweeps: the
    90% interval of the bootstrap refits' B*(3) and eta*(3) contains the planted value in about
    90% of them, and the proposal lies inside its own interval."""
    from pql_jax.scaling.powerlaw import add_bootstrap, fit_fixed_effects
    from pql_jax.scaling.propose import propose

    rng = np.random.default_rng(1)
    utd = np.array([0.25, 0.5, 1, 2, 4, 8.0])
    planted = {"batch_size": (300.0, 0.47), "lr": (6e-4, 0.26)}
    hits = {"batch_size": 0, "lr": 0}
    for _ in range(20):
        for hp, name in (("batch_size", "fit_batch_size"), ("lr", "fit_learning_rate")):
            c, s = planted[hp]
            point, boot = _seed_bootstrap(np.log(c * utd ** -s), rng)
            df = pd.DataFrame({"env": "e", "utd": utd, hp: point})
            pf = fit_fixed_effects(df, hp, "utd")
            add_bootstrap(pf, df, boot)
            _write(tmp_path, name, pf.to_dict())
        row = propose(str(tmp_path), utds=[3.0]).iloc[0]
        for hp in hits:
            c, s = planted[hp]
            hits[hp] += row[f"{hp}_lo"] <= c * 3.0 ** -s <= row[f"{hp}_hi"]
        assert row["lr_lo"] <= row["lr"] <= row["lr_hi"]
        assert row["batch_size_lo"] - 8 <= row["batch_size"] <= row["batch_size_hi"] + 8  # rounded to 16
    assert hits["batch_size"] >= 15 and hits["lr"] >= 15, hits


def test_propose_interval_from_the_batch_size_n_refits(tmp_path):
    """With B*(sigma, N) fitted, a proposal's batch-size interval comes from its bootstrap refits
    (stored in fit_batch_size_n.json) at the row's utd and N and contains the planted B*."""
    from pql_jax.scaling.laws import batch_size_b
    from pql_jax.scaling.propose import propose

    lf, boot = fit_batch_size_n(*_best_table(np.random.default_rng(2)))
    _write(tmp_path, "fit_batch_size_n", {**lf.to_dict(), "paper_b": {"e": batch_size_b(lf.params["e"])},
                                          "bootstrap_log_params": {g: t.tolist() for g, t in boot.items()}})
    pd.DataFrame({"env": ["e"], "model_size": [2e5]}).to_csv(tmp_path / "budget.csv", index=False)
    row = propose(str(tmp_path), utds=[3.0]).iloc[0]
    want = float(BATCH_SIGMA_N.predict(B_N, utd=3.0, model_size=2e5))
    assert row["batch_size_lo"] <= want <= row["batch_size_hi"]
    th = np.exp(boot["e"])  # independent check: numpy percentiles of the refits' B*(3, 2e5)
    b = th[:, 0] / 3.0 ** th[:, 1] / (1 + (th[:, 2] / 2e5) ** th[:, 3])
    assert row["batch_size_lo"] == pytest.approx(np.percentile(b, 5), rel=2e-3)
    assert row["batch_size_hi"] == pytest.approx(np.percentile(b, 95), rel=2e-3)
    assert np.isnan(row["lr_lo"])  # no learning-rate fit in this directory


def _steep(a: float, b: float, seed: int = 0) -> pd.DataFrame:
    """D_J = 1e5 (1 + (b / utd)^a) at 8 utds over 0.25-32 with 5% log-normal noise."""
    from pql_jax.scaling.laws import DATA_SIGMA

    u = np.geomspace(0.25, 32, 8)
    d = DATA_SIGMA.predict({"d_min": 1e5, "b": b, "a": a}, utd=u) * np.exp(
        np.random.default_rng(seed).normal(0, 0.05, len(u)))
    return pd.DataFrame({"env": "e", "utd": u, "data": d})


def test_steep_d_j_local_optimum_is_escaped_and_flagged(monkeypatch):
    """Planted a=5 with the knee (b=20) near the largest utd: D_J spans 3e9 and the 3 best grid
    starts all end in the pure-power-law basin (loss 0.4 against 0.001 at the planted values).
    The check against the polynomial reference restarts across the grid, recovers the planted
    law and says so in the flags; with the check disabled the poor optimum is reported silently."""
    from pql_jax.scaling import optimum
    from pql_jax.scaling.datafit import fit_data_efficiency
    from pql_jax.scaling.diagnostics import law_flags
    from pql_jax.scaling.fit import fit_law
    from pql_jax.scaling.laws import DATA_SIGMA

    df = _steep(5.0, 20.0)
    fit, _ = fit_data_efficiency(df)
    (lf,) = fit.fits.values()
    p = lf.params["e"]
    assert p["a"] == pytest.approx(5.0, rel=0.05) and p["b"] == pytest.approx(20.0, rel=0.1)
    assert lf.loss < 0.0025  # the noise: 0.05^2
    assert any("local optimum" in f["problem"] for f in law_flags("D_J", lf))
    monkeypatch.setattr(optimum, "CHECK_RATIO", np.inf)
    monkeypatch.setattr(optimum, "RMS_POOR", np.inf)
    silent = fit_law(DATA_SIGMA, df)
    assert silent.loss > 0.1 and not silent.flags


def test_d_j_spanning_1e19_with_exponent_25_is_flagged_as_poor_in_flags_csv(tmp_path):
    """Planted a=25 (b=1.5 inside the utds): D_J spans ~1e19, beyond what the exponent bound (10)
    can fit. `fit data-efficiency` still fits, and the fit carries a poor-fit flag next to the
    bound flag; the same flags reach flags.csv of the fit stage through law_flags."""
    from pql_jax.scaling.datafit import fit_data_efficiency
    from pql_jax.scaling.diagnostics import flags_table, law_flags

    df = _steep(25.0, 1.5)
    assert 1e18 < df["data"].max() / df["data"].min() < 1e21
    fit, _ = fit_data_efficiency(df)
    flags = flags_table([f for lf in fit.fits.values() for f in law_flags("D_J law", lf)])
    flags.to_csv(tmp_path / "flags.csv", index=False)
    problems = pd.read_csv(tmp_path / "flags.csv")["problem"].tolist()
    assert any(p.startswith("poor fit: log residual RMS") for p in problems), problems
    (lf,) = fit.fits.values()
    assert np.sqrt(lf.loss) > 1.0  # it is poor: points off by more than a factor e on average


def test_no_poor_fit_flags_on_a_well_posed_planted_law():
    """The check must not cry wolf: 12 noisy draws (log noise 0.2, 8 utds) of the benchmark's
    D_J law raise no local-optimum or poor-fit flag."""
    from pql_jax.scaling.fit import fit_law
    from pql_jax.scaling.laws import DATA_SIGMA

    rng = np.random.default_rng(5)
    u = np.geomspace(0.25, 8, 8)
    for _ in range(12):
        d = DATA_SIGMA.predict({"d_min": 1e5, "b": 0.45, "a": 0.74}, utd=u) * np.exp(rng.normal(0, 0.2, 8))
        lf = fit_law(DATA_SIGMA, pd.DataFrame({"env": "e", "utd": u, "data": d}))
        assert not any("poor fit" in f["problem"] or "local optimum" in f["problem"] for f in lf.flags)


def test_budget_proposal_intervals_carry_the_utd_star_uncertainty(tmp_path):
    """`propose --budget F`: utd*(F) has its own bootstrap refits (stored with the sigma*(F) law),
    so the row's utd interval is their 5-95% range and the batch-size / lr intervals are those of
    B*(utd_r), eta*(utd_r) at each refit's utd_r: checked against numpy with B*, eta* refits that
    do not vary (all of the spread then comes from utd*(F)); a file without refits keeps the
    conditional intervals."""
    from pql_jax.scaling.propose import propose

    rng = np.random.default_rng(3)
    F = 1e12
    coef = 2e-5 * np.exp(rng.normal(0, 0.3, 100))
    expo = 0.45 + rng.normal(0, 0.02, 100)
    law = {"coef": {"e": 2e-5}, "exponent": 0.45, "samples": {"e": np.stack([coef, expo], 1).tolist()}}
    data = {"coef": {"e": 1e3}, "exponent": 0.45, "samples": {"e": np.stack([coef * 5e7, expo], 1).tolist()}}
    _write(tmp_path, "fit_budget", {"laws": {"utd": law, "data": data},
                                    "utd_range": [0.1, 100.0], "budget_range": [1e9, 1e13]})
    for name, (c, s) in (("fit_batch_size", (300.0, 0.47)), ("fit_learning_rate", (6e-4, 0.26))):
        _write(tmp_path, name, {"params": {"e": {"coef": c, "slope": s}}, "samples": {"e": [[c, s]] * 100}})
    row = propose(str(tmp_path), budget=F).iloc[0]
    u = coef * F ** expo
    assert row["utd"] == pytest.approx(2e-5 * F ** 0.45)
    assert row["utd_lo"] == pytest.approx(np.percentile(u, 5), rel=2e-3)
    assert row["utd_hi"] == pytest.approx(np.percentile(u, 95), rel=2e-3)
    for hp, c, s in (("batch_size", 300.0, 0.47), ("lr", 6e-4, 0.26)):
        want = c * u ** -s
        assert row[f"{hp}_lo"] == pytest.approx(np.percentile(want, 5), rel=2e-3)
        assert row[f"{hp}_hi"] == pytest.approx(np.percentile(want, 95), rel=2e-3)
    d = coef * 5e7 * F ** expo
    assert row["data_pred_lo"] == pytest.approx(np.percentile(d, 5), rel=2e-3)

    del law["samples"]  # an older fit_budget.json: intervals conditional on the proposed utd
    _write(tmp_path, "fit_budget", {"laws": {"utd": law}, "utd_range": [0.1, 100.0]})
    row = propose(str(tmp_path), budget=F).iloc[0]
    assert np.isnan(row["utd_lo"])
    assert row["batch_size_lo"] == pytest.approx(300.0 * row["utd"] ** -0.47, rel=5e-3)  # 3 significant figures


def test_results_with_a_given_batch_size_n_law_write_and_read_back(tmp_path):
    """The workflow's fit_laws step: ``fit_all`` given a B*(sigma, N) law writes summary.json
    (the law's shape functions are code, so the config holds the law by its ``to_dict``), and
    the law read back from it predicts what the given one does."""
    import json

    from pql_jax.errors import UserError
    from pql_jax.scaling import PipelineConfig, fit_all, load_curves
    from pql_jax.scaling.api import write_results
    from pql_jax.scaling.fit import LawFit
    from pql_jax.scaling.synthetic import make_sweep

    lf, _ = fit_batch_size_n(*_best_table(np.random.default_rng(4)))
    df, _ = load_curves(make_sweep(n_envs=1, seeds=6, points=40, utds=(0.25, 1, 4), batch_sizes=(256,),
                                   lrs=(5e-4,)))
    cfg = PipelineConfig(max_return=1000.0, n_thresholds=2, resamples=5, figures=False,
                         hparam_fits={"batch_size_n": lf})
    with pytest.raises(UserError, match="needs a model_size column"):
        fit_all(df, cfg)
    res = fit_all(df.assign(model_size=np.array([1e5, 2e5, 4e5])[df["seed"].to_numpy(int) % 3]), cfg)
    write_results(res, str(tmp_path))
    given = json.loads((tmp_path / "summary.json").read_text())["config"]["hparam_fits"]["batch_size_n"]
    back = LawFit.from_dict(given)
    assert back.predict("e", utd=0.5, model_size=2e5) == pytest.approx(lf.predict("e", utd=0.5, model_size=2e5))


@pytest.mark.parametrize("batch_n_half", [None, 1e5])
def test_fit_all_uses_b_star_of_n_only_where_b_star_changes_with_n(batch_n_half, tmp_path):
    """`fit all` on a sweep with three model sizes: B* planted flat in N gets a B*(utd, N) fit that
    is flagged (no dependence on model size) and not used for compute; B* planted falling 3.5x from
    the largest to the smallest N is used and unflagged on that count."""
    from pql_jax.scaling import PipelineConfig, fit_all, load_curves
    from pql_jax.scaling.synthetic import make_sweep

    df, _ = load_curves(make_sweep(n_envs=1, utds=(0.25, 0.5, 1, 2, 4), batch_sizes=(32, 128, 512, 2048),
                                   lrs=(5e-4,), seeds=3, points=50, model_sizes=[3e4, 1e5, 4e5], seed=4,
                                   planted={"batch_n_half": batch_n_half}), 900.0)
    res = fit_all(df, PipelineConfig(max_return=900.0, n_thresholds=3, resamples=20, figures=False))
    flat = any(f["param"] == "N" and f["problem"].startswith("no dependence on model size") for f in res.flags)
    assert "fit_batch_size_n" in res.fits
    assert flat == (batch_n_half is None)
    assert ("batch_size_n" in res.objects) == (batch_n_half is not None)
    if batch_n_half is None:
        return
    # propose reads the fit files: a law flagged flat in N is not used there either
    import json

    from pql_jax.scaling import propose
    from pql_jax.scaling.api import write_results

    write_results(res, str(tmp_path))
    budget = float(res.tables["budget"]["budget"].median())  # its row proposes a model size too
    path = tmp_path / "fit_batch_size_n.json"
    law = json.loads(path.read_text())
    with_n = propose(str(tmp_path), budget=budget)["batch_size"].iloc[0]
    path.write_text(json.dumps({**law, "flags": law.get("flags", []) + [{"group": "env0", "param": "N", "problem": "flat"}]}))
    flagged = propose(str(tmp_path), budget=budget)["batch_size"].iloc[0]
    path.unlink()
    without_n = propose(str(tmp_path), budget=budget)["batch_size"].iloc[0]
    assert flagged == without_n != with_n
