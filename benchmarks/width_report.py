"""Return at a fixed budget against critic size, per architecture, from a sweep's results table.

Answers "does return hold up as the critic widens?" (issue "Real physics evidence", section 4)
for any sweep over `critic_width` (and `critic_arch`), e.g.

    pql-jax sweep configs/sweeps/cartpole_balance_bro_widths.yaml --out runs/balance_bro_widths
    python benchmarks/width_report.py runs/balance_bro_widths --figure benchmarks/figures/bro_widths.png

Per run (member): the score is the mean eval return of its last `--last` evaluations, and the
"all evals" column the mean over every evaluation (an area under the learning curve, which also
sees how fast a run learned). Per (architecture, width): mean +- standard error over the seeds
(sample SD with ddof=1, / sqrt(n); n printed). Per architecture: widest minus narrowest width,
with SE sqrt(se_w^2 + se_n^2) (independent seeds). A partly finished sweep reports the runs whose
table rows reach the largest env-step count of the sweep; shorter runs are listed as unfinished.
The figure: score against critic parameters N (log axis) with SE bars, and the mean learning
curves. Bad input (no table, missing columns) is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, also when imported by path
from vs_sac_report import mean_se  # noqa: E402

from pql_jax.errors import UserError  # noqa: E402
from pql_jax.scaling.io import _check_values, _numeric_column, read_table, require_columns  # noqa: E402

ARCH_DEFAULT = "mlp"  # a table without a critic_arch column holds PQL's MLP critic


def member_scores(df, last: int):
    """One dict per member: arch, width, N, seed, steps reached, score, all-evals mean, curve."""
    numeric = ("seed", "step", "return", "critic_width", "model_size")
    require_columns(df, ("member",) + numeric, "results table")
    for col in numeric:
        df[col] = _numeric_column(df, col, "results table")
    df = df[df["return"].notna()]  # rows without an evaluation
    _check_values(df, numeric, "results table")
    runs = []
    for member, rows in df.groupby("member", sort=False):
        rows = rows.sort_values("step")
        returns = rows["return"].to_numpy(float)
        runs.append({"member": member,
                     "arch": str(rows["critic_arch"].iloc[0]) if "critic_arch" in rows else ARCH_DEFAULT,
                     "width": int(rows["critic_width"].iloc[0]), "N": int(rows["model_size"].iloc[0]),
                     "seed": int(rows["seed"].iloc[0]), "last_step": int(rows["step"].iloc[-1]),
                     "score": float(np.mean(returns[-last:])), "all_evals": float(np.mean(returns)),
                     "steps": rows["step"].to_numpy(float), "returns": returns})
    if not runs:
        raise UserError("results table: no row has a finite eval return")
    return runs


def summarize(runs):
    """Per (arch, width): N, mean/SE/n of the score and of the all-evals mean, per-seed scores."""
    budget = max(r["last_step"] for r in runs)
    done = [r for r in runs if r["last_step"] == budget]
    cells = {}
    for r in done:
        cells.setdefault((r["arch"], r["width"]), []).append(r)
    table = []
    for (arch, width), rs in sorted(cells.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        table.append({"arch": arch, "width": width, "N": rs[0]["N"], "runs": rs,
                      "score": mean_se([r["score"] for r in rs]), "all_evals": mean_se([r["all_evals"] for r in rs])})
    unfinished = sorted(r["member"] for r in runs if r["last_step"] < budget)
    return budget, table, unfinished


def widening(table):
    """Per arch with >= 2 widths: (narrowest, widest, difference of mean scores, its SE)."""
    out = {}
    for arch in sorted({c["arch"] for c in table}):
        cs = sorted((c for c in table if c["arch"] == arch), key=lambda c: c["width"])
        if len(cs) >= 2:
            (m0, s0, _), (m1, s1, _) = cs[0]["score"], cs[-1]["score"]
            out[arch] = (cs[0]["width"], cs[-1]["width"], m1 - m0, math.sqrt(s0 ** 2 + s1 ** 2))
    return out


def _pm(stat) -> str:
    mean, se, n = stat
    return f"{mean:.1f} +- {se:.1f}" if math.isfinite(se) else f"{mean:.1f} (n=1)"


def markdown(budget, table, unfinished, last: int) -> str:
    lines = [f"| arch | width | N (critic params) | n seeds | score: mean of last {last} evals | mean of all evals "
             "| per-seed scores |", "|---|---|---|---|---|---|---|"]
    for c in table:
        seeds = ", ".join(f"{r['score']:.1f}" for r in c["runs"])
        lines.append(f"| {c['arch']} | {c['width']} | {c['N']:,} | {c['score'][2]} | {_pm(c['score'])} "
                     f"| {_pm(c['all_evals'])} | {seeds} |")
    lines += ["", f"Budget: {budget:,} env steps per run. Mean +- SE over seeds (sample SD, ddof=1, / sqrt(n))."]
    for arch, (w0, w1, diff, se) in widening(table).items():
        lines.append(f"- {arch}: width {w1} minus width {w0}: {diff:+.1f} +- {se:.1f} "
                     f"({diff / se:+.1f} SE)" if se > 0 else f"- {arch}: width {w1} minus width {w0}: {diff:+.1f}")
    if unfinished:
        lines.append(f"- unfinished runs (left out): {', '.join(unfinished)}")
    return "\n".join(lines)


def plot(table, path, last: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({c["arch"] for c in table})
    colors = dict(zip(archs, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for arch in archs:
        cs = sorted((c for c in table if c["arch"] == arch), key=lambda c: c["N"])
        n = [c["N"] for c in cs]
        mean = [c["score"][0] for c in cs]
        se = [c["score"][1] if math.isfinite(c["score"][1]) else 0.0 for c in cs]
        left.errorbar(n, mean, yerr=se, marker="o", capsize=3, color=colors[arch], label=arch)
        for c in cs:
            left.annotate(f"w={c['width']}", (c["N"], c["score"][0]), fontsize=7, xytext=(4, 4),
                          textcoords="offset points")
        for i, c in enumerate(cs):
            steps = c["runs"][0]["steps"]
            ys = np.vstack([np.interp(steps, r["steps"], r["returns"]) for r in c["runs"]])
            alpha = 0.35 + 0.65 * (i + 1) / len(cs)
            right.plot(steps, ys.mean(axis=0), color=colors[arch], alpha=alpha,
                       label=f"{arch} w={c['width']} (n={len(c['runs'])})")
    left.set_xscale("log")
    left.set_xlabel("critic parameters N")
    left.set_ylabel(f"eval return, mean of last {last} (mean +- SE over seeds)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.set_xlabel("env steps")
    right.set_ylabel("eval return (mean over seeds)")
    right.grid(alpha=0.3)
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="+", help="sweep directories or results.csv files")
    parser.add_argument("--last", type=int, default=3, help="evaluations averaged per run (default 3)")
    parser.add_argument("--figure", help="write the figure here (PNG)")
    args = parser.parse_args(argv)
    try:
        if args.last < 1:
            raise UserError(f"--last must be >= 1, got {args.last}")
        budget, table, unfinished = summarize(member_scores(read_table(args.source, "results table"), args.last))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(budget, table, unfinished, args.last))
    if args.figure:
        plot(table, args.figure, args.last)
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
