"""A law fit's check against a poor local optimum.

The fit starts L-BFGS-B from the few best points of a brute-force grid; on steep data (D_J
spanning many decades, a knee near the edge of the fitted utds) those starts can all sit in one
basin and the optimiser ends far from the best fit. The check compares the fit's loss with a
reference that has no optimum to miss: least squares on a polynomial in the log inputs with as
many coefficients as the law has parameters (numpy's lstsq; a closed form, so it cannot get stuck).
A law describing its points should do about as well. When it does much worse, the fit is restarted
from grid points spread over every axis of the grid (the best point at each of several values
per axis, not only the lowest grid losses); a better optimum found that way is taken and flagged, and a fit
still much worse than the reference is flagged as poor."""

from __future__ import annotations

import numpy as np
from scipy.special import fdtrc  # F distribution's survival function (scipy.stats is a 0.3 s import)

#: A fit whose loss exceeds the reference's by this factor is restarted across the grid ...
CHECK_RATIO = 2.0
#: ... and flagged as poor if it stays above this factor (with 5-8 points the two losses have few
#: degrees of freedom each: at ratio 2 a correct law on noisy points was flagged in ~10% of draws).
POOR_RATIO = 5.0
#: ... unless its log residual RMS is below this (within ~10%: good whatever the reference).
RMS_FLOOR = 0.1
#: A log residual RMS above this (points off by a factor 1.65 on average) is poor whatever the
#: reference (on hinge-shaped data a low-order polynomial misses the points too).
RMS_POOR = 0.5
#: How many exponent values of the grid the restarts spread over.
SPREAD_STARTS = 8


def reference_loss(lx: dict, ly: np.ndarray, n_params: int) -> float:
    """Mean squared residual of least squares on 1, the log inputs, their squares (in that
    order, at most ``n_params`` columns and fewer than the points)."""
    cent = [v - v.mean() for v in lx.values()]
    cols = [np.ones_like(ly)] + cent + [c ** 2 for c in cent]
    k = max(1, min(n_params, len(ly) - 1, len(cols)))
    X = np.stack(cols[:k], axis=1)
    coef, *_ = np.linalg.lstsq(X, ly, rcond=None)
    return float(np.mean((ly - X @ coef) ** 2))


def is_poor(loss: float, ref: float, ratio: float = POOR_RATIO) -> bool:
    """Loss (mean squared log residual) above ``ratio`` x the reference's, or points off by a
    factor above exp(RMS_POOR) on average; never below RMS_FLOOR."""
    return bool(loss > RMS_FLOOR ** 2 and (loss > ratio * ref or loss > RMS_POOR ** 2))


def spread_starts(pts: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """For each grid axis, the best grid point at each of ``SPREAD_STARTS`` values spread over
    that axis (starts across the whole grid, not only around its lowest losses)."""
    out = []
    for axis in range(pts.shape[1]):
        vals = np.unique(pts[:, axis])
        for v in vals[np.unique(np.linspace(0, len(vals) - 1, SPREAD_STARTS).round().astype(int))]:
            m = np.flatnonzero(pts[:, axis] == v)
            out.append(pts[m[np.argmin(losses[m])]])
    return np.unique(np.array(out), axis=0)


def check_optimum(law, lx: dict, ly: np.ndarray, best: tuple, restart, grid) -> tuple[tuple, dict]:
    """(best, diag): ``best`` = (x, loss, problem) replaced by a better restart when the fit is
    poor against the reference; ``diag`` holds ``local_optimum`` / ``poor_fit`` messages."""
    ref = reference_loss(lx, ly, len(law.params))
    diag = {}
    if not is_poor(best[1], ref, CHECK_RATIO):
        return best, diag
    pts, losses = grid()
    found = min((restart(s) for s in spread_starts(pts, losses)), key=lambda t: t[1])
    if found[1] < 0.9 * best[1]:
        diag["local_optimum"] = (f"the best grid starts ended in a local optimum (loss {best[1]:.3g}); restarts "
                                 f"across the exponent grid reached {found[1]:.3g}: that fit is reported")
        best = found
    if is_poor(best[1], ref):
        diag["poor_fit"] = (f"poor fit: log residual RMS {np.sqrt(best[1]):.3g} (a polynomial in the log inputs "
                            f"with as many parameters: {np.sqrt(ref):.3g}): an exponent beyond the search bound, "
                            "a local optimum, or a form that does not describe these points")
    return best, diag


#: Sharing exponents across groups is rejected when the F-test of the joint fit against the
#: per-group fits gives a p-value below this (1% false flags on a truly shared law).
SHARE_P = 0.01


def sharing_check(free_ssr: float, joint_ssr: float, n: int, p_free: int, q: int, names) -> str | None:
    """A ``poor fit`` message when exponents shared across groups do not describe them.

    The joint fit is the per-group fits (``p_free`` parameters in all, sum of squared log
    residuals ``free_ssr``) constrained by ``q`` equalities; the extra-sum-of-squares F-test of
    the two nested least-squares fits (F with q and n - p_free degrees of freedom) asks whether
    the constraint costs more than the noise explains. Also poor: points off by more than a
    factor exp(RMS_POOR) on average. None when neither."""
    dof = n - p_free
    if q > 0 and dof > 0 and free_ssr > 0:
        f = max(joint_ssr - free_ssr, 0.0) / q / (free_ssr / dof)
        p = float(fdtrc(q, dof, f))
        if p < SHARE_P:
            return (f"poor fit: sharing {', '.join(names)} across groups is rejected by the data (F-test of the "
                    f"joint fit against per-group fits: F = {f:.3g}, p = {p:.2g}, {q} and {dof} dof): "
                    "the groups' exponents differ; fit them per group")
    rms = float(np.sqrt(joint_ssr / n))
    if rms > RMS_POOR:
        return f"poor fit: log residual RMS {rms:.3g} of the joint fit: the shared law misses its points"
    return None
