"""The scaling workflow: one command from an empty run directory to fitted laws, a proposal, its
verification and a report (seed 001, section 4.3, extended with model size).

Stages, in order; each reads only files of earlier stages from the run directory and writes its
files under ``OUT/<stage>/``, then ``OUT/<stage>/done.json`` once they are complete:

1. ``hparam_sweep``: batch size x learning rate x UTD grid, several seeds (``sweep.yaml``,
   ``results.csv``, ``run/`` with the sweep's run directory).
2. ``fit_hparams``: best B and eta per UTD (seed bootstrap), B*(sigma) and eta*(sigma) power laws
   (``best_hparams.csv``, ``fit_batch_size.json``, ``fit_learning_rate.json``, ``settings.csv``:
   the B*, eta* of every UTD of the UTD sweep, batch sizes rounded to a multiple of 16).
3. ``utd_sweep``: the UTD list (spanning >= 16x) at the fitted settings, times the critic widths
   (model-size axis) when given (``sweep.yaml``, ``results.csv``).
4. ``fit_laws``: ``pql-jax fit all`` on the UTD sweep with the B*(sigma), eta*(sigma) of step 2
   (crossings, D_J fits, budgets, sigma*(F)), plus ``proposal.csv`` (held-out UTD and/or larger
   budget) and ``verify_plan.csv`` (the settings to verify with their predicted data-to-threshold).
5. ``verify``: runs ``verify_plan.csv``; ``verification.csv`` has predicted vs measured D_J.
6. ``report``: ``OUT/report.md`` and ``OUT/report/figures/``.

Modules, read top-down: ``spec`` (the workflow file, the run directory, stage markers),
``sweeps`` (steps 1 and 3, through ``pql_jax.run.launch.train_sweep_file``), ``fits`` (steps 2
and 4, through ``pql_jax.scaling``'s public API), ``verify`` (5), ``report`` (6), and ``runner``
(``run_workflow``: the stages in order, resume, ``--from``).
"""

from pql_jax.workflow.runner import STAGE_FUNCTIONS, run_workflow
from pql_jax.workflow.spec import STAGES, Workflow, is_done, load_workflow, read_marker

__all__ = ["run_workflow", "load_workflow", "Workflow", "STAGES", "STAGE_FUNCTIONS", "is_done", "read_marker"]
