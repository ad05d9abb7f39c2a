"""D_J laws kept ordered in the threshold J (scaling.ordering): planted laws whose independent
per-level fits cross, already ordered fits left exactly as they were, crossings nothing can
order (flagged, predictions refused), and the quickstart's crossings at the verification UTD 2."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pql_jax.scaling.datafit import fit_data_efficiency
from pql_jax.scaling.fit import fit_law
from pql_jax.scaling.laws import DATA_SIGMA
from pql_jax.scaling.ordering import QUANTITY, ordered_refit, refused_points, to_vector
from pql_jax.workflow.verify import verdict

DATA = Path(__file__).parent / "data"
UTDS = np.geomspace(1 / 32, 2, 7)
A, B = 0.7, 0.5
DMIN = (1000.0, 1200.0, 1450.0)  # the planted laws: one a and b, d_min rising with J
GRID = np.geomspace(1 / 32, 8, 300)  # the fitted UTDs and the target 8


def planted(seed, dmin=DMIN, noise=0.08, a=(A,) * 3, b=(B,) * 3):
    rng = np.random.default_rng(seed)
    return pd.DataFrame([{"env": "e", "utd": u, "threshold": 400.0 + 100 * j, "level": j,
                          "data": d * (1 + (b[j] / u) ** a[j]) * np.exp(noise * rng.standard_normal())}
                         for j, d in enumerate(dmin) for u in UTDS])


def law(d, a, b, u):
    return d * (1 + (b / u) ** a)


def per_level(df):
    return [fit_law(DATA_SIGMA, df[df["level"] == j]) for j in sorted(df["level"].unique())]


def ordered(P):
    return bool((np.diff(P, axis=0) >= -1e-9 * P[:-1]).all())


@pytest.mark.parametrize("seed", [2, 6, 13, 21, 25])
def test_planted_crossing_fits_are_refitted_ordered_and_recover_the_law(seed):
    df = planted(seed)
    independent = np.array([f.predict("e", utd=GRID) for f in per_level(df)])
    assert not ordered(independent)  # the noise draw makes the per-level fits cross
    fit, pred = fit_data_efficiency(df, targets={"utd": [8.0]})
    P = np.array([fit.predict("e", j, utd=GRID) for j in range(3)])
    assert ordered(P)
    assert fit.ordering["e"]["remedy"].startswith("ordered joint fit") and not fit.flags
    for j, d in enumerate(DMIN):
        p = fit.params("e", j)
        assert abs(p["a"] - A) < 0.15
        assert abs(np.log(p["d_min"] / d)) < np.log(1.4)  # d_min trades off against b at 7 UTDs
        fitted = (UTDS >= UTDS[0]) & (UTDS <= UTDS[-1])
        rel = fit.predict("e", j, utd=UTDS[fitted]) / law(d, A, B, UTDS[fitted]) - 1
        assert np.max(np.abs(rel)) < 0.2  # 2.5 noise SDs
    assert any(n.startswith("D_J levels of e crossed") for n in fit.notes)
    assert "ordering" in fit.to_dict()
    # the predictions column is the refitted law's
    row = pred.iloc[0]
    assert row["data_fit"] == pytest.approx(float(fit.predict("e", int(row["level"]), utd=row["utd"])))


def test_bootstrap_refits_of_an_ordered_fit_stay_ordered():
    df = planted(2)
    fit, _ = fit_data_efficiency(df, targets={"utd": [8.0]})
    of = fit.order_fits["e"]
    rng = np.random.default_rng(0)
    LY = np.log(df["data"].to_numpy(float)) + 0.05 * rng.standard_normal((20, len(df)))
    LY[3, 0] = np.nan  # a resample without one point
    lx = {"utd": np.log(df["utd"].to_numpy(float))}
    theta = ordered_refit(DATA_SIGMA, lx, LY, df["level"].to_numpy(), 3, of["theta"])
    assert theta.shape == (20, 3, 3) and np.isfinite(theta).all()
    for r in range(20):
        P = np.array([law(*np.exp(theta[r, j])[[0, 2, 1]], GRID) for j in range(3)])
        assert ordered(P)
        assert np.all(np.abs(theta[r, :, 2] - theta[r, 0, 2]) < 1e-12)  # one exponent a


def test_ordered_fits_stay_exactly_as_today():
    df = planted(0, dmin=(1000.0, 2000.0, 4000.0), noise=0.05)
    expected = {str(j): {"thresholds": {"e": 400.0 + 100 * j}, **f.to_dict()} for j, f in enumerate(per_level(df))}
    assert ordered(np.array([f.predict("e", utd=GRID) for f in per_level(df)]))
    fit, pred = fit_data_efficiency(df, targets={"utd": [8.0]})
    d = fit.to_dict()
    assert json.dumps(d["levels"], sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert "ordering" not in d and not fit.notes and not fit.flags and not fit.order_fits
    ref = [f.predict("e", utd=pred.loc[pred["level"] == j, "utd"].to_numpy()) for j, f in enumerate(per_level(df))]
    assert np.array_equal(pred["data_fit"].to_numpy(), np.concatenate(ref))


def test_crossing_the_data_insist_on_is_flagged_and_refused():
    # J=500 truly cheaper than J=400 above utd 8/7: 1000 + 100/u = 300 + 900/u
    df = planted(1, dmin=(1000.0, 300.0, 5000.0), noise=0.01, a=(1.0, 1.0, 1.0), b=(0.1, 3.0, 0.5))
    fit, _ = fit_data_efficiency(df, targets={"utd": [4.0]})
    assert [f["quantity"] for f in fit.flags] == [QUANTITY]
    assert "refused" in fit.flags[0]["problem"]
    (c,) = fit.ordering["e"]["refused"]
    assert c["levels"] == [0, 1] and c["utd"][0] == pytest.approx(8 / 7, rel=0.05) and c["utd"][1] == 4.0
    for j in (0, 1):  # the per-level laws stay as fitted
        assert fit.params("e", j) == per_level(df)[j].params["e"]
        assert fit.refusal("e", j, utd=1.5) is not None
        assert fit.refusal("e", j, utd=0.5) is None
    assert fit.refusal("e", 2, utd=1.5) is None
    assert fit.refusal("e", 1, utd=16.0) is not None  # beyond the checked range: out of order there too
    assert verdict({"refused": fit.refusal("e", 1, utd=1.5), "reached": True}).startswith("no prediction")


def test_quickstart_crossings_are_ordered_at_the_verification_utd():
    df = pd.read_csv(DATA / "quickstart_crossings.csv")
    before = [f.predict("test:pointmass", utd=2.0) for f in per_level(df)]
    assert before == pytest.approx([471.19, 419.39, 745.33], rel=1e-3)  # J=500 below J=400 at utd 2
    fit, _ = fit_data_efficiency(df, targets={"utd": [2.0]})
    after = [float(fit.predict("test:pointmass", j, utd=2.0)) for j in range(3)]
    assert after[0] <= after[1] <= after[2]
    P = np.array([fit.predict("test:pointmass", j, utd=np.geomspace(1 / 32, 2, 300)) for j in range(3)])
    assert ordered(P)
    rec = fit.ordering["test:pointmass"]
    assert rec["crossed"][0]["levels"] == [0, 1] and rec["compare"]["rejected"] is None
    # one exponent a; the fit stays close to the points (within 2x the per-level log-loss)
    assert len({round(fit.params("test:pointmass", j)["a"], 12) for j in range(3)}) == 1
    ly = np.log(df["data"].to_numpy())
    yhat = np.log([float(fit.predict("test:pointmass", r.level, utd=r.utd)) for r in df.itertuples()])
    assert np.mean((ly - yhat) ** 2) < 2 * 0.007856
    # without the target the fitted range (utd <= 1) has no crossing: today's laws
    plain, _ = fit_data_efficiency(df)
    assert not plain.ordering and plain.params("test:pointmass", 1) == per_level(df)[1].params["test:pointmass"]


def test_to_vector_makes_any_start_feasible():
    params = [{"d_min": 500.0, "b": 0.3, "a": 0.8}, {"d_min": 400.0, "b": 0.2, "a": 0.6}]
    th = to_vector(DATA_SIGMA, params)
    assert th[0] == pytest.approx(np.log(0.7)) and (th[1:].reshape(2, 2)[:, 1] >= 0).all()


def test_refused_points_are_where_the_laws_cross_point_by_point():
    df = planted(1, dmin=(1000.0, 300.0, 5000.0), noise=0.01, a=(1.0, 1.0, 1.0), b=(0.1, 3.0, 0.5))
    fit, _ = fit_data_efficiency(df, targets={"utd": [4.0]})
    (c,) = fit.ordering["e"]["refused"]
    utd = np.array([0.25, 0.5, 1.5, 3.0, 16.0, 64.0])
    for level, below, above in ((0, None, 1), (1, 0, 2), (2, 1, None)):
        why = refused_points(fit, "e", level, utd=utd)
        here = fit.predict("e", level, utd=utd)
        # by hand: inside the flagged region of a crossing level, or out of order with a neighbour
        crossed = np.zeros(len(utd), bool)
        if level in c["levels"]:
            crossed |= (utd >= c["utd"][0]) & (utd <= c["utd"][1])
        if below is not None:
            crossed |= here < fit.predict("e", below, utd=utd) * (1 - 1e-9)
        if above is not None:
            crossed |= fit.predict("e", above, utd=utd) < here * (1 - 1e-9)
        assert [bool(w) for w in why] == crossed.tolist(), level
        assert (fit.refusal("e", level, utd=utd) is not None) == crossed.any()
    assert refused_points(fit, "e", 0, utd=np.array([0.5]))[0] == ""


def test_propose_skips_refused_optima_and_frontier_points(tmp_path):
    from pql_jax.errors import UserError
    from pql_jax.scaling.propose import propose

    utd = np.geomspace(0.1, 10, 5)
    law = {"coef": {"e": 1.0}, "exponent": 0.5, "n_fit": 3, "n_held_out": 0}
    (tmp_path / "fit_budget.json").write_text(json.dumps({"delta": 0.0, "laws": {"utd": law}, "compute_unit": "FLOPs"}))
    front = pd.DataFrame({"env": "e", "level": 0, "threshold": 400.0, "utd": utd, "model_size": 1.0,
                          "data": [500.0, 300.0, 200.0, 150.0, 120.0], "compute": [10.0, 20.0, 40.0, 80.0, 160.0],
                          "refused": ["", "", "", "laws cross", "laws cross"]})
    front.to_csv(tmp_path / "pareto.csv", index=False)
    # 250 env steps: utd 1 (200 steps) is the cheapest that reaches it; 130 only refused points reach
    (row,) = propose(str(tmp_path), data=250.0, fill=False).to_dict("records")
    assert row["data_pred"] == pytest.approx(250.0) and utd[1] <= row["utd"] <= utd[2]
    with pytest.raises(UserError, match="needs 200"):
        propose(str(tmp_path), data=130.0, fill=False)
    front.assign(refused="laws cross").to_csv(tmp_path / "pareto.csv", index=False)
    with pytest.raises(UserError, match="refused at every utd searched"):
        propose(str(tmp_path), data=1e6, fill=False)
    budget = pd.DataFrame({"env": "e", "level": [0, 1], "threshold": [400.0, 600.0], "budget": [100.0, 200.0],
                           "refused": ["", "laws cross"]})
    budget.to_csv(tmp_path / "budget.csv", index=False)
    from pql_jax.scaling.propose import _budget_threshold
    assert _budget_threshold(str(tmp_path), "e", 300.0)[0] == 400.0  # J = 600's refused optimum is not used
