"""The functional forms, in one place.

Each law is ``y = scale * exp(shape(x; theta))`` with every parameter positive. The fitting
engine works on ``theta = log(parameter)``, so positivity holds by construction, and the
shapes are written with ``logaddexp`` so that no power ever overflows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Law:
    """A positive law: name, inputs (table columns), parameters (first one is the scale)."""

    name: str
    formula: str
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    log_shape: Callable  # (dict of log inputs, tuple of log params) -> log(y / scale)
    grid: Callable  # (dict of log inputs) -> list of 1-D arrays of log params (scale excluded)
    exponents: tuple[str, ...]

    def log_predict(self, logx: dict, log_params) -> np.ndarray:
        """log y for log inputs and log parameters (scale first)."""
        lp = [np.asarray(v, float) for v in log_params]
        return lp[0] + self.log_shape(logx, lp[1:])

    def predict(self, params: dict, **inputs) -> np.ndarray:
        """y for a parameter dict (public names) and input arrays."""
        logx = {k: np.log(np.asarray(inputs[k], float)) for k in self.inputs}
        return np.exp(self.log_predict(logx, [np.log(params[p]) for p in self.params]))


def _span(lx: np.ndarray, below: float, above: float, n: int) -> np.ndarray:
    """n log-spaced starting values from below decades under to above decades over the data."""
    lo, hi = np.min(lx), np.max(lx)
    return np.linspace(lo - below * np.log(10), hi + above * np.log(10), n)


_EXP = np.log(np.geomspace(0.05, 3.0, 24))


def _shape_d_sigma(lx, th):
    lb, la = th
    return np.logaddexp(0.0, np.exp(la) * (lb - lx["utd"]))


def _grid_d_sigma(lx):
    return [_span(lx["utd"], 3, 5, 36), _EXP]


def _shape_d_sigma_n(lx, th):
    la, lal, lb, lbe = th
    t1 = np.exp(lal) * (la - lx["utd"])
    t2 = np.exp(lbe) * (lb - lx["model_size"])
    return np.logaddexp(np.logaddexp(0.0, t1), t2)


def _grid_d_sigma_n(lx):
    e = np.log(np.geomspace(0.05, 3.0, 10))
    return [_span(lx["utd"], 3, 4, 14), e, _span(lx["model_size"], 3, 4, 14), e]


def _shape_b_sigma_n(lx, th):
    lal, lc, lbe = th
    return -np.exp(lal) * lx["utd"] - np.logaddexp(0.0, np.exp(lbe) * (lc - lx["model_size"]))


def _grid_b_sigma_n(lx):
    e = np.log(np.geomspace(0.02, 3.0, 16))
    return [e, _span(lx["model_size"], 3, 3, 18), e]


def _shape_power(lx, th):
    lb, la = th
    return np.exp(la) * (lb - lx["x"])


DATA_SIGMA = Law(
    "data_sigma", "D_J = d_min * (1 + (b / utd)^a)", ("utd",), ("d_min", "b", "a"),
    _shape_d_sigma, _grid_d_sigma, ("a",))
DATA_SIGMA_N = Law(
    "data_sigma_n", "D_J = d_min * (1 + (a / utd)^alpha + (b / N)^beta)", ("utd", "model_size"),
    ("d_min", "a", "alpha", "b", "beta"), _shape_d_sigma_n, _grid_d_sigma_n, ("alpha", "beta"))
# B*(sigma, N) = a / sigma^alpha / (1 + b N^-beta); internally b = n_half^beta so that the
# correction reads (n_half / N)^beta, which keeps the starting grid on the scale of N.
BATCH_SIGMA_N = Law(
    "batch_sigma_n", "B* = a / utd^alpha / (1 + b * N^-beta), b = n_half^beta", ("utd", "model_size"),
    ("a", "alpha", "n_half", "beta"), _shape_b_sigma_n, _grid_b_sigma_n, ("alpha", "beta"))
# B*(sigma), eta*(sigma) with an offset (seed 001, eqs. D.2 / D.3; its PQL fit
# B* = 38.6 (1 + (sigma / 1.42e-2)^-0.68)): the same shape as D_J(sigma), y in place of D_J
OFFSET_POWER = Law(
    "offset_power", "y = c * (1 + (b / utd)^a)", ("utd",), ("c", "b", "a"), _shape_d_sigma, _grid_d_sigma, ("a",))
POWER = Law("power", "y = c * (b / x)^a", ("x",), ("c", "b", "a"), _shape_power,
            lambda lx: [_span(lx["x"], 1, 1, 5), _EXP], ("a",))

LAWS = {law.name: law for law in (DATA_SIGMA, DATA_SIGMA_N, BATCH_SIGMA_N)}


def batch_size_b(params: dict) -> float:
    """The paper's b of B*(sigma, N) = a / sigma^alpha / (1 + b N^-beta) from n_half, beta."""
    with np.errstate(over="ignore"):
        return float(np.exp(params["beta"] * np.log(params["n_half"])))


def power_law(x, coef: float, slope: float) -> np.ndarray:
    """y = coef * x^(-slope): B*(sigma), eta*(sigma), sigma*(F) as fitted in log-log space."""
    return coef * np.asarray(x, float) ** (-slope)


def compute(utd, model_size, batch_size, data, k: float = 10.0, flops_per_update=None):
    """C_J = k N B sigma D, or flops_per_update * sigma * D when measured FLOPs are given."""
    utd, data = np.asarray(utd, float), np.asarray(data, float)
    if flops_per_update is not None:
        return np.asarray(flops_per_update, float) * utd * data
    return k * np.asarray(model_size, float) * np.asarray(batch_size, float) * utd * data


def budget(compute_flops, data, delta: float):
    """F = C + delta * D."""
    return np.asarray(compute_flops, float) + delta * np.asarray(data, float)
