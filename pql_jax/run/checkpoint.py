"""Orbax checkpoints of the whole training state (optionally without the replay buffer).

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save never leaves a half-written checkpoint as the latest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Keeps the last `keep` checkpoints of a state pytree under `directory`, keyed by step."""

    def __init__(self, directory: str | Path, keep: int, with_buffer: bool = True):
        self.with_buffer = with_buffer
        self.directory = Path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save `state` (with or without its replay buffers) and JSON `meta`; blocks until written."""
        meta = {**meta, "with_buffer": self.with_buffer}
        items = {"meta": ocp.args.JsonSave(meta), "state": ocp.args.StandardSave(_saved_leaves(state, self.with_buffer))}
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore into the structure of `like` (a state built by init); returns (state, meta).

        Leaves that were not saved (empty arrays, and the buffers of a checkpoint without
        replay) keep their values from `like`.
        """
        step = self.latest_step() if step is None else step
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        target = _saved_leaves(like, meta.get("with_buffer", True))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        saved = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        paths, treedef = jax.tree_util.tree_flatten_with_path(like)
        leaves = [saved.get(jax.tree_util.keystr(path), leaf) for path, leaf in paths]
        return jax.tree_util.tree_unflatten(treedef, leaves), meta

    def close(self) -> None:
        self.manager.close()


def _saved_leaves(state, with_buffer: bool) -> dict:
    """Flat {path: array} of what a checkpoint holds.

    Orbax refuses zero-size arrays (MJX states have some), so those are left out and come
    back from the freshly initialised state on restore, as do the buffers when not saved.
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        name = jax.tree_util.keystr(path)
        if leaf.size == 0 or (not with_buffer and name.startswith((".buffer", ".val_buffer"))):
            continue
        out[name] = leaf
    return out
