"""The scaling workflow: one command from an empty run directory to fitted laws, a proposal, its
verification and a report (seed 001, section 4.3, extended with model size).

Stages, in order; each reads only files of earlier stages from the run directory and writes its
files under ``OUT/<stage>/``, then ``OUT/<stage>/done.json`` once they are complete:

1. ``hparam_sweep``: batch size x learning rate x UTD grid, several seeds (``sweep.yaml``,
   ``results.csv``, ``tb/``, ``checkpoints/``).
2. ``fit_hparams``: best B and eta per UTD (seed bootstrap), B*(sigma) and eta*(sigma) power laws
   (``best_hparams.csv``, ``fit_batch_size.json``, ``fit_learning_rate.json``, ``settings.csv``:
   the B*, eta* of every UTD of the UTD sweep, batch sizes rounded to a multiple of 16).
3. ``utd_sweep``: the UTD list (spanning >= 16x) at the fitted settings, times the critic widths
   (model-size axis) when given (``sweep.yaml``, ``results.csv``).
4. ``fit_laws``: ``pql-jax fit all`` on the UTD sweep (crossings, D_J fits, budgets, sigma*(F)),
   plus ``proposal.csv`` (held-out UTD and/or larger budget) and ``verify_plan.csv`` (the settings
   to verify with their predicted data-to-threshold).
5. ``verify``: runs ``verify_plan.csv``; ``verification.csv`` has predicted vs measured D_J.
6. ``report``: ``OUT/report.md`` and ``OUT/report/figures/``.

This module holds the workflow file, the run directory and the sweep stages; the fitting stages
and ``verify`` live in ``pql_jax.workflow.fits``, the report in ``pql_jax.workflow.report``.

Workflow YAML (paths relative to the workflow file)::

    name: quickstart                   # optional; defaults to the file name
    base: ../pointmass.yaml            # a config file (configs/<task>.yaml)
    overrides: {env.num_envs: 32}      # optional overrides of the base, for every stage
    seeds: 3                           # count (base seed, +1, ...) or list, for every sweep
    max_return: 50                     # returns are normalised to 0..1000 by this maximum
    thresholds: [400, 600, 800]        # normalised return thresholds J (optional: auto-spaced)
    n_thresholds: 5                    # when thresholds are not given
    select_level: null                 # threshold index used to pick best B / eta (default: auto)
    resamples: 100                     # seed bootstrap resamples
    hparam_sweep:                      # step 1 (every key required)
      utd: [1/64, 1/16, 1/4]
      batch_size: [64, 128, 256]
      lr: [1e-4, 3e-4, 1e-3]           # critic and actor learning rate
    utd_sweep:
      utd: [1/128, 1/64, 1/32, 1/16, 1/8]   # must span >= 16x (max / min)
      critic_width: [64, 128, 256]     # optional model-size axis (critic widths)
      batch_size_range: [16, 4096]     # optional clip of the fitted B*
      overrides: {}                    # optional, this stage only
    fit:                               # optional options of `fit all`
      holdout: null                    # e.g. "utd>=1/8": held-out points of the D_J fit
      delta: null                      # FLOPs per env step (default: median C/D of the sweep)
      k: 10
    verify:                            # at least one of utd / budget
      utd: 1/2                         # held-out UTD to run at its proposed B*, eta*
      budget: null                     # or a larger budget F (FLOPs, or `4x`: 4 x the largest fitted
                                       # budget optimum); runs the proposed sigma*(F)
      seeds: 3                         # optional (default: as many fresh seeds 1000, 1001, ... as the sweeps)
    batching: auto                     # auto | map | vmap (see `pql-jax sweep`)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from pql_jax import config as cfg_mod
from pql_jax.errors import UserError

STAGES = ("hparam_sweep", "fit_hparams", "utd_sweep", "fit_laws", "verify", "report")
KEYS = ("name", "base", "overrides", "seeds", "max_return", "thresholds", "n_thresholds", "select_level",
        "resamples", "hparam_sweep", "utd_sweep", "fit", "verify", "batching")
REQUIRED = ("base", "max_return", "hparam_sweep", "utd_sweep", "verify")
HPARAM_KEYS = ("utd", "batch_size", "lr")
UTD_KEYS = ("utd", "critic_width", "batch_size_range", "overrides")
FIT_KEYS = ("holdout", "delta", "k")
VERIFY_KEYS = ("utd", "budget", "seeds")
MARKER = "done.json"


def parse_utd(value: Any) -> float:
    """`1/64`, `0.25`, 2 -> float (UserError otherwise)."""
    try:
        v = float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"workflow: not a UTD: {value!r}") from None
    if not v > 0:
        raise UserError(f"workflow: UTD must be positive, got {value!r}")
    return v


def utd_text(value: float) -> str:
    """A UTD as the config reads it: exact fractions stay fractions (1/512, 3/64)."""
    frac = Fraction(value).limit_denominator(1 << 20)
    if abs(float(frac) - value) <= 1e-12 * value:
        return f"{frac.numerator}/{frac.denominator}" if frac.denominator != 1 else str(frac.numerator)
    return repr(float(value))


@dataclass
class Workflow:
    """A parsed, validated workflow file (see the module docstring for the format)."""

    path: Path
    spec: dict
    base_path: Path
    name: str
    hparam: dict = field(default_factory=dict)
    utd: dict = field(default_factory=dict)
    verify: dict = field(default_factory=dict)

    @property
    def record(self) -> dict:
        """What identifies the workflow: its spec with the base path made absolute."""
        return {**self.spec, "base": str(self.base_path)}

    @property
    def identity(self) -> dict:
        """The spec with the base config's contents in place of its path (location-independent)."""
        return {**self.spec, "base": cfg_mod.read_yaml(self.base_path, "base config")}


def _mapping(spec: dict, key: str, allowed: tuple, required: tuple = ()) -> dict:
    part = spec.get(key) or {}
    if not isinstance(part, dict):
        raise UserError(f"workflow: {key} must be a mapping with keys {', '.join(allowed)}")
    unknown = sorted(set(part) - set(allowed))
    if unknown:
        raise UserError(f"workflow: unknown key {key}.{unknown[0]}; known: {', '.join(allowed)}")
    for k in required:
        if k not in part or part[k] in (None, []):
            raise UserError(f"workflow: missing key {key}.{k}")
    return part


def _list(part: dict, key: str, where: str) -> list:
    v = part[key]
    if not isinstance(v, list) or not v:
        raise UserError(f"workflow: {where}.{key} must be a non-empty list")
    return v


def load_workflow(path: str | Path) -> Workflow:
    """Read and validate a workflow file (UserError on bad input, before anything is written)."""
    path = Path(path)
    spec = cfg_mod.read_yaml(path, "workflow file")
    if not isinstance(spec, dict):
        raise UserError(f"workflow file {path} must be a mapping with keys {', '.join(KEYS)}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise UserError(f"workflow: unknown key {unknown[0]!r}; known: {', '.join(KEYS)}")
    for k in REQUIRED:
        if spec.get(k) is None:
            raise UserError(f"workflow: missing key {k!r}")
    base = Path(spec["base"])
    base_path = base if base.is_absolute() else (path.parent / base)
    if not base_path.is_file():
        raise UserError(f"workflow: base config not found: {spec['base']} (relative to {path.parent})")
    hp = _mapping(spec, "hparam_sweep", HPARAM_KEYS, HPARAM_KEYS)
    ut = _mapping(spec, "utd_sweep", UTD_KEYS, ("utd",))
    _mapping(spec, "fit", FIT_KEYS)
    ver = _mapping(spec, "verify", VERIFY_KEYS)
    if ver.get("utd") is None and ver.get("budget") is None:
        raise UserError("workflow: missing key verify.utd (or verify.budget)")
    hparam = {"utd": [parse_utd(u) for u in _list(hp, "utd", "hparam_sweep")],
              "batch_size": [int(b) for b in _list(hp, "batch_size", "hparam_sweep")],
              "lr": [float(x) for x in _list(hp, "lr", "hparam_sweep")]}
    utds = sorted(parse_utd(u) for u in _list(ut, "utd", "utd_sweep"))
    if len(set(utds)) < 3:
        raise UserError("workflow: utd_sweep.utd needs at least 3 distinct UTDs")
    if utds[-1] / utds[0] < 16 - 1e-9:
        raise UserError(f"workflow: utd_sweep.utd must span >= 16x, got {utds[-1] / utds[0]:.3g}x")
    widths = [int(w) for w in _list(ut, "critic_width", "utd_sweep")] if ut.get("critic_width") else []
    clip = ut.get("batch_size_range")
    if clip is not None and (not isinstance(clip, list) or len(clip) != 2 or not 0 < clip[0] <= clip[1]):
        raise UserError("workflow: utd_sweep.batch_size_range must be [low, high] with 0 < low <= high")
    overrides = ut.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise UserError("workflow: utd_sweep.overrides must be a mapping")
    if not isinstance(spec.get("overrides") or {}, dict):
        raise UserError("workflow: overrides must be a mapping of section.key: value")
    verify = {"utd": parse_utd(ver["utd"]) if ver.get("utd") is not None else None,
              "budget": _budget(ver["budget"]) if ver.get("budget") is not None else None,
              "seeds": ver.get("seeds", _fresh_seeds(spec.get("seeds")))}
    if verify["utd"] is not None and utds[0] <= verify["utd"] <= utds[-1] and verify["utd"] in utds:
        raise UserError("workflow: verify.utd must be held out (not one of utd_sweep.utd)")
    if spec.get("batching", "auto") not in ("auto", "map", "vmap"):
        raise UserError("workflow: batching must be auto, map or vmap")
    wf = Workflow(path, spec, base_path.resolve(), str(spec.get("name") or path.stem), hparam,
                  {"utd": utds, "critic_width": widths, "clip": clip, "overrides": overrides}, verify)
    cfg_mod.load(wf.base_path, _overrides(wf.spec.get("overrides")))  # the base must be a valid config
    return wf


def _fresh_seeds(seeds: Any) -> list[int]:
    """Verification seeds the sweeps never used (1000, 1001, ...), as many as the sweeps have."""
    n = len(seeds) if isinstance(seeds, list) else int(seeds or 1)
    return [1000 + i for i in range(n)]


def _budget(value: Any):
    """A budget F in FLOPs (float), or `4x`: four times the largest fitted budget optimum."""
    text = str(value).strip()
    try:
        v = float(text[:-1]) if text.endswith("x") else float(text)
    except ValueError:
        v = float("nan")
    if not v > 0:
        raise UserError(f"workflow: verify.budget must be a positive number of FLOPs or a factor like 4x, got {value!r}")
    return text if text.endswith("x") else v


def _overrides(d: dict | None) -> list[str]:
    from pql_jax.run.sweep import resolve_key

    return [f"{resolve_key(k)}={v}" for k, v in (d or {}).items()]


# ----------------------------------------------------------------------------------------------
# The run directory


def prepare_out(wf: Workflow, out: Path) -> None:
    """Create OUT with its workflow.yaml, or check that OUT holds this same workflow."""
    saved = out / "workflow.yaml"
    if saved.is_file():
        try:
            old = yaml.safe_load(saved.read_text()) or {}
            old_identity = {**old, "base": cfg_mod.read_yaml(old["base"], "base config")}
        except (UserError, KeyError, TypeError, yaml.YAMLError):
            old_identity = None
        if old_identity != wf.identity:
            raise UserError(f"{out} holds a different workflow's results; choose another --out")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already holds files that are not a workflow run; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "workflow.yaml.tmp"
    tmp.write_text(yaml.safe_dump(wf.record, sort_keys=False))
    os.replace(tmp, saved)


def is_done(out: Path, stage: str) -> bool:
    return (out / stage / MARKER).is_file()


def mark_done(out: Path, stage: str, info: dict) -> None:
    path = out / stage / MARKER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stage": stage, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **info},
                              indent=2, default=float))
    os.replace(tmp, path)


def read_marker(out: Path, stage: str) -> dict:
    path = out / stage / MARKER
    return json.loads(path.read_text()) if path.is_file() else {}


def run_workflow(path: str | Path, out: str | Path, start: str | None = None, progress: bool = True,
                 log=print, fail_after: str | None = None) -> Path:
    """Run every unfinished stage (or every stage from ``start`` on); returns OUT/report.md.

    ``fail_after`` (tests) raises RuntimeError right after that stage is marked done.
    """
    if start is not None and start not in STAGES:
        raise UserError(f"unknown stage {start!r}; stages: {', '.join(STAGES)}")
    wf = load_workflow(path)
    out = Path(out)
    if start is not None and not (out / "workflow.yaml").is_file():
        raise UserError(f"--from {start}: {out} holds no workflow run")
    prepare_out(wf, out)
    if start is not None:
        first = STAGES.index(start)
        missing = [s for s in STAGES[:first] if not is_done(out, s)]
        if missing:
            raise UserError(f"--from {start}: earlier stage {missing[0]} is not finished")
        for stage in STAGES[first:]:
            if (out / stage).exists():
                shutil.rmtree(out / stage)
        if start != "report" and (out / "report.md").exists():
            (out / "report.md").unlink()
    from pql_jax.workflow import fits as workflow_fits, report as workflow_report

    funcs = {"hparam_sweep": stage_hparam_sweep, "fit_hparams": workflow_fits.stage_fit_hparams,
             "utd_sweep": stage_utd_sweep, "fit_laws": workflow_fits.stage_fit_laws,
             "verify": workflow_fits.stage_verify, "report": workflow_report.stage_report}
    for stage in STAGES:
        if is_done(out, stage):
            log(f"[{stage}] done already, skipped")
            continue
        log(f"[{stage}] running")
        t0 = time.perf_counter()
        (out / stage).mkdir(parents=True, exist_ok=True)
        info = funcs[stage](wf, out, progress=progress, log=log) or {}
        mark_done(out, stage, {"seconds": round(time.perf_counter() - t0, 2), **info})
        log(f"[{stage}] finished in {time.perf_counter() - t0:.1f} s")
        if fail_after == stage:
            raise RuntimeError(f"injected failure after stage {stage}")
    return out / "report.md"


# ----------------------------------------------------------------------------------------------
# Sweeps


def _write_sweep(wf: Workflow, path: Path, overrides: dict, grid: dict, zipped: dict, seeds) -> None:
    spec = {"name": f"{wf.name}_{path.parent.name}", "base": str(wf.base_path),
            "overrides": {**(wf.spec.get("overrides") or {}), **overrides},
            "seeds": seeds if seeds is not None else 1, "grid": grid}
    if zipped:
        spec["zip"] = zipped
    text = yaml.safe_dump(spec, sort_keys=False)
    if path.is_file() and path.read_text() != text:
        raise UserError(f"{path} holds a different sweep; rerun this stage with --from {path.parent.name}")
    path.write_text(text)


def _run_sweep_stage(wf: Workflow, stage_dir: Path, progress: bool, log) -> dict:
    """Train the sweep in ``stage_dir/sweep.yaml`` into ``stage_dir/run``, resuming a partial run."""
    from pql_jax.run import program as population
    from pql_jax.run.sweep import load_sweep

    spec = load_sweep(stage_dir / "sweep.yaml")
    costs = {m.index: population.member_costs(m) for m in spec.members}
    population.check_sweep_memory(spec, costs)
    run = stage_dir / "run"
    resume = (run / "members.yaml").is_file()
    if run.exists() and not resume:
        shutil.rmtree(run)
    log(f"  {len(spec.members)} members in {len(spec.groups)} compiled program(s)"
        + (" (resuming)" if resume else ""))
    population.prepare_sweep_dir(run, spec, stage_dir / "sweep.yaml", resume)
    population.run_sweep(spec, run, costs, resume=resume, progress=progress,
                         batching=wf.spec.get("batching", "auto"))
    shutil.copyfile(run / population.RESULTS_FILE, stage_dir / "results.csv")
    return {"members": len(spec.members), "groups": len(spec.groups)}


def stage_hparam_sweep(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Step 1: UTD x batch size x learning rate (critic and actor) grid, several seeds."""
    d = out / "hparam_sweep"
    h = wf.hparam
    _write_sweep(wf, d / "sweep.yaml", {},
                 {"agent.utd": [utd_text(u) for u in h["utd"]], "agent.batch_size": h["batch_size"]},
                 {"agent.critic_lr": h["lr"], "agent.actor_lr": h["lr"]}, wf.spec.get("seeds"))
    return _run_sweep_stage(wf, d, progress, log)


def stage_utd_sweep(wf: Workflow, out: Path, progress: bool = True, log=print) -> dict:
    """Step 5: the UTD list at the fitted B*, eta*, times the critic widths when given."""
    from pql_jax.workflow.fits import _settings

    d = out / "utd_sweep"
    s = _settings(out)
    s = s[s["utd_value"].apply(lambda u: any(abs(u - v) <= 1e-12 * v for v in wf.utd["utd"]))]
    grid = {"agent.critic_width": wf.utd["critic_width"]} if wf.utd["critic_width"] else {}
    zipped = {"agent.utd": list(s["utd"]), "agent.batch_size": [int(b) for b in s["batch_size"]],
              "agent.critic_lr": [float(x) for x in s["lr"]], "agent.actor_lr": [float(x) for x in s["lr"]]}
    _write_sweep(wf, d / "sweep.yaml", wf.utd["overrides"], grid, zipped, wf.spec.get("seeds"))
    return _run_sweep_stage(wf, d, progress, log)
