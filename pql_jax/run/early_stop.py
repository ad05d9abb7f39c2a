"""Early stopping of members whose curve the fits no longer need (`run.stop_after`, `run.stop_return`).

A scaling fit reads each curve only up to its first crossing of the highest threshold. Once a
member's evaluation results have stayed at or above that return for `stop_after` consecutive
results, the rest of its run changes no crossing the fits use (the scaling module carries its
last result forward, `pql_jax.scaling.curves`), so it stops:

- its update schedule is set to zero updates: under `lax.map` (CPU) its update slots are skipped,
  not computed; under `vmap` (GPU) its lanes are masked, computed while a member of its block
  still updates (the population is not re-packed into a smaller program);
- its rows stop at the chunk where it stopped, whose row carries `stopped` = 1;
- a group whose members have all stopped ends there, on either batching.
"""

from __future__ import annotations

import math

import numpy as np

from pql_jax.config import RunConfig


class EarlyStop:
    """Per member of a group: the current streak of results at or above the stop return, and
    whether it stopped. `on` is False when the run trains every member to full length."""

    def __init__(self, run: RunConfig, members: int, saved: dict | None = None):
        self.after, self.level = run.stop_after, run.stop_return
        saved = saved or {}
        self.streak = list(saved.get("stop_streak", [0] * members))
        self.stopped = [bool(s) for s in saved.get("stopped", [False] * members)]

    @property
    def on(self) -> bool:
        return self.after > 0

    def see(self, member: int, returns) -> bool:
        """Take a member's results of one chunk (in step order; NaN: no result) and return True
        when this chunk stops it."""
        if not self.on or self.stopped[member]:
            return False
        for value in returns:
            if math.isnan(value):
                continue
            self.streak[member] = self.streak[member] + 1 if value >= self.level else 0
        self.stopped[member] = self.streak[member] >= self.after
        return self.stopped[member]

    def all_stopped(self) -> bool:
        return self.on and all(self.stopped)

    def mask(self, size: int) -> np.ndarray | None:
        """Stopped flags of a program's `size` members (padding repeats member 0), or None when
        no member has stopped (the schedule is then built exactly as without early stopping)."""
        if not any(self.stopped):
            return None
        return np.array(self.stopped + [self.stopped[0]] * (size - len(self.stopped)))

    def state(self) -> dict:
        """What a checkpoint keeps, so a resumed run stops where an uninterrupted one would."""
        return {"stop_streak": list(self.streak), "stopped": list(self.stopped)} if self.on else {}
