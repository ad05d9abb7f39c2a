"""Host side of the on-device metrics: a tidy CSV table and TensorBoard events.

The table has one row per logging point (chunk end). On resume, rows past the checkpoint are
dropped (atomically) and TensorBoard purges its events past it, so a resumed run's outputs equal
an uninterrupted run's.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Iterable

# Metric name -> TensorBoard tag. Anything not listed goes under "other/".
TAGS = {
    "eval_return": "return/eval", "online_return": "return/online", "critic_loss": "loss/critic",
    "actor_loss": "loss/actor", "q_mean": "q/mean", "critic_grad_norm": "grad_norm/critic",
    "actor_grad_norm": "grad_norm/actor", "critic_param_norm": "param_norm/critic",
    "actor_param_norm": "param_norm/actor", "td_train": "td/train", "td_val": "td/val", "td_gap": "td/overfitting_gap",
    "critic_updates": "updates/critic", "actor_updates": "updates/actor", "env_steps_per_s": "perf/env_steps_per_s",
    "updates_per_s": "perf/critic_updates_per_s", "flops": "compute/estimated_flops", "episodes": "episodes/ended",
    "diverged": "status/diverged",
}


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


class TensorBoard:
    """Scalars per logging point, x axis = env steps; hyperparameters for the HParams view."""

    def __init__(self, logdir: Path, purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(logdir), purge_step=purge_step)

    def scalars(self, metrics: dict, step: int) -> None:
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                self.writer.add_scalar(TAGS.get(name, f"other/{name}"), value, step)

    def hparams(self, hparams: dict, final_metrics: dict) -> None:
        clean = {k: v for k, v in final_metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in clean.items()}, name=".")

    def close(self) -> None:
        self.writer.close()
