"""The options of benchmarks/bench_vs_sac.py: the command line, its defaults, and the settings
fingerprint that decides which stored runs are comparable (see that script's docstring)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vs_sac_store import BadInput

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHORT = {"pql": "pql_jax", "sac": "brax_sac"}
DEFAULT_SEEDS = {"playground:CartpoleSwingup": 5, "playground:CheetahRun": 3, "playground:WalkerWalk": 3}
DEFAULT_TASKS = list(DEFAULT_SEEDS)
FALLBACK_SEEDS = 3  # a task outside DEFAULT_SEEDS
# Return thresholds for "env steps to threshold" (see the module docstring).
THRESHOLDS = {"CartpoleSwingup": 400.0, "CheetahRun": 300.0, "WalkerWalk": 500.0, "CartpoleBalance": 800.0}
QUICK = {"env_steps": 24_576, "evals": 3, "seeds": 1}
# Options whose values decide whether two runs are comparable (the fingerprint); with the versions.
COMPARABLE = ("env_steps", "evals", "num_envs", "batch_size", "grad_updates_per_step", "width", "depth",
              "layer_norm", "activation", "min_replay", "eval_envs", "episode_length", "pql_override")
VERSIONED = ("jax", "jaxlib", "brax", "playground", "mujoco", "mujoco-mjx", "flax", "optax")
SETUP_HINT = ("run `bash benchmarks/setup_sac_venv.sh`, then run this script with "
              "benchmarks/.venv-sac/bin/python")



class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise BadInput(message)


# ---- options ------------------------------------------------------------------------------
def parse_args(argv=None):
    p = _Parser(description="pql_jax vs brax SAC at matched settings, over seeds (resumable)")
    p.add_argument("--tasks", default=None, help=f"comma-separated (default: {','.join(DEFAULT_TASKS)})")
    p.add_argument("--seeds", default=None, metavar="N | TASK=N,...",
                   help="seeds 0..N-1: one count for every task, or per task, e.g. CartpoleSwingup=5,CheetahRun=3 "
                        "(a bare N among them sets the tasks not named; defaults: "
                        + ", ".join(f"{t.split(':')[-1]}={n}" for t, n in DEFAULT_SEEDS.items())
                        + f", {FALLBACK_SEEDS} for other tasks)")
    p.add_argument("--env-steps", type=int, default=None, help="env-step budget per run (default 300000)")
    p.add_argument("--evals", type=int, default=None,
                   help="evals per run during training (= pql_jax chunks = brax SAC epochs; default 10)")
    p.add_argument("--num-envs", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--grad-updates-per-step", type=int, default=8)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--layer-norm", type=int, default=1, help="LayerNorm (brax: Q network only)")
    p.add_argument("--activation", default="relu", help="pql_jax activation (brax SAC's MLPs are relu)")
    p.add_argument("--min-replay", type=int, default=8192, help="random-action prefill, in env steps")
    p.add_argument("--eval-envs", type=int, default=16)
    p.add_argument("--episode-length", type=int, default=1000)
    p.add_argument("--threshold", action="append", default=[], metavar="TASK=RETURN",
                   help=f"return threshold per task (defaults: {THRESHOLDS})")
    p.add_argument("--pql-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra pql_jax config override, e.g. agent.n_step=1 (part of the fingerprint)")
    p.add_argument("--only", choices=["pql", "sac"], default=None, help="run one side only")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: first task, {QUICK['seeds']} seed, {QUICK['env_steps']} steps, "
                        f"{QUICK['evals']} evals (a few minutes; options given explicitly win)")
    p.add_argument("--out", default=None, metavar="FILE.jsonl",
                   help="append each finished run here; runs already in it are skipped; table to FILE.md")
    p.add_argument("--new-out", action="store_true",
                   help="--out holds runs with other settings: move it aside (FILE.<time>.jsonl) and start anew")
    p.add_argument("--report-only", action="store_true", help="print the table and draw the figures from --out")
    p.add_argument("--figures", default=str(HERE / "figures"), metavar="DIR",
                   help="learning-curve PNGs vs_sac_<Task>.png go here (default: benchmarks/figures/)")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks = args.tasks or DEFAULT_TASKS[0]
        args.seeds = args.seeds or str(QUICK["seeds"])
    if args.env_steps is None:
        args.env_steps = QUICK["env_steps"] if args.quick else 300_000
    if args.evals is None:
        args.evals = QUICK["evals"] if args.quick else 10
    args.tasks = [normalize_task(t) for t in (args.tasks or ",".join(DEFAULT_TASKS)).split(",") if t.strip()]
    if not args.tasks:
        raise BadInput("--tasks names no task")
    if len(set(args.tasks)) != len(args.tasks):
        raise BadInput(f"--tasks names a task twice: {','.join(args.tasks)}")
    args.seed_counts = parse_seeds(args.seeds, args.tasks)
    args.thresholds = parse_thresholds(args.threshold)
    for name, value in (("--evals", args.evals), ("--env-steps", args.env_steps), ("--num-envs", args.num_envs),
                        ("--batch-size", args.batch_size), ("--width", args.width), ("--depth", args.depth),
                        ("--eval-envs", args.eval_envs), ("--episode-length", args.episode_length)):
        if value < 1:
            raise BadInput(f"{name} must be >= 1, got {value}")
    if args.evals < 2:
        raise BadInput("--evals must be >= 2 (the first chunk/epoch includes compilation)")
    if args.report_only and args.new_out:
        raise BadInput("--report-only reads --out; it cannot start a new one (--new-out)")
    if args.report_only and not args.out:
        raise BadInput("--report-only needs --out FILE.jsonl")
    return args


def normalize_task(name: str) -> str:
    """`CheetahRun` or `playground:CheetahRun` -> `playground:CheetahRun` (brax SAC runs Playground envs)."""
    name = name.strip()
    if ":" not in name:
        return f"playground:{name}"
    prefix, rest = name.split(":", 1)
    if prefix != "playground" or not rest:
        raise BadInput(f"unknown task {name!r}: the brax SAC baseline runs Playground envs (playground:NAME)")
    return name


def parse_seeds(spec, tasks, defaults=DEFAULT_SEEDS, fallback=FALLBACK_SEEDS) -> dict:
    """Seeds per task: None -> the defaults; "N" -> N for every task; "TASK=N,..." -> those, the
    others keep their defaults (or a bare "N" among the items)."""
    counts, named = {}, {}
    for item in (spec.split(",") if spec else []):
        item = item.strip()
        name, _, value = item.rpartition("=")
        try:
            n = int(value)
        except ValueError:
            n = 0
        if not item or n < 1:
            raise BadInput(f"bad --seeds item {item!r}: want N or TASK=N with N >= 1 (e.g. CartpoleSwingup=5,CheetahRun=3)")
        if not name:
            if "*" in named:
                raise BadInput(f"--seeds {spec!r} gives two counts for all tasks")
            named["*"] = n
            continue
        task = normalize_task(name)
        if task not in tasks:
            raise BadInput(f"--seeds names {name!r}, which is not among the tasks ({','.join(tasks)})")
        if task in named:
            raise BadInput(f"--seeds names {name!r} twice")
        named[task] = n
    for task in tasks:
        counts[task] = named.get(task, named.get("*", defaults.get(task, fallback)))
    return counts


def parse_thresholds(items, base=THRESHOLDS) -> dict:
    out = dict(base)
    for item in items:
        task, sep, value = item.partition("=")
        try:
            out[normalize_task(task).split(":", 1)[1]] = float(value)
        except ValueError:
            raise BadInput(f"bad --threshold {item!r}: want TASK=RETURN, e.g. CheetahRun=300") from None
        if not sep or not task.strip():
            raise BadInput(f"bad --threshold {item!r}: want TASK=RETURN, e.g. CheetahRun=300")
    return out


# ---- the settings fingerprint ------------------------------------------------------------
def package_versions(names=VERSIONED) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def comparable_settings(args, versions: dict) -> dict:
    """What must agree for runs to be pooled: every option but the task and seed lists, and versions."""
    settings = {k: getattr(args, k) for k in COMPARABLE}
    settings["pql_override"] = list(settings["pql_override"])
    settings["versions"] = dict(versions)
    return settings
