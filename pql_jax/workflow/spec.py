"""The workflow file (format below), the run directory and its stage markers.

A run directory OUT holds ``workflow.yaml`` (the workflow it belongs to) and one folder per stage
(``STAGES``), each finished once it holds ``done.json``. The stages themselves live in
``sweeps``, ``fits``, ``verify`` and ``report``; ``runner.run_workflow`` runs them in order.

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
      critic_width: [64, 128, 256]     # optional (default: utd_sweep.critic_width; [] for none): with >= 3
                                       # widths B*(sigma, N) is fitted and sets each (UTD, width)'s batch size
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pql_jax import config as cfg_mod
from pql_jax import values
from pql_jax.errors import UserError
from pql_jax.run.launch import open_run_dir

STAGES = ("hparam_sweep", "fit_hparams", "utd_sweep", "fit_laws", "verify", "report")
KEYS = ("name", "base", "overrides", "seeds", "max_return", "thresholds", "n_thresholds", "select_level",
        "resamples", "hparam_sweep", "utd_sweep", "fit", "verify", "batching")
REQUIRED = ("base", "max_return", "hparam_sweep", "utd_sweep", "verify")
HPARAM_KEYS = ("utd", "batch_size", "lr", "critic_width")
UTD_KEYS = ("utd", "critic_width", "batch_size_range", "overrides")
FIT_KEYS = ("holdout", "delta", "k")
VERIFY_KEYS = ("utd", "budget", "seeds")
MARKER = "done.json"


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
    part: tuple | None = None
    """(I, N): this process trains only the I-th job-array share of each sweep stage (`--part`)."""
    launch: dict | None = None
    """submitit options (count, cluster, slurm): each sweep stage runs as that many submitted
    parts, waited for and merged (`--parts N --launch submitit`)."""

    @property
    def record(self) -> dict:
        """What identifies the workflow: its spec with the base path made absolute."""
        return {**self.spec, "base": str(self.base_path)}

    @property
    def identity(self) -> dict:
        """The spec with the base config's contents in place of its path (location-independent)."""
        return {**self.spec, "base": values.read_yaml(self.base_path, "base config")}


def _mapping(spec: dict, key: str, allowed: tuple, required: tuple = ()) -> dict:
    part = values.check_mapping(spec.get(key), allowed, f"workflow section {key}")
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
    spec = values.read_mapping(path, KEYS, "workflow file")
    for k in REQUIRED:
        if spec.get(k) is None:
            raise UserError(f"workflow: missing key {k!r}")
    base = Path(spec["base"])
    base_path = base if base.is_absolute() else (path.parent / base)
    if not base_path.is_file():
        raise UserError(f"workflow: base config not found: {spec['base']} (relative to {path.parent})")
    hp = _mapping(spec, "hparam_sweep", HPARAM_KEYS, HPARAM_KEYS[:3])
    ut = _mapping(spec, "utd_sweep", UTD_KEYS, ("utd",))
    _mapping(spec, "fit", FIT_KEYS)
    ver = _mapping(spec, "verify", VERIFY_KEYS)
    if ver.get("utd") is None and ver.get("budget") is None:
        raise UserError("workflow: missing key verify.utd (or verify.budget)")
    hparam = {"utd": [values.parse_utd(u, "workflow: hparam_sweep.utd") for u in _list(hp, "utd", "hparam_sweep")],
              "batch_size": [int(b) for b in _list(hp, "batch_size", "hparam_sweep")],
              "lr": [float(x) for x in _list(hp, "lr", "hparam_sweep")]}
    utds = sorted(values.parse_utd(u, "workflow: utd_sweep.utd") for u in _list(ut, "utd", "utd_sweep"))
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
    verify = {"utd": values.parse_utd(ver["utd"], "workflow: verify.utd") if ver.get("utd") is not None else None,
              "budget": _budget(ver["budget"]) if ver.get("budget") is not None else None,
              "seeds": ver.get("seeds", _fresh_seeds(spec.get("seeds")))}
    if verify["utd"] is not None and utds[0] <= verify["utd"] <= utds[-1] and verify["utd"] in utds:
        raise UserError("workflow: verify.utd must be held out (not one of utd_sweep.utd)")
    if spec.get("batching", "auto") not in ("auto", "map", "vmap"):
        raise UserError("workflow: batching must be auto, map or vmap")
    # the hparam sweep covers the width axis too (default: the UTD sweep's widths), so that
    # B*(sigma, N) is fitted and sets the batch size of every (UTD, width) of the UTD sweep
    hp_widths = hp.get("critic_width", widths)
    if hp_widths is None or hp_widths == []:
        hparam["critic_width"] = []
    else:
        hparam["critic_width"] = [int(w) for w in _list(hp, "critic_width", "hparam_sweep")] \
            if "critic_width" in hp else list(widths)
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
    from pql_jax.plan.sweep import resolve_key

    return [f"{resolve_key(k)}={v}" for k, v in (d or {}).items()]


# ----------------------------------------------------------------------------------------------
# The run directory


def prepare_out(wf: Workflow, out: Path) -> None:
    """Create OUT with its workflow.yaml, or check that OUT holds this same workflow."""
    def same(text: str) -> bool:
        try:
            old = yaml.safe_load(text) or {}
            return {**old, "base": values.read_yaml(old["base"], "base config")} == wf.identity
        except (UserError, KeyError, TypeError, yaml.YAMLError):
            return False

    open_run_dir(out, {"workflow.yaml": yaml.safe_dump(wf.record, sort_keys=False)},
                 resume=(out / "workflow.yaml").is_file(), same=same, what="workflow's results")


def is_done(out: Path, stage: str) -> bool:
    """Whether ``stage`` finished: its outputs are complete once its marker exists."""
    return (out / stage / MARKER).is_file()


def mark_done(out: Path, stage: str, info: dict) -> None:
    """Write ``OUT/<stage>/done.json`` (atomically) with the finish time and ``info``."""
    path = out / stage / MARKER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stage": stage, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **info},
                              indent=2, default=float))
    os.replace(tmp, path)


def read_marker(out: Path, stage: str) -> dict:
    """The contents of a stage's ``done.json`` ({} while it has not finished)."""
    path = out / stage / MARKER
    return json.loads(path.read_text()) if path.is_file() else {}


def read_settings(out: Path) -> pd.DataFrame:
    """``fit_hparams/settings.csv``: the fitted B*, eta* of every UTD the later stages run."""
    return pd.read_csv(out / "fit_hparams" / "settings.csv", dtype={"utd": str})
