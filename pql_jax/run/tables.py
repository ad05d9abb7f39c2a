"""The results table: one schema for every run directory, single run or sweep.

One row per (member, logging point): the member's hyperparameter columns (`env`, `seed`, `utd`,
`utd_label`, every per-member field, the shape fields marked `column=True` in pql_jax.config,
every swept key, `model_size` = critic parameters N), then `step` (env steps) and `return`
(eval return), then the chunk's metrics. It is exactly what `pql-jax fit all` reads. On resume,
rows past the checkpoint are dropped (atomically), so a resumed run's table equals an
uninterrupted run's.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from pql_jax.config import field_keys, get_value
from pql_jax.values import format_utd
from pql_jax.plan.costs import Costs
from pql_jax.plan.sweep import Member

def member_columns(member: Member, group: int, costs: Costs) -> dict:
    """The hyperparameter columns of a member's rows (derived from the config's declarations)."""
    config = member.config
    cols = {"member": member.name, "group": group, "env": config.env.name, "seed": config.run.seed,
            "utd": config.agent.utd, "utd_label": format_utd(config.agent.utd)}
    for key in field_keys(column=True) + tuple(member.values):
        name = key.split(".")[-1]
        if key != "env.name" and name not in cols:
            value = get_value(config, key)
            cols[name] = list(value) if isinstance(value, tuple) else value
    cols["model_size"] = costs.critic_params
    return cols


def host_row(metrics: dict, costs: Costs, num_envs: int, wall: float, chunk_time: float | None,
             prev: dict | None) -> dict:
    """A row's metrics: the chunk's device metrics plus host-side columns (FLOPs, speed, wall time).

    `chunk_time` None (a chunk whose time is not a steady-state measurement) gives NaN speeds.
    """
    row = {k: (float(v) if np.ndim(v) == 0 else v) for k, v in metrics.items()}
    for key in ("env_steps", "vector_steps", "critic_updates", "actor_updates"):
        row[key] = int(row[key])
    row["flops"] = row["critic_updates"] * costs.flops_per_critic_update + row["actor_updates"] * costs.flops_per_actor_update
    done_steps = row["env_steps"] - (prev["env_steps"] if prev else 0)
    done_updates = row["critic_updates"] - (prev["critic_updates"] if prev else 0)
    speed = lambda n: n / max(chunk_time, 1e-9) if chunk_time is not None else float("nan")
    row["env_steps_per_s"] = speed(done_steps)
    row["updates_per_s"] = speed(done_updates)
    row["wall_time"] = wall
    return row


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV table (empty when the file does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows_atomic(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Replace `path` with `rows` in one rename, so a crash never leaves a truncated table."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _fmt(value) -> str | float:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float):
        return repr(value)
    return value


class MetricsTable:
    """Appends rows to `path`; a row with new columns widens the table (rewritten atomically)."""

    def __init__(self, path: Path, resume_step: int | None = None, step_key: str = "vector_steps", keep=None):
        """With `resume_step`, drop rows past it, except rows for which `keep(row)` is true."""
        self.path = Path(path)
        self.columns: list[str] | None = None
        rows = read_rows(self.path)
        if rows:
            self.columns = list(rows[0].keys())
        if rows and resume_step is not None:
            kept = [r for r in rows if (keep is not None and keep(r)) or int(float(r[step_key])) <= resume_step]
            write_rows_atomic(self.path, kept, self.columns)

    def append(self, rows: Iterable[dict]) -> None:
        """Append rows (dicts of scalars) and flush to disk."""
        rows = [{k: _fmt(v) for k, v in row.items()} for row in rows]
        if not rows:
            return
        if self.columns is None or not self.path.exists():
            self.columns = list(rows[0].keys())
            write_rows_atomic(self.path, [], self.columns)
        new = [k for row in rows for k in row if k not in self.columns]
        if new:
            self.columns += list(dict.fromkeys(new))
            write_rows_atomic(self.path, read_rows(self.path), self.columns)
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerows(rows)
