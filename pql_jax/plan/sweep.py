"""Sweep files: a base config, axes (grid products and zipped lists) and seeds -> members -> groups.

Members whose configs differ only in per-member fields (seed, UTD, learning rates, gamma, tau,
noise, reward scale, ...: the `member(...)` fields of pql_jax.config) form one group, trained
together by one compiled program; a difference in a shape field (batch size, widths, num_envs,
n-step, ...) or a host field (run length, checkpoints) starts a new group. A single run is a
sweep of one member (`single`).

A sweep file parses into a frozen `SweepSpec` (`read_sweep_spec`: the file's format checked, no
config loaded, no JAX imported), which `load_sweep` expands into members and groups (config keys
and values are checked as it applies them).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
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
    update_slots: int = 0
    """A piece of a larger group (`pql_jax.plan.parts.queue`): that group's `max_updates`, so
    every piece of it shares one compiled program (map batching runs each member's own updates
    whatever the slots); 0: its own members'."""

    @property
    def config(self) -> Config:
        return self.members[0].config

    @property
    def max_updates(self) -> int:
        """Updates per vector step the program must allow: the fastest member's ceil(utd * num_envs)."""
        return max(self.update_slots, max(updates_needed(m.config) for m in self.members))


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


Axis = tuple[str, tuple]
"""One swept key and its values: (dotted key, values as written)."""

Seeds = int | tuple[int, ...] | None
"""Seeds as a sweep or workflow file gives them: a count (the base seed, +1, ...), a list, or None."""


@dataclass(frozen=True)
class SweepSpec:
    """A sweep file, parsed and checked; nothing of the base config is read yet."""

    name: str
    """`name`: the sweep's name (default: the file's stem)."""
    base: Path | None
    """`base`: the base config file, relative to the sweep file (else to the working directory);
    None for the default config."""
    overrides: tuple[str, ...] = ()
    """`overrides`: `section.key=value` strings applied to the base (a mapping in the file, whose
    short keys such as `utd` are resolved, or a list of such strings)."""
    seeds: Seeds = None
    """`seeds`: a count (the base config's run.seed, +1, ...) or a list; None for the base seed alone."""
    grid: tuple[Axis, ...] = ()
    """`grid`: axes whose every combination is a member (product, in file order)."""
    zip: tuple[Axis, ...] = ()
    """`zip`: axes of equal length stepped together, times the grid."""

    @property
    def axes(self) -> tuple[str, ...]:
        """The swept keys (dotted), grid axes first, in file order."""
        return tuple(k for k, _ in self.grid + self.zip)

    def combinations(self) -> list[dict]:
        """One {dotted key: value} per combination: the grid's product times the zipped rows."""
        zip_keys = [k for k, _ in self.zip]
        zip_rows = [dict(zip(zip_keys, row)) for row in zip(*(v for _, v in self.zip))] if self.zip else [{}]
        grid_keys = [k for k, _ in self.grid]
        grid_rows = [dict(zip(grid_keys, row)) for row in itertools.product(*(v for _, v in self.grid))]
        return [{**g, **z} for g in grid_rows for z in zip_rows]

    def seed_list(self, base_seed: int) -> list[int]:
        """The seeds every combination runs with (`seeds` expanded from `base_seed`)."""
        if self.seeds is None:
            return [base_seed]
        if isinstance(self.seeds, int):
            return list(range(base_seed, base_seed + self.seeds))
        return list(self.seeds)


def parse_seeds(value: Any, key: str = "seeds") -> Seeds:
    """A `seeds` value: None, a count >= 1 or a non-empty list of distinct ints; UserError naming `key`."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise UserError(f"{key} must be a count or a list of ints, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise UserError(f"{key} must be >= 1, got {value}")
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(set(value)) != len(value):
            raise UserError(f"{key} list has duplicates")
        return tuple(value)
    raise UserError(f"{key} must be a count or a non-empty list of ints, got {value!r}")


def _axes(part: Any, name: str) -> tuple[Axis, ...]:
    """The axes of a `grid` or `zip` mapping, keys resolved, each a non-empty list."""
    if not part:
        return ()
    if not isinstance(part, dict):
        raise UserError(f"sweep {name} must be a mapping of axis -> list of values")
    axes = {}
    for key, values in part.items():
        dotted = resolve_key(str(key))
        if not isinstance(values, list):
            raise UserError(f"sweep axis {key!r} must be a list of values, got {values!r}")
        if not values:
            raise UserError(f"sweep axis {key!r} is empty")
        if dotted in axes:
            raise UserError(f"sweep axis {dotted!r} is given twice in {name}")
        axes[dotted] = tuple(values)
    return tuple(axes.items())


def _overrides(value: Any) -> tuple[str, ...]:
    """The `overrides` of a sweep file as `section.key=value` strings."""
    if not value:
        return ()
    if isinstance(value, dict):
        return tuple(f"{resolve_key(str(k))}={v}" for k, v in value.items())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise UserError(f"sweep overrides must be a mapping of key: value or a list of section.key=value, got {value!r}")


def _base(value: Any, path: Path) -> Path | None:
    """The base config file: relative to the sweep file, else (when only that exists) to the working directory."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"sweep base must be the path of a config file, got {value!r}")
    base = Path(value)
    if base.is_absolute():
        return base
    if not (path.parent / base).is_file() and base.is_file():
        return base  # also accept paths relative to the working directory
    return path.parent / base


def parse_sweep_spec(spec: dict, path: str | Path) -> SweepSpec:
    """A sweep file's mapping (keys already checked against SPEC_KEYS) as a SweepSpec; `path` is
    the file's (for relative bases and the default name). UserError, naming the key, on bad input."""
    path = Path(path)
    grid, zipped = _axes(spec.get("grid"), "grid"), _axes(spec.get("zip"), "zip")
    lengths = {len(v) for _, v in zipped}
    if len(lengths) > 1:
        raise UserError(f"zipped sweep axes must have equal lengths, got {sorted(lengths)}")
    both = sorted({k for k, _ in grid} & {k for k, _ in zipped})
    if both:
        raise UserError(f"axis {both[0]!r} is in both grid and zip")
    name = spec.get("name")
    return SweepSpec(name=str(name) if name else path.stem, base=_base(spec.get("base"), path),
                     overrides=_overrides(spec.get("overrides")), seeds=parse_seeds(spec.get("seeds")),
                     grid=grid, zip=zipped)


def read_sweep_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep file (no config is loaded, no JAX imported)."""
    return parse_sweep_spec(read_mapping(path, SPEC_KEYS, "sweep file"), path)


def _short(value: Any) -> str:
    return str(value).replace(" ", "").replace("/", ":")  # path-safe: names are also TensorBoard run dirs


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Read a sweep file: members, their validated configs and their groups. UserError on bad input."""
    spec = read_sweep_spec(path)
    base = cfg_mod.load(spec.base, list(spec.overrides) + list(overrides))
    seeds = spec.seed_list(base.run.seed)
    if "run.seed" in spec.axes and spec.seeds is not None:
        raise UserError("sweep: give seeds or a run.seed axis, not both")
    members = []
    for combo in spec.combinations():
        # a run.seed axis gives each combination its own seed (e.g. more seeds at chosen cells only)
        for seed in [combo["run.seed"]] if "run.seed" in combo else seeds:
            config = base
            for key, value in combo.items():
                config = cfg_mod.set_value(config, key, value)
            config = cfg_mod.set_value(config, "run.seed", seed)
            label = "_".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in combo.items() if k != "run.seed")
            name = f"m{len(members):03d}" + (f"_{label}" if label else "") + f"_seed={seed}"
            try:
                cfg_mod.validate(config)
            except UserError as exc:
                raise UserError(f"member {name}: {exc}")
            members.append(Member(len(members), name, config, {**combo, "run.seed": seed}))
    return Sweep(spec.name, base, spec.axes, tuple(members), tuple(group_members(members)))


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
