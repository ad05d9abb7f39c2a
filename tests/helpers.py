"""Helpers tests share (beyond conftest's fixtures): interrupting a training run from outside."""

from __future__ import annotations

import contextlib

from pql_jax.run import program

INTERRUPT_AFTER = """
from pql_jax.run import program as _program
_real_step, _calls = _program.GroupProgram.step, [0]
def _step(self, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] > {chunks}:
        raise SystemExit(0)
    return _real_step(self, *args, **kwargs)
_program.GroupProgram.step = _step
"""
"""Code for a subprocess (`python -c`) that ends it, exit status 0, when it starts its chunk
number `chunks` + 1, as an interrupted process would stop between chunks."""


@contextlib.contextmanager
def interrupt_after(chunks: int):
    """Raise KeyboardInterrupt (what a user's Ctrl-C raises) when the host loop starts its chunk
    number `chunks` + 1 in this process: chunks 1..`chunks` are trained, written and checkpointed."""
    real, calls = program.GroupProgram.step, [0]

    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > chunks:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    program.GroupProgram.step = step
    try:
        yield
    finally:
        program.GroupProgram.step = real
