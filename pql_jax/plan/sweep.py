"""Sweep files: a base config, axes (grid products and zipped lists) and seeds -> members -> groups.

Members whose configs differ only in per-member fields (seed, UTD, learning rates, gamma, tau,
noise, reward scale, ...: the `member(...)` fields of pql_jax.config) form one group, trained
together by one compiled program; a difference in a shape field (batch size, widths, num_envs,
n-step, ...) or a host field (run length, checkpoints) starts a new group. A single run is a
sweep of one member (`single`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from pql_jax import config as cfg_mod
from pql_jax.config import MEMBER, Config, field_keys
from pql_jax.counts import num_chunks, update_counts, updates_needed
from pql_jax.errors import UserError
from pql_jax.values import read_mapping

SPEC_KEYS = ("base", "overrides", "seeds", "grid", "zip", "name")


@dataclass(frozen=True)
class Member:
    """One run of a sweep."""

    index: int
    name: str
    config: Config
    values: dict
    """The swept values of this member, by full dotted key (as written in the sweep file)."""


@dataclass(frozen=True)
class Group:
    """Members that share one compiled program (equal shapes)."""

    index: int
    members: tuple[Member, ...]

    @property
    def config(self) -> Config:
        return self.members[0].config

    @property
    def max_updates(self) -> int:
        """Updates per vector step the program must allow: the fastest member's ceil(utd * num_envs)."""
        return max(updates_needed(m.config) for m in self.members)


@dataclass(frozen=True)
class Sweep:
    """Members of a sweep file (or the one member of a single run) and their groups."""

    name: str
    base: Config
    axes: tuple[str, ...]
    """The swept keys (dotted), in file order."""
    members: tuple[Member, ...]
    groups: tuple[Group, ...]


def single(config: Config, name: str = "run") -> Sweep:
    """A single run as a sweep of one member (nothing swept)."""
    member = Member(0, name, config, {"run.seed": config.run.seed})
    return Sweep(name, config, (), (member,), (Group(0, (member,)),))


def resolve_key(key: str) -> str:
    """`utd` -> `agent.utd`; dotted keys pass through (validated later)."""
    if "." in key:
        return key
    owners = [s for s, cls in cfg_mod.SECTIONS.items() if key in {f.name for f in fields(cls)}]
    if len(owners) != 1:
        raise UserError(f"unknown sweep axis {key!r}" if not owners else f"sweep axis {key!r} is ambiguous: {owners}")
    return f"{owners[0]}.{key}"


def _axis(key: str, values: Any) -> list:
    if not isinstance(values, list):
        raise UserError(f"sweep axis {key!r} must be a list of values, got {values!r}")
    if not values:
        raise UserError(f"sweep axis {key!r} is empty")
    return values


def _combinations(spec: dict) -> tuple[list[str], list[dict]]:
    """Axis names and one dict of values per combination (grid product x zipped lists)."""
    grid = spec.get("grid") or {}
    zipped = spec.get("zip") or {}
    for part, name in ((grid, "grid"), (zipped, "zip")):
        if not isinstance(part, dict):
            raise UserError(f"sweep {name} must be a mapping of axis -> list of values")
    grid_axes = {resolve_key(k): _axis(k, v) for k, v in grid.items()}
    zip_axes = {resolve_key(k): _axis(k, v) for k, v in zipped.items()}
    lengths = {len(v) for v in zip_axes.values()}
    if len(lengths) > 1:
        raise UserError(f"zipped sweep axes must have equal lengths, got {sorted(lengths)}")
    if set(grid_axes) & set(zip_axes):
        raise UserError(f"axis {sorted(set(grid_axes) & set(zip_axes))[0]!r} is in both grid and zip")
    zip_rows = [dict(zip(zip_axes, row)) for row in zip(*zip_axes.values())] if zip_axes else [{}]
    grid_rows = [dict(zip(grid_axes, row)) for row in itertools.product(*grid_axes.values())]
    return list(grid_axes) + list(zip_axes), [{**g, **z} for g in grid_rows for z in zip_rows]


def _seeds(value: Any, base_seed: int) -> list[int]:
    if value is None:
        return [base_seed]
    if isinstance(value, bool):
        raise UserError(f"seeds must be a count or a list of ints, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise UserError(f"seeds must be >= 1, got {value}")
        return list(range(base_seed, base_seed + value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(set(value)) != len(value):
            raise UserError("seeds list has duplicates")
        return value
    raise UserError(f"seeds must be a count or a non-empty list of ints, got {value!r}")


def _short(value: Any) -> str:
    return str(value).replace(" ", "").replace("/", ":")  # path-safe: names are also TensorBoard run dirs


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Read a sweep file: members, their validated configs and their groups. UserError on bad input."""
    path = Path(path)
    spec = read_mapping(path, SPEC_KEYS, "sweep file")
    base_path = spec.get("base")
    base_file = (path.parent / base_path) if base_path and not Path(base_path).is_absolute() else base_path
    if base_path and not Path(base_file).is_file() and Path(base_path).is_file():
        base_file = base_path  # also accept paths relative to the working directory
    base_overrides = spec.get("overrides") or []
    if isinstance(base_overrides, dict):
        base_overrides = [f"{resolve_key(k)}={v}" for k, v in base_overrides.items()]
    base = cfg_mod.load(base_file, list(base_overrides) + list(overrides))
    axes, combos = _combinations(spec)
    seeds = _seeds(spec.get("seeds"), base.run.seed)
    members = []
    for combo in combos:
        for seed in seeds:
            config = base
            for key, value in combo.items():
                config = cfg_mod.set_value(config, key, value)
            config = cfg_mod.set_value(config, "run.seed", seed)
            label = "_".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in combo.items())
            name = f"m{len(members):03d}" + (f"_{label}" if label else "") + f"_seed={seed}"
            try:
                cfg_mod.validate(config)
            except UserError as exc:
                raise UserError(f"member {name}: {exc}")
            members.append(Member(len(members), name, config, {**combo, "run.seed": seed}))
    return Sweep(spec.get("name") or path.stem, base, tuple(axes), tuple(members), tuple(group_members(members)))


def group_key(config: Config) -> Config:
    """The config with every per-member field reset: members with equal keys form one group."""
    defaults = Config()
    for key in field_keys(MEMBER):
        config = cfg_mod.set_value(config, key, cfg_mod.get_value(defaults, key))
    return config


def group_members(members: list[Member]) -> list[Group]:
    """Members grouped by shape and host fields, in first-appearance order."""
    groups: dict[Config, list[Member]] = {}
    for member in members:
        groups.setdefault(group_key(member.config), []).append(member)
    return [Group(i, tuple(ms)) for i, ms in enumerate(groups.values())]



def masking_waste(group: Group, lockstep: bool = True) -> tuple[float, int, int]:
    """(wasted fraction, useful updates, executed update slots) of a group's masked schedule.

    `lockstep` (vmap batching): each vector step runs as many update slots as the busiest member
    needs, for every member; a slot a member does not need is computed and discarded. Otherwise
    (lax.map) each member runs only its own slots: nothing is wasted.
    """
    config = group.config
    steps = num_chunks(config) * config.run.chunk_steps
    counts = np.stack([update_counts(m.config, steps) for m in group.members])
    useful = int(counts.sum())
    executed = int(counts.max(axis=0).sum()) * len(group.members) if lockstep else useful
    return (1.0 - useful / executed if executed else 0.0), useful, executed
