"""A sweep trained by W local worker processes side by side, taking pieces from a queue, and merged.

On CPU one sweep process keeps about one core busy: its groups (one compiled program each) train
one after another, and XLA's CPU backend runs these small programs on one thread. Here the sweep
is cut into pieces (`pql_jax.plan.parts.queue`: equal pieces of each compiled group, about
`PIECES_PER_WORKER` per worker) and each of W worker processes (`worker_main`) takes the next
piece as it finishes one and trains it as `pql-jax sweep ... --part I/N` would. A queue needs no
cost model: static shares by planned FLOPs left one of 2 workers idle for half of the
quickstart's UTD sweep. The pieces are merged as
`--launch submitit` merges parts (`pql_jax.run.submit`, itself `parts.merge`): with map batching
(the CPU default) a member's numbers do not depend on which members share its program, so the
merged table equals the in-process sweep's on every non-timing column (tests/test_local_parts.py).

Layout: `OUT/parts/part-I-of-N/` (each piece's run directory), `OUT/parts/queue.yaml` (the pieces
to train, in order), `OUT/parts/part-I-of-N.claim` (taken by a worker), `OUT/parts/worker-K-of-W.log`
(each worker's output), merged `OUT/results.csv` and `OUT/tb/`. A failed worker is reported by its
last line (UserError, exit status 2) after the others have emptied the queue; finished pieces are
kept and unfinished ones resume from their checkpoints when rerun with `resume`. Ctrl-C ends every
worker (their checkpoints stay).
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
from pql_jax.plan.costs import sweep_costs
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
QUEUE_FILE = "queue.yaml"
"""The pieces left to train, in the order they are taken, under `OUT/parts/` (read by every worker)."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(sweep_file, overrides=()) -> int:
    """min(usable cores, members); 1 means the in-process path (no workers). Groups are cut into
    equal pieces (`parts.queue`), so a worker taking a piece of a group another worker compiled
    reads its program from the persistent compilation cache instead of compiling it again."""
    return max(1, min(usable_cores(), len(load_sweep(sweep_file, list(overrides)).members)))


def launch_local(sweep_file, out, overrides=(), count: int | None = None, batching: str = "auto",
                 resume: bool = False, progress: bool = True, log=print) -> Path:
    """Train a sweep's queue pieces in `count` local worker processes side by side, wait for them,
    merge them into `out`; the merged results table (as `submit.launch_parts`).

    `count` None: `default_workers`. UserError (one line, nothing merged) for bad input, an `out`
    already used without `resume`, or a failed worker (its last line and log named)."""
    spec = load_sweep(sweep_file, list(overrides))  # bad sweep file or override: one line, nothing started
    count = default_workers(sweep_file, overrides) if count is None else count
    if count < 1:
        raise UserError(f"--workers must be >= 1 (got {count})")
    out = Path(out)
    pieces = parts.queue(spec, sweep_costs(spec), count)
    todo = parts_to_train(out, len(pieces), resume)
    if todo:
        (out / "parts").mkdir(parents=True, exist_ok=True)
        for claim in (out / "parts").glob("*.claim"):  # a previous launch's: its workers are gone
            claim.unlink()
        queue = {"pieces": len(pieces), "todo": todo}
        (out / "parts" / QUEUE_FILE).write_text(yaml.safe_dump(queue, sort_keys=False))
        total = sum(run_vector_steps(m.config) * m.config.env.num_envs for m in spec.members)
        workers: dict[int, subprocess.Popen] = {}
        previous = _raise_on_sigterm()
        try:
            for k in range(1, min(count, len(todo)) + 1):
                workers[k] = _start(sweep_file, out, overrides, k, count, batching)
            log(f"training {len(spec.members)} members in {len(workers)} local worker(s) from a queue of "
                f"{len(todo)} piece(s); logs {out / 'parts'}/worker-K-of-{count}.log")
            _wait(workers, out, count, len(pieces), total if progress else None, log)
        except BaseException:  # Ctrl-C, SIGTERM, or the launcher itself failing: no worker outlives it
            _stop(workers.values())
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return _merge_into(out, [part_dir(out, i, len(pieces)) for i in range(1, len(pieces) + 1)])


def _start(sweep_file, out: Path, overrides, index: int, count: int, batching: str) -> subprocess.Popen:
    """Start worker `index`/`count` (it takes pieces from `OUT/parts/queue.yaml` until none is left)."""
    command = [sys.executable, "-m", __name__, str(sweep_file), str(out), f"{index}/{count}", batching,
               *map(str, overrides)]
    with open(log_path(out, index, count), "ab") as handle:  # the child holds its own copy
        # Its own session: a terminal's Ctrl-C reaches the launcher alone, which then stops each
        # worker's whole process group (`_stop`), never anything it did not start.
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=worker_env(), start_new_session=True)


def log_path(out: Path, index: int, count: int) -> Path:
    """Where worker `index`/`count` writes its output."""
    return Path(out) / "parts" / f"worker-{index}-of-{count}.log"


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


def _wait(workers: dict[int, subprocess.Popen], out: Path, count: int, pieces: int, total: int | None, log) -> None:
    """Wait for every worker of `count` (a progress bar over the `pieces` pieces' env steps when
    `total` is given); UserError naming the failed workers, their last lines and logs."""
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
                    failed.append((index, f"worker {index}/{count} (exit {proc.returncode}: "
                                          f"{_last_line(where) or 'no output'}; log {where})"))
                else:
                    (bar.write if bar else log)(f"worker {index}/{count} done after {time.perf_counter() - started:.0f} s")
            if bar is not None and (time.perf_counter() - read_at >= PROGRESS_S or not running):
                read_at = time.perf_counter()
                done = sum(_env_steps_done(part_dir(out, i, pieces)) for i in range(1, pieces + 1))
                bar.n = min(total, max(bar.n, done))  # a table read mid-append counts 0 for a moment
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    if failed:
        raise UserError(f"{len(failed)} of {len(workers)} worker(s) failed: {'; '.join(f for _, f in sorted(failed))}; "
                        "nothing merged: fix and rerun with --resume (finished pieces are kept)")


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
    """One worker: `python -m pql_jax.run.local_parts SWEEP OUT K/W BATCHING [override ...]` takes
    pieces from `OUT/parts/queue.yaml` until none is left and trains each as `pql-jax sweep --part
    I/N --no-progress` does (a piece of a group another worker compiled reads its program from the
    persistent compilation cache), resuming one a dead worker left; exit status 2 with one
    `error:` line for a UserError."""
    sweep_file, out, worker, batching, *overrides = sys.argv[1:] if argv is None else argv
    from pql_jax.run import compile_cache, launch  # JAX loads in the workers

    out, (_, workers) = Path(out), parts.parse_part(worker)
    queue = yaml.safe_load((out / "parts" / QUEUE_FILE).read_text())
    try:
        compile_cache.enable(log=lambda m: print(m, file=sys.stderr))
        count = queue["pieces"]
        while (index := _claim(out, queue)) is not None:
            run = part_dir(out, index, count)
            resume = all((run / name).is_file() for name in (parts.PART_FILE, "members.yaml", "sweep.yaml"))
            if run.exists() and not resume:  # a worker died before it wrote the run files: start over
                shutil.rmtree(run)
            print(f"piece {index}/{count}", flush=True)
            launch.train_sweep_file(sweep_file, run, overrides, resume=resume, progress=False, batching=batching,
                                    part=(index, count), queue_workers=workers)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _claim(out: Path, queue: dict) -> int | None:
    """The next piece in the queue's order (costliest first: a large piece taken last would leave
    the other workers idle), claimed by creating its claim file (atomic: two workers never take
    one piece); None when every piece is taken."""
    for index in queue["todo"]:
        claim = out / "parts" / f"part-{index}-of-{queue['pieces']}.claim"
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        return index
    return None


if __name__ == "__main__":
    sys.exit(worker_main())
