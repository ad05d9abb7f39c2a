"""Reports that say what they mean (issue 31, section 6): every fitted quantity a report prints
gets the determination flags (SE above the value, intervals over orders of magnitude, exactly
determined fits), budget exponents whose sign F = C + delta D contradicts are implausible (or of
undetermined sign), and each message is listed once (a note that repeats a warning is dropped)."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pql_jax.scaling import PipelineConfig, fit_all, write_results
from pql_jax.scaling.budget import budget_power_laws
from pql_jax.scaling.diagnostics import (budget_law_flags, flag_lines, flagged_params, law_dict_flags, merge_flags,
                                         power_flags, report_flags, unflagged_notes)
from pql_jax.scaling.forms import compare_forms
from pql_jax.scaling.laws import OFFSET_POWER
from pql_jax.scaling.powerlaw import fit_fixed_effects
from pql_jax.scaling.synthetic import make_sweep

U = np.geomspace(0.25, 8, 6)


def _problems(flags, quantity=None, param=None) -> list[str]:
    return [f["problem"] for f in flags if (quantity is None or f["quantity"] == quantity)
            and (param is None or f["param"] == param)]


def _offset(planted_b: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    y = OFFSET_POWER.predict({"c": 40.0, "b": planted_b, "a": 0.5}, utd=U) * np.exp(rng.normal(0, 0.05, len(U)))
    df = pd.DataFrame({"env": "e", "utd": U, "batch_size": y})
    return compare_forms(df, "batch_size", fit_fixed_effects(df, "batch_size"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_offset_form_with_its_b_beyond_the_swept_utds_is_flagged(seed):
    """Planted b = 300 over utds 1/4..8: c and b trade off (the points see a pure power law), b's SE
    exceeds b; the report's flags (``report_flags`` of the fit file) name it."""
    cmp = _offset(300.0, seed)
    flags = report_flags({"fit_batch_size": {"compare_forms": cmp}})
    assert any("not determined by this data" in p for p in _problems(flags, "batch_size law, offset form", "b"))


def test_offset_form_of_the_published_pql_law_gets_no_flag():
    utds = 2.0 ** -np.arange(1, 11)  # across the published b = 1.42e-2
    noise = np.exp(np.random.default_rng(1).normal(0, 0.03, len(utds)))
    df = pd.DataFrame({"env": "push", "utd": utds,
                       "batch_size": OFFSET_POWER.predict({"c": 38.6, "b": 1.42e-2, "a": 0.68}, utd=utds) * noise})
    cmp = compare_forms(df, "batch_size", fit_fixed_effects(df, "batch_size"))
    assert law_dict_flags("batch_size law, offset form", cmp["offset"]) == []


def test_power_law_beta_of_a_small_slope_is_flagged_a_steep_law_gets_none():
    """beta = coef^(1/slope) is where B* = 1: with a slope of 0.12 it lies at ~1e20 and is not
    determined (log beta = log coef / slope); at slope 0.5 it is."""
    rng = np.random.default_rng(0)

    def law(slope):
        return pd.DataFrame({"env": "e", "utd": U, "b": 300 * U ** -slope * np.exp(rng.normal(0, 0.03, len(U)))})

    steep = fit_fixed_effects(law(0.5), "b")
    assert power_flags("batch_size law", steep) == []
    small = fit_fixed_effects(law(0.12), "b")
    assert not small.flat["e"] and small.beta("e") > 1e15
    flags = power_flags("batch_size law", small)
    assert [f["param"] for f in flags] == ["beta"] and "not determined" in flags[0]["problem"]


def _budget_table(compute_exponent: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    F = np.geomspace(1e9, 1e12, 6)
    noise = lambda: np.exp(rng.normal(0, 0.02, len(F)))  # noqa: E731
    return pd.DataFrame({"env": "e", "level": range(6), "budget": F, "utd": 3 * F ** 0.2 * noise(),
                         "data": F / 1e3 * noise(), "compute": 1e3 * F ** compute_exponent * noise(),
                         "model_size": 1.0})


def test_budget_laws_well_determined_get_no_flag():
    laws = budget_power_laws(_budget_table(0.9))
    assert laws["compute"]["exponent"] == pytest.approx(0.9, abs=0.05) and "coef_se" in laws["compute"]
    assert budget_law_flags(laws) == []


def test_compute_falling_with_the_budget_is_flagged_implausible():
    """A table whose C*(F) falls as F grows (what the budget optimisation cannot give: more budget
    buying less compute), fitted by the budget laws' own code: the compute law is implausible."""
    laws = budget_power_laws(_budget_table(-0.5))
    flags = budget_law_flags(laws)
    (problem,) = _problems(flags, "compute*(F) law", "exponent")
    assert problem.startswith("implausible: exponent -0.49") and "impossible with F = C + delta D" in problem
    assert _problems(flags, "data*(F) law") == []  # D*(F) rises: no constraint on it broken
    assert _problems(flags, "utd*(F) law") == []


def _law(exponent, se, coef=1.0, **extra) -> dict:
    return {"exponent": exponent, "exponent_se": se, "coef": {"cartpole": coef}, "coef_se": {"cartpole": coef * 0.1},
            "loss": 0.01, "n_fit": 4, "n_held_out": 0, **extra}


def test_cartpole_budget_laws_say_what_they_mean():
    """The issue's CartpoleBalance report: compute*(F) = 1.16e13 F^-0.103 (SE 0.869) and
    utd*(F) ~ F^-2.03 +- 1.54, constructed as fit results (the pipeline gives them only on that data)."""
    laws = {"utd": _law(-2.03, 1.54, 3e10), "data": _law(1.1, 0.1, 1e-6), "compute": _law(-0.103, 0.869, 1.16e13)}
    flags = budget_law_flags(laws)
    compute = _problems(flags, "compute*(F) law", "exponent")
    assert any(p.startswith("SE 0.869 exceeds the value -0.103: not determined") for p in compute)
    assert any("compute at the optimum falls as the budget grows" in p and "impossible" in p
               and "the sign is not determined" in p for p in compute)
    assert _problems(flags, "utd*(F) law", "exponent") == [
        "90% interval [-4.56, 0.503] includes 0: whether it rises or falls with the budget is not determined"]
    assert _problems(flags, "data*(F) law") == []
    # C*(F) and D*(F) both falling, each clearly: both implausible
    both = budget_law_flags({"data": _law(-0.8, 0.1), "compute": _law(-0.5, 0.05)})
    assert all(p.startswith("implausible") for p in _problems(both, param="exponent")) and len(both) == 2
    # with resamples their interval decides; the coefficient (the law at F = 1) is never flagged
    boot = _law(0.5, 0.05, 10.0, exponent_lo=0.4, exponent_hi=0.6,
                samples={"cartpole": [[1e-3, 0.5], [10.0, 0.5], [1e5, 0.5]]})
    assert budget_law_flags({"compute": boot}) == []
    exact = budget_law_flags({"compute": _law(0.5, float("nan"))})
    assert [f["problem"] for f in exact] == [
        "exactly determined (as many points as parameters): no uncertainty estimate"]


def test_notes_that_repeat_a_warning_are_dropped():
    flags = merge_flags([{"quantity": "best lr", "group": "e", "param": "utd=1/4",
                          "problem": "at the high edge of the swept grid: a bound, not an optimum"},
                         {"quantity": "learning_rate law", "group": "", "param": "",
                          "problem": "not fitted: only 2 utd value(s) have an optimum inside the grid"}])
    notes = ["best lr at the edge of the swept grid at utd 1/4 (high edge): a bound, not an optimum; left out of "
             "the learning_rate law (widen the grid there)",
             "learning_rate law not fitted: 2 utd value(s) with an interior best lr (needs 3)",
             "k measured from flops / critic_updates: 12 FLOPs per parameter per sample",
             "k measured from flops / critic_updates: 12 FLOPs per parameter per sample",
             "best batch_size at the edge of the swept grid at utd 8 (low edge): a bound, not an optimum"]
    assert unflagged_notes(notes, flags) == [notes[2], notes[4]]  # the batch-size edge has no warning here


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A planted sweep whose learning-rate grid lies below every optimum (best lr at the high edge
    everywhere: no lr law, edge notes and warnings) and whose D_J b is undetermined at some level."""
    df = make_sweep(n_envs=2, utds=(0.25, 0.5, 1, 2, 4), lrs=(1e-5, 3e-5, 1e-4), seeds=4, points=60)
    res = fit_all(df, PipelineConfig(resamples=20, figures=False, n_thresholds=4, delta=1e9))
    out = tmp_path_factory.mktemp("flags") / "out"
    write_results(res, str(out))
    return res, out


def test_fit_all_report_lists_each_warning_once_and_no_note_repeats_one(fitted):
    res, out = fitted
    report = (out / "report.md").read_text()
    warnings = report.split("## Warnings")[1].split("\n## ")[0]
    notes = report.split("## Notes")[1].split("\n## ")[0] if "## Notes" in report else ""
    lines = flag_lines(merge_flags(pd.read_csv(out / "flags.csv"), report_flags(res.fits)))
    assert lines and all(report.count(line) == 1 for line in lines)
    assert any("edge of the swept grid: a bound, not an optimum" in w for w in warnings.splitlines())
    assert "widen the grid there" not in notes and "learning_rate law not fitted" not in notes
    assert any("widen the grid there" in n for n in res.notes)  # the note exists: the report drops it
    note_lines = [n for n in notes.splitlines() if n.startswith("- ")]
    assert len(note_lines) == len(set(note_lines))
    # the tables say which printed values the warnings list
    flags = pd.read_csv(out / "flags.csv").fillna("")
    dj = flags[flags["quantity"].str.startswith("D_J law")]
    if len(dj):
        assert "| flagged |" in report.split("## Data efficiency")[1]


def test_flagged_params_of_a_quantity_and_group():
    t = merge_flags([{"quantity": "D_J law, level 1 (J=400)", "group": "e", "param": "b", "problem": "x"},
                     {"quantity": "D_J law, level 10 (J=900)", "group": "e", "param": "a", "problem": "x"},
                     {"quantity": "compute*(F) law", "group": "", "param": "exponent", "problem": "y"},
                     {"quantity": "compute*(F) law", "group": "e", "param": "coef", "problem": "z"}])
    assert flagged_params(t, "D_J law, level 1 ", "e") == "b"
    assert flagged_params(t, "compute*(F) law", "e") == "exponent, coef"
    assert flagged_params(t, "compute*(F) law", "other") == "exponent"


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, pd.DataFrame):
        obj.to_csv(path, index=False)
    else:
        path.write_text(json.dumps(obj))


def test_workflow_report_flags_budget_laws_and_drops_repeated_notes(tmp_path):
    from pql_jax.workflow.report import _hparam_section, _laws_section

    out = tmp_path
    edge_note = ("best lr at the edge of the swept grid at utd 1/4 (high edge): a bound, not an optimum; left out "
                 "of the learning_rate law (widen the grid there)")
    _write(out / "fit_hparams" / "summary.json", {"threshold": 500.0, "notes": [edge_note, "picked at level 2"]})
    _write(out / "fit_hparams" / "flags.csv", pd.DataFrame([{
        "quantity": "best lr", "group": "e", "param": "utd=1/4",
        "problem": "at the high edge of the swept grid: a bound, not an optimum"}]))
    _write(out / "fit_hparams" / "fit_batch_size.json", {
        "params": {"e": {"coef": 300.0, "slope": 0.4, "beta": 300.0 ** 2.5}}, "se": {"e": {"coef": 5.0, "slope": 0.02}},
        "loss": 0.01, "n": 5, "compare_forms": {
            "offset": {"params": {"e": {"c": 10.0, "b": 8.0e6, "a": 0.3}},
                       "se": {"e": {"c": 1.0, "b": 4.6e9, "a": 0.01}}},
            "forms": {"power": {"aicc": -20.0, "loo_mean_abs_log_error": 0.1},
                      "offset": {"aicc": -18.0, "loo_mean_abs_log_error": 0.2}}, "preferred": "power"}})
    _write(out / "fit_laws" / "summary.json", {"fitted": True, "notes": ["delta not given"]})
    _write(out / "fit_laws" / "fit.json", {"formula": "D_J = d_min * (1 + (b / utd)^a)", "levels": {"0": {
        "params": {"e": {"d_min": 1e4, "b": 0.5, "a": 0.8}}, "se": {"e": {"d_min": 1e3, "b": 2.0, "a": 0.1}},
        "loss": 0.01, "n": 5}}})
    _write(out / "fit_laws" / "flags.csv", pd.DataFrame([
        {"quantity": "D_J law, level 0 (J=400)", "group": "e", "param": "b",
         "problem": "SE 2 exceeds the value 0.5: not determined by this data"},
        {"quantity": "compute*(F) law", "group": "", "param": "exponent",
         "problem": "fitted from 4 point(s) with nothing held out: its extrapolation is untested"}]))
    _write(out / "fit_laws" / "fit_budget.json", {"k": 10.0, "delta": 1e9, "laws": {
        "utd": _law(-2.03, 1.54, 3e10), "data": _law(1.1, 0.1, 1e-6), "compute": _law(-0.103, 0.869, 1.16e13)}})
    wf = SimpleNamespace(hparam_sweep=SimpleNamespace(utd=(0.25, 1.0, 4.0), batch_size=(64, 256), lr=(1e-4, 3e-4)),
                         seeds=3)
    text = "\n".join(_hparam_section(wf, out) + _laws_section(wf, out))
    assert "widen the grid there" not in text and "- note: picked at level 2" in text
    assert text.count("a bound, not an optimum") == 1
    assert "**batch_size law, offset form** (e) `b`: SE 4.6e+09 exceeds the value 8e+06" in text
    assert "preferred power; **flagged**: b (see the warnings)" in text
    assert text.count("not determined by this data (SE > value)") == 0  # the D_J line points at the warning
    assert "log-loss 0.01, 5 points; **flagged**: b (see the warnings)" in text
    assert "- compute*(F) (cartpole) = 1.16e+13 F^-0.103 (exponent +- 0.869); **flagged**: exponent" in text
    for line in [ln for ln in text.splitlines() if ln.lstrip().startswith("- **") and "` " in ln]:
        assert text.count(line) == 1, line
    assert text.count("SE 0.869 exceeds the value -0.103") == 1 and "impossible with F = C + delta D" in text
