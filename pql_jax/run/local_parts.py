"""A sweep split into W local worker processes, run side by side, waited for and merged.

On CPU one sweep process keeps about one core busy: its groups (one compiled program each) train
one after another, and XLA's CPU backend runs these small programs on one thread. Here each of W
worker processes (`worker_main`: `pql-jax sweep ... --part I/W`) trains its job-array part
(`pql_jax.plan.parts` with `WHOLE_GROUPS`: whole compiled groups, balanced by planned cost) and the
parts are merged as `--launch submitit` merges them (`pql_jax.run.submit`, itself
`parts.merge`): with map batching (the CPU default) a member's numbers do not depend on which
members share its program, so the merged table equals the in-process sweep's on every
non-timing column (tests/test_local_parts.py).

Layout as submit's: `OUT/parts/part-I-of-W/` (each worker's run directory),
`OUT/parts/part-I-of-W.log` (its output), merged `OUT/results.csv` and `OUT/tb/`. A failed
worker is reported by its last line (UserError, exit status 2) after the others finish; finished
parts are kept and unfinished ones resume from their checkpoints when rerun with `resume`.
Ctrl-C ends every worker (their checkpoints stay).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pql_jax.counts import run_vector_steps
from pql_jax.errors import UserError
from pql_jax.plan import parts
from pql_jax.plan.sweep import load_sweep
from pql_jax.run.submit import _last_line, _merge_into, part_dir, parts_to_train
from pql_jax.run.tables import read_rows

# No per-worker XLA thread flags: `--xla_cpu_multi_thread_eigen=false` (one Eigen thread per
# worker, against oversubscribing W workers) changes float rounding (return, losses differ in the
# 7th digit from the in-process run's), and these small programs keep about one core busy anyway
# (the quickstart's hparam sweep in one process: 76-80% CPU, i.e. below one core, on 2 cores).
POLL_S = 1.0
"""How often the launcher checks whether its workers have ended."""
PROGRESS_S = 10.0
"""How often the progress bar reads the parts' tables (megabytes each: not every poll)."""
STOP_GRACE_S = 10.0
"""How long an interrupted worker may take to exit before it is killed."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(sweep_file, overrides=()) -> int:
    """min(usable cores, members); 1 means the in-process path (no workers). With fewer groups
    than workers a group is split and each piece compiles its program: the compiles run side by
    side, so the wall time still falls (one compile of CPU time more per extra piece)."""
    return max(1, min(usable_cores(), len(load_sweep(sweep_file, list(overrides)).members)))


def launch_local(sweep_file, out, overrides=(), count: int | None = None, batching: str = "auto",
                 resume: bool = False, progress: bool = True, log=print) -> Path:
    """Train the `count` parts of a sweep in local worker processes side by side, wait for them,
    merge them into `out`; the merged results table (as `submit.launch_parts`).

    `count` None: `default_workers`. UserError (one line, nothing merged) for bad input, an `out`
    already used without `resume`, or a failed worker (its last line and log named)."""
    spec = load_sweep(sweep_file, list(overrides))  # bad sweep file or override: one line, nothing started
    count = default_workers(sweep_file, overrides) if count is None else count
    if count < 1:
        raise UserError(f"--workers must be >= 1 (got {count})")
    out = Path(out)
    todo = parts_to_train(out, count, resume)
    if todo:
        (out / "parts").mkdir(parents=True, exist_ok=True)
        total = sum(run_vector_steps(m.config) * m.config.env.num_envs for m in spec.members)
        workers: dict[int, subprocess.Popen] = {}
        previous = _raise_on_sigterm()
        try:
            for i in todo:
                workers[i] = _start(sweep_file, out, overrides, i, count, batching)
            log(f"training {len(spec.members)} members in {count} local worker(s) (parts "
                f"{', '.join(map(str, todo))} started); logs {out / 'parts'}/part-I-of-{count}.log")
            _wait(workers, out, count, total if progress else None, log)
        except BaseException:  # Ctrl-C, SIGTERM, or the launcher itself failing: no worker outlives it
            _stop(workers.values())
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return _merge_into(out, [part_dir(out, i, count) for i in range(1, count + 1)])


def _start(sweep_file, out: Path, overrides, index: int, count: int, batching: str) -> subprocess.Popen:
    """Start the worker of part `index`/`count` (resuming a part that wrote its run files)."""
    run = part_dir(out, index, count)
    resume = all((run / name).is_file() for name in (parts.PART_FILE, "members.yaml", "sweep.yaml"))
    if run.exists() and not resume:  # a worker that died before it wrote its run files: start over
        shutil.rmtree(run)
    command = [sys.executable, "-m", __name__, str(sweep_file), str(run), f"{index}/{count}", batching,
               "resume" if resume else "fresh", *map(str, overrides)]
    with open(log_path(out, index, count), "ab" if resume else "wb") as handle:  # the child holds its own copy
        # Its own session: a terminal's Ctrl-C reaches the launcher alone, which then stops each
        # worker's whole process group (`_stop`), never anything it did not start.
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=worker_env(), start_new_session=True)


def log_path(out: Path, index: int, count: int) -> Path:
    """Where part `index`/`count`'s worker writes its output."""
    return Path(out) / "parts" / f"part-{index}-of-{count}.log"


def worker_env() -> dict:
    """A worker's environment: this one's (its XLA_FLAGS too: a flag that changes the compiled
    code would change the numbers), plus this process's persistent compilation cache when it was
    set in-process only, so every worker loads what another compiled, and later stages too."""
    env = dict(os.environ)
    if "JAX_COMPILATION_CACHE_DIR" not in env and "jax" in sys.modules:
        import jax

        if jax.config.jax_compilation_cache_dir:
            env["JAX_COMPILATION_CACHE_DIR"] = str(jax.config.jax_compilation_cache_dir)
    return env


def _wait(workers: dict[int, subprocess.Popen], out: Path, count: int, total: int | None, log) -> None:
    """Wait for every worker (a progress bar over all members' env steps when `total` is given);
    UserError naming the failed parts, their last lines and logs."""
    bar = _bar(total, count) if total else None
    started, running, failed = time.perf_counter(), dict(workers), []
    read_at = started
    try:
        while running:
            time.sleep(POLL_S)
            for index, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[index]
                where = log_path(out, index, count)
                if proc.returncode:
                    failed.append(f"part {index}/{count} (exit {proc.returncode}: {_last_line(where) or 'no output'}; "
                                  f"log {where})")
                else:
                    (bar.write if bar else log)(f"part {index}/{count} done after {time.perf_counter() - started:.0f} s")
            if bar is not None and (time.perf_counter() - read_at >= PROGRESS_S or not running):
                read_at = time.perf_counter()
                done = sum(_env_steps_done(part_dir(out, i, count)) for i in range(1, count + 1))
                bar.n = min(total, max(bar.n, done))  # a table read mid-append counts 0 for a moment
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    if failed:
        raise UserError(f"{len(failed)} of {len(workers)} worker(s) failed: {'; '.join(failed)}; nothing merged: "
                        "fix and rerun with --resume (finished parts are kept)")


def _bar(total: int, count: int):
    from tqdm.auto import tqdm  # as the host loop's bar; only when progress is shown

    return tqdm(total=total, unit="env step", unit_scale=True, desc=f"{count} workers", dynamic_ncols=True)


def _env_steps_done(run: Path) -> int:
    """Env steps its members have reached in a part's table so far (0 before it has one)."""
    try:
        own = yaml.safe_load((run / parts.PART_FILE).read_text())["part_members"]
        done: dict[str, int] = {}
        for row in read_rows(run / "results.csv"):
            if row["member"] in own:
                done[row["member"]] = max(done.get(row["member"], 0), int(float(row["env_steps"])))
        return sum(done.values())
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):  # not written yet, or a row half-appended
        return 0


def _raise_on_sigterm():
    """Turn SIGTERM (a scheduler or `kill` ending the launcher) into SystemExit while waiting, so
    the workers, in sessions of their own, are stopped too; the previous handler (None off the
    main thread, where Python cannot set one)."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _stop(procs) -> None:
    """End the workers' process groups (SIGTERM, then SIGKILL after `STOP_GRACE_S`)."""
    alive = [p for p in procs if p.poll() is None]
    for proc in alive:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in alive:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen, sig) -> None:
    try:
        os.killpg(proc.pid, sig)  # the worker leads its own group (start_new_session): only what we started
    except ProcessLookupError:
        pass


def worker_main(argv: list[str] | None = None) -> int:
    """One worker: `python -m pql_jax.run.local_parts SWEEP OUT I/W BATCHING resume|fresh [override ...]`
    trains part I/W as `pql-jax sweep --part I/W --no-progress` does, its parts whole groups (see
    `parts.WHOLE_GROUPS`); exit status 2 with one `error:` line for a UserError."""
    sweep_file, out, part, batching, resume, *overrides = sys.argv[1:] if argv is None else argv
    from pql_jax.run import compile_cache, launch  # JAX loads in the workers

    parts.WHOLE_GROUPS = True  # every part computes the split itself: each must use the same rule
    try:
        compile_cache.enable(log=lambda m: print(m, file=sys.stderr))
        launch.train_sweep_file(sweep_file, out, overrides, resume=resume == "resume", progress=False,
                                batching=batching, part=parts.parse_part(part))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
