"""The workflow's fitting stages on synthetic sweep results (no training): with a width axis the
hparam sweep covers it, B*(sigma, N) is fitted, and every (UTD, width) of the UTD sweep gets its
own batch size from that law when B* changes with N, and B*(sigma) alone when it does not."""

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pql_jax.scaling import PowerFit
from pql_jax.scaling.laws import BATCH_SIGMA_N
from pql_jax.scaling.synthetic import make_sweep
from pql_jax.workflow import fits, load_workflow, sweeps, widen

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = {32: 3e4, 64: 1e5, 128: 4e5}  # critic width -> planted model size N


def _workflow(tmp_path: Path, **hparam) -> Path:
    spec = {"base": str(ROOT / "configs" / "pointmass.yaml"), "seeds": 3, "max_return": 900, "n_thresholds": 3,
            "resamples": 20,
            "hparam_sweep": {"utd": ["1/4", "1/2", "1", "2", "4"], "batch_size": [32, 128, 512, 2048],
                             "lr": [1e-4, 5e-4, 2.5e-3], **hparam},
            "utd_sweep": {"utd": ["1/8", "1/4", "1/2", "1", "2"], "critic_width": list(WIDTHS)},
            "verify": {"utd": "4"}}
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _fit_hparams_on(tmp_path: Path, monkeypatch, planted: dict):
    """The hparam sweep stage (training stubbed), synthetic results with a width axis planted
    with ``planted``, then fit_hparams: (workflow, out, the B*(sigma, N) fit file, settings)."""
    wf = load_workflow(_workflow(tmp_path))
    out = tmp_path / "out"
    for stage in ("hparam_sweep", "fit_hparams", "utd_sweep"):
        (out / stage).mkdir(parents=True)
    for module in (sweeps, widen):  # the grid and the UTD sweep: training stubbed
        monkeypatch.setattr(module, "run_sweep_stage", lambda wf, d, progress, log: {})
    widen.stage_hparam_sweep(wf, out)
    grid = yaml.safe_load((out / "hparam_sweep" / "sweep.yaml").read_text())["grid"]
    assert grid["agent.critic_width"] == list(WIDTHS)
    df = make_sweep(n_envs=1, utds=(0.25, 0.5, 1, 2, 4), batch_sizes=(32, 128, 512, 2048), lrs=(1e-4, 5e-4, 2.5e-3),
                    seeds=3, points=50, model_sizes=list(WIDTHS.values()), seed=4, planted=planted)
    df["critic_width"] = df["model_size"].map({n: w for w, n in WIDTHS.items()})
    df.to_csv(out / "hparam_sweep" / "results.csv", index=False)
    fits.stage_fit_hparams(wf, out, log=lambda *a: None)
    law = yaml.safe_load((out / "fit_hparams" / "fit_batch_size_n.json").read_text())
    return wf, out, law, pd.read_csv(out / "fit_hparams" / "settings.csv", dtype={"utd": str})


def test_width_axis_gives_a_batch_size_per_utd_and_width(tmp_path, monkeypatch):
    """B* planted as 1 / (1 + (1e5 / N)) times a power of utd: the law recovers the N factor and
    sets each (UTD, width)'s batch size."""
    wf = load_workflow(_workflow(tmp_path))
    assert wf.hparam_sweep.critic_width == tuple(WIDTHS)  # default: the UTD sweep's widths
    assert load_workflow(_workflow(tmp_path, critic_width=[])).hparam_sweep.critic_width == ()
    wf, out, law, settings = _fit_hparams_on(tmp_path, monkeypatch, {"batch_n_half": 1e5, "batch_n_beta": 1.0})
    p = next(iter(law["params"].values()))
    assert law["form"] == "batch_sigma_n" and law["used"] and abs(p["alpha"] - 0.47) < 0.15
    lo, hi = next(iter(law["interval"].values()))["alpha"]  # the seed bootstrap's 90% interval
    assert lo <= 0.47 <= hi and hi - lo < 0.5
    planted_ratio = (1 + 1e5 / 3e4) / (1 + 1e5 / 4e5)  # B*(N = 4e5) / B*(N = 3e4) = 3.47
    ratio = BATCH_SIGMA_N.predict(p, utd=1.0, model_size=4e5) / BATCH_SIGMA_N.predict(p, utd=1.0, model_size=3e4)
    assert abs(np.log(ratio / planted_ratio)) < 0.3, ratio
    assert np.shape(next(iter(law["bootstrap_log_params"].values())))[1] == 4
    assert len(settings) == (5 + 1) * len(WIDTHS) and set(settings["critic_width"]) == set(WIDTHS)
    expect = BATCH_SIGMA_N.predict(p, utd=settings["utd_value"].to_numpy(), model_size=settings["model_size"].to_numpy())
    np.testing.assert_allclose(settings["batch_size_raw"], expect, rtol=1e-9)
    assert (settings["batch_size_source"] == "law B*(utd, N)").all()

    sweeps.stage_utd_sweep(wf, out)
    spec = yaml.safe_load((out / "utd_sweep" / "sweep.yaml").read_text())
    zipped = spec["zip"]
    assert "agent.critic_width" not in spec["grid"] and len(zipped["agent.critic_width"]) == 5 * len(WIDTHS)
    runs = pd.DataFrame({"utd": zipped["agent.utd"], "w": zipped["agent.critic_width"], "b": zipped["agent.batch_size"]})
    merged = runs.merge(settings, left_on=["utd", "w"], right_on=["utd", "critic_width"])
    assert len(merged) == len(runs) and (merged["b"] == merged["batch_size"]).all()


def test_a_batch_size_law_flat_in_n_is_reported_not_used(tmp_path, monkeypatch):
    """B* planted with no N dependence: B*(sigma, N) is still fitted and written, flagged (its N
    part is whatever fits the noise) and not used; every width gets B*(sigma)'s batch size, and
    fit_laws is not given the law."""
    wf, out, law, settings = _fit_hparams_on(tmp_path, monkeypatch, {})
    assert law["used"] is False and any(f["param"] == "N" for f in law["flags"])
    flags = pd.read_csv(out / "fit_hparams" / "flags.csv")
    assert flags["problem"].str.startswith("no dependence on model size").any()
    assert len(settings) == 5 + 1 and "critic_width" not in settings  # one setting per UTD, at every width
    assert (settings["batch_size_source"] == "law").all()
    b = PowerFit.from_dict(yaml.safe_load((out / "fit_hparams" / "fit_batch_size.json").read_text()))
    np.testing.assert_allclose(settings["batch_size_raw"], b.predict("env0", settings["utd_value"].to_numpy()),
                               rtol=1e-9)
    assert fits.batch_size_n_law(out) is None


def test_a_proposal_takes_from_the_nearest_setting_only_what_no_law_gave():
    """A proposal whose learning rate has no law (NaN) takes it from the setting of the nearest UTD
    in log (3/8 -> 1/2 here, not 1/4); its batch size from a law stays; a row with both keeps both."""
    settings = pd.DataFrame({"utd_value": [0.25, 0.5, 1.0], "batch_size": [400, 300, 200], "lr": [1e-3, 7e-4, 5e-4]})
    prop = pd.DataFrame({"target": ["a", "b", "c"], "utd": [0.375, 0.375, 4.0], "batch_size": [336, np.nan, 250],
                         "lr": [np.nan, np.nan, 2e-4]})
    notes = []
    out = fits.fill_from_settings(prop, settings, notes)
    assert out["batch_size"].tolist() == [336, 300, 250] and out["lr"].tolist() == [7e-4, 7e-4, 2e-4]
    assert notes == ["proposal for a: lr from the nearest fitted setting (no law)",
                     "proposal for b: batch_size and lr from the nearest fitted setting (no law)"]
    assert np.isnan(prop["lr"].iloc[0])  # the input is not changed
