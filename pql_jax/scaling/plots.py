"""Figures (PNG, matplotlib Agg): isotonic curves with crossings, B* / eta* fits, D_J(sigma)
with held-out points, Pareto frontiers with iso-budget lines, sigma*(F), D_J over (sigma, N)."""

from __future__ import annotations

import io
from fractions import Fraction
from functools import partial

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import AutoLocator, EngFormatter, FuncFormatter, LogLocator, NullLocator  # noqa: E402
import numpy as np  # noqa: E402

from pql_jax.values import format_utd  # noqa: E402
from pql_jax.scaling.curves import first_crossings, isotonic_rows  # noqa: E402
from pql_jax.scaling.diagnostics import law_flags  # noqa: E402
from pql_jax.scaling.hparams import law_points  # noqa: E402

MAX_PANELS = 8


def render(res, fn_name: str) -> bytes | None:
    """The PNG of one figure (``figure_list.FIGURES``' function name), or None where the results
    do not support it."""
    fn = hparam_fit(fn_name[:-4]) if fn_name.endswith("_fit") else globals()[fn_name]
    # titles at a fixed height: matplotlib's automatic title position measures every axis's
    # ticks at each draw (a quarter of a multi-panel figure's drawing); no top tick labels here
    with matplotlib.rc_context({"axes.titley": 1.0}):
        fig = fn(res)
    if fig is None:
        return None
    for ax in fig.axes:
        log_ticks(ax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _layout(fig) -> None:
    """Fixed margins in inches (tight_layout costs ~0.3 s per multi-panel figure)."""
    w, h = fig.get_figwidth(), fig.get_figheight()
    fig.subplots_adjust(left=1.0 / w, right=1 - 0.15 / w, bottom=0.55 / h, top=1 - 0.7 / h,
                        wspace=0.35, hspace=0.55)


def log_ticks(ax) -> None:
    """Log-axis ticks that read at any range, labelled as plain text, no minor ticks.

    Ticks at 1, 2, 5 or 1, 2, 3, 5, 7 times the powers of ten where the view spans few decades (a
    batch size axis 128-512 holds no power of ten), decades where it spans many (matplotlib's
    ``LogLocator`` with ``subs``; it falls back to linear ticks inside a sub-decade range). An
    axis labelled "utd..." gets octaves written as fractions (1/32, 1/4, 1, 4; 3/4, 3/2 within
    two octaves). Call once the view limits are final. Matplotlib's default log ticks typeset
    every label with mathtext and place 8 minor ticks per decade; on the multi-panel figures
    that was most of the time of `fit all` with figures."""
    for axis, scale, (lo, hi) in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()),
                                  (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
        if scale != "log":
            continue
        decades = abs(np.log10(hi / lo)) if lo > 0 and hi > 0 else 3.0
        if axis.get_label_text().lower().startswith("utd"):
            # octaves; 1 and 1.5 times them within 2 octaves
            loc = LogLocator(base=2, subs=(1.0,) if decades >= 0.6 else (1.0, 1.5), numticks=8)
            axis.set_major_formatter(FuncFormatter(_utd_label))
        else:
            subs = (1.0,) if decades >= 2.2 else (1.0, 2.0, 5.0) if decades >= 1 else (1.0, 2.0, 3.0, 5.0, 7.0) \
                if decades >= 0.4 else np.arange(1.0, 10.0)
            loc = LogLocator(base=10, subs=subs, numticks=6)
            axis.set_major_formatter(FuncFormatter(_log_label))
        ticks = loc.tick_values(min(lo, hi), max(lo, hi)) if lo > 0 and hi > 0 else []
        if np.sum((ticks >= min(lo, hi)) & (ticks <= max(lo, hi))) < 2:  # a narrow range: linear ticks
            loc = AutoLocator()
        axis.set_major_locator(loc)
        axis.set_minor_locator(NullLocator())


def _log_label(v, _=None) -> str:
    """A log-axis tick as plain text: 0.05, 200, 5000, 2e5, 1.5e-4."""
    if not v > 0:
        return ""
    if 1e-2 <= v < 1e4:
        return f"{v:.4g}"
    mant, exp = f"{v:.2e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def _utd_label(v, _=None) -> str:
    """A UTD tick as configs write it: 1/32, 1/4, 1, 4 (powers of two as fractions); other
    values as plain numbers."""
    frac = Fraction(float(v)).limit_denominator(1 << 12)
    if v > 0 and abs(float(frac) - v) <= 1e-9 * v and frac.denominator & (frac.denominator - 1) == 0:
        return format_utd(float(frac))
    return _log_label(v)


def _points_with_bars(ax, x, y, std, color, label, **style) -> None:
    """Points with +-1 SD bars: markers and one LineCollection (``errorbar`` builds several
    artists per call and was a large share of the figure time)."""
    x, y, sd = (np.asarray(v, float) for v in (x, y, np.nan_to_num(np.asarray(std, float))))
    if not (np.isfinite(x) & np.isfinite(y)).any():  # no artist (nor legend entry) without data
        return
    ax.plot(x, y, "o", ms=3, color=color, label=label, **style)
    ok = sd > 0
    if ok.any():
        ax.vlines(x[ok], np.maximum(y[ok] - sd[ok], y[ok] * 1e-3), y[ok] + sd[ok], color=color, lw=0.8)


#: Legend entries of marks that any panel may draw (``_legend`` lists them once).
HELD, UNDETERMINED, AT_EDGE = "held out (predicted)", "undetermined law (dashed)", "at the grid edge (not fitted)"


def _freeze_limits(ax) -> None:
    """Fix the view limits where the data drawn so far put them (matplotlib's autoscale, margins
    included): the laws drawn after are clipped to them, so no law sets the axes."""
    ax.set(xlim=ax.get_xlim(), ylim=ax.get_ylim())


def _law_range(fitted, used=()):
    """(lo, hi) over which to draw a law: the inputs it was fitted on, extended to the inputs of
    the predictions made with it (held-out points); None without a finite positive input."""
    v = np.concatenate([np.ravel(np.asarray(fitted, float)), np.ravel(np.asarray(used, float))])
    v = v[np.isfinite(v) & (v > 0)]
    return (float(v.min()), float(v.max())) if len(v) else None


def _undetermined(fit, env, lv) -> bool:
    """Whether the D_J law of (env, level) is undetermined by its data: a parameter at its search
    bound or with an SE above its value (``diagnostics.law_flags``)."""
    return any(f.get("group") in (env, "all", "all groups (joint fit)")
               and ("search bound" in f["problem"] or "exceeds the value" in f["problem"])
               for f in law_flags("", fit.fits[lv]))


def _legend(ax, axes, **kw) -> None:
    """A legend on ``ax``: its own entries, and the marks (``HELD``, ``UNDETERMINED``,
    ``AT_EDGE``) that other panels draw; each label once."""
    handles, labels = [], []
    for other in [ax, *axes]:
        for h, lab in zip(*other.get_legend_handles_labels()):
            if (other is ax or lab in (HELD, UNDETERMINED, AT_EDGE)) and lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        ax.legend(handles, labels, **kw)


def _panels(n: int, w: float = 3.4, h: float = 2.9):
    n = max(1, min(n, MAX_PANELS))
    if n == 1:
        w, h = 5.0, 4.0
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def isotonic_curves(res):
    """Seed-mean returns, isotonic fit and interpolated crossings of each utd's best run (first env)."""
    groups, keys = res.objects.get("groups"), res.objects.get("keys")
    best = res.tables["crossings"]
    env = groups[0].key[0]
    cells = best[(best["env"] == env) & (best["level"] == res.summary.get("select_level", 0))]
    fig, axes = _panels(len(cells))
    J = res.objects["thresholds"].get(env, res.objects["thresholds"].get("*"))
    for ax, (_, c) in zip(axes, cells.iterrows()):
        want = {"env": env, "utd": c["utd"], "batch_size": c.get("best_batch_size"), "lr": c.get("best_lr"),
                "model_size": c.get("model_size")}
        g = next((g for g in groups if all(want[k] is None or want[k] != want[k] or v == want[k]
                                           for k, v in zip(keys, g.key))), None)
        if g is None:
            continue
        mean = g.returns.mean(axis=0)
        iso = isotonic_rows(mean)[0]
        cross = first_crossings(g.steps, iso, J)[0]
        ax.plot(g.steps, mean, ".", ms=4, color="0.45", label="seed mean")
        ax.plot(g.steps, iso, "-", color="C0", label="isotonic fit")
        if np.isfinite(cross).any():  # a legend entry only for crossings drawn
            ax.plot(cross, J, "o", color="C3", ms=4, label="crossings")
        ax.set_title(f"{env} utd={format_utd(c['utd'])}", fontsize=9)
        ax.set_xlabel("env steps", fontsize=8)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 100k, 1M: 6-digit labels ran into each other
    axes[0].set_ylabel("return")
    _legend(axes[0], axes, fontsize=7)
    _layout(fig)
    return fig


def hparam_fit(name: str):
    """B*(utd) or eta*(utd): bootstrap-averaged best values with error bars and the fits."""
    def draw(res):
        pf = res.objects.get(name)
        if pf is None:
            return None
        hp = pf.y
        t = res.tables["best_hparams"]
        fitted = law_points(t, hp)  # the cells the law went through; those at the grid edge did not
        fig, ax = plt.subplots(figsize=(5.2, 4))
        laws = []
        for i, (env, sub) in enumerate(t.groupby("env")):
            if env not in pf.coef:
                continue
            inner = sub.index.isin(fitted.index)
            std = sub[f"{hp}_std"] if f"{hp}_std" in sub else np.zeros(len(sub))
            col = f"C{i % 10}"
            _points_with_bars(ax, sub["utd"][inner], sub[hp][inner], np.asarray(std)[inner], col, env)
            _points_with_bars(ax, sub["utd"][~inner], sub[hp][~inner], np.asarray(std)[~inner], col,
                              AT_EDGE, mfc="none")
            laws.append((env, col, _law_range(sub["utd"][inner] if inner.any() else sub["utd"])))
        slope = next(iter(pf.slope.values()))
        ax.set(xscale="log", yscale="log", xlabel="utd", ylabel=hp,
               title=f"{hp}* ~ utd^-{slope:.3f}" + (" (shared slope)" if pf.shared else ""))
        _freeze_limits(ax)
        for env, col, rng in laws:
            if rng is not None:
                u = np.geomspace(*rng, 50)
                ax.plot(u, pf.predict(env, u), "-", color=col, lw=1, gid="law")
        _legend(ax, [], fontsize=7, ncol=2)
        _layout(fig)
        return fig
    return draw


def data_efficiency(res):
    """D_J(utd) per env: crossings with bootstrap error bars, the fitted laws over the utds they
    were fitted on (extended to the held-out points they predicted, x), undetermined laws dashed;
    the axes are set by the points."""
    fit, pred = res.objects["data"], res.tables["predictions"]
    if fit.law.name != "data_sigma":
        return None
    envs = list(dict.fromkeys(pred["env"]))
    fig, axes = _panels(len(envs))
    any_held = False
    for ax, env in zip(axes, envs):
        laws = []
        for lv in sorted(fit.fits):
            if env not in fit.thresholds[lv]:
                continue
            sub = pred[(pred["env"] == env) & (pred["level"] == lv)]
            held = sub["held_out"].to_numpy(bool) if "held_out" in sub else np.zeros(len(sub), bool)
            utd, data = sub["utd"].to_numpy(), sub["data"].to_numpy()  # arrays: pandas indexing cost more here
            col = f"C{lv % 10}"
            _points_with_bars(ax, utd[~held], data[~held], sub["data_std"].to_numpy()[~held], col,
                              f"J={fit.thresholds[lv][env]:.0f}")
            reached = np.isfinite(data)
            if (held & reached).any():
                ax.plot(utd[held], data[held], "x", ms=7, color=col, label=HELD)
                any_held = True
            laws.append((lv, col, _law_range(utd[~held & reached], utd[held & reached])))
        ax.set(xscale="log", yscale="log", xlabel="utd", title=env)
        _freeze_limits(ax)
        for lv, col, rng in laws:
            if rng is not None:
                u = np.geomspace(*rng, 60)
                bad = _undetermined(fit, env, lv)
                ax.plot(u, fit.predict(env, lv, utd=u), "--" if bad else "-", lw=1, color=col, gid="law",
                        label=UNDETERMINED if bad else None)
    axes[0].set_ylabel("env steps to threshold D_J")
    _legend(axes[0], axes, fontsize=6)
    fig.suptitle("D_J(utd): best-tuned crossings (+-1 SD) and fitted laws"
                 + ("; x: held out of the fit, predicted" if any_held else ""), fontsize=9, wrap=True)
    _layout(fig)
    return fig


def pareto(res):
    """Data-compute frontiers per threshold with iso-budget lines through the optima.

    Each frontier is drawn over the utds its D_J law was fitted on, extended to its optimum (an
    extrapolated optimum: dashed). The axes are set by the frontiers over the fitted utds and
    the optima; the extension of an undetermined law to an extrapolated optimum and the
    iso-budget lines are clipped to them."""
    if "pareto" not in res.tables:
        return None
    front, opt = res.tables["pareto"], res.tables["budget"]
    fit = res.objects.get("data")
    envs = list(dict.fromkeys(front["env"]))
    fig, axes = _panels(len(envs))
    delta = res.fits["fit_budget"]["delta"]
    for ax, env in zip(axes, envs):
        later = []  # drawn once the limits are set
        for lv, sub in front[front["env"] == env].groupby("level"):
            o = opt[(opt["env"] == env) & (opt["level"] == lv)].iloc[0]
            col = f"C{lv % 10}"
            utd, extra = sub["utd"].to_numpy(float), sub["extrapolated"].to_numpy(bool)
            rng = _law_range(utd[~extra], [o["utd"]])
            keep = (utd >= rng[0] * (1 - 1e-9)) & (utd <= rng[1] * (1 + 1e-9)) if rng else np.ones(len(utd), bool)
            comp, data = sub["compute"].to_numpy(float)[keep], sub["data"].to_numpy(float)[keep]
            dom, extra = sub["dominated"].to_numpy(bool)[keep], extra[keep]
            bad = fit is not None and lv in fit.fits and env in fit.thresholds[lv] and _undetermined(fit, env, lv)
            label = f"J={o['threshold']:.0f}" + (" (undetermined law)" if bad else "")
            faint = dict(ls="-", lw=0.6, alpha=0.35)
            for part, style, sets in ((~dom & ~extra, dict(ls="-", lw=1.2), True), (dom & ~extra, faint, True),
                                      (~dom & extra, dict(ls="--", lw=1.0), not bad), (dom & extra, faint, not bad)):
                if part.any():  # an empty line is an artist to build and draw all the same
                    job = partial(ax.plot, np.where(part, comp, np.nan), np.where(part, data, np.nan), color=col,
                                  gid="law", label=label, **style)
                    label = None
                    if sets:
                        job()
                    else:
                        later.append(job)
            job = partial(ax.plot, o["compute"], o["data"], "o", color=col, ms=4, label=label)
            if bad and o["extrapolated"]:
                later.append(job)
            else:
                job()
            c = np.geomspace(comp.min() if len(comp) else o["compute"] / 10, o["budget"] * 0.999, 50)
            later.append(partial(ax.plot, c, (o["budget"] - c) / delta, ":", color=col, lw=0.8))
        ax.set(xscale="log", yscale="log", xlabel="compute C_J (FLOPs)", title=env)
        _freeze_limits(ax)
        for job in later:
            job()
    axes[0].set_ylabel("data D_J (env steps)")
    _legend(axes[0], axes, fontsize=6)
    fig.suptitle("Pareto frontiers (solid; dashed: extrapolated beyond the fitted utd; faint: dominated), "
                 "iso-budget F = C + delta D (dotted), optima (dots)", fontsize=8, wrap=True)
    _layout(fig)
    return fig


def sigma_star(res):
    """Budget-optimal utd against the budget with their 90% bootstrap intervals, the fitted power
    law over the budgets it was fitted on and predicted (held-out budgets, x)."""
    laws = res.fits.get("fit_budget", {}).get("laws") or {}
    if "utd" not in laws:
        return None
    t = res.tables["budget"]
    law = laws["utd"]
    fig, ax = plt.subplots(figsize=(5.2, 4))
    lines = []
    for i, (env, sub) in enumerate(t.groupby("env")):
        sub = sub.sort_values("budget")
        held = (sub["budget"].rank(ascending=False) <= law["n_held_out"] / max(t["env"].nunique(), 1)).to_numpy()
        col = f"C{i % 10}"
        for part, fmt, label in ((~held, "o", env), (held, "x", HELD)):
            if part.any():
                _errorbars(ax, sub[part], fmt, col, label)
        if env in law["coef"]:
            lines.append((env, col, _law_range(sub["budget"][~held], sub["budget"][held])))
    ex = law["exponent"]
    iv = f", 90% [{law['exponent_lo']:.2f}, {law['exponent_hi']:.2f}]" if "exponent_lo" in law else ""
    ax.set(xscale="log", yscale="log", xlabel="budget F* = C + delta D", ylabel="utd*",
           title=f"utd* ~ F^{ex:.3f}{iv}")
    _freeze_limits(ax)
    for env, col, rng in lines:
        if rng is not None:
            f = np.geomspace(*rng, 30)
            ax.plot(f, law["coef"][env] * f ** ex, "--", lw=1, color=col, gid="law")
    _legend(ax, [], fontsize=7, ncol=2)
    _layout(fig)
    return fig


def _errorbars(ax, rows, fmt, color, label) -> None:
    """Budget optima with their 90% bootstrap intervals in budget and utd (where the table has them)."""
    x, y = rows["budget"].to_numpy(float), rows["utd"].to_numpy(float)

    def err(col, v):
        if f"{col}_lo" not in rows:
            return None
        lo, hi = rows[f"{col}_lo"].to_numpy(float), rows[f"{col}_hi"].to_numpy(float)
        return np.nan_to_num(np.clip([v - lo, hi - v], 0, None))  # an interval that misses the estimate: no bar that side
    ax.errorbar(x, y, yerr=err("utd", y), xerr=err("budget", x), fmt=fmt, ms=4 if fmt == "o" else 7, color=color,
                lw=0.8, label=label)


def data_sigma_n(res):
    """D_J over (utd, N) for the first env at the middle level: contours and the crossings."""
    fit = res.objects["data"]
    if fit.law.name != "data_sigma_n":
        return None
    pred = res.tables["predictions"]
    lv = sorted(fit.fits)[len(fit.fits) // 2]
    env = next(iter(fit.thresholds[lv]))
    sub = pred[(pred["env"] == env) & (pred["level"] == lv)]
    sub = sub[np.isfinite(sub["data"])]
    # the law over the (utd, N) box of the points it was fitted on and predicted (held out)
    u = np.geomspace(*_law_range(sub["utd"]), 80)
    n = np.geomspace(*_law_range(sub["model_size"]), 80)
    U, N = np.meshgrid(u, n)
    Z = fit.predict(env, lv, utd=U, model_size=N)
    fig, ax = plt.subplots(figsize=(5.4, 4.2))
    norm = LogNorm(vmin=min(Z.min(), sub["data"].min()), vmax=max(Z.max(), sub["data"].max()))
    sc = ax.scatter(sub["utd"], sub["model_size"], c=sub["data"], cmap="viridis", norm=norm, edgecolor="k", zorder=3)
    ax.set(xscale="log", yscale="log", xlabel="utd", ylabel="model size N",
           title=f"{env}: D_J(utd, N), J={fit.thresholds[lv][env]:.0f}")
    _freeze_limits(ax)
    cs = ax.contour(U, N, Z, levels=np.geomspace(Z.min(), Z.max(), 12), cmap="viridis", norm=norm)
    ax.clabel(cs, fontsize=6, fmt="%.2g")
    fig.colorbar(sc, ax=ax, label="D_J (contours: fit, dots: runs)")
    _layout(fig)
    return fig
