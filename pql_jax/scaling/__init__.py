"""Scaling laws for value-based RL: learning curves -> crossings -> fitted laws -> budgets -> proposals.

Python API (mirrors the `pql-jax fit ...` / `pql-jax propose` commands):

- ``fit_all(curves, PipelineConfig(...)) -> Results`` and ``fit_all_file(curves, out, config)``
- ``fit_data_efficiency(crossings_df, shared=False, normalise=None, holdout=None)`` and
  ``fit_data_efficiency_file(path, out, ...)``
- ``fit_fixed_effects(df, y, x="utd", group="env", shared=True)``, ``fit_hparam_file(...)``
- ``fit_law(law, df, y="data", group="env", shared=())`` with laws ``DATA_SIGMA``,
  ``DATA_SIGMA_N``, ``BATCH_SIGMA_N``
- ``load_curves``, ``load_crossings``, ``crossing_bootstrap`` (curves -> run groups -> thresholds
  -> bootstrapped crossings), ``run_groups``, ``bootstrap_crossings``, ``first_crossings``,
  ``best_hparams``, ``cell_crossings``
- ``PowerFit.to_dict`` / ``PowerFit.from_dict`` (fit*.json of B*, eta*), and
  ``PipelineConfig(hparam_fits=...)`` to use B*(sigma), eta*(sigma) fitted on another sweep
- ``fit_hparam_law`` (B*, eta* with the seed bootstrap, grid-edge cells left out), ``slope_by_threshold``
- ``compare_forms`` (power law vs the offset form of eqs. D.2 / D.3: AICc, leave-one-out), ``law_points``
- ``boot_predict`` (bootstrap refits' D_J predictions), ``percentile_interval`` (90%: ``COVERAGE``)
- ``flags_table``, ``flag_lines``: what the data do not determine (see ``diagnostics``)
- ``markdown_table``, ``fmt`` (report text), ``write_json`` (NaN as null)
- ``BudgetModel`` (Pareto frontier, Problems 3.1 / 3.2, precision), ``propose(dir, utds=..., budget=...)``
"""

from pql_jax.scaling.api import fit_all_file, fit_data_efficiency_file, fit_hparam_file, write_results
from pql_jax.scaling.budget import BudgetModel, budget_power_laws, delta_from_throughput, measured_k
from pql_jax.scaling.curves import (CrossingBootstrap, RunGroup, auto_thresholds, bootstrap_crossings,
                                    crossing_bootstrap, crossings_table, first_crossings, isotonic_rows,
                                    run_groups)
from pql_jax.scaling.datafit import DataEfficiencyFit, bootstrap_refit, fit_data_efficiency
from pql_jax.scaling.fit import LawFit, PowerFit, fit_fixed_effects, fit_law, holdout_split
from pql_jax.scaling.datastage import boot_predict
from pql_jax.scaling.diagnostics import (flag_lines, flagged_params, flags_table, law_flags, merge_flags, report_flags,
                                         unflagged_notes)
from pql_jax.scaling.forms import compare_forms
from pql_jax.scaling.hparams import (best_hparams, cell_crossings, cell_crossings_at, depends_on_n, fit_batch_size_n,
                                     fit_hparam_law, law_points, n_dependence_flags, slope_by_threshold)
from pql_jax.scaling.io import load_crossings, load_curves, normalise_returns, write_json
from pql_jax.values import read_number
from pql_jax.scaling.laws import (BATCH_SIGMA_N, DATA_SIGMA, DATA_SIGMA_N, LAWS, Law, batch_size_b, compute,
                                  power_law)
from pql_jax.scaling.pipeline import PipelineConfig, Results, fit_all
from pql_jax.scaling.powerlaw import COVERAGE, percentile_interval
from pql_jax.scaling.refine import (Cell, PlannedRuns, RefineProblem, RoundPlan, Undetermined, candidates, law_model,
                                    param_covariance, power_model, refine_round)
from pql_jax.scaling.propose import fill_nearest, nearest_setting, propose, round_batch, round_sig, write_proposals
from pql_jax.scaling.report import fmt, markdown_table

__all__ = [
    "fill_nearest", "nearest_setting", "flagged_params", "merge_flags", "report_flags", "unflagged_notes",
    "fit_all", "fit_all_file", "PipelineConfig", "Results", "write_results",
    "fit_data_efficiency", "fit_data_efficiency_file", "DataEfficiencyFit", "bootstrap_refit",
    "fit_fixed_effects", "fit_hparam_file", "fit_law", "holdout_split", "LawFit", "PowerFit",
    "Law", "LAWS", "DATA_SIGMA", "DATA_SIGMA_N", "BATCH_SIGMA_N", "compute", "power_law",
    "load_curves", "load_crossings", "normalise_returns", "read_number", "write_json",
    "RunGroup", "run_groups", "auto_thresholds", "crossing_bootstrap", "CrossingBootstrap",
    "bootstrap_crossings", "crossings_table",
    "first_crossings", "isotonic_rows", "best_hparams", "cell_crossings",
    "BudgetModel", "budget_power_laws", "delta_from_throughput", "measured_k",
    "propose", "round_batch", "round_sig", "write_proposals", "markdown_table", "fmt",
    "fit_hparam_law", "slope_by_threshold", "flags_table", "flag_lines", "boot_predict", "percentile_interval",
    "COVERAGE", "law_flags", "batch_size_b", "compare_forms", "law_points", "cell_crossings_at",
    "fit_batch_size_n", "depends_on_n", "n_dependence_flags",
    "Cell", "RefineProblem", "RoundPlan", "PlannedRuns", "Undetermined", "law_model", "power_model", "refine_round",
    "candidates", "param_covariance",
]
