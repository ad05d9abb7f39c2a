"""Statistics, the Markdown table and the learning-curve figures of benchmarks/bench_vs_sac.py.

Pure functions of run records (dicts with env, method, seed, evals [{env_steps, eval_return}],
and the speed fields); no training, no JAX.
"""

from __future__ import annotations

import math

import numpy as np

METHODS = ("pql_jax", "brax_sac")
LABEL = {"pql_jax": "pql_jax", "brax_sac": "brax SAC"}
LAST_K = 3  # score = mean of the last LAST_K evaluations


def score(evals, k=LAST_K) -> float:
    """Mean eval return of the last k evaluations (non-finite ones left out; NaN if none)."""
    values = [e["eval_return"] for e in evals[-k:]]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def mean_se(values):
    """(mean, standard error, n) of the finite values: SE = sample SD (ddof=1) / sqrt(n); NaN SE if n < 2."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    se = float(np.std(v, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return float(np.mean(v)), se, n


def steps_to_threshold(evals, threshold):
    """Env steps of the first evaluation with return >= threshold, or None."""
    if threshold is None:
        return None
    for point in evals:
        if point["eval_return"] is not None and point["eval_return"] >= threshold:
            return point["env_steps"]
    return None


def pair_ratios(numerator: dict, denominator: dict) -> dict:
    """{seed: numerator[seed] / denominator[seed]} over the seeds both have (finite, denominator > 0)."""
    out = {}
    for seed in sorted(set(numerator) & set(denominator)):
        a, b = numerator[seed], denominator[seed]
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b) and b > 0:
            out[seed] = a / b
    return out


def ratio_summary(ratios: dict) -> dict:
    m, se, n = mean_se(list(ratios.values()))
    vals = list(ratios.values())
    return {"pairs": {str(k): v for k, v in ratios.items()}, "mean": m, "se": se, "n": n,
            "min": min(vals) if vals else float("nan"), "max": max(vals) if vals else float("nan")}


def _stat(values) -> dict:
    m, se, n = mean_se(values)
    return {"values": list(values), "mean": m, "se": se, "n": n}


def summarize(records, thresholds: dict, tasks=()) -> dict:
    """Per task (the given ones first, then any others in the records) and method: the statistics."""
    order = list(tasks) + [r["env"] for r in records if r["env"] not in tasks]
    summary = {}
    for task in dict.fromkeys(order):
        threshold = thresholds.get(task.split(":")[-1])
        row = {"threshold": threshold}
        for method in METHODS:
            rs = sorted((r for r in records if r["env"] == task and r["method"] == method), key=lambda r: r["seed"])
            if not rs:
                continue
            steps = [steps_to_threshold(r["evals"], threshold) for r in rs]
            hits = [s for s in steps if s is not None]
            row[method] = {
                "seeds": [r["seed"] for r in rs], "n": len(rs),
                "score": _stat([score(r["evals"]) for r in rs]),
                "steps_to_threshold": {**_stat(hits), "per_seed": steps, "hits": len(hits)},
                **{key: _stat([r.get(key) for r in rs]) for key in ("train_sps", "loop_sps", "eval_share",
                                                                   "startup_s", "total_wall_s")},
                "outside_frac": _stat([r.get("outside_frac") for r in rs]) if method == "pql_jax" else None,
                "jax": sorted({str(r.get("jax")) for r in rs}),
                "commits": sorted({str(r.get("commit")) for r in rs}),
            }
        if "pql_jax" in row and "brax_sac" in row:
            for key in ("train_sps", "loop_sps"):
                by_seed = {m: {r["seed"]: r.get(key) for r in records if r["env"] == task and r["method"] == m}
                           for m in METHODS}
                row[f"{key}_ratio"] = ratio_summary(pair_ratios(by_seed["pql_jax"], by_seed["brax_sac"]))
        if len(row) > 1:
            summary[task] = row
    return summary


def fmt_mse(stat: dict, fmt="{:.0f}") -> str:
    if stat is None or stat["n"] == 0:
        return "n/a"
    if stat["n"] == 1 or not math.isfinite(stat["se"]):
        return fmt.format(stat["mean"])  # one seed: no SE (the n column says so)
    return f"{fmt.format(stat['mean'])} ± {fmt.format(stat['se'])}"


def markdown(summary: dict) -> str:
    lines = ["| task (threshold) | method | n seeds | score: mean of last 3 evals | env steps to threshold (hits) "
             "| train env steps/s | loop env steps/s | eval share | outside-chunk frac | startup s | JAX |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, row in summary.items():
        name = task.split(":")[-1]
        label = name + (f" (≥ {row['threshold']:g})" if row["threshold"] is not None else "")
        for method in METHODS:
            if method not in row:
                continue
            m = row[method]
            st = m["steps_to_threshold"]
            reach = (f"{fmt_mse(st, '{:,.0f}') if st['hits'] else 'not reached'} ({st['hits']}/{m['n']})"
                     if row["threshold"] is not None else "n/a")
            outside = fmt_mse(m["outside_frac"], "{:.4f}") if m["outside_frac"] else "—"
            lines.append(f"| {label} | {LABEL[method]} | {m['n']} | {fmt_mse(m['score'])} | {reach} "
                         f"| {fmt_mse(m['train_sps'])} | {fmt_mse(m['loop_sps'])} | {fmt_mse(m['eval_share'], '{:.3f}')} "
                         f"| {outside} | {fmt_mse(m['startup_s'])} | {', '.join(m['jax'])} |")
        if "train_sps_ratio" in row:
            cells = []
            for key in ("train_sps_ratio", "loop_sps_ratio"):
                r = row[key]
                cells.append("n/a" if r["n"] == 0 else f"**{fmt_mse(r, '{:.2f}x')}**"
                             + (f" ({r['min']:.2f}-{r['max']:.2f}x)" if r["n"] > 1 else ""))
            pairs = row["train_sps_ratio"]["n"]
            lines.append(f"| {name} | ratio pql/sac per seed pair | {pairs} pair{'s' if pairs != 1 else ''} | | "
                         f"| {cells[0]} | {cells[1]} | | | | |")
    lines += ["", f"Mean ± standard error over the seeds (n per row; SE = sample SD with ddof=1 / sqrt(n); "
              f"a single value where n = 1). "
              f"Score: mean eval return of each run's last {LAST_K} evaluations. Env steps to threshold: the "
              f"first evaluation at or above it, over the seeds that reached it (hits k/n). Env steps/s: "
              f"compile-free window; train excludes eval time. Ratio: pql_jax / brax SAC env steps/s of the "
              f"same seed, mean ± SE (min-max) over the pairs."]
    return "\n".join(lines)


def curve(runs):
    """Learning curve of one method over seeds: (x, mean, se, n, interpolated).

    Runs of one method evaluate at the same env steps (same budget, envs and number of evals),
    so normally no interpolation happens; if a run's eval steps differ from the first (lowest)
    seed's grid, its returns are linearly interpolated onto that grid (np.interp, ends held)."""
    runs = sorted(runs, key=lambda r: r["seed"])
    xs = [np.array([e["env_steps"] for e in r["evals"]], dtype=float) for r in runs]
    ys = [np.array([np.nan if e["eval_return"] is None else e["eval_return"] for e in r["evals"]], dtype=float)
          for r in runs]
    grid = xs[0]
    interpolated = not all(len(x) == len(grid) and np.array_equal(x, grid) for x in xs)
    if interpolated:
        ys = [np.interp(grid, x, y) for x, y in zip(xs, ys)]
    y = np.vstack(ys)
    n = len(runs)
    se = np.std(y, axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(len(grid))
    return grid, y.mean(axis=0), se, n, interpolated


def plot_task(task, records, threshold, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    notes = []
    for method, color in zip(METHODS, ("tab:blue", "tab:orange")):
        rs = [r for r in records if r["env"] == task and r["method"] == method]
        if not rs:
            continue
        x, mean, se, n, interpolated = curve(rs)
        ax.plot(x, mean, marker="o", ms=3, color=color, label=f"{LABEL[method]} (n={n} seed{'s' if n != 1 else ''})")
        ax.fill_between(x, mean - se, mean + se, color=color, alpha=0.25, lw=0)
        if interpolated:
            notes.append(f"{LABEL[method]}: eval steps differ between seeds, interpolated")
    if threshold is not None:
        ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"threshold {threshold:g}")
    jax_versions = sorted({str(r.get("jax")) for r in records if r["env"] == task})
    ax.set_title(f"{task.split(':')[-1]}: eval return, mean ± SE over seeds (JAX {', '.join(jax_versions)})",
                 fontsize=10)
    ax.set_xlabel("env steps")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_ylabel("eval return (deterministic policy)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if notes:
        ax.text(0.01, 0.01, "; ".join(notes), transform=ax.transAxes, fontsize=7, va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
