"""The `pql-jax` command line: one entry point, one subcommand per job.

Each training command imports JAX and the learner inside its handler: `fit` and `propose` must
not load JAX (the figure child forks only without it, pql_jax.scaling.forking) and `envs` or a
usage error should not wait for it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pql_jax.errors import UserError
from pql_jax.scaling import cli as scaling_cli


COMPILING = ("train", "plan", "sweep", "workflow")
"""Commands that compile JAX programs: they use the persistent compilation cache (run/compile_cache.py)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pql-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one PQL agent", description=_cmd_train.__doc__)
    train.add_argument("--config", help="YAML config (configs/<task>.yaml); defaults when omitted")
    train.add_argument("--out", help="run directory (TensorBoard events, metrics.csv, checkpoints)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    train.set_defaults(func=_cmd_train)
    for name, func, helptext in (("plan", _cmd_plan, "print a sweep's (or workflow's) members, groups, compiled "
                                                    "memory, evaluation share and FLOPs"),
                                 ("sweep", _cmd_sweep, "train every member of a sweep as vmapped populations")):
        cmd = sub.add_parser(name, help=helptext, description=func.__doc__)
        cmd.add_argument("sweep_file", metavar="SWEEP.yaml")
        if name == "plan":
            cmd.add_argument("--calibrate", action="store_true",
                             help="also run a few chunks of each group here: compile time, steady env steps/s and "
                                  "updates/s, and the projected wall time of the whole sweep (or workflow)")
            cmd.add_argument("--chunks", type=int, default=2,
                             help="with --calibrate: timed chunks per group, each without and with evaluation")
            _add_member_batching(cmd, "as for sweep (a workflow file's own `batching` when auto)")
        if name == "sweep":
            cmd.add_argument("--out", required=True, help="sweep directory (results.csv, tb/, checkpoints/)")
            cmd.add_argument("--resume", action="store_true", help="continue the sweep in --out")
            cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
            cmd.add_argument("--part", metavar="I/N",
                             help="train only the I-th of N shares of the members (whole compiled groups where "
                                  "possible, balanced by planned FLOPs), e.g. one job-array task; merge the parts "
                                  "with pql-jax merge")
            _add_member_batching(cmd, "members within a device: vmap (batched, fastest on accelerators) or map "
                                      "(one after another, bit-identical to single runs); auto: map on CPU, vmap "
                                      "otherwise. Not env.batching, which batches one member's env copies")
            _add_launch_flags(cmd)
            _add_distributed_flags(cmd)
        cmd.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides of the base config")
        cmd.set_defaults(func=func)
    wf = sub.add_parser("workflow", help="the scaling workflow: sweeps -> fitted laws -> proposal -> verification",
                        description=_cmd_workflow.__doc__)
    wf.add_argument("workflow_file", metavar="WORKFLOW.yaml")
    wf.add_argument("--out", required=True, help="run directory (one folder per stage, report.md)")
    wf.add_argument("--from", dest="start", metavar="STAGE",
                    help="rerun from this stage (hparam_sweep, fit_hparams, utd_sweep, refine, fit_laws, verify, report)")
    wf.add_argument("--no-progress", action="store_true", help="no progress bars")
    wf.add_argument("--part", metavar="I/N", help="train only the I-th of N shares of each sweep stage (a job-array "
                                                  "task; --out on a shared file system); the stage merges and the "
                                                  "workflow goes on once every part has finished")
    wf.add_argument("--workers", default="auto", metavar="N",
                    help="local worker processes per sweep stage on CPU (map batching), run side by side and "
                         "merged, the same numbers as one process; auto: one per usable core; 1: in this process")
    _add_launch_flags(wf)
    _add_distributed_flags(wf)
    wf.set_defaults(func=_cmd_workflow)
    merge = sub.add_parser("merge", help="merge the run directories of a sweep's parts (--part I/N) into one",
                           description=_cmd_merge.__doc__)
    merge.add_argument("parts", nargs="+", metavar="PART_DIR")
    merge.add_argument("--out", required=True, help="merged sweep directory (results.csv, tb/)")
    merge.set_defaults(func=_cmd_merge)
    envs = sub.add_parser("envs", help="list the env names pql_jax accepts")
    envs.set_defaults(func=_cmd_envs)
    scaling_cli.add_subcommands(sub)
    return parser


def _add_member_batching(cmd, helptext: str) -> None:
    """--member-batching (how population members share a device); --batching, its old name, still works."""
    cmd.add_argument("--member-batching", "--batching", dest="batching", default="auto",
                     choices=("auto", "map", "vmap"), help=helptext)


def _add_launch_flags(cmd) -> None:
    """Flags that submit a sweep (or each sweep stage) as job-array parts and merge them: pql_jax.run.submit."""
    group = cmd.add_argument_group("job-array parts through submitit (pip install \"pql_jax[submitit]\")")
    group.add_argument("--parts", type=int, metavar="N", help="split into N parts (with --launch)")
    group.add_argument("--launch", choices=("submitit",), help="submit the N parts, wait for them and merge them "
                                                               "into --out (parts under OUT/parts/)")
    group.add_argument("--cluster", default="auto", choices=("auto", "slurm", "local"),
                       help="auto: SLURM where sbatch exists, else submitit's local executor")
    group.add_argument("--slurm", metavar="KEY=VALUE,...",
                       help="per-part job options: partition, account, qos, constraint, gpus, cpus, mem_gb, "
                            "time (minutes), parallel (parts at once), e.g. partition=gpu,gpus=1,time=240")


def _launch_options(args) -> dict | None:
    """submitit options from --parts/--launch/--cluster/--slurm (None without --launch); UserError
    for an incomplete or conflicting set."""
    if args.launch is None:
        if args.parts is not None or args.slurm is not None or args.cluster != "auto":
            raise UserError("--parts, --cluster and --slurm need --launch submitit")
        return None
    if args.parts is None:
        raise UserError("--launch submitit needs --parts N")
    if args.part:
        raise UserError("give --part I/N (this machine's share) or --parts N --launch submitit, not both")
    if args.coordinator or args.distributed:
        raise UserError("--launch submitit runs each part as its own single-process job; drop the distributed flags")
    return {"count": args.parts, "cluster": args.cluster, "slurm": args.slurm}


def _add_distributed_flags(cmd) -> None:
    """Flags that start one sweep on several processes (hosts): pql_jax.run.distributed."""
    group = cmd.add_argument_group("several processes (JAX multi-controller; start every process alike)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0, which every process joins")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1 (0 writes the outputs)")
    group.add_argument("--distributed", choices=("auto",),
                       help="auto: JAX finds the coordinator, N and I itself (SLURM, cloud TPU, ...)")
    group.add_argument("--init-timeout", type=int, default=300, metavar="S",
                       help="seconds to wait for the coordinator and every process to join (default 300)")


def _cmd_train(args) -> int:
    """Train one agent; `--resume RUN_DIR` continues an interrupted run bit-identically."""
    from pql_jax import config as cfg_mod
    from pql_jax.run import launch

    if args.resume and args.config:
        raise UserError("--resume takes its config from the run directory; drop --config")
    if args.resume:
        out = Path(args.resume)
        config = launch.resume_config(out, args.overrides)
    else:
        if not args.out:
            raise UserError("train needs --out RUN_DIR (or --resume RUN_DIR)")
        out = Path(args.out)
        config = cfg_mod.load(args.config, args.overrides)
    row = launch.train_config(config, out, resume=bool(args.resume), progress=not args.no_progress)
    if row:
        print(f"done: {row['env_steps']:,} env steps, eval return {row['eval_return']:.1f}, "
              f"{row['critic_updates']:,} critic / {row['actor_updates']:,} actor updates; outputs in {out}")
    return 0


def _cmd_plan(args) -> int:
    """Print a sweep's members, their grouping into compiled programs, each program's compiled peak
    memory and members per device, evaluation share, FLOPs and masking waste. SWEEP.yaml may also be
    a workflow file (its hparam_sweep is planned, later stages projected). Nothing is allocated
    unless --calibrate, which runs a few chunks per group and projects the wall time."""
    from pql_jax.workflow.plan import plan_file

    if args.chunks < 1:
        raise UserError("--chunks must be >= 1")
    plan_file(args.sweep_file, args.overrides, args.batching, args.chunks if args.calibrate else None)
    return 0


def _cmd_merge(args) -> int:
    """Merge the run directories of a sweep's parts (`pql-jax sweep ... --part I/N`): checks that
    they come from the same sweep file and overrides, that every member is in exactly one part and
    finished, then writes one results.csv and tb/ tree into --out (nothing written otherwise)."""
    from pql_jax.plan.parts import merge

    print(f"merged {len(args.parts)} part(s): {merge(args.parts, args.out)}")
    return 0


def _cmd_sweep(args) -> int:
    """Train a sweep: one sharded program per group; results.csv has one row per member and logging point."""
    from pql_jax.run import distributed, launch

    from pql_jax.plan.parts import parse_part

    part = parse_part(args.part) if args.part else None
    launched = _launch_options(args)
    if launched:
        from pql_jax.run.submit import launch_parts

        table = launch_parts(args.sweep_file, args.out, args.overrides, resume=args.resume, batching=args.batching,
                             **launched)
        print(f"done: merged results in {table}")
        return 0
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, args.distributed,
                           args.init_timeout)  # before any JAX computation
    rows = launch.train_sweep_file(args.sweep_file, args.out, args.overrides, resume=args.resume,
                                   progress=not args.no_progress, batching=args.batching, part=part)
    diverged = [r["member"] for r in rows if r.get("diverged")]
    if not distributed.is_primary():
        return 0
    print(f"done: results in {Path(args.out) / 'results.csv'}"
          + (f"; diverged: {', '.join(diverged)}" if diverged else ""))
    return 0


def _positive_int(text: str, flag: str) -> int:
    """An integer >= 1 a flag gave; UserError naming the flag otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{flag} must be an integer >= 1 or auto, got {text!r}")
    return value


def _cmd_workflow(args) -> int:
    """Run the scaling workflow; finished stages are skipped, an interrupted sweep resumes."""
    from pql_jax.run import distributed
    from pql_jax.plan.parts import parse_part
    from pql_jax.workflow import run_workflow

    part = parse_part(args.part) if args.part else None
    launched = _launch_options(args)
    workers = None if args.workers == "auto" else _positive_int(args.workers, "--workers")
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, args.distributed,
                           args.init_timeout)  # before any JAX computation
    primary = distributed.is_primary()
    report = run_workflow(args.workflow_file, args.out, start=args.start, progress=primary and not args.no_progress,
                          part=part, launch=launched, workers=workers, log=print if primary else (lambda *a: None))
    if not primary:
        return 0
    if report is None:
        return 0  # this part's share is done; the run waits for the other parts
    print(f"done: report in {report}; figures in {report.parent / 'report' / 'figures'} and "
          f"{report.parent / 'fit_laws' / 'figures'}")
    return 0


def _cmd_envs(args) -> int:
    """Print the known env names."""
    from pql_jax.envs import known_envs

    print("\n".join(known_envs()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # argparse cannot take positional overrides after options once a positional came first
        # (`sweep FILE --out D key=value`): collect those trailing key=value items here.
        if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse already printed a one-line usage error
        return int(exc.code or 0) and 2
    try:
        if args.command in COMPILING:
            from pql_jax.run import compile_cache

            compile_cache.enable(log=lambda m: print(m, file=sys.stderr))
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `pql-jax` console script."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    entry()
