"""Figures (PNG, matplotlib Agg): isotonic curves with crossings, B* / eta* fits, D_J(sigma)
with held-out points, Pareto frontiers with iso-budget lines, sigma*(F), D_J over (sigma, N)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator  # noqa: E402
import numpy as np  # noqa: E402

from pql_jax.values import format_utd  # noqa: E402
from pql_jax.scaling.curves import first_crossings, isotonic_rows  # noqa: E402

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
        _quiet_minor_ticks(ax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _layout(fig) -> None:
    """Fixed margins in inches (tight_layout costs ~0.3 s per multi-panel figure)."""
    w, h = fig.get_figwidth(), fig.get_figheight()
    fig.subplots_adjust(left=1.0 / w, right=1 - 0.15 / w, bottom=0.55 / h, top=1 - 0.7 / h,
                        wspace=0.35, hspace=0.55)


def _quiet_minor_ticks(ax) -> None:
    """Cheap log-axis ticks: decades (at most 6) labelled as plain text, no minor ticks.

    Matplotlib's default log ticks typeset every label with mathtext and place 8 minor ticks per
    decade; on the multi-panel figures that was most of the time of `fit all` with figures."""
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale == "log":
            axis.set_major_locator(LogLocator(base=10, numticks=6))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")))
            axis.set_minor_locator(NullLocator())


def _points_with_bars(ax, x, y, std, color, label) -> None:
    """Points with +-1 SD bars: markers and one LineCollection (``errorbar`` builds several
    artists per call and was a large share of the figure time)."""
    x, y, sd = (np.asarray(v, float) for v in (x, y, np.nan_to_num(np.asarray(std, float))))
    ax.plot(x, y, "o", ms=3, color=color, label=label)
    ok = sd > 0
    if ok.any():
        ax.vlines(x[ok], np.maximum(y[ok] - sd[ok], y[ok] * 1e-3), y[ok] + sd[ok], color=color, lw=0.8)


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
        ax.plot(cross, J, "o", color="C3", ms=4, label="crossings")
        ax.set_title(f"{env} utd={format_utd(c['utd'])}", fontsize=9)
        ax.set_xlabel("env steps", fontsize=8)
    axes[0].set_ylabel("return")
    axes[0].legend(fontsize=7)
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
        fig, ax = plt.subplots(figsize=(5.2, 4))
        u = np.geomspace(t["utd"].min(), t["utd"].max(), 50)
        for i, (env, sub) in enumerate(t.groupby("env")):
            if env not in pf.coef:
                continue
            _points_with_bars(ax, sub["utd"], sub[hp], sub[f"{hp}_std"], f"C{i % 10}", env)
            ax.plot(u, pf.predict(env, u), "-", color=f"C{i % 10}", lw=1)
        slope = next(iter(pf.slope.values()))
        ax.set(xscale="log", yscale="log", xlabel="utd", ylabel=hp,
               title=f"{hp}* ~ utd^-{slope:.3f}" + (" (shared slope)" if pf.shared else ""))
        ax.legend(fontsize=7, ncol=2)
        _layout(fig)
        return fig
    return draw


def data_efficiency(res):
    """D_J(utd) per env: crossings with bootstrap error bars, fitted laws, held-out points (x)."""
    fit, pred = res.objects["data"], res.tables["predictions"]
    if fit.law.name != "data_sigma":
        return None
    envs = list(dict.fromkeys(pred["env"]))
    fig, axes = _panels(len(envs))
    u = np.geomspace(pred["utd"].min() / 2, pred["utd"].max() * 2, 80)
    for ax, env in zip(axes, envs):
        for lv in sorted(fit.fits):
            if env not in fit.thresholds[lv]:
                continue
            sub = pred[(pred["env"] == env) & (pred["level"] == lv)]
            held = sub["held_out"].to_numpy(bool) if "held_out" in sub else np.zeros(len(sub), bool)
            utd, data = sub["utd"].to_numpy(), sub["data"].to_numpy()  # arrays: pandas indexing cost more here
            col = f"C{lv % 10}"
            _points_with_bars(ax, utd[~held], data[~held], sub["data_std"].to_numpy()[~held], col,
                              f"J={fit.thresholds[lv][env]:.0f}")
            if held.any():
                ax.plot(utd[held], data[held], "x", ms=7, color=col)
            ax.plot(u, fit.predict(env, lv, utd=u), "-", lw=1, color=col)
        ax.set(xscale="log", yscale="log", xlabel="utd", title=env)
    axes[0].set_ylabel("env steps to threshold D_J")
    axes[0].legend(fontsize=6)
    fig.suptitle("D_J(utd); x = held out of the fit", fontsize=9)
    _layout(fig)
    return fig


def pareto(res):
    """Data-compute frontiers per threshold with iso-budget lines through the optima."""
    if "pareto" not in res.tables:
        return None
    front, opt = res.tables["pareto"], res.tables["budget"]
    envs = list(dict.fromkeys(front["env"]))
    fig, axes = _panels(len(envs))
    delta = res.fits["fit_budget"]["delta"]
    for ax, env in zip(axes, envs):
        for lv, sub in front[front["env"] == env].groupby("level"):
            o = opt[(opt["env"] == env) & (opt["level"] == lv)].iloc[0]
            col = f"C{lv % 10}"
            comp, data = sub["compute"].to_numpy(float), sub["data"].to_numpy(float)
            dom, extra = sub["dominated"].to_numpy(bool), sub["extrapolated"].to_numpy(bool)
            ok, ext = ~dom & ~extra, ~dom & extra
            ax.plot(np.where(ok, comp, np.nan), np.where(ok, data, np.nan), "-", color=col, lw=1.2,
                    label=f"J={o['threshold']:.0f}")
            for part, style in ((ext, dict(ls="--", lw=1.0)), (dom, dict(ls="-", lw=0.6, alpha=0.35))):
                if part.any():  # an empty line is an artist to build and draw all the same
                    ax.plot(np.where(part, comp, np.nan), np.where(part, data, np.nan), color=col, **style)
            c = np.geomspace(sub["compute"].min(), o["budget"] * 0.999, 50)
            ax.plot(c, (o["budget"] - c) / delta, ":", color=f"C{lv % 10}", lw=0.8)
            ax.plot(o["compute"], o["data"], "o", color=f"C{lv % 10}", ms=4)
        ax.set(xscale="log", yscale="log", xlabel="compute C_J (FLOPs)", title=env)
        ax.set_ylim(front[front["env"] == env]["data"].min() / 1.5, front[front["env"] == env]["data"].max() * 1.5)
    axes[0].set_ylabel("data D_J (env steps)")
    axes[0].legend(fontsize=6)
    fig.suptitle("Pareto frontiers (solid; dashed: extrapolated beyond the fitted utd; faint: dominated), "
                 "iso-budget F = C + delta D (dotted), optima (dots)", fontsize=8)
    _layout(fig)
    return fig


def sigma_star(res):
    """Budget-optimal utd against the budget, fitted power law, held-out budgets (x)."""
    laws = res.fits.get("fit_budget", {}).get("laws") or {}
    if "utd" not in laws:
        return None
    t = res.tables["budget"]
    law = laws["utd"]
    fig, ax = plt.subplots(figsize=(5.2, 4))
    for i, (env, sub) in enumerate(t.groupby("env")):
        sub = sub.sort_values("budget")
        held = sub["budget"].rank(ascending=False) <= law["n_held_out"] / max(t["env"].nunique(), 1)
        col = f"C{i % 10}"
        ax.plot(sub["budget"][~held], sub["utd"][~held], "o", ms=4, color=col, label=env)
        ax.plot(sub["budget"][held], sub["utd"][held], "x", ms=7, color=col)
        f = np.geomspace(sub["budget"].min() / 1.5, sub["budget"].max() * 1.5, 30)
        ax.plot(f, law["coef"][env] * f ** law["exponent"], "--", lw=1, color=col)
    ax.set(xscale="log", yscale="log", xlabel="budget F* = C + delta D", ylabel="utd*",
           title=f"utd* ~ F^{law['exponent']:.3f}; x = held out")
    ax.legend(fontsize=7, ncol=2)
    _layout(fig)
    return fig


def data_sigma_n(res):
    """D_J over (utd, N) for the first env at the middle level: contours and the crossings."""
    fit = res.objects["data"]
    if fit.law.name != "data_sigma_n":
        return None
    pred = res.tables["predictions"]
    lv = sorted(fit.fits)[len(fit.fits) // 2]
    env = next(iter(fit.thresholds[lv]))
    sub = pred[(pred["env"] == env) & (pred["level"] == lv)]
    u = np.geomspace(sub["utd"].min() / 2, sub["utd"].max() * 2, 80)
    n = np.geomspace(sub["model_size"].min() / 2, sub["model_size"].max() * 2, 80)
    U, N = np.meshgrid(u, n)
    Z = fit.predict(env, lv, utd=U, model_size=N)
    fig, ax = plt.subplots(figsize=(5.4, 4.2))
    norm = LogNorm(vmin=min(Z.min(), sub["data"].min()), vmax=max(Z.max(), sub["data"].max()))
    cs = ax.contour(U, N, Z, levels=np.geomspace(Z.min(), Z.max(), 12), cmap="viridis", norm=norm)
    ax.clabel(cs, fontsize=6, fmt="%.2g")
    sc = ax.scatter(sub["utd"], sub["model_size"], c=sub["data"], cmap="viridis", norm=norm, edgecolor="k")
    fig.colorbar(sc, ax=ax, label="D_J (contours: fit, dots: runs)")
    ax.set(xscale="log", yscale="log", xlabel="utd", ylabel="model size N",
           title=f"{env}: D_J(utd, N), J={fit.thresholds[lv][env]:.0f}")
    _layout(fig)
    return fig
