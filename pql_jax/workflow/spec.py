"""The workflow file (format below), the run directory and its stage markers.

A run directory OUT holds ``workflow.yaml`` (the workflow it belongs to) and one folder per stage
(``STAGES``), each finished once it holds ``done.json``. The stages themselves live in
``sweeps``, ``fits``, ``verify`` and ``report``; ``runner.run_workflow`` runs them in order.

A workflow file (paths relative to it) parses into a frozen ``Workflow``, its sections into
``HparamSweepSpec``, ``UtdSweepSpec``, ``FitSpec`` and ``VerifySpec``; each key is documented once,
on the field of the same name. Required: base, max_return, hparam_sweep (utd, batch_size, lr),
utd_sweep (utd) and verify (utd or budget)::

    name: quickstart
    base: ../pointmass.yaml
    overrides: {env.num_envs: 32}
    seeds: 3
    max_return: 50
    thresholds: [400, 600, 800]
    n_thresholds: 5
    select_level: null
    resamples: 100
    hparam_sweep: {utd: [1/64, 1/16, 1/4], batch_size: [64, 128, 256], lr: [1e-4, 3e-4, 1e-3],
                   critic_width: [64, 128, 256]}
    utd_sweep: {utd: [1/128, 1/64, 1/32, 1/16, 1/8], critic_width: [64, 128, 256],
                batch_size_range: [16, 4096], overrides: {}}
    fit: {holdout: null, delta: null, k: 10}
    verify: {utd: 1/2, budget: null, seeds: 3}
    batching: auto
    refine: {stop_after: 3, widen: 2, budget: 200000}

Without ``refine`` the workflow trains its fixed grid (every member to full length) and nothing
is added: the same files and seeds give the same results as before refinement existed.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pql_jax import config as cfg_mod
from pql_jax import values
from pql_jax.errors import UserError
from pql_jax.plan.sweep import Seeds, parse_seeds, resolve_key
from pql_jax.run.launch import open_run_dir

STAGES = ("hparam_sweep", "fit_hparams", "utd_sweep", "refine", "fit_laws", "verify", "report")
KEYS = ("name", "base", "overrides", "seeds", "max_return", "thresholds", "n_thresholds", "select_level",
        "resamples", "hparam_sweep", "utd_sweep", "fit", "verify", "batching", "refine")
REQUIRED = ("base", "max_return", "hparam_sweep", "utd_sweep", "verify")
HPARAM_KEYS = ("utd", "batch_size", "lr", "critic_width")
UTD_KEYS = ("utd", "critic_width", "batch_size_range", "overrides")
FIT_KEYS = ("holdout", "delta", "k")
VERIFY_KEYS = ("utd", "budget", "seeds")
REFINE_KEYS = ("stop_after", "widen", "budget", "round_runs")
MARKER = "done.json"

Overrides = tuple[tuple[str, Any], ...]
"""`section.key: value` overrides in file order (``dict(...)`` gives the mapping back)."""


@dataclass(frozen=True)
class HparamSweepSpec:
    """`hparam_sweep`: step 1's grid, trained for every seed."""

    utd: tuple[float, ...]
    """UTDs, in file order."""
    batch_size: tuple[int, ...]
    """Batch sizes."""
    lr: tuple[float, ...]
    """Learning rates, the critic's and the actor's alike (zipped, not a grid axis of their own)."""
    critic_width: tuple[int, ...] = ()
    """Critic widths (default: utd_sweep.critic_width; [] for none). With >= 3 widths B*(sigma, N)
    is fitted and sets the batch size of each (UTD, width) of the UTD sweep."""


@dataclass(frozen=True)
class UtdSweepSpec:
    """`utd_sweep`: the UTD list trained at the fitted B*, eta*."""

    utd: tuple[float, ...]
    """UTDs, sorted: at least 3 distinct ones spanning >= 16x (max / min)."""
    critic_width: tuple[int, ...] = ()
    """Critic widths: a model-size axis (every UTD at every width); () for none."""
    batch_size_range: tuple[float, float] | None = None
    """[low, high] clip of the fitted batch sizes (also of the proposals'), or None."""
    overrides: Overrides = ()
    """Config overrides of this stage (and of verify) on top of the workflow's."""


@dataclass(frozen=True)
class FitSpec:
    """`fit`: options of `fit all` on the UTD sweep."""

    holdout: str | None = None
    """Rows of the D_J fit held out, as a pandas query (e.g. "utd>=1/8"), or None."""
    delta: float | None = None
    """FLOPs per env step in the budget F = C + delta D (default: the sweep's median C/D)."""
    k: float = 10.0
    """FLOPs per parameter per sample in the compute C = k N B sigma D."""


@dataclass(frozen=True)
class VerifySpec:
    """`verify`: what the fitted laws are checked on, with fresh seeds (at least utd or budget)."""

    utd: float | None = None
    """A held-out UTD (none of utd_sweep.utd), run at its proposed B*, eta*."""
    budget: float | str | None = None
    """A budget F in FLOPs, or a factor such as "4x": that many times the largest fitted budget
    optimum; sigma*(F), sigma*/2 and 2 sigma* are run."""
    seeds: Seeds = None
    """Seeds of the verification runs: a count (the base seed, +1, ...) or a list; when the file
    gives none, as many fresh seeds 1000, 1001, ... as the sweeps have."""


@dataclass(frozen=True)
class RefineSpec:
    """`refine`: what the workflow adds to, or stops early in, its fixed grid (all off by default)."""

    stop_after: int = 0
    """Stop a member once this many consecutive evaluation results are at or above the highest
    threshold (its curve past there changes no crossing the fits use); 0: train to full length.
    With auto-spaced thresholds (known only after training) members train to full length
    (`early_stop_note`)."""
    widen: int = 0
    """At most this many values added outward (the grid's own ratio) per hparam_sweep axis where
    the best batch size or learning rate lies on the grid's edge; 0: never widen."""
    budget: float = 0.0
    """Extra env steps the refinement rounds may spend on runs that determine flagged fits; 0: none."""
    round_runs: int = 2
    """A round may spend at least this many runs' worth of the budget (otherwise half of what is
    left): runs of one round train side by side (local workers, or a vmapped population) and pay
    one fit and one start-up, while later rounds see less of what each run changed. 2 fills a
    2-core machine's workers; 1: one run at a time once the budget is low."""

    def early_stop_note(self, thresholds) -> str | None:
        """Why `stop_after` is not applied, or None."""
        if self.stop_after and not thresholds:
            return ("refine.stop_after: thresholds are auto-spaced (known only after training), so members "
                    "train to full length; give thresholds: [...] to stop them early")
        return None

    @property
    def on(self) -> bool:
        """Whether anything is refined (False: the fixed grid, trained as written)."""
        return bool(self.stop_after or self.widen or self.budget)


@dataclass(frozen=True)
class Workflow:
    """A parsed, validated workflow file."""

    path: Path
    """The workflow file."""
    spec: dict
    """The file's mapping as read (what `record` and `identity` are made of)."""
    base_path: Path
    """`base`: the base config file (absolute; relative to the workflow file in the file)."""
    name: str
    """`name` (default: the file's stem)."""
    hparam_sweep: HparamSweepSpec
    utd_sweep: UtdSweepSpec
    verify: VerifySpec
    max_return: float
    """Returns are normalised to 0..1000 by this maximum (kept as written: 50 stays an int)."""
    fit: FitSpec = FitSpec()
    overrides: Overrides = ()
    """Config overrides of the base, for every stage."""
    seeds: Seeds = None
    """Seeds of every sweep: a count (the base seed, +1, ...) or a list; None for the base seed alone."""
    thresholds: tuple[float, ...] | None = None
    """Normalised return thresholds J; None: n_thresholds auto-spaced ones."""
    n_thresholds: int = 5
    """How many thresholds when `thresholds` is not given."""
    select_level: int | None = None
    """Threshold index at which best B / eta are picked (None: the highest one every swept UTD reaches)."""
    resamples: int = 100
    """Seed bootstrap resamples."""
    batching: str = "auto"
    """auto, map or vmap (see `pql-jax sweep`)."""
    refine: RefineSpec = RefineSpec()
    part: tuple | None = None
    """(I, N): this process trains only the I-th job-array share of each sweep stage (`--part`)."""
    launch: dict | None = None
    """submitit options (count, cluster, slurm): each sweep stage runs as that many submitted
    parts, waited for and merged (`--parts N --launch submitit`)."""
    workers: int | None = 1
    """Local worker processes per sweep stage (`--workers`; `pql_jax.run.local_parts`); None:
    one per usable core (at most one per member); 1: the stage trains in this process."""

    @property
    def record(self) -> dict:
        """What identifies the workflow: its spec with the base path made absolute."""
        return {**self.spec, "base": str(self.base_path)}

    @property
    def identity(self) -> dict:
        """The spec with the base config's contents in place of its path (location-independent)."""
        return {**self.spec, "base": values.read_yaml(self.base_path, "base config")}


def seed_count(seeds: Seeds) -> int:
    """How many seeds a `seeds` value gives (None: the base seed alone)."""
    return len(seeds) if isinstance(seeds, tuple) else (seeds or 1)


def seeds_value(seeds: Seeds):
    """A `seeds` value as YAML writes it (a list, a count or None)."""
    return list(seeds) if isinstance(seeds, tuple) else seeds


def _number(value: Any, where: str, kind: type = float, strict: bool = True):
    """A number the file gave (3, 64.0, '1e-3', '1/512'): > 0 (>= 0 unless `strict`), an int when
    `kind` is int; UserError naming `where` otherwise."""
    try:
        number = values.read_number(value)
    except UserError:
        number = math.nan
    ok = math.isfinite(number) and (number > 0 if strict else number >= 0)
    if isinstance(value, bool) or not ok or (kind is int and number != int(number)):
        article = "an integer" if kind is int else "a number"
        raise UserError(f"workflow: {where} must be {article} {'>' if strict else '>='} 0, got {value!r}")
    if kind is int:
        return int(number)
    return value if isinstance(value, (int, float)) else number  # as written: a report prints 50, not 50.0


def _numbers(part: dict, key: str, where: str, kind: type = float) -> tuple:
    """`part[key]`: a non-empty list of numbers > 0 (ints when `kind` is int)."""
    v = part[key]
    if not isinstance(v, list) or not v:
        raise UserError(f"workflow: {where}.{key} must be a non-empty list")
    return tuple(kind(_number(x, f"{where}.{key}", kind)) for x in v)


def _mapping(spec: dict, key: str, allowed: tuple, required: tuple = ()) -> dict:
    part = values.check_mapping(spec.get(key), allowed, f"workflow section {key}")
    for k in required:
        if k not in part or part[k] in (None, []):
            raise UserError(f"workflow: missing key {key}.{k}")
    return part


def _overrides_of(value: Any, where: str) -> Overrides:
    """A mapping of `section.key: value` overrides (None: none) as pairs in file order."""
    if not isinstance(value or {}, dict) or not all(isinstance(k, str) for k in (value or {})):
        raise UserError(f"workflow: {where} must be a mapping of section.key: value")
    return tuple((value or {}).items())


def _utds(part: dict, where: str) -> tuple[float, ...]:
    v = part["utd"]
    if not isinstance(v, list) or not v:
        raise UserError(f"workflow: {where}.utd must be a non-empty list")
    return tuple(values.parse_utd(u, f"workflow: {where}.utd") for u in v)


def _utd_sweep(part: dict) -> UtdSweepSpec:
    utds = tuple(sorted(_utds(part, "utd_sweep")))
    if len(set(utds)) < 3:
        raise UserError("workflow: utd_sweep.utd needs at least 3 distinct UTDs")
    if utds[-1] / utds[0] < 16 - 1e-9:
        raise UserError(f"workflow: utd_sweep.utd must span >= 16x, got {utds[-1] / utds[0]:.3g}x")
    widths = _numbers(part, "critic_width", "utd_sweep", int) if part.get("critic_width") else ()
    clip = part.get("batch_size_range")
    if clip is not None and (not isinstance(clip, list) or len(clip) != 2
                             or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in clip)
                             or not 0 < clip[0] <= clip[1]):
        raise UserError("workflow: utd_sweep.batch_size_range must be [low, high] with 0 < low <= high")
    if not isinstance(part.get("overrides") or {}, dict):
        raise UserError("workflow: utd_sweep.overrides must be a mapping")
    return UtdSweepSpec(utds, widths, tuple(clip) if clip is not None else None,
                        _overrides_of(part.get("overrides"), "utd_sweep.overrides"))


def _hparam_sweep(part: dict, utd_widths: tuple[int, ...]) -> HparamSweepSpec:
    # the hparam sweep covers the width axis too (default: the UTD sweep's widths), so that
    # B*(sigma, N) is fitted and sets the batch size of every (UTD, width) of the UTD sweep
    if "critic_width" not in part:
        widths = utd_widths
    elif part["critic_width"] is None or part["critic_width"] == []:
        widths = ()
    else:
        widths = _numbers(part, "critic_width", "hparam_sweep", int)
    return HparamSweepSpec(_utds(part, "hparam_sweep"), _numbers(part, "batch_size", "hparam_sweep", int),
                           _numbers(part, "lr", "hparam_sweep"), widths)


def _fit(part: dict) -> FitSpec:
    holdout = part.get("holdout")
    if holdout is not None and not isinstance(holdout, str):
        raise UserError(f"workflow: fit.holdout must be a query such as 'utd>=1/8', got {holdout!r}")
    delta = part.get("delta")
    return FitSpec(holdout or None, float(_number(delta, "fit.delta")) if delta is not None else None,
                   float(_number(part["k"], "fit.k")) if part.get("k") is not None else 10.0)


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


def _verify(part: dict, seeds: Seeds, utds: tuple[float, ...]) -> VerifySpec:
    if part.get("utd") is None and part.get("budget") is None:
        raise UserError("workflow: missing key verify.utd (or verify.budget)")
    utd = values.parse_utd(part["utd"], "workflow: verify.utd") if part.get("utd") is not None else None
    if utd is not None and utd in utds:
        raise UserError("workflow: verify.utd must be held out (not one of utd_sweep.utd)")
    fresh = tuple(1000 + i for i in range(seed_count(seeds)))  # seeds the sweeps never used
    return VerifySpec(utd, _budget(part["budget"]) if part.get("budget") is not None else None,
                      parse_seeds(part["seeds"], "workflow: verify.seeds") if "seeds" in part else fresh)


def _thresholds(value: Any) -> tuple[float, ...] | None:
    if not value:
        return None
    if not isinstance(value, list):
        raise UserError(f"workflow: thresholds must be a list of numbers, got {value!r}")
    return tuple(float(_number(t, "thresholds", strict=False)) for t in value)


def _refine(part: dict) -> RefineSpec:
    stop_after = _number(part.get("stop_after", 0), "refine.stop_after", int, strict=False)
    round_runs = _number(part.get("round_runs", RefineSpec.round_runs), "refine.round_runs", int, strict=True)
    return RefineSpec(stop_after, _number(part.get("widen", 0), "refine.widen", int, strict=False),
                      float(_number(part.get("budget", 0), "refine.budget", strict=False)), round_runs)


def parse_workflow(spec: dict, path: str | Path) -> Workflow:
    """A workflow file's mapping (keys already checked against KEYS) as a Workflow; `path` is the
    file's (bases are relative to it). UserError, naming the key, on bad input."""
    path = Path(path)
    for k in REQUIRED:
        if spec.get(k) is None:
            raise UserError(f"workflow: missing key {k!r}")
    if not isinstance(spec["base"], str):
        raise UserError(f"workflow: base must be the path of a config file, got {spec['base']!r}")
    base = Path(spec["base"])
    base_path = base if base.is_absolute() else (path.parent / base)
    if not base_path.is_file():
        raise UserError(f"workflow: base config not found: {spec['base']} (relative to {path.parent})")
    hp = _mapping(spec, "hparam_sweep", HPARAM_KEYS, HPARAM_KEYS[:3])
    ut = _mapping(spec, "utd_sweep", UTD_KEYS, ("utd",))
    fit = _fit(_mapping(spec, "fit", FIT_KEYS))
    ver = _mapping(spec, "verify", VERIFY_KEYS)
    utd_sweep = _utd_sweep(ut)
    hparam_sweep = _hparam_sweep(hp, utd_sweep.critic_width)
    overrides = _overrides_of(spec.get("overrides"), "overrides")
    seeds = parse_seeds(spec.get("seeds"), "workflow: seeds")
    verify = _verify(ver, seeds, utd_sweep.utd)
    if spec.get("batching", "auto") not in ("auto", "map", "vmap"):
        raise UserError("workflow: batching must be auto, map or vmap")
    level = spec.get("select_level")
    thresholds = _thresholds(spec.get("thresholds"))
    return Workflow(
        path=path, spec=spec, base_path=base_path.resolve(), name=str(spec.get("name") or path.stem),
        hparam_sweep=hparam_sweep, utd_sweep=utd_sweep, verify=verify, fit=fit, overrides=overrides, seeds=seeds,
        max_return=_number(spec["max_return"], "max_return"), thresholds=thresholds,
        n_thresholds=_number(spec.get("n_thresholds") or 5, "n_thresholds", int),
        select_level=_number(level, "select_level", int, strict=False) if level is not None else None,
        resamples=_number(spec.get("resamples", 100), "resamples", int, strict=False),
        batching=spec.get("batching", "auto"), refine=_refine(_mapping(spec, "refine", REFINE_KEYS)))


def load_workflow(path: str | Path) -> Workflow:
    """Read and validate a workflow file (UserError on bad input, before anything is written)."""
    wf = parse_workflow(values.read_mapping(path, KEYS, "workflow file"), path)
    cfg_mod.load(wf.base_path, [f"{resolve_key(k)}={v}" for k, v in wf.overrides])  # the base must be a valid config
    return wf


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
