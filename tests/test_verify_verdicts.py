"""The workflow's verification verdicts: the combined interval each used, and its words."""

import math

import numpy as np
import pandas as pd

from pql_jax.workflow.verify import combined_interval, verdict, with_verdicts, within_interval


def test_combined_interval_by_hand():
    """Prediction [100, 400] (centre 200, log half-width ln 2); a measurement of 200 +- 20 (10%)
    widens the half-width to hypot(ln 2, 1.6449 * 0.1)."""
    lo, hi = combined_interval(200.0, 20.0, 100.0, 400.0)
    half = math.hypot(math.log(2.0), 1.6449 * 0.1)
    assert math.isclose(lo, 200 * math.exp(-half), rel_tol=1e-12)
    assert math.isclose(hi, 200 * math.exp(half), rel_tol=1e-12)
    for factor, inside in ((0.999, True), (1.001, False)):  # the same 10% relative spread at the edge
        measured = 200 * math.exp(half) * factor
        assert within_interval(measured, 0.1 * measured, 100.0, 400.0) is inside
    assert all(math.isnan(v) for v in combined_interval(float("nan"), 1.0, 100.0, 400.0))


def _row(measured, std, lo, hi, pred, first_log=0.0):
    return {"data_measured": measured, "data_measured_std": std, "data_pred_lo": lo, "data_pred_hi": hi,
            "data_pred": pred, "first_log": first_log, "reached": bool(np.isfinite(measured)),
            "rel_error": (pred - measured) / measured if np.isfinite(measured) else float("nan"),
            "verified": within_interval(measured, std, lo, hi) and measured > first_log}


def test_verdict_words_say_when_a_large_error_is_only_within_the_noise():
    table = with_verdicts(pd.DataFrame([
        _row(400.0, 20.0, 380.0, 440.0, 410.0),       # 2.5% off, narrow: agrees
        _row(200.0, 150.0, 150.0, 600.0, 350.0),      # 75% off, wide: agrees only within the noise
        _row(1000.0, 10.0, 300.0, 400.0, 350.0),      # far outside: disagrees
        _row(50.0, 5.0, 40.0, 80.0, 60.0, first_log=50.0),  # reached at the first log: upper bound
        _row(float("nan"), float("nan"), 40.0, 80.0, 60.0),  # not reached
    ]))
    words = list(table["verdict"])
    assert words[0].startswith("agrees: off by 2%")
    assert words[1].startswith("agrees only within the noise: off by 75%") and "too wide to contradict" in words[1]
    assert words[2].startswith("disagrees: measured 1e+03 lies outside the combined interval")
    assert "upper bound" in words[3] and "not reached" in words[4]
    assert table.loc[0, "agree_lo"] < 400 < table.loc[0, "agree_hi"]
    assert verdict(table.iloc[1]) == words[1]
