"""JAX's persistent compilation cache, on by default for pql_jax's commands.

A Playground program takes about a minute to compile on 2 CPU cores and every new process (each
`train`, workflow stage, resume, test run) compiled it again. With the cache, a second process
running the same program loads the compiled executable from disk in seconds.

Where: `$PQL_JAX_COMPILE_CACHE`, else `$XDG_CACHE_HOME/pql_jax/jax` (default `~/.cache/...`);
`PQL_JAX_COMPILE_CACHE=off` disables it. JAX's own setting wins: when `JAX_COMPILATION_CACHE_DIR`
is set, or `jax_compilation_cache_dir` was already configured in this process, nothing changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV_VAR = "PQL_JAX_COMPILE_CACHE"
OFF = ("off", "0", "false", "no", "")


def default_dir() -> Path:
    """The user-level cache directory pql_jax uses when nothing else is configured."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pql_jax" / "jax"


def enable(log=None) -> Path | None:
    """Turn the persistent compilation cache on (see the module docstring); returns its directory,
    or None when it is off or left to JAX's own setting."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return None
    chosen = os.environ.get(ENV_VAR)
    if chosen is not None and chosen.strip().lower() in OFF:
        return None
    path = Path(chosen).expanduser() if chosen else default_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # an unwritable cache must not stop a run
        if log:
            log(f"note: compilation cache off ({path}: {exc.strerror})")
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path
