"""Orbax checkpoints of the whole training state (optionally without the replay buffer).

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save never leaves a half-written checkpoint as the latest. With `asynchronous`,
training pauses only to copy the state to host memory (the next chunk donates, i.e. reuses, the
device buffers), and orbax writes the copy to disk in a background thread while training goes
on; one write at a time.

With several processes (pql_jax.run.distributed) the state's arrays are global: every process
calls save and restore, orbax writes and reads each process's own shards (process 0 the metadata
and the JSON `meta`), so the checkpoint directory must be on a file system every process sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from pql_jax.errors import UserError


class Checkpointer:
    """Keeps the last `keep` checkpoints of a state pytree under `directory`, keyed by step."""

    def __init__(self, directory: str | Path, keep: int, with_buffer: bool = True, asynchronous: bool = False):
        self.with_buffer = with_buffer
        self.asynchronous = asynchronous
        self.directory = Path(directory)
        self.pauses: list[float] = []
        """Seconds training waited for each save (host copy and dispatch; the whole write when
        synchronous)."""
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> float:
        """Save `state` (with or without its replay buffers) and JSON `meta`; returns the pause.

        Asynchronous: waits for the previous write, copies the state to host memory and returns
        while orbax writes; synchronous: returns once the checkpoint is complete.
        """
        tick = time.perf_counter()
        self.manager.wait_until_finished()
        meta = {**meta, "with_buffer": self.with_buffer}
        leaves = _saved_leaves(state, self.with_buffer)
        if self.asynchronous:  # a private copy: the device buffers are donated to the next chunk
            leaves = {k: _private_copy(v) for k, v in leaves.items()}
        items = {"meta": ocp.args.JsonSave(meta), "state": ocp.args.StandardSave(leaves)}
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        if not self.asynchronous:
            self.manager.wait_until_finished()
        self.pauses.append(time.perf_counter() - tick)
        return self.pauses[-1]

    def wait(self) -> None:
        """Block until the last save is on disk."""
        self.manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore into the structure of `like` (a state built by init); returns (state, meta).

        Leaves that were not saved (empty arrays, and the buffers of a checkpoint without
        replay) keep their values from `like`.
        """
        self.manager.wait_until_finished()
        step = self.latest_step() if step is None else step
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        target = _saved_leaves(like, meta.get("with_buffer", True))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            saved = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        except ValueError as exc:  # a checkpoint of another program shape or pql_jax version
            raise UserError(f"checkpoint {self.directory / str(step)} does not match this run's state "
                            f"({str(exc).splitlines()[0][:200]})") from None
        paths, treedef = jax.tree_util.tree_flatten_with_path(like)
        leaves = [saved.get(jax.tree_util.keystr(path), leaf) for path, leaf in paths]
        return jax.tree_util.tree_unflatten(treedef, leaves), meta

    def close(self) -> None:
        """Finish any write in flight, then release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def _private_copy(leaf):
    """A copy of `leaf` that the next chunk's donation cannot overwrite: in host memory when this
    process holds the whole array, else on the devices (a global array: orbax copies its own
    shards to host)."""
    if getattr(leaf, "is_fully_addressable", True):
        return np.array(leaf, copy=True)
    return jnp.copy(leaf)


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
