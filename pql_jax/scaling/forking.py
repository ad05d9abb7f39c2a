"""The one place `fit all` forks: its figures are drawn by a forked child while it fits.

Drawing the figures (matplotlib's import included) beside the fits takes 0.7-1.1 s off a ~2.9 s
`fit all` on 2 cores. The other speed-ups it once had (a second figure child, half of the
bootstrap crossings and the B* / eta* checks in forked children, ``os._exit`` to skip the
interpreter's teardown) each saved 0.25 s or less, or nothing, and were removed
(benchmarks/RESULTS.md#fit-forking).

One rule: fork only where ``fork_safe()``; one way to run work in a child: ``fork``. The child
runs the same code on the same inputs as this process would, so the outputs are the same bytes
with or without forking; a figure the child did not draw is drawn here (``api.write_figures``).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile

from pql_jax.scaling.pipeline import Results


def fork_safe() -> bool:
    """Whether work may go to a forked child: POSIX fork, at least 2 cores (on one, a child only
    competes with this process), and JAX not imported (forking a process with JAX's threads
    running can deadlock)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return hasattr(os, "fork") and "jax" not in sys.modules and cores >= 2


def fork(work):
    """(process, this end of a duplex pipe) of a forked child running ``work(its end)``.
    The child ends by ``os._exit``, so this process's atexit handlers and buffered output do not
    run a second time; a child that fails just closes its end (EOFError / OSError here). Call
    only where ``fork_safe()``."""
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(work, mine, theirs))
    proc.start()
    theirs.close()  # so that the child's end of its output reads as EOF here
    return proc, mine


def _child(work, parent_end, conn) -> None:
    try:
        parent_end.close()  # so that the parent's end of its input reads as EOF here
        work(conn)
    finally:
        os._exit(0)


class FigurePainter:
    """Draws the figures of `fit all` in a forked child while the pipeline fits (matplotlib's
    import and the drawing are ~1.5 of its ~4 CPU seconds; the fits leave a core idle).

    The child imports matplotlib, then draws each figure as soon as the pipeline has its inputs
    (``submit``, through a pickle file: the pipeline never waits on a busy child); ``finish``
    collects the PNGs. Start only where ``fork_safe()``."""

    def __init__(self):
        self.dir, self.n = tempfile.mkdtemp(prefix="pql_figures_"), 0
        self.proc, self.conn = fork(_paint)

    def submit(self, res: Results, names: list, select_level: int) -> None:
        """Hand the figures ``names`` (``figure_list.FIGURES``' function names) to the child."""
        light = Results(res.config, tables=dict(res.tables),
                        fits={k: v for k, v in res.fits.items() if k == "fit_budget"},
                        objects={k: v for k, v in res.objects.items() if k in _FIGURE_OBJECTS},
                        summary={"select_level": select_level})
        if "isotonic_curves" in names and light.objects.get("groups"):  # only the first env's runs are drawn
            env = light.objects["groups"][0].key[0]
            light.objects["groups"] = [g for g in light.objects["groups"] if g.key[0] == env]
        else:
            light.objects.pop("groups", None)
        path = os.path.join(self.dir, f"{self.n}.pkl")
        self.n += 1
        with open(path, "wb") as fh:
            pickle.dump(light, fh, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.conn.send((path, names))
        except OSError:  # the child failed: ``api.write_figures`` draws what it did not
            pass

    def finish(self) -> dict:
        """{function name: PNG bytes, or None where the results do not support the figure} of the
        figures the child drew (none where it failed)."""
        try:
            self.conn.send(None)
            pngs = self.conn.recv()
        except (EOFError, OSError):  # the child failed
            pngs = {}
        self.proc.join()
        return pngs

    def close(self) -> None:
        """Stop the child (after ``finish``, or when the pipeline failed) and remove the inputs."""
        self.conn.close()
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join()
        shutil.rmtree(self.dir, ignore_errors=True)


#: What the figures read of ``Results.objects``.
_FIGURE_OBJECTS = ("groups", "keys", "thresholds", "batch_size", "learning_rate", "data")


def _paint(conn) -> None:
    """The FigurePainter child: draw the figures that arrive as (pickle file, names) until None,
    then send back {function name: PNG bytes or None}."""
    from pql_jax.scaling import plots  # matplotlib: imported here, in the child, beside the fits

    done, loaded = {}, {}
    while (msg := conn.recv()) is not None:
        path, names = msg
        if path not in loaded:
            with open(path, "rb") as fh:
                loaded = {path: pickle.load(fh)}
        for fn in names:
            done[fn] = plots.render(loaded[path], fn)
    conn.send(done)
