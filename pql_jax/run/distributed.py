"""Several processes (hosts) training one sweep: JAX's multi-controller runtime.

`pql-jax sweep ... --coordinator HOST:PORT --num-processes N --process-id I` (or `--distributed auto`,
where JAX reads SLURM / cloud TPU itself) starts every process the same way; `initialize` joins
them before any JAX computation. Every process then runs the same host loop: the members are
sharded over ALL processes' devices (the programs' mesh is `jax.devices()`, global), host values
enter the programs as global arrays (`place`), results come back to every host with
`process_allgather` (`to_host`), and only process 0 (`is_primary`) writes the run directory
(results table, TensorBoard, run files); checkpoints are written by every process (orbax: each its
own shards, process 0 the metadata). With one process every function here is the old
single-process path, unchanged.
"""

from __future__ import annotations

import inspect
import os
import re
import socket
import sys
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from pql_jax.errors import UserError

AUTO = "auto"
DEFAULT_TIMEOUT = 300
"""Seconds `initialize` waits for the coordinator and for every process to join."""


def parse_coordinator(text: str) -> str:
    """`HOST:PORT` (port 1..65535) -> the same text; UserError otherwise."""
    match = re.fullmatch(r"(\[[^\]]+\]|[^:\s]+):(\d+)", str(text).strip())
    if not match or not 0 < int(match[2]) < 65536:
        raise UserError(f"--coordinator must be HOST:PORT with a port in 1..65535 (got {text!r})")
    return str(text).strip()


def check_flags(coordinator: str | None, num_processes: int | None, process_id: int | None,
                mode: str | None) -> dict | None:
    """The keyword arguments of `jax.distributed.initialize` these flags ask for ({} for `auto`),
    None for a single process; UserError for flags that do not go together or are out of range."""
    explicit = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    given = [name for name, value in explicit.items() if value is not None]
    if mode not in (None, AUTO):
        raise UserError(f"--distributed takes only {AUTO!r} (got {mode!r})")
    if mode == AUTO:
        if given:
            raise UserError(f"--distributed auto lets JAX find the cluster; drop {', '.join(given)} "
                            "(or give all three explicit flags instead)")
        return {}
    if not given:
        return None
    if len(given) < len(explicit):
        missing = [name for name in explicit if name not in given]
        raise UserError(f"--coordinator, --num-processes and --process-id go together; missing {', '.join(missing)}")
    if num_processes < 1:
        raise UserError(f"--num-processes must be >= 1 (got {num_processes})")
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process-id must be in 0..{num_processes - 1} for --num-processes {num_processes} "
                        f"(got {process_id})")
    return {"coordinator_address": parse_coordinator(coordinator), "num_processes": num_processes,
            "process_id": process_id}


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               mode: str | None = None, timeout: int = DEFAULT_TIMEOUT) -> int:
    """Join the processes these flags describe (nothing for a single process); returns the process
    count. Call before any JAX computation. UserError when the flags are bad, the coordinator
    cannot be reached or not every process joins within `timeout` seconds, or the processes
    disagree on the process count."""
    kwargs = check_flags(coordinator, num_processes, process_id, mode)
    if kwargs is None:
        return 1
    if timeout < 1:
        raise UserError(f"--init-timeout must be >= 1 second (got {timeout})")
    _cpu_collectives(jax)
    if kwargs:  # JAX's own connect failures end the process from C++ (no exception): check first
        _check_coordinator(kwargs["coordinator_address"], kwargs["process_id"], timeout)
    accepted = inspect.signature(jax.distributed.initialize).parameters
    options = {"initialization_timeout": timeout + JAX_GRACE, **kwargs}
    watchdog = _exit_after(timeout, _join_failure(kwargs, timeout, None))
    try:
        jax.distributed.initialize(**{k: v for k, v in options.items() if k in accepted})
        _check_agreement(jax, num_processes)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - JAX raises RuntimeError, ValueError or XlaRuntimeError
        raise UserError(_join_failure(kwargs, timeout, exc)) from None
    finally:
        watchdog.cancel()
    return jax.process_count()


JAX_GRACE = 10
"""Seconds JAX's own join timeout exceeds ours: JAX ends a process whose join fails from C++, with
its own fatal message (status 134), so the watchdog of `_exit_after` must fire first."""


def _exit_after(seconds: float, message: str) -> threading.Timer:
    """A started timer that prints `error: message` and ends the process with status 2 unless
    cancelled: joining blocks in JAX's C++ client, where no Python exception can stop it. Nothing
    has been written when it fires (joining comes before any output)."""
    def stop():
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()
    return timer


def _check_coordinator(address: str, process_id: int, timeout: int) -> None:
    """UserError unless process 0 can serve `address` here (a local address, the port free) or, for
    the other processes, something listens at `address` within `timeout` seconds."""
    host, port = address.rsplit(":", 1)
    host, port = host.strip("[]"), int(port)
    if process_id == 0:
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as JAX's server does
                probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"process 0 cannot start the coordinator at {address} ({exc.strerror}): give "
                            "process 0's own host name and a free port") from None
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise UserError(f"could not reach the coordinator at {address} within {timeout} s "
                                "(is process 0 running there?)") from None
            time.sleep(0.2)


def _cpu_collectives(jax) -> None:
    """Cross-process collectives on CPU need an implementation (gloo) in JAX versions whose default is none."""
    name = "jax_cpu_collectives_implementation"
    if hasattr(jax.config, name) and getattr(jax.config, name) in (None, "", "none"):
        jax.config.update(name, "gloo")


def _join_failure(kwargs: dict, timeout: int, exc: Exception | None) -> str:
    """One line saying why the processes could not be joined (`exc` None: they timed out)."""
    detail = " ".join(str(exc).split())[:200] if exc is not None else "timed out"
    if not kwargs:
        return f"--distributed auto: JAX found no cluster to join (SLURM, cloud TPU, ...): {detail}"
    where = kwargs["coordinator_address"]
    if kwargs["process_id"] == 0:
        return f"not all {kwargs['num_processes']} processes joined the coordinator at {where} within {timeout} s: {detail}"
    return f"could not join the coordinator at {where} within {timeout} s (is process 0 running?): {detail}"


def _check_agreement(jax, num_processes: int | None) -> None:
    """UserError on every process when the processes were started with different process counts
    (each sees every process's count, so all stop with the same message)."""
    claimed = num_processes if num_processes is not None else jax.process_count()
    counts = np.asarray(multihost_utils.process_allgather(np.array([claimed], np.int64))).reshape(-1)
    if len(set(counts.tolist())) > 1 or counts[0] != jax.process_count():
        raise UserError(f"the processes disagree on --num-processes: {counts.tolist()} by process, "
                        f"{jax.process_count()} joined")


def process_count() -> int:
    """Processes in this run (1 unless `initialize` joined several)."""
    return jax.process_count()


def is_primary() -> bool:
    """Whether this process writes the run directory (process 0; always true for a single process)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing with one process)."""
    if process_count() > 1:
        multihost_utils.sync_global_devices(name)


def to_host(tree):
    """A pytree of (global) arrays as numpy on this host, whole: `jax.device_get` when every shard
    is addressable here (one process), else `process_allgather` (every process must call it)."""
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def place(tree, sharding):
    """Host-side arrays (the same values on every process) as global arrays of `sharding`; with one
    process the tree is returned unchanged (jit places it, as before)."""
    if process_count() == 1:
        return tree
    def one(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)
