"""File-level API mirroring the commands: read a table, fit, write outputs atomically."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

from pql_jax.scaling.datafit import DataEfficiencyFit, fit_data_efficiency
from pql_jax.scaling.fit import PowerFit, fit_fixed_effects
from pql_jax.scaling.io import (_numeric_column, _check_values, atomic_output_dir, load_crossings,
                                read_table, require_columns, require_distinct, write_json)
from pql_jax.scaling.curves import fork_safe
from pql_jax.scaling.figure_list import FIGURES
from pql_jax.scaling.pipeline import PipelineConfig, Results, fit_all


def fit_data_efficiency_file(crossings, out: str, shared: bool = False, normalise: str | None = None,
                             holdout: str | None = None) -> DataEfficiencyFit:
    """`fit data-efficiency`: fit D_J to a crossings CSV (or DataFrame); write ``out/fit.json``
    and ``out/predictions.csv`` (the input rows plus ``data_fit``)."""
    df = load_crossings(crossings)
    require_distinct(df[np.isfinite(df["data"])], "utd", "crossings")
    if "model_size" in df.columns and df["model_size"].nunique() > 1:
        require_distinct(df, "model_size", "crossings")
    fit, pred = fit_data_efficiency(df, shared=shared, normalise=normalise, holdout=holdout)
    with atomic_output_dir(out) as tmp:
        write_json(os.path.join(tmp, "fit.json"), fit.to_dict())
        pred.to_csv(os.path.join(tmp, "predictions.csv"), index=False)
    return fit


def fit_hparam_file(table, out: str, hp: str = "batch_size", shared: bool = True) -> PowerFit:
    """`fit batch-size` / `fit learning-rate`: log-log fit of hp against utd (fixed effects)."""
    df = read_table(table, "table")
    if hp == "lr" and "lr" not in df.columns and "critic_lr" in df.columns:
        df = df.rename(columns={"critic_lr": "lr"})
    require_columns(df, ["utd", hp], "table")
    df["env"] = df["env"].astype(str) if "env" in df.columns else "all"
    for col in ("utd", hp):
        df[col] = _numeric_column(df, col, "table")
    _check_values(df, ["utd", hp], "table")
    require_distinct(df, "utd", "table")
    pf = fit_fixed_effects(df, hp, "utd", shared=shared)
    pred = df.copy()
    pred[f"{hp}_fit"] = [pf.predict(e, u) for e, u in zip(df["env"], df["utd"])]
    with atomic_output_dir(out) as tmp:
        write_json(os.path.join(tmp, "fit.json"), pf.to_dict())
        pred.to_csv(os.path.join(tmp, "predictions.csv"), index=False)
    return pf


def fit_all_file(curves, out: str, config: PipelineConfig | None = None) -> Results:
    """`fit all`: run the pipeline, then write every table, fit, figure and report.md. Figures
    are drawn by ``FigurePainter`` while the pipeline fits, where forking is safe."""
    painter = FigurePainter() if (config or PipelineConfig()).figures and fork_safe() else None
    try:
        res = fit_all(curves, config, painter=painter)
        write_results(res, out, painter)
    finally:
        if painter is not None:
            painter.close()
    return res


def write_results(res: Results, out: str, painter=None) -> None:
    """Write a pipeline result into ``out`` (atomically: all files or none); ``painter``: the
    ``FigurePainter`` that drew its figures while it was fitted."""
    from pql_jax.scaling import report

    with atomic_output_dir(out) as tmp:
        t0 = time.perf_counter()
        figures = []
        if res.config.figures and painter is not None:
            figures = painter.finish(res, os.path.join(tmp, "figures"))
        elif res.config.figures:  # matplotlib is imported only when figures are wanted
            from pql_jax.scaling import plots

            figures = plots.make_figures(res, os.path.join(tmp, "figures"))
        res.timings["figures"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for name, table in res.tables.items():
            table.to_csv(os.path.join(tmp, f"{name}.csv"), index=False)
        for name, obj in res.fits.items():
            write_json(os.path.join(tmp, f"{name}.json"), obj)
        res.timings["write"] = time.perf_counter() - t0
        res.summary["timings"] = res.timings
        write_json(os.path.join(tmp, "summary.json"), res.summary)
        report.write_report(res, tmp, figures)


class FigurePainter:
    """Draws the figures of `fit all` in forked children while the pipeline fits (matplotlib's
    import and the drawing took about half of `fit all`'s time; the fits leave a core idle).

    One child imports matplotlib, then forks a second; each gets the inputs of its figures
    (``submit``, as soon as the pipeline has them) and returns the PNGs (``finish``). Inputs go
    through a pickle file, so the pipeline never waits on a busy child; a figure whose child
    failed is drawn here (raising what it raised). Start only where ``fork_safe()``."""

    LANE = {"batch_size_fit": 1, "learning_rate_fit": 1, "pareto": 1}  # lane 0: the others

    def __init__(self):
        import multiprocessing
        import tempfile

        self.dir, self.n = tempfile.mkdtemp(prefix="pql_figures_"), 0
        ctx = multiprocessing.get_context("fork")
        self.pipes = [ctx.Pipe() for _ in range(2)]
        self.proc = ctx.Process(target=_paint_lanes, args=(self.pipes,))
        self.proc.start()
        for _, child_end in self.pipes:
            child_end.close()  # so that a child's failure reads as the end of its output here

    def submit(self, res, names: list, select_level: int) -> None:
        """Hand the figures ``names`` (``FIGURES``' function names) to the children."""
        import pickle

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
        for lane in (0, 1):
            mine = [n for n in names if self.LANE.get(n, 0) == lane]
            if mine:
                try:
                    self.pipes[lane][0].send((path, mine))
                except OSError:  # the child failed: its figures are drawn in ``finish``
                    pass

    def finish(self, res, out_dir: str) -> list[str]:
        """Write the figures into ``out_dir`` (those not drawn by a child are drawn here); return
        the file names written, in ``FIGURES`` order."""
        os.makedirs(out_dir, exist_ok=True)
        pngs = {}
        for conn, _ in self.pipes:
            try:
                conn.send(None)
            except OSError:  # the child is gone
                pass
        for conn, _ in self.pipes:
            try:
                pngs.update(conn.recv())
            except (EOFError, OSError):  # the child failed: its figures are drawn here
                pass
        self.proc.join()
        files = {fn: name for name, fn in FIGURES}
        missing = [fn for fn, _ in files.items() if fn not in pngs]
        if missing:
            from pql_jax.scaling import plots

            pngs.update({fn: plots.render(res, fn) for fn in missing})
        for fn, png in pngs.items():
            if png is not None:
                with open(os.path.join(out_dir, files[fn]), "wb") as fh:
                    fh.write(png)
        return [name for name, fn in FIGURES if pngs.get(fn) is not None]

    def close(self) -> None:
        """Stop the children (after ``finish``, or when the pipeline failed) and remove the inputs."""
        import shutil

        for conn, _ in self.pipes:
            conn.close()
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join()
        shutil.rmtree(self.dir, ignore_errors=True)



#: What the figures read of ``Results.objects``.
_FIGURE_OBJECTS = ("groups", "keys", "thresholds", "batch_size", "learning_rate", "data")


def _paint_lanes(pipes) -> None:
    """A FigurePainter child: import matplotlib, fork the second lane, draw what arrives until
    None, then send back {function name: PNG bytes or None}. Quiet: a failure ends the lane
    without output (the parent draws its figures)."""
    import pickle

    try:
        for parent_end, _ in pipes:
            parent_end.close()  # so that the parent's exit reads as the end of the input here
        from pql_jax.scaling import plots

        pid = os.fork()
        lane = 1 if pid == 0 else 0
        conn = pipes[lane][1]
        pipes[1 - lane][1].close()
        done, loaded = {}, {}
        while (msg := conn.recv()) is not None:
            path, names = msg
            if path not in loaded:
                with open(path, "rb") as fh:
                    loaded = {path: pickle.load(fh)}
            for fn in names:
                done[fn] = plots.render(loaded[path], fn)
        conn.send(done)
        if pid:
            os.waitpid(pid, 0)
    finally:
        os._exit(0)  # no atexit handlers / buffers of the parent run twice


def read_crossings(path) -> pd.DataFrame:
    """Read and validate a crossings table (see README for the columns)."""
    return load_crossings(path)


__all__ = ["fit_data_efficiency_file", "fit_hparam_file", "fit_all_file", "write_results",
           "read_crossings"]
