"""`fit all`: learning curves -> crossings -> best hyperparameters -> laws -> budgets, with the
seed bootstrap carried through every stage and a timing per stage."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from pql_jax.errors import UserError
from pql_jax.scaling import budget as bud
from pql_jax.scaling import curves as cv
from pql_jax.scaling import levels
from pql_jax.scaling.datafit import add_levels, holdout_errors, predictions
from pql_jax.scaling.datastage import boot_log_params, fit_data_stage, with_intervals
from pql_jax.scaling.diagnostics import flags_table, law_flags, report_flags
from pql_jax.scaling.fit import holdout_split, single_thread_blas
from pql_jax.scaling.forms import compare_forms
from pql_jax.scaling.hparams import (best_hparams, cell_crossings, cell_crossings_at, depends_on_n, fit_batch_size_n,
                                     fit_hparam_law, law_points, slope_by_threshold)
from pql_jax.scaling.io import load_curves, require_columns, require_distinct
from pql_jax.scaling.ordering import refused_points
from pql_jax.scaling.laws import batch_size_b
from pql_jax.scaling.powerlaw import percentile_interval


@dataclass
class PipelineConfig:
    """Options of `fit all` (CLI flags of the same names)."""

    max_return: object = None  # float or {env: float}: normalise returns to 0..1000
    columns: object = None  # the curves' column names (--columns): columns.read_column_map's text, file or dict
    thresholds: list | None = None  # explicit thresholds (else n_thresholds auto-spaced)
    n_thresholds: int = 5
    base: float | None = None  # lowest threshold base (default: the highest starting level)
    select_level: int | None = None  # threshold level used to pick best B / lr (default middle)
    resamples: int = 100
    seed: int = 0
    k: float = 10.0
    delta: float | None = None
    model_size: float | None = None  # N when the table has no model_size column
    shared: bool = False  # share D_J exponents across envs
    per_env_slopes: bool = False  # B*, eta* slopes per env instead of fixed effects
    normalise: str | None = None  # 'median' normalisation of D across envs
    holdout: str | None = None
    # D_J of a (env, utd, N) cell: "at_best" measures it at the fitted B*(utd), eta*(utd) (the
    # cell's best values where no law was fitted), interpolating across the swept grid (seed 001,
    # section 4.3); "min" takes the minimum crossing over the grid (biased on coarse grids)
    crossings: str = "at_best"
    figures: bool = True
    # B*(sigma) / eta*(sigma) fitted elsewhere (e.g. on a hyperparameter sweep, when these curves
    # have one batch size and learning rate per utd): {"batch_size": PowerFit, "learning_rate":
    # PowerFit}. They take the place of fits to these curves in compute, budgets and proposals;
    # a fit of one env stands for every env. Written to fit_<name>.json with "source".
    hparam_fits: dict | None = None
    hparam_fits_source: str = "given (PipelineConfig.hparam_fits)"
    # inputs predictions will be made at beyond the fitted ones ({"utd": [2.0]}): the D_J levels
    # are kept ordered in J over them too (``ordering.order_levels``)
    targets: dict | None = None


@dataclass
class Results:
    """Every table and fit of a `fit all` run (written by ``write_results``)."""

    config: PipelineConfig
    tables: dict = field(default_factory=dict)  # name -> DataFrame
    fits: dict = field(default_factory=dict)  # name -> JSON-ready dict
    objects: dict = field(default_factory=dict)  # fitted objects for figures / proposals
    notes: list = field(default_factory=list)
    flags: list = field(default_factory=list)  # rows of diagnostics.flags_table
    timings: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


class _Timer:
    def __init__(self, timings: dict):
        self.timings, self.t = timings, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.t
        self.t = now


def fit_all(curves, config: PipelineConfig | None = None, painter=None) -> Results:
    """Run the whole pipeline on learning curves (path or DataFrame); see ``write_results``.
    ``painter`` (``forking.FigurePainter``) gets each figure's inputs as soon as they exist."""
    cfg = config or PipelineConfig()
    res = Results(cfg)
    timer = _Timer(res.timings)
    levels.check_select_level(cfg)
    df, notes = load_curves(curves, cfg.max_return, cfg.columns)
    res.notes += notes
    require_columns(df, ["utd"], "curves")
    if cfg.model_size is not None and "model_size" not in df.columns:
        df["model_size"] = float(cfg.model_size)
    # held-out rows are set aside before anything is computed: thresholds, best hyperparameters
    # and every law are learnt as if they did not exist; they are only predicted at the end
    df, held = holdout_split(df, cfg.holdout)
    require_distinct(df, "utd", "curves")
    timer.lap("load")
    cb = cv.crossing_bootstrap(df, cfg.thresholds or None, cfg.resamples, cfg.seed, n_thresholds=cfg.n_thresholds,
                               base=cfg.base, shared=cfg.max_return is not None, check_seeds=True)
    groups, keys, gdf = cb.groups, cb.keys, cb.table
    thresholds, D, dropped = levels.drop_unreached(res, groups, keys, cb.thresholds, cb.D)
    res.objects.update(groups=groups, thresholds=thresholds, keys=keys)
    if cfg.thresholds and cb.levels is not None:
        for env, r in cb.levels.iterrows():
            J = np.asarray(thresholds.get(env, next(iter(thresholds.values()))), float)
            for j in J[J < r.base + cv.NOISE_MARGIN * r.noise]:
                res.flags.append({"quantity": "threshold", "group": env, "param": f"J={j:.4g}",
                                  "problem": f"within {cv.NOISE_MARGIN:g} noise levels ({r.noise:.3g}) of the starting "
                                             f"level {r.base:.4g}: crossings there are set by the seed noise"})
    res.tables["crossings_runs"] = cv.crossings_table(groups, keys, thresholds, D)
    timer.lap("bootstrap_crossings")
    nj = D.shape[2]
    level = levels.default_level(res, gdf, D, thresholds) if cfg.select_level is None else cfg.select_level
    if level >= nj:
        them = "it" if len(dropped) == 1 else "them"
        gone = f"; {', '.join(dropped)} dropped (no run reaches {them})" if dropped else ""
        raise UserError(f"--select-level {level}: {levels.levels_text(thresholds)}{gone}")
    best, per_resample = best_hparams(gdf, D, level)
    res.tables["best_hparams"] = best
    fitted = _fit_hparams(res, best, per_resample)
    _given_hparams(res, sorted(gdf["env"].unique()), "model_size" in gdf.columns)
    timer.lap("best_hparams_fits")
    cells, Dc = _cell_crossings(res, gdf, D, thresholds, best)
    res.tables["crossings"] = cells
    paint = painter.submit if painter is not None else lambda *a: None
    paint(res, ["batch_size_fit", "learning_rate_fit"] + ([] if len(held) else ["isotonic_curves"]), level)
    with single_thread_blas():
        fit_data_stage(res, cells, Dc)
    timer.lap("data_efficiency_fit")
    if len(held):
        _predict_held_out(res, held)
    paint(res, ["data_efficiency", "data_sigma_n"] + (["isotonic_curves"] if len(held) else []), level)
    with single_thread_blas():
        _budgets(res, df, cells)
    timer.lap("budget")
    paint(res, ["pareto", "sigma_star"], level)
    # last: nothing downstream reads the checks of the B*, eta* laws, and here they overlap with
    # the drawing of the last figures (computed before the data stage, they delayed it: ~0.2 s)
    for name, extra in (_law_checks(gdf, D, next(iter(thresholds.values())), best, fitted) if fitted else {}).items():
        res.fits[f"fit_{name}"].update(extra)
    timer.lap("hparam_checks")
    res.flags += report_flags(res.fits)  # the quantities the report prints beyond the stages' own
    res.tables["flags"] = flags_table(res.flags)
    res.summary = {"config": _config_summary(cfg), "select_level": level, "notes": res.notes,
                   "thresholds": {e: list(map(float, t)) for e, t in thresholds.items()}}
    return res


def _config_summary(cfg: PipelineConfig) -> dict:
    """The configuration as JSON-ready data: given hparam laws by their ``to_dict`` (a law's shape
    functions are code, not data)."""
    given = cfg.hparam_fits
    out = asdict(replace(cfg, hparam_fits=None))
    out["hparam_fits"] = {name: fit.to_dict() for name, fit in given.items()} if given else None
    return out


def _fit_hparams(res: Results, best: pd.DataFrame, per_resample: dict) -> list:
    """B*(sigma), eta*(sigma) (fixed effects or per env, seed bootstrap, cells at the grid edge
    left out) and B*(sigma, N) when N varies. Returns the fitted B*, eta* laws, (hp, name,
    PowerFit), whose checks (``_law_checks``) go into fit_<name>.json."""
    given = res.config.hparam_fits or {}
    fitted = []
    for hp, name in (("batch_size", "batch_size"), ("lr", "learning_rate")):
        if name in given or hp not in best.columns or best[f"n_{hp}"].max() < 2:
            continue
        pf, notes, flags, excluded = fit_hparam_law(best, per_resample, hp, name,
                                                    shared=not res.config.per_env_slopes)
        res.notes += notes
        res.flags += flags
        if pf is None:
            continue
        res.objects[name] = pf
        res.fits[f"fit_{name}"] = {**pf.to_dict(), "excluded_at_edge": excluded}  # + the checks
        fitted.append((hp, name, pf))
    if "model_size" in best.columns and best["model_size"].nunique() >= 3 and "batch_size" in res.objects \
            and "batch_size_n" not in given:
        try:
            lf, boot = fit_batch_size_n(best, per_resample)
            res.flags += law_flags("B*(utd, N) law", lf)
            if depends_on_n(lf.flags):  # else B*(sigma) sets compute's batch size (the flag says why)
                res.objects["batch_size_n"] = lf
            d = lf.to_dict()
            d["paper_b"] = {g: batch_size_b(p) for g, p in lf.params.items()}
            d["bootstrap_log_params"] = {g: np.round(t, 6).tolist() for g, t in boot.items()}
            res.fits["fit_batch_size_n"] = d
        except UserError as exc:
            res.notes.append(f"B*(sigma, N) law skipped: {exc}")
    return fitted


def _law_checks(gdf: pd.DataFrame, D: np.ndarray, thresholds, best: pd.DataFrame, fitted: list) -> dict:
    """Per fitted B* / eta* law: its shared slope refitted at every threshold level and the
    offset form fitted and compared with it."""
    sens = slope_by_threshold(gdf, D, thresholds)
    return {name: {"slope_by_threshold": sens.get(hp, {}), "compare_forms": compare_forms(law_points(best, hp), hp, pf)}
            for hp, name, pf in fitted}


def _cell_crossings(res: Results, gdf: pd.DataFrame, D: np.ndarray, thresholds: dict, best):
    """Best-tuned crossings per cell by the configured procedure (see ``PipelineConfig.crossings``)."""
    mode = res.config.crossings
    if mode not in ("at_best", "min"):
        raise UserError(f"crossings procedure must be at_best or min, got {mode!r}")
    if mode == "min" or not {"batch_size", "lr"} & set(gdf.columns):
        return cell_crossings(gdf, D, thresholds)
    objs = res.objects
    cols = [c for c in ("env", "utd", "model_size") if c in gdf.columns]
    own = {} if best is None else {tuple(r[c] for c in cols): r for _, r in best.iterrows()}

    def targets(cell):
        env, utd = cell["env"], cell["utd"]
        key = tuple(cell[c] for c in cols)
        out = {}
        if "batch_size_n" in objs and env in objs["batch_size_n"].params:
            out["batch_size"] = float(objs["batch_size_n"].predict(env, utd=utd, model_size=cell["model_size"]))
        elif "batch_size" in objs and env in objs["batch_size"].coef:
            out["batch_size"] = float(objs["batch_size"].predict(env, utd))
        if "learning_rate" in objs and env in objs["learning_rate"].coef:
            out["lr"] = float(objs["learning_rate"].predict(env, utd))
        for hp in ("batch_size", "lr"):
            if hp not in out and hp in gdf.columns:
                if key not in own or not np.isfinite(own[key].get(hp, np.nan)):
                    return None  # no law and no best value of its own: the minimum over the grid
                out[hp] = float(own[key][hp])
        return out

    if not any(n.startswith("D_J per cell") for n in res.notes):
        res.notes.append("D_J per cell at the fitted B*(utd), eta*(utd) (the cell's bootstrap-averaged best value "
                         "where no law is fitted): log D interpolated across the swept grid in (log B, log lr), "
                         "quadratic through the 3 nearest swept values per axis, clamped to the grid (the run "
                         "nearest the target where one of those never reached the threshold); cells without a full grid take the minimum over their runs (`procedure` in crossings.csv). "
                         "The minimum over the grid: --crossings min")
    return cell_crossings_at(gdf, D, thresholds, targets)


def _predict_held_out(res: Results, held: pd.DataFrame) -> None:
    """Crossings of the held-out rows at the fitted thresholds, picked the same way as the
    fitted cells, and the fitted laws' predictions of them (with bootstrap intervals)."""
    cfg, fit = res.config, res.objects["data"]
    cb = cv.crossing_bootstrap(held, res.objects["thresholds"], cfg.resamples, cfg.seed)
    cells_h, _ = _cell_crossings(res, cb.table, cb.D, cb.thresholds, None)
    pred_h = with_intervals(res, predictions(fit, add_levels(cells_h)))
    res.tables["crossings"] = pd.concat([res.tables["crossings"].assign(held_out=False),
                                         cells_h.assign(held_out=True)], ignore_index=True)
    res.tables["predictions"] = pd.concat([res.tables["predictions"].assign(held_out=False),
                                           pred_h.assign(held_out=True)], ignore_index=True)
    fit.holdout = holdout_errors(res.tables["predictions"], cfg.holdout)
    res.fits["fit"] = fit.to_dict()


def _given_hparams(res: Results, envs: list, has_model_size: bool) -> None:
    """B*(sigma), eta*(sigma) (PowerFit) and B*(sigma, N) (LawFit, ``batch_size_n``) of
    ``PipelineConfig.hparam_fits`` as if fitted here."""
    for name, fit in (res.config.hparam_fits or {}).items():
        if name not in ("batch_size", "learning_rate", "batch_size_n"):
            raise UserError(f"hparam_fits: unknown law {name!r}; known: batch_size, learning_rate, batch_size_n")
        if name == "batch_size_n" and not has_model_size:
            raise UserError("hparam_fits: the batch_size_n law B*(utd, N) needs a model_size column in the curves")
        groups = fit.params if name == "batch_size_n" else fit.coef
        missing = [e for e in envs if e not in groups]
        if missing:
            if len(groups) != 1:
                raise UserError(f"hparam_fits: the {name} law has no fit for env {missing[0]}")
            fit = fit.for_groups(envs)
        res.objects[name] = fit
        d = fit.to_dict()
        if name == "batch_size_n":
            d["paper_b"] = {g: batch_size_b(p) for g, p in fit.params.items()}
        res.fits[f"fit_{name}"] = {**d, "source": res.config.hparam_fits_source}


def _batch_fn(res: Results, df: pd.DataFrame, env: str):
    """B(sigma, N) for compute: the fitted law, else the observed batch size, else 1."""
    if "batch_size_n" in res.objects and env in res.objects["batch_size_n"].params:
        lf = res.objects["batch_size_n"]
        return lambda s, n: lf.predict(env, utd=s, model_size=n)
    if "batch_size" in res.objects:
        pf = res.objects["batch_size"]
        return lambda s, n: pf.predict(env, s)
    b = float(df.loc[df["env"] == env, "batch_size"].median()) if "batch_size" in df else 1.0
    return lambda s, n: np.full(np.broadcast(s, n).shape, b)


def _budgets(res: Results, df: pd.DataFrame, cells: pd.DataFrame) -> None:
    """Budget models per (env, level): Pareto frontiers, Problem 3.2, precision, power laws."""
    cfg, fit = res.config, res.objects["data"]
    k = bud.measured_k(df)
    if k is not None:
        res.notes.append(f"k measured from flops / critic_updates: {k:.4g} FLOPs per parameter per sample")
    k = k if k is not None else cfg.k
    if "model_size" not in df.columns:
        res.notes.append("no model_size column: compute is per critic parameter (N = 1); pass --model-size")
    n_vary = fit.law.name == "data_sigma_n"
    models = {}
    for lv, lf in fit.fits.items():
        for env in fit.thresholds[lv]:
            sub = cells[cells["env"] == env]
            N = float(sub["model_size"].median()) if "model_size" in sub else 1.0
            models[(env, lv)] = bud.BudgetModel(
                env, lv, fit.thresholds[lv][env], _data_fn(fit, env, lv), _batch_fn(res, df, env), k, 0.0,
                (sub["utd"].min(), sub["utd"].max()), N,
                (sub["model_size"].min(), sub["model_size"].max()) if n_vary else None)
    delta = cfg.delta
    if delta is None:
        ok = cells[np.isfinite(cells["data"])]
        ratios = [models[(r.env, r.level)].compute(r.utd, getattr(r, "model_size", None)) / r.data
                  for r in ok.itertuples() if (r.env, r.level) in models]
        delta = float(np.median(ratios))
        res.notes.append(f"delta not given: using {delta:.4g} FLOPs per env step (median C/D of the "
                         "sweep, weighing data and compute equally); pass --delta")
    rows, fronts, samples = [], [], {}
    for key, m in models.items():
        m.delta = delta
        opt = m.solve_budget()
        opt.update(m.precision(opt))
        opt.update(_budget_bootstrap(res, m, key, samples))
        opt["refused"] = _refused(fit, m, [opt["utd"]], opt["model_size"])[0]
        rows.append(opt)
        front = m.frontier(model_size=opt["model_size"])  # the frontier through the optimum
        fronts.append(front.assign(refused=_refused(fit, m, front["utd"].to_numpy(), opt["model_size"])))
    res.objects["budget_models"] = models
    res.tables["budget"] = pd.DataFrame(rows)
    res.tables["pareto"] = pd.concat(fronts, ignore_index=True)
    # an optimum where the levels' laws cross is no optimum: the budget laws leave it out
    laws = bud.budget_power_laws(res.tables["budget"][res.tables["budget"]["refused"] == ""], samples=samples)
    fitted = {"utd_range": [float(cells["utd"].min()), float(cells["utd"].max())],
              "budget_range": [float(res.tables["budget"]["budget"].min()), float(res.tables["budget"]["budget"].max())]}
    if n_vary:
        fitted["model_size_range"] = [float(cells["model_size"].min()), float(cells["model_size"].max())]
    unit = "FLOPs" if "model_size" in df.columns else "FLOPs per critic parameter"  # N = 1 without the column
    res.fits["fit_budget"] = {"k": k, "delta": delta, "compute_unit": unit, "laws": laws, **fitted}
    for r in res.tables["budget"].itertuples():
        if r.refused:
            res.flags.append({"quantity": "budget optimum", "group": r.env, "param": f"level {r.level}",
                              "problem": f"refused at utd {r.utd:.3g}: {r.refused}; left out of the budget laws"})
        if r.extrapolated:
            res.flags.append({"quantity": "budget optimum", "group": r.env, "param": f"level {r.level}",
                              "problem": f"optimum utd {r.utd:.3g}" + (f", N {r.model_size:.3g}" if n_vary else "")
                              + " lies outside the fitted range: extrapolated"})
    for y, law in laws.items():
        if law["n_held_out"] == 0:
            res.flags.append({"quantity": f"{y}*(F) law", "group": "", "param": "exponent",
                              "problem": f"fitted from {law['n_fit']} point(s) with nothing held out: "
                                         "its extrapolation is untested"})


def _refused(fit, m: bud.BudgetModel, utd, model_size) -> list:
    """Per utd, why D_J of ``m``'s env and level is refused there ('' where it is not)."""
    kw = {"model_size": np.full(len(utd), model_size, float)} if fit.law.name == "data_sigma_n" else {}
    return refused_points(fit, m.env, m.level, utd=np.asarray(utd, float), **kw)


def _data_fn(fit, env, lv):
    """D_J(sigma, N) of one env and level as a function of (sigma, N)."""
    if fit.law.name == "data_sigma_n":
        return lambda s, n: fit.predict(env, lv, utd=s, model_size=n)
    return lambda s, n: fit.predict(env, lv, utd=s) * np.ones(np.shape(n))


def _budget_bootstrap(res: Results, m: bud.BudgetModel, key, store: dict) -> dict:
    """Bootstrap SEs and 90% percentile intervals of the budget-optimal utd (N), D*, C*, F*
    from the refitted D_J laws; the optima of every resample go into ``store[key]``."""
    theta = boot_log_params(res, *key)
    if theta is None:
        return {}
    law = res.objects["data"].law
    fin = np.isfinite(theta).all(1)  # resamples whose refit exists (the rest stay NaN in ``store``)
    theta = theta[fin]
    if len(theta) < 2:
        return {}
    s = m.sigma_grid(401)
    N = m.n_grid(81)
    S, NN = (a.ravel() for a in np.meshgrid(s, N, indexing="ij"))
    logx = {"utd": np.log(S), "model_size": np.log(NN)}
    dat = np.exp(law.log_predict(logx, [theta[:, j:j + 1] for j in range(theta.shape[1])]))
    comp = m.k * NN * m.batch(S, NN) * S * dat
    F = comp + m.delta * dat
    i = np.argmin(F, axis=1)
    r = np.arange(len(F))
    samples = {"utd": S[i], "data": dat[r, i], "compute": comp[r, i], "budget": F[r, i]}
    if m.n_range is not None:
        samples["model_size"] = NN[i]
    store[key] = {name: np.where(fin, 0.0, np.nan) for name in samples}  # aligned by resample across keys
    out = {}
    for name, v in samples.items():
        store[key][name][fin] = v
        lo, hi = percentile_interval(v)
        out.update({f"{name}_se": float(v.std(ddof=1)), f"{name}_lo": float(lo), f"{name}_hi": float(hi)})
    return out
