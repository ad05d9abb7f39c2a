"""Intervals of the B*(sigma, N) law and of `propose` rows from the seed bootstrap, and the D_J
fit's check against a poor local optimum: all against planted laws."""

import numpy as np
import pandas as pd

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
