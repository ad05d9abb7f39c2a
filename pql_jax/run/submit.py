"""A sweep's job-array parts launched through submitit, waited for, and merged.

`pql-jax sweep SWEEP.yaml --out OUT --parts N --launch submitit` submits the N parts of
`pql_jax.plan.parts` as one job array (SLURM where `sbatch` exists, submitit's local executor
elsewhere, or as `--cluster` says), waits, and merges them: the parts' run directories are
`OUT/parts/part-I-of-N/`, the merged results table and TensorBoard tree `OUT/results.csv` and
`OUT/tb/`. Rerun with `--resume` after a failure: finished parts are not submitted again,
unfinished ones resume from their checkpoints.

submitit is an optional extra (`pip install "pql_jax[submitit]"`): it is imported only here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from pql_jax.errors import UserError
from pql_jax.plan import parts
from pql_jax.plan.sweep import load_sweep

#: `--slurm KEY=VALUE,...` keys -> submitit's AutoExecutor parameters (and the value's type).
#: Generic ones apply to every cluster; `slurm_*` ones only on SLURM (ignored by the local executor).
SLURM_OPTIONS = {
    "partition": ("slurm_partition", str),  # SLURM partition (queue)
    "account": ("slurm_account", str),  # account charged
    "qos": ("slurm_qos", str),  # quality of service
    "constraint": ("slurm_constraint", str),  # node features, e.g. a GPU model
    "gpus": ("gpus_per_node", int),  # GPUs per part (one part runs on one node)
    "cpus": ("cpus_per_task", int),  # CPU cores per part
    "mem_gb": ("mem_gb", float),  # host memory per part
    "time": ("timeout_min", int),  # wall-clock limit per part, minutes
    "parallel": ("slurm_array_parallelism", int),  # at most this many parts running at once
}
CLUSTERS = ("auto", "slurm", "local")  # submitit's "debug" executor drops into pdb on a failure


def parse_slurm(text: str | None) -> dict:
    """`partition=gpu,gpus=1,time=240` -> AutoExecutor parameters; UserError naming a bad item."""
    out = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in SLURM_OPTIONS:
            raise UserError(f"--slurm: {item!r} is not KEY=VALUE with KEY one of {', '.join(SLURM_OPTIONS)}")
        name, kind = SLURM_OPTIONS[key]
        try:
            out[name] = kind(value.strip())
        except ValueError:
            raise UserError(f"--slurm: {key} must be {kind.__name__}, got {value!r}") from None
        if kind is not str and not out[name] > 0:
            raise UserError(f"--slurm: {key} must be positive, got {value!r}")
    return out


def part_dir(out: Path, index: int, count: int) -> Path:
    """The run directory of part `index` of `count` under a launched sweep's `out`."""
    return Path(out) / "parts" / f"part-{index}-of-{count}"


def train_part(sweep_file: str, out: str, overrides: list, index: int, count: int, batching: str,
               resume: bool) -> int:
    """One job of the array: train part `index`/`count` into its run directory; its member count."""
    from pql_jax.run import launch  # JAX and the learner load in the jobs only, not in the waiting submitter

    resume = resume and Path(out).exists()  # a part not started before starts fresh
    rows = launch.train_sweep_file(sweep_file, out, overrides, resume=resume, progress=False,
                                   batching=batching, part=(index, count))
    return len(rows)


def _finished(d: Path) -> bool:
    """Whether `d` holds a part whose members all reached their last env step."""
    if not (d / parts.PART_FILE).is_file() or not (d / "results.csv").is_file():
        return False
    try:
        parts.finished_rows([d], [yaml.safe_load((d / parts.PART_FILE).read_text())], "results.csv")
    except UserError:
        return False
    return True


def parts_to_train(out: Path, count: int, resume: bool) -> list[int]:
    """The parts (1-based) of `count` not yet finished in `out`; UserError when `out` holds a merged
    sweep or parts and `resume` is not set (a rerun would mix two sweeps)."""
    if (out / "results.csv").exists() and not resume:
        raise UserError(f"{out} already holds a merged sweep; choose another --out")
    if (out / "parts").exists() and not resume:
        raise UserError(f"{out / 'parts'} already holds parts; pass --resume to continue them")
    return [i for i in range(1, count + 1) if not _finished(part_dir(out, i, count))]


def _executor(folder: Path, cluster: str, slurm: dict):
    """submitit's AutoExecutor for the parts (UserError naming the extra when submitit is missing)."""
    try:
        import submitit  # an optional extra: needed only by --launch submitit
    except ImportError:
        raise UserError('--launch submitit needs submitit: pip install "pql_jax[submitit]"') from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=None if cluster == "auto" else cluster)
    executor.update_parameters(name="pql_jax", **({"timeout_min": 24 * 60} | slurm))
    return executor


def launch_parts(sweep_file, out, overrides=(), count: int = 2, cluster: str = "auto", slurm: str | None = None,
                 batching: str = "auto", resume: bool = False, log=print) -> Path:
    """Submit the `count` parts of a sweep, wait for them, merge them into `out`; the merged table.

    UserError (one line, nothing merged) for bad options, a run directory already used without
    `resume`, or a part that failed (its log named; rerun with --resume)."""
    if count < 1:
        raise UserError(f"--parts must be >= 1 (got {count})")
    if cluster not in CLUSTERS:
        raise UserError(f"--cluster must be one of {', '.join(CLUSTERS)} (got {cluster!r})")
    options = parse_slurm(slurm)
    load_sweep(sweep_file, list(overrides))  # bad sweep file or override: one line before anything is submitted
    out = Path(out)
    todo = parts_to_train(out, count, resume)
    if todo:
        executor = _executor(out / "parts" / "submitit", cluster, options)
        dirs = [str(part_dir(out, i, count)) for i in todo]
        jobs = executor.map_array(train_part, [str(sweep_file)] * len(todo), dirs, [list(overrides)] * len(todo),
                                  todo, [count] * len(todo), [batching] * len(todo), [resume] * len(todo))
        log(f"submitted {len(jobs)} part(s) of {count} ({executor.cluster}): job ids "
            + ", ".join(str(j.job_id) for j in jobs) + "; waiting")
        _wait(jobs, todo, count)
    return _merge_into(out, [part_dir(out, i, count) for i in range(1, count + 1)])


def _wait(jobs, todo: list[int], count: int) -> None:
    """Wait for every job; UserError naming the failed parts, their errors and logs."""
    failed = []
    for job, index in zip(jobs, todo):
        try:
            job.result()
        except Exception as exc:  # submitit's FailedJobError (its text points at the log) or the like
            log = Path(job.paths.stderr)
            failed.append(f"part {index}/{count} ({_last_line(log) or type(exc).__name__}; log {log})")
    if failed:
        raise UserError(f"{len(failed)} part(s) failed: {'; '.join(failed)}; nothing merged: fix and rerun "
                        "with --resume (finished parts are kept)")


def _last_line(path: Path) -> str:
    """The last non-empty line of a job's log (the exception that ended it), or ''."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _merge_into(out: Path, dirs: list[Path]) -> Path:
    """Merge the parts into `out` itself, beside `out/parts` (via a temporary directory)."""
    tmp = out / ".merging"
    shutil.rmtree(tmp, ignore_errors=True)
    table = parts.merge(dirs, tmp)
    for entry in sorted(tmp.iterdir()):
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        entry.replace(target)
    tmp.rmdir()
    return out / table.name
