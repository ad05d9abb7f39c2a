"""`pql-jax fit data-efficiency | batch-size | learning-rate | all` and `pql-jax propose`."""

from __future__ import annotations

import argparse
import os

import numpy as np

from pql_jax.errors import UserError
from pql_jax.values import read_number, read_numbers
from pql_jax.scaling.api import fit_all_file, fit_data_efficiency_file, fit_hparam_file
from pql_jax.scaling.budget import delta_from_throughput
from pql_jax.scaling.columns import read_column_map
from pql_jax.scaling.pipeline import PipelineConfig
from pql_jax.scaling.propose import propose, write_proposals


def _max_return(text):
    """'1000' or 'cheetah=900,walker=1000'."""
    if text is None:
        return None
    if "=" not in text:
        return read_number(text)
    out = {}
    for part in text.split(","):
        env, _, val = part.partition("=")
        out[env.strip()] = read_number(val)
    return out


def _summary(rows, cols) -> str:
    """A small fixed-width table."""
    lines = ["  ".join(f"{c:>12}" for c in cols)]
    for r in rows:
        lines.append("  ".join(f"{v:>12.4g}" if isinstance(v, (float, np.floating)) else f"{str(v):>12}"
                               for v in (r.get(c, "") for c in cols)))
    return "\n".join(lines)


def cmd_data_efficiency(args) -> int:
    """Fit D_J to a crossings table; write fit.json and predictions.csv."""
    fit = fit_data_efficiency_file(args.crossings, args.out, shared=args.shared_exponents,
                                   normalise="median" if args.median_normalise else None,
                                   holdout=args.holdout)
    rows = [{"level": lv, "env": env, **p, "loss": f.loss} for lv, f in fit.fits.items() for env, p in f.params.items()]
    print(f"{fit.law.formula}   loss {fit.loss:.4g} over {fit.n} points")
    print(_summary(rows, ["level", "env"] + list(fit.law.params) + ["loss"]))
    if fit.holdout:
        print(f"held out ({fit.holdout['expr']}): {fit.holdout}")
    print(f"wrote {os.path.join(args.out, 'fit.json')} and predictions.csv")
    return 0


def cmd_hparam(args, hp: str) -> int:
    """Fit B*(sigma) or eta*(sigma) to a best-hyperparameter table."""
    pf = fit_hparam_file(args.table, args.out, hp, shared=not args.per_env)
    rows = [{"env": g, "coef": pf.coef[g], "slope": pf.slope[g], "slope_se": pf.slope_se[g]} for g in pf.coef]
    print(f"{hp} = coef * utd^(-slope)   loss {pf.loss:.4g}")
    print(_summary(rows, ["env", "coef", "slope", "slope_se"]))
    for g, flat in pf.flat.items():
        if flat:
            print(f"note: {g}: no dependence on utd within the noise (slope {pf.slope[g]:.3g}); "
                  f"best {hp} is a constant here, not a law")
    return 0


def cmd_all(args) -> int:
    """Run the whole pipeline and write every table, fit, figure and report.md."""
    cfg = PipelineConfig(
        columns=read_column_map(args.columns) if args.columns else None, max_return=_max_return(args.max_return),
        thresholds=read_numbers(args.thresholds) if args.thresholds else None,
        n_thresholds=args.n_thresholds, base=args.base, select_level=args.select_level,
        resamples=args.resamples, seed=args.seed, k=args.k, delta=_delta(args),
        model_size=args.model_size, shared=args.shared_exponents, per_env_slopes=args.per_env,
        normalise="median" if args.median_normalise else None, holdout=args.holdout,
        crossings=args.crossings.replace("-", "_"), figures=not args.no_figures, targets=_targets(args))
    res = fit_all_file(args.curves, args.out, cfg)
    print("stage timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in res.timings.items()))
    for note in res.notes:
        print(f"note: {note}")
    flags = res.tables.get("flags")
    if flags is not None and len(flags):
        print(f"warning: {len(flags)} problem(s) with the fits (see the Warnings of report.md, flags.csv):")
        for r in flags.head(10).itertuples():
            print(f"  {r.quantity}" + (f" ({r.group})" if r.group not in ("", "nan") else "")
                  + (f" {r.param}" if r.param else "") + f": {r.problem}")
        if len(flags) > 10:
            print(f"  ... and {len(flags) - 10} more")
    print(f"wrote {args.out}/report.md")
    return 0


def _targets(args) -> dict | None:
    """``--target-utd`` / ``--target-model-size`` as PipelineConfig.targets (None: neither)."""
    out = {}
    for key, text in (("utd", args.target_utd), ("model_size", args.target_model_size)):
        if text is not None:
            try:
                values = read_numbers(text)
            except UserError:
                values = []
            if not values or not all(np.isfinite(v) and v > 0 for v in values):
                raise UserError(f"fit all: --target-{key.replace('_', '-')} needs positive numbers, got {text!r}")
            out[key] = values
    return out or None


def _delta(args):
    if args.delta is not None:
        return args.delta
    if args.flops_per_s is not None and args.env_steps_per_s is not None:
        return delta_from_throughput(args.flops_per_s, args.env_steps_per_s)
    return None


def cmd_propose(args) -> int:
    """Print and write the proposal table."""
    if sum(a is not None for a in (args.utd, args.budget, args.data)) != 1:
        raise UserError("propose: give exactly one of --utd, --budget or --data")
    if args.utd is not None and not read_numbers(args.utd):
        raise UserError("propose: --utd needs at least one UTD (e.g. --utd 1/4,1,4)")
    table = propose(args.dir, utds=read_numbers(args.utd) if args.utd is not None else None,
                    budget=read_number(args.budget) if args.budget is not None else None, env=args.env,
                    data=read_number(args.data) if args.data is not None else None)
    path = write_proposals(table, args.out or os.path.join(args.dir, "proposals.csv"))
    print(table.to_string(index=False))
    for note in table.attrs.get("notes", []):
        print(f"note: {note}")
    for warning in table.attrs.get("warnings", []):
        print(f"warning: {warning}")
    if "extrapolated" in table and table["extrapolated"].any():
        print(f"warning: {int(table['extrapolated'].sum())} proposal(s) lie outside the fitted utd / model-size / "
              "budget range (extrapolated: verify before relying on them)")
    print(f"wrote {path}")
    return 0


def _positive(text):
    v = read_number(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return v


def add_subcommands(subparsers) -> None:
    """Add `fit` (data-efficiency, batch-size, learning-rate, all) and `propose`."""
    fit = subparsers.add_parser("fit", help="fit scaling laws to crossings or learning curves")
    fsub = fit.add_subparsers(dest="fit_command", required=True)
    de = fsub.add_parser("data-efficiency", help="fit D_J(utd[, N]) to a crossings CSV")
    de.add_argument("crossings")
    de.add_argument("--out", required=True)
    _law_options(de)
    de.set_defaults(func=cmd_data_efficiency)
    for name, hp in (("batch-size", "batch_size"), ("learning-rate", "lr")):
        p = fsub.add_parser(name, help=f"fit {hp} = coef * utd^-slope (shared slope, per-env intercepts)")
        p.add_argument("table", help=f"CSV with env (optional), utd, {hp}")
        p.add_argument("--out", required=True)
        p.add_argument("--per-env", action="store_true", help="one slope per env")
        p.set_defaults(func=lambda a, hp=hp: cmd_hparam(a, hp))
    al = fsub.add_parser("all", help="learning curves -> crossings -> laws -> budgets -> report")
    al.add_argument("curves", nargs="+", metavar="CURVES",
                    help="learning-curve CSV(s) or run directories (a sweep's results.csv, a train run's metrics.csv); "
                         "several are read as one table")
    al.add_argument("--out", required=True)
    al.add_argument("--columns", metavar="NAME=COLUMN,...|FILE.yaml",
                    help="your column names: e.g. step=env_step,return=eval_return,batch_size=batch (names: env, seed, "
                         "step, return, utd, batch_size, lr, model_size, flops, critic_updates, diverged; "
                         "ignore=COLUMN leaves one out of the checks), or a YAML file of that mapping")
    al.add_argument("--max-return", help="normalise returns to 0..1000: a number or env=value,...")
    al.add_argument("--thresholds", help="comma-separated return thresholds (default: auto)")
    al.add_argument("--n-thresholds", type=int, default=5)
    al.add_argument("--base", type=float, help="lowest level of auto thresholds")
    al.add_argument("--select-level", type=int, help="threshold level used to pick best B / lr")
    al.add_argument("--resamples", type=int, default=100, help="seed bootstrap resamples")
    al.add_argument("--seed", type=int, default=0)
    al.add_argument("--k", type=_positive, default=10.0, help="FLOPs per parameter per sample")
    al.add_argument("--delta", type=_positive, help="FLOPs per env step in the budget F = C + delta D")
    al.add_argument("--flops-per-s", type=_positive, help="with --env-steps-per-s: delta = ratio")
    al.add_argument("--env-steps-per-s", type=_positive)
    al.add_argument("--model-size", type=_positive, help="critic parameters when not a column")
    al.add_argument("--per-env", action="store_true", help="B*, eta* slopes per env")
    al.add_argument("--no-figures", action="store_true")
    al.add_argument("--target-utd", metavar="UTD,...",
                    help="UTDs you will predict at beyond the fitted ones (e.g. 2,4): D_J is kept ordered in J there too")
    al.add_argument("--target-model-size", metavar="N,...", help="the same for model sizes (with a model_size column)")
    al.add_argument("--crossings", choices=("at-best", "min"), default="at-best",
                    help="D_J per (env, utd, N): at the fitted B*, eta* interpolated across the grid (default, the "
                         "paper's procedure) or the minimum over the swept grid")
    _law_options(al)
    al.set_defaults(func=cmd_all)
    pr = subparsers.add_parser("propose", help="recommended (utd, batch_size, lr, model_size)")
    pr.add_argument("dir", help="output directory of `fit all`")
    pr.add_argument("--utd", help="comma-separated UTDs (fractions like 1/1024 allowed)")
    pr.add_argument("--budget", help="target budget F (FLOPs; per critic parameter without a model_size column)")
    pr.add_argument("--data", help="data target D (env steps): per threshold J, the cheapest setting that reaches J "
                                   "within D env steps")
    pr.add_argument("--env", help="only this env")
    pr.add_argument("--out", help="CSV path (default DIR/proposals.csv)")
    pr.set_defaults(func=cmd_propose)


def _law_options(p) -> None:
    p.add_argument("--holdout", help="rows to hold out of the fit, e.g. 'utd>=8'")
    p.add_argument("--shared-exponents", action="store_true", help="share D_J exponents across envs")
    p.add_argument("--median-normalise", action="store_true", help="pool envs after median normalisation")
