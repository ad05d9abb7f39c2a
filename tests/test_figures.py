"""Figures fit for a paper (issue 31, section 5): every figure of `fit all` (pql_jax/scaling/plots.py)
and of the workflow report (verification.png, td_overfitting.png) rendered on small synthetic
results and checked through matplotlib's objects: readable log-axis ticks (UTD as fractions),
legend entries that stand for drawn data, titles inside the canvas, error bars on sigma*(F), and
laws drawn only over the range they were fitted on (plus the predictions made with them)."""

import copy
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.figure  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from pql_jax.scaling import PipelineConfig, fit_all, plots  # noqa: E402
from pql_jax.scaling.figure_list import FIGURES  # noqa: E402
from pql_jax.scaling.hparams import law_points  # noqa: E402
from pql_jax.scaling.pipeline import Results  # noqa: E402
from pql_jax.scaling.synthetic import make_sweep  # noqa: E402

UTD_LABEL = re.compile(r"^(\d+(/\d+)?|\d*\.\d+)$")
SWEEP = dict(n_envs=2, utds=(0.25, 0.5, 1, 2, 4), batch_sizes=(64, 128, 256, 512, 1024), lrs=(1e-4, 5e-4, 2.5e-3),
             seeds=4, points=60, seed=1)


@pytest.fixture(scope="module")
def plain():
    """Nothing held out; B* within 128-512 (a range without a power of ten), UTD 1/4-4."""
    return fit_all(make_sweep(**SWEEP), PipelineConfig(resamples=20, n_thresholds=3, figures=False))


@pytest.fixture(scope="module")
def held():
    """UTD 4 held out of the D_J fits, and (5 levels per env) the 2 largest budgets of sigma*(F)."""
    return fit_all(make_sweep(**SWEEP), PipelineConfig(resamples=20, n_thresholds=5, figures=False, holdout="utd > 3"))


@pytest.fixture(scope="module")
def sized():
    df = make_sweep(n_envs=1, utds=(0.5, 1, 2, 4), batch_sizes=(128,), lrs=(5e-4,), seeds=3, points=50,
                    model_sizes=(1e5, 4e5, 1.6e6))
    return fit_all(df, PipelineConfig(resamples=10, n_thresholds=3, figures=False))


@pytest.fixture
def saved(monkeypatch):
    """The figures saved while the test runs (``Figure.savefig`` recorded), in order."""
    figs, real = [], matplotlib.figure.Figure.savefig

    def savefig(self, *a, **kw):
        figs.append(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return figs


def _render(res, fn, saved):
    """The Figure of ``plots.render`` (the path of `fit all`: ticks set, saved as PNG), or None."""
    n = len(saved)
    png = plots.render(res, fn)
    assert (png is None) == (len(saved) == n), fn
    return saved[-1] if png is not None else None


def _tick_labels(axis) -> list[str]:
    """The non-empty tick labels (major and minor) inside the axis's view limits."""
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for locs, fmt in ((axis.get_majorticklocs(), axis.get_major_formatter()),
                      (axis.get_minorticklocs(), axis.get_minor_formatter())):
        inside = [v for v in locs if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
        out += [s for s in fmt.format_ticks(inside) if s.strip()] if inside else []
    return out


def _has_data(artist) -> bool:
    if isinstance(artist, ErrorbarContainer):
        artist = artist.lines[0]
    if hasattr(artist, "get_xydata"):
        xy = np.asarray(artist.get_xydata(), float)
        return bool(np.isfinite(xy).all(axis=1).any())
    if hasattr(artist, "get_offsets") and len(artist.get_offsets()):
        return True
    return bool(getattr(artist, "get_paths", lambda: [])())


def _drawn(fig, label: str) -> bool:
    """Whether an artist (line, collection, errorbar) of the figure carries ``label`` and data."""
    for ax in fig.axes:
        for artist in [*ax.lines, *ax.collections, *ax.containers]:
            if artist.get_label() == label and _has_data(artist):
                return True
    return False


def check_figure(fig) -> None:
    """The checks every figure passes: log ticks, UTD fractions, legends, texts in the canvas."""
    FigureCanvasAgg(fig)  # pyplot left the closed figure a bare canvas: draw it again, as saved
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for ax in [a for a in fig.axes if a.get_visible()]:
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale != "log":
                continue
            labels = _tick_labels(axis)
            assert len(labels) >= 2, (axis.get_label_text(), labels, axis.get_view_interval())
            if axis.get_label_text().lower().startswith("utd"):
                assert all(UTD_LABEL.match(s) for s in labels), labels
        leg = ax.get_legend()
        for text in leg.get_texts() if leg else []:
            assert _drawn(fig, text.get_text()), f"legend entry {text.get_text()!r} stands for nothing drawn"
        titles = [ax.title, ax.xaxis.label, ax.yaxis.label]
        for t in titles:
            if t.get_text():
                ext = t.get_window_extent(renderer)
                assert box.x0 - 1 <= ext.x0 and ext.x1 <= box.x1 + 1 and box.y0 - 1 <= ext.y0 and ext.y1 <= box.y1 + 1, \
                    (t.get_text(), ext, box)
    sup = fig.get_suptitle()
    for t in fig.findobj(lambda a: isinstance(a, Text) and sup and a.get_text() == sup):
        ext = t.get_window_extent(renderer)
        assert box.x0 <= ext.x0 and ext.x1 <= box.x1 and box.y0 <= ext.y0 and ext.y1 <= box.y1, (sup, ext, box)


def _laws(ax):
    return [ln for ln in ax.lines if ln.get_gid() == "law"]


def _legend_labels(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def test_every_figure_of_fit_all_reads(plain, held, sized, saved):
    drawn = set()
    for res in (plain, held, sized):
        for _, fn in FIGURES:
            fig = _render(res, fn, saved)
            if fig is not None:
                check_figure(fig)
                drawn.add(fn)
    assert drawn == {fn for _, fn in FIGURES}  # every figure drawn at least once


def test_batch_size_axis_without_a_power_of_ten_has_labels(plain, saved):
    fig = _render(plain, "batch_size_fit", saved)
    ax = fig.axes[0]
    assert len(_tick_labels(ax.yaxis)) >= 2
    assert _tick_labels(ax.xaxis) == ["1/4", "1/2", "1", "2", "4"]
    # the axis: best batch sizes 128-512, no power of ten in the view
    ax.set_ylim(128, 512)
    plots.log_ticks(ax)
    assert _tick_labels(ax.yaxis) == ["200", "300", "500"]
    ax.set_ylim(150, 190)  # inside a factor 1.3: linear ticks
    plots.log_ticks(ax)
    assert len(_tick_labels(ax.yaxis)) >= 2
    # the law over the UTDs of the points it was fitted on (cells at the grid edge left out)
    pts = law_points(plain.tables["best_hparams"], "batch_size")
    ranges = [(g["utd"].min(), g["utd"].max()) for _, g in pts.groupby("env")]
    for ln in _laws(ax):
        x = ln.get_xdata()
        assert any(np.isclose(x.min(), a) and np.isclose(x.max(), b) for a, b in ranges)


def test_best_values_at_the_grid_edge_are_marked_and_not_fitted(plain, saved):
    best = plain.tables["best_hparams"].copy()
    first = best.index[(best["env"] == "env0") & (best["utd"] == best["utd"].max())][0]
    best.loc[first, "batch_size_edge"] = "lower"  # a bound, not an optimum: left out of the law
    res = Results(plain.config, tables={**plain.tables, "best_hparams": best}, fits=plain.fits,
                  objects=plain.objects, summary=plain.summary)
    fig = _render(res, "batch_size_fit", saved)
    check_figure(fig)
    ax = fig.axes[0]
    assert plots.AT_EDGE in _legend_labels(fig)
    edge = [ln for ln in ax.lines if ln.get_label() == plots.AT_EDGE]
    assert len(edge) == 1 and edge[0].get_xdata()[0] == best["utd"].max() and edge[0].get_markerfacecolor() == "none"
    tops = sorted(ln.get_xdata().max() for ln in _laws(ax))
    assert tops[0] < best["utd"].max() == pytest.approx(tops[-1])  # env0's law ends at its last fitted utd


def test_data_efficiency_held_out_and_law_ranges(plain, held, saved):
    fig = _render(plain, "data_efficiency", saved)
    assert not [s for s in _legend_labels(fig) if "held" in s] and "held" not in fig.get_suptitle()
    pred = plain.tables["predictions"]
    for ax in [a for a in fig.axes if a.get_visible()]:
        sub = pred[(pred["env"] == ax.get_title()) & np.isfinite(pred["data"])]
        assert _laws(ax)
        for ln in _laws(ax):
            x = ln.get_xdata()
            assert sub["utd"].min() * (1 - 1e-9) <= x.min() and x.max() <= sub["utd"].max() * (1 + 1e-9)
    fig = _render(held, "data_efficiency", saved)
    assert plots.HELD in _legend_labels(fig)
    pred = held.tables["predictions"]
    for ax in [a for a in fig.axes if a.get_visible()]:
        sub = pred[(pred["env"] == ax.get_title()) & np.isfinite(pred["data"])]
        fitted = sub[~sub["held_out"].astype(bool)]
        hi = [ln.get_xdata().max() for ln in _laws(ax)]
        assert fitted["utd"].max() < 4 and max(hi) == pytest.approx(4)  # extended to the held-out prediction
        assert all(h <= sub["utd"].max() * (1 + 1e-9) for h in hi)


def test_undetermined_law_does_not_set_the_axes(plain, saved):
    """A law at its search bound that runs off to 1e10 inside its range: dashed, clipped, listed."""
    fit = copy.deepcopy(plain.objects["data"])
    env, lv = "env0", 1
    fit.fits[lv].params[env].update(a=10.0, b=2.0)  # (2 / 0.25)^10 ~ 1e9 times d_min at UTD 1/4
    fit.fits[lv].flags.append({"group": env, "param": "a", "problem": "at the search bound (the optimum may lie outside)"})
    res = Results(plain.config, tables=plain.tables, fits=plain.fits, objects={**plain.objects, "data": fit},
                  summary=plain.summary)
    fig = _render(res, "data_efficiency", saved)
    check_figure(fig)
    ax = next(a for a in fig.axes if a.get_title() == env)
    pred = plain.tables["predictions"]
    data = pred.loc[pred["env"] == env, "data"]
    lo, hi = ax.get_ylim()
    assert data.min() / 2 < lo and hi < data.max() * 2  # set by the points, not by the law
    dashed = [ln for ln in _laws(ax) if ln.get_linestyle() == "--"]
    assert dashed and max(ln.get_ydata().max() for ln in dashed) > 1e3 * hi
    assert plots.UNDETERMINED in _legend_labels(fig)


def test_sigma_star_has_error_bars_and_law_over_its_budgets(plain, held, saved):
    for res in (plain, held):
        fig = _render(res, "sigma_star", saved)
        ax = fig.axes[0]
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert bars and all(c.has_yerr and c.has_xerr for c in bars)
        assert sum(len(seg) for c in bars for col in c[2] for seg in [col.get_segments()]) > 0
        t = res.tables["budget"]
        ranges = [(g["budget"].min(), g["budget"].max()) for _, g in t.groupby("env")]
        for ln in _laws(ax):
            x = ln.get_xdata()
            assert any(np.isclose(x.min(), a) and np.isclose(x.max(), b) for a, b in ranges)
        held_out = res.fits["fit_budget"]["laws"]["utd"]["n_held_out"] > 0
        assert (plots.HELD in _legend_labels(fig)) == held_out
        assert ("held" in ax.get_title()) is False
    assert held.fits["fit_budget"]["laws"]["utd"]["n_held_out"] > 0


def test_pareto_frontiers_over_the_fitted_range(plain, saved):
    fig = _render(plain, "pareto", saved)
    front, opt = plain.tables["pareto"], plain.tables["budget"]
    for ax in [a for a in fig.axes if a.get_visible()]:
        env = ax.get_title()
        f = front[(front["env"] == env) & ~front["extrapolated"].astype(bool)]
        o = opt[opt["env"] == env]
        lo, hi = ax.get_ylim()
        assert min(f["data"].min(), o["data"].min()) / 1.5 < lo and hi < max(f["data"].max(), o["data"].max()) * 1.5


def _workflow_outputs(root: Path) -> Path:
    """The files report._figures reads: a D_J fit with its verification and TD errors."""
    out = root / "out"
    for d in ("verify", "fit_laws", "hparam_sweep", "utd_sweep"):
        (out / d).mkdir(parents=True)
    utd = np.array([0.25, 0.5, 1, 2, 4])
    rows = [{"level": lv, "threshold": J, "utd": u, "data": 1e5 * (1 + lv) * (1 + (0.5 / u) ** 0.7)}
            for lv, J in enumerate((300, 600)) for u in utd]
    cross = pd.DataFrame(rows)
    cross.to_csv(out / "fit_laws" / "crossings.csv", index=False)
    cross.assign(data_fit=cross["data"] * 1.02).to_csv(out / "fit_laws" / "predictions.csv", index=False)
    pd.DataFrame({"level": [0, 1], "utd_value": [8.0, 8.0], "data_pred": [1.2e5, 2.4e5],
                  "data_measured": [1.3e5, 2.2e5]}).to_csv(out / "verify" / "verification.csv", index=False)
    for d, by, vals in (("hparam_sweep", "batch_size", (128, 256, 512)), ("utd_sweep", "critic_width", (256, 512, 1024))):
        pd.DataFrame([{"member": i, "step": 100, by: v, "td_train": 0.1 * (1 + i), "td_val": 0.15 * (1 + i)}
                      for i, v in enumerate(vals)]).to_csv(out / d / "results.csv", index=False)
    return out


def test_workflow_report_figures_read(tmp_path, saved):
    from pql_jax.workflow import report

    out = _workflow_outputs(tmp_path)
    figdir = tmp_path / "figures"
    figdir.mkdir()
    made = report._figures(out, figdir)
    assert [m[0] for m in made] == ["verification.png", "td_overfitting.png"] and len(saved) == 2
    for fig in saved:
        check_figure(fig)
    ver = saved[0].axes[0]
    assert _tick_labels(ver.xaxis) == ["1/4", "1/2", "1", "2", "4", "8"]
    assert {"fit", "verify: predicted", "verify: measured"} <= set(_legend_labels(saved[0]))
    for ln in _laws(ver):  # the law over the sweep's UTDs, extended to the verification's
        assert ln.get_xdata().min() == 0.25 and ln.get_xdata().max() == 8.0
