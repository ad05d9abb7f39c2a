"""Planted-law check of the refinement rule (``pql_jax.scaling.refine``, issue 32 section 3).

D_J(utd) = d_min (1 + (b / utd)^a) with per-seed log-normal noise, on the quickstart's UTD sweep
(1/32 .. 1, 3 seeds, 16k env steps a run). An extra budget of 12 runs' env steps is spent
(i) by the rule, in two rounds, each round's runs simulated and the law refitted before the next,
(ii) uniformly: 2 more seeds at every cell. Both arms are refitted with the module's own fitter
(``fit_law(DATA_SIGMA, ...)`` on the per-seed log D, every seed a point) and the flagged
parameter b's 90% interval is measured as its width in log units from the fit's Hessian SE
(2 x 1.645 x SE(b) / b), infinite when the fit leaves b at its search bound (undetermined).
Cases: the knee inside the grid (b flagged by the noise) and beyond its high end (b at bound).
New UTDs may lie up to 3 grid steps beyond the sweep (1/256 .. 8). The error columns are the
median |log b_fit - log b_true|; the budget is in env steps, so the critic updates of the rule's
higher-UTD runs are shown beside it.

    python benchmarks/refine_rule.py [--draws 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from pql_jax.scaling.fit import fit_law, single_thread_blas
from pql_jax.scaling.laws import DATA_SIGMA
from pql_jax.scaling.refine import Cell, RefineProblem, law_model, refine_round

CASES = {
    "knee inside the grid": {"d_min": 1000.0, "b": 0.1, "a": 0.8, "sd": 0.25},
    "knee beyond the grid": {"d_min": 1000.0, "b": 3.0, "a": 0.8, "sd": 0.2},
}
GRID_UTDS = 2.0 ** np.arange(-5, 1)  # the quickstart's UTD sweep, 1/32 .. 1
SEEDS, RUN_ENV_STEPS, EXTRA_RUNS, ROUNDS = 3, 16_000, 12, 2
UTD_LIMITS = (GRID_UTDS[0] / 8, GRID_UTDS[-1] * 8)  # new UTDs at most 3 grid steps beyond the sweep
Z90 = 1.6448536269514722


def simulate(rng, case: dict, utd: float, seeds: int) -> np.ndarray:
    """Per-seed log D_J at one UTD: the planted law times log-normal seed noise."""
    return np.log(case["d_min"] * (1 + (case["b"] / utd) ** case["a"])) + rng.normal(0, case["sd"], seeds)


def fit(samples: dict, case: dict) -> tuple[dict, float, float]:
    """(parameters, 90% interval width of log b, |log b - log b_true|) of fit_law on the seeds."""
    utd = np.concatenate([np.full(len(v), u) for u, v in samples.items()])
    logd = np.concatenate(list(samples.values()))
    f = fit_law(DATA_SIGMA, pd.DataFrame({"env": "all", "utd": utd, "data": np.exp(logd)}))
    p, se = f.params["all"], f.se["all"]["b"]
    at_bound = any(fl.get("param") == "b" for fl in f.flags)
    width = 2 * Z90 * se / p["b"] if np.isfinite(se) and not at_bound else np.inf
    return p, width, abs(np.log(p["b"] / case["b"]))


def cells(samples: dict) -> tuple:
    """The fit's cells: seeds, seed-mean log D, between-seed variance."""
    return tuple(Cell(u, len(v), float(np.mean(v)), float(np.var(v, ddof=1))) for u, v in sorted(samples.items()))


def rule_arm(rng, case: dict, samples: dict, params: dict) -> dict:
    """The rule's rounds; returns the final interval width, error, env steps spent, runs by kind."""
    samples, remaining, budget = dict(samples), EXTRA_RUNS * RUN_ENV_STEPS, EXTRA_RUNS * RUN_ENV_STEPS
    width = err = None
    kinds, updates = {}, 0.0
    for r in range(ROUNDS):
        cs = cells(samples)
        problem = RefineProblem(law_model(DATA_SIGMA, params, cs), cs, RUN_ENV_STEPS, utd_limits=UTD_LIMITS)
        plan = refine_round(problem, ["b"], remaining, round_env_steps=remaining / (ROUNDS - r), margin=0.0)
        if not plan.runs:
            break
        for run in plan.runs:
            samples[run.utd] = np.r_[samples.get(run.utd, []), simulate(rng, case, run.utd, run.seeds)]
            kinds[run.kind] = kinds.get(run.kind, 0) + run.runs
        remaining -= plan.env_steps
        updates += plan.critic_updates
        params, width, err = fit(samples, case)
    if width is None:
        _, width, err = fit(samples, case)
    return {"width": width, "err": err, "spent": budget - remaining, "updates": updates, "kinds": kinds}


def uniform_arm(rng, case: dict, samples: dict) -> dict:
    """The same extra runs as more seeds at every cell."""
    extra = EXTRA_RUNS // len(samples)
    grown = {u: np.r_[v, simulate(rng, case, u, extra)] for u, v in samples.items()}
    _, width, err = fit(grown, case)
    return {"width": width, "err": err, "spent": extra * len(samples) * RUN_ENV_STEPS,
            "updates": extra * RUN_ENV_STEPS * float(sum(samples))}


def _draw(case: dict, seed: int, d: int, rule: list, unif: list, start: list) -> None:
    """One draw: the starting grid, its fit, then both arms (independent seeds for each)."""
    rng = np.random.default_rng([seed, d])
    samples = {u: simulate(rng, case, u, SEEDS) for u in GRID_UTDS}
    params, width0, _ = fit(samples, case)
    start.append(width0)
    rule.append(rule_arm(np.random.default_rng([seed, d, 1]), case, samples, params))
    unif.append(uniform_arm(np.random.default_rng([seed, d, 2]), case, samples))


def compare(case: dict, draws: int, seed: int = 0) -> dict:
    """Median interval width of log b (and median error) of both arms over ``draws`` draws."""
    rule, unif, start = [], [], []
    with single_thread_blas():  # L-BFGS-B's many tiny BLAS calls are slow with OpenBLAS threads
        for d in range(draws):
            _draw(case, seed, d, rule, unif, start)
    med = lambda rows, k: float(np.median([r[k] for r in rows]))  # noqa: E731
    kinds = {}
    for r in rule:
        for k, v in r["kinds"].items():
            kinds[k] = kinds.get(k, 0) + v / draws
    return {"start": float(np.median(start)), "rule": med(rule, "width"), "uniform": med(unif, "width"),
            "rule_err": med(rule, "err"), "uniform_err": med(unif, "err"),
            "rule_spent": float(np.mean([r["spent"] for r in rule])), "uniform_spent": unif[0]["spent"],
            "rule_updates": float(np.mean([r["updates"] for r in rule])), "uniform_updates": unif[0]["updates"],
            "rule_runs": kinds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    print("| case | start median interval | rule median interval | uniform median interval | ratio | "
          "rule median error | uniform median error | rule env steps (mean) | uniform env steps | "
          "rule critic updates (mean) | uniform critic updates | rule's runs per draw |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, case in CASES.items():
        r = compare(case, args.draws, args.seed)
        runs = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["rule_runs"].items()))
        print(f"| {name} | {r['start']:.3g} | {r['rule']:.3g} | {r['uniform']:.3g} | {r['rule'] / r['uniform']:.3g} | "
              f"{r['rule_err']:.3g} | {r['uniform_err']:.3g} | {r['rule_spent']:.3g} | {r['uniform_spent']:.3g} | "
              f"{r['rule_updates']:.3g} | {r['uniform_updates']:.3g} | {runs} |")
    print(f"({args.draws} draws per case, intervals: 90% width of log b; {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
