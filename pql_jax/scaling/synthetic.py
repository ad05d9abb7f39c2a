"""Synthetic sweeps with planted laws, for tests and the benchmark.

The first crossing of return level J is planted as
D_J = d_min(env) h(J) (1 + (b(J) / utd)^a) [+ (n_half / N)^beta] * penalty(B, lr), with
h(J) = log(r_max / (r_max - J)) and b(J) = b (J / 500)^gamma; the return curve of a run is the
inverse of that map, so every threshold's crossing follows the planted law. The penalty grows
away from the planted best batch size B*(utd) and learning rate eta*(utd); B* falls with N as
1 / (1 + (batch_n_half / N)^batch_n_beta) when ``batch_n_half`` is planted (default: no N term).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PLANTED = {"batch_slope": 0.47, "lr_slope": 0.26, "a": 0.74, "b": 0.45, "gamma": 1.0,
           "alpha": 0.74, "beta": 0.6, "n_half": 3e5, "penalty": 0.15, "batch_n_half": None, "batch_n_beta": 1.0}


def planted_b(J, planted: dict | None = None):
    """The planted b(J) of the D_J law at threshold J."""
    p = {**PLANTED, **(planted or {})}
    return p["b"] * (np.asarray(J, float) / 500.0) ** p["gamma"]


def make_sweep(n_envs: int = 7, utds=(0.25, 0.5, 1, 2, 4, 8), batch_sizes=(64, 256, 1024),
               lrs=(1.5e-4, 5e-4, 1.5e-3), seeds: int = 10, points: int = 200, model_sizes=None,
               seed: int = 0, seed_noise: float = 0.15, obs_noise: float = 15.0,
               r_max: float = 900.0, planted: dict | None = None) -> pd.DataFrame:
    """A long learning-curve table (env, seed, step, return, utd, batch_size, lr[, model_size])."""
    p = {**PLANTED, **(planted or {})}
    rng = np.random.default_rng(seed)
    envs = [f"env{i}" for i in range(n_envs)]
    d_min = dict(zip(envs, np.geomspace(2e4, 3e5, n_envs)))
    b0 = dict(zip(envs, rng.uniform(200, 400, n_envs)))
    lr0 = dict(zip(envs, rng.uniform(4e-4, 8e-4, n_envs)))
    sizes = [None] if model_sizes is None else list(model_sizes)
    J = np.linspace(0.0, r_max * 0.999, 400)
    h = np.log(r_max / (r_max - J))
    frames = []
    for env in envs:
        def shape(utd, N):
            out = 1 + (planted_b(J, p) / utd) ** p["a"]
            return out if N is None else out + (p["n_half"] / N) ** p["beta"]
        i8 = np.searchsorted(J, 0.85 * r_max)
        t_max = 2.5 * d_min[env] * h[i8] * shape(min(utds), sizes[0] and min(sizes))[i8]
        steps = np.linspace(t_max / points, t_max, points)
        for utd in utds:
            bstar, lstar = b0[env] * utd ** -p["batch_slope"], lr0[env] * utd ** -p["lr_slope"]
            for N in sizes:
                t_J = d_min[env] * h * shape(utd, N)
                bstar_n = bstar / (1 + (p["batch_n_half"] / N) ** p["batch_n_beta"]) \
                    if N is not None and p["batch_n_half"] else bstar
                for B in batch_sizes:
                    for lr in lrs:
                        pen = np.exp(p["penalty"] * (np.log(B / bstar_n) ** 2 + np.log(lr / lstar) ** 2))
                        scale = pen * np.exp(rng.normal(0, seed_noise, seeds))
                        ret = np.stack([np.interp(steps, t_J * s, J) for s in scale])
                        ret = ret + rng.normal(0, obs_noise, ret.shape)
                        f = pd.DataFrame({"env": env, "seed": np.repeat(np.arange(seeds), points),
                                          "step": np.tile(steps, seeds), "return": ret.ravel(),
                                          "utd": utd, "batch_size": B, "lr": lr})
                        if N is not None:
                            f["model_size"] = N
                        frames.append(f)
    return pd.concat(frames, ignore_index=True)
