"""The first GPU hour: one command that measures what a lent H100/H200 can tell us, within a deadline.

On CheetahRun at PQL's settings (configs/cheetah_run.yaml: 4096 envs, UTD 1/512, batch 8192,
parallel evaluation) it measures, one phase after another, and writes one JSON file after every
phase (a run killed from outside still leaves what it measured):

  single      1 member: cold compile of the chunk (fresh persistent compilation cache), planned peak
              device memory (the compiled chunk's memory analysis) vs measured peak
              (device.memory_stats()['peak_bytes_in_use']), steady-state env steps/s
  warm        a second process compiling the same program: its compile time with the executable read
              from the persistent cache written by `single` (cache hits and misses counted)
  population  K members (default 8) in one vmapped program: compile, memory, env steps/s
  eval_off    1 member without evaluation (env.eval_envs=0): env steps/s; eval cost = its ratio to `single`
  install     the README's CUDA install line: `pip install --dry-run --ignore-installed --report` of
              its exact requirement (resolves jax, jaxlib and the CUDA plugin; needs a package index)

Every model phase runs in its own process, so each gets a clean device (its measured peak is its own),
a crash or an out-of-memory error ends that phase only, and the deadline (default 8 minutes, checked
before each phase and inside the timed chunks) is enforced by killing a phase that overruns it.
A phase that fails leaves its process's stderr in OUT_STEM.PHASE.log beside the JSON. `compile_s` is
tracing + lowering + XLA's compile (or the cache read), the longest of each in `compile_parts_s`.
Env steps/s count training env steps (envs x vector steps x members), after the first chunk,
timed to each chunk's metrics on the host (as training runs: one sync per chunk).

    python benchmarks/gpu_hour.py --out gpu_hour.json                        # on the GPU, ~8 min
    python benchmarks/gpu_hour.py --config configs/pointmass.yaml --envs 8 --members 2 --chunks 2 \\
        --skip-install-check run.chunk_steps=10 run.eval_mode=parallel env.eval_envs=4   # CPU, shrunk

Trailing KEY=VALUE arguments are config overrides (as for `pql-jax train`), applied to every phase.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()  # before the heavy imports: a phase's startup time counts them

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without an install of pql_jax beside it

SCHEMA = "pql_jax.gpu_hour/1"
PHASES = ("single", "warm", "population", "eval_off", "install")
MODEL_PHASES = PHASES[:4]
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt",
            "mujoco", "mujoco-mjx", "playground", "brax", "flax", "optax", "numpy", "pql_jax")
INSTALL_LINE = re.compile(r'pip install -U "(jax\[cuda[^"]*)"')
CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}
DURATION_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
                   "/jax/core/compile/backend_compile_duration": "backend_compile_or_cache_read"}
WARM_METHOD = ("a second process (new jit objects, empty in-memory caches) compiling the same program; "
               "the executable is read from the persistent compilation cache that `single` wrote")


class ArgError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, not argparse's usage block
        raise ArgError(message)


def parse_args(argv=None):
    p = Parser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "cheetah_run.yaml"))
    p.add_argument("--envs", type=int, default=None, help="env.num_envs (default: the config's, 4096 for CheetahRun)")
    p.add_argument("--members", type=int, default=8, help="members K of the vmapped population (default 8)")
    p.add_argument("--batching", default="vmap", choices=("vmap", "map", "auto"),
                   help="how members share a device (default vmap, the GPU's; also used for the single member)")
    p.add_argument("--chunks", type=int, default=5, help="timed chunks per phase, after the first (default 5)")
    p.add_argument("--deadline", type=float, default=480.0, help="seconds for the whole command (default 480)")
    p.add_argument("--min-phase", type=float, default=20.0,
                   help="skip a phase when fewer seconds than this remain (default 20)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, in order (default {','.join(PHASES)})")
    p.add_argument("--compile-only", action="store_true",
                   help="model phases stop after compiling (compile times and planned memory, no chunks run)")
    p.add_argument("--skip-install-check", action="store_true", help="leave out the install phase (offline)")
    p.add_argument("--install-timeout", type=float, default=90.0, help="seconds for pip's dry run (default 90)")
    p.add_argument("--readme", default=str(ROOT / "README.md"), help="where the CUDA install line is read")
    p.add_argument("--cache-dir", default=None,
                   help="persistent compilation cache (must be empty for a cold compile; default: a fresh "
                        "temporary directory, removed at the end)")
    p.add_argument("--out", default="gpu_hour.json", help="the JSON written after every phase")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every phase")
    # internal: one model phase in a child process
    p.add_argument("--child-phase", choices=MODEL_PHASES, help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--child-deadline", type=float, help=argparse.SUPPRESS)  # epoch seconds
    args = p.parse_args(argv)
    for name, low in (("envs", 1), ("members", 1), ("chunks", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise ArgError(f"--{name} must be >= {low}, got {value}")
    if not (args.deadline > 0 and math.isfinite(args.deadline)):
        raise ArgError(f"--deadline must be a positive number of seconds, got {args.deadline}")
    if args.min_phase < 0 or args.install_timeout <= 0:
        raise ArgError("--min-phase must be >= 0 and --install-timeout > 0")
    args.phase_list = [s.strip() for s in args.phases.split(",") if s.strip()]
    unknown = [s for s in args.phase_list if s not in PHASES]
    if unknown or not args.phase_list or len(set(args.phase_list)) != len(args.phase_list):
        raise ArgError(f"--phases must list distinct phases among {','.join(PHASES)}, got {args.phases!r}")
    if args.skip_install_check and "install" in args.phase_list:
        args.phase_list.remove("install")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ArgError(f"override {bad[0]!r} is not of the form section.key=value")
    return args


def base_overrides(args) -> list[str]:
    return ([f"env.num_envs={args.envs}"] if args.envs is not None else []) + list(args.overrides)


def phase_setup(args, phase: str) -> tuple[int, list[str]]:
    """(members, extra overrides) of a model phase."""
    if phase == "population":
        return args.members, []
    if phase == "eval_off":
        return 1, ["env.eval_envs=0"]
    return 1, []


def write_json(path: Path, data: dict) -> None:
    """Write atomically (a kill mid-write leaves the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# child: one model phase


def child_main(args) -> int:
    out_path = Path(args.child_out)
    cache_dir = args.cache_dir
    rec: dict = {"phase": args.child_phase, "status": "started"}
    save = lambda: write_json(out_path, rec)  # noqa: E731
    save()

    import jax

    # this cache, whatever the environment says (a test's shared cache would make `single` warm)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    counts = {"hits": 0, "misses": 0}

    def listen(event, **_):
        if event in CACHE_EVENTS:
            counts[CACHE_EVENTS[event]] += 1

    jax.monitoring.register_event_listener(listen)
    durations: dict[str, float] = {}

    def listen_duration(event, duration, **_):  # the longest of each kind: the chunk's (nested traces repeat)
        if event in DURATION_EVENTS:
            key = DURATION_EVENTS[event]
            durations[key] = max(durations.get(key, 0.0), float(duration))

    jax.monitoring.register_event_duration_secs_listener(listen_duration)

    from pql_jax import config as cfg_mod
    from pql_jax.plan.memory import group_memory
    from pql_jax.run.program import GroupProgram
    from pql_jax.plan.sweep import Member, group_members

    members, extra = phase_setup(args, args.child_phase)
    config = cfg_mod.load(args.config, [*base_overrides(args), *extra])
    seeds = [config.run.seed + i for i in range(members)]
    group, = group_members([Member(i, f"m{i}", cfg_mod.set_value(config, "run.seed", s), {"run.seed": s})
                            for i, s in enumerate(seeds)])
    device = jax.devices()[0]
    rec.update(members=members, num_envs=config.env.num_envs, eval_envs=config.env.eval_envs,
               eval_mode=config.run.eval_mode, chunk_steps=config.run.chunk_steps, batching=args.batching,
               device={"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()},
               jax=jax.__version__)
    gp = GroupProgram.build(group, args.batching)
    rec["batching"] = gp.program.batching
    rec["startup_s"] = time.perf_counter() - PROCESS_START
    rec["status"] = "compiling"
    save()

    stats = device.memory_stats() or {}
    limit = stats.get("bytes_limit")
    before = dict(counts)
    durations.clear()
    memory = group_memory(group, args.batching)  # compiles the chunk (the program keeps it for the run)
    rec.update(compile_s=memory.compile_seconds,
               compile_cache={k: counts[k] - before[k] for k in counts},
               compile_parts_s=dict(durations),
               time_to_compiled_s=time.perf_counter() - PROCESS_START,
               planned_peak_bytes=memory.peak_bytes,
               memory_analysis={"argument_bytes": memory.argument_bytes, "output_bytes": memory.output_bytes,
                                "alias_bytes": memory.alias_bytes, "temp_bytes": memory.temp_bytes},
               device_bytes_limit=limit, status="compiled")
    if args.child_phase == "warm" or args.compile_only:
        if args.child_phase == "warm":
            rec["warm_method"] = WARM_METHOD
        rec["status"] = "ok"
        save()
        return 0
    save()
    if limit and memory.peak_bytes > limit:
        rec["status"] = "does_not_fit"
        rec["error"] = f"planned peak {memory.peak_bytes} bytes > the device's {limit} bytes: not run"
        save()
        return 0

    tick = time.perf_counter()
    states = gp.initial_state()
    jax.block_until_ready(states)
    rec["init_s"] = time.perf_counter() - tick
    rec["bytes_in_use_after_init"] = (device.memory_stats() or {}).get("bytes_in_use")
    tick = time.perf_counter()
    states, _ = gp.step(states, 0)  # metrics on the host: the chunk has finished
    rec["first_chunk_s"] = time.perf_counter() - tick
    rec["status"] = "timing"
    save()

    steps, times = config.run.chunk_steps, []
    margin = 5.0  # seconds kept to write the results
    for index in range(1, args.chunks + 1):
        last = times[-1] if times else rec["first_chunk_s"]
        if time.time() + last + margin > args.child_deadline:
            rec["chunks_cut"] = f"{args.chunks - len(times)} of {args.chunks} timed chunks left out: deadline"
            break
        tick = time.perf_counter()
        states, _ = gp.step(states, index * steps)
        times.append(time.perf_counter() - tick)
        env_steps = len(times) * steps * config.env.num_envs * members
        rate = env_steps / sum(times)
        median = sorted(times)[len(times) // 2]  # robust to one slow chunk (a lazily loaded kernel, a GC pause)
        rec.update(chunk_s=times, chunks_timed=len(times), timed_env_steps=env_steps, env_steps_per_s=rate,
                   env_steps_per_s_per_member=rate / members,
                   env_steps_per_s_median_chunk=steps * config.env.num_envs * members / median)
        save()  # a phase killed at the deadline keeps the chunks it timed
    jax.block_until_ready(states)
    stats = device.memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        rec.update(measured_peak_bytes=int(stats["peak_bytes_in_use"]), bytes_in_use_end=int(stats["bytes_in_use"]),
                   measured_over_planned=stats["peak_bytes_in_use"] / memory.peak_bytes)
    else:
        rec["measured_peak_bytes"] = None
        rec["measured_peak_reason"] = (f"device.memory_stats() gives no peak_bytes_in_use on the {device.platform} "
                                       f"backend (got {'None' if stats is None else sorted(stats)})")
    rec["status"] = "ok" if times else "no_timed_chunks"
    rec["wall_s"] = time.perf_counter() - PROCESS_START
    save()
    return 0


# ----------------------------------------------------------------------------------------------
# parent: phases, deadline, JSON


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        proc = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        return proc.stdout.strip() or proc.stderr.strip()[-300:]
    except (OSError, subprocess.SubprocessError) as exc:
        return f"failed: {exc}"


def install_requirement(readme: Path) -> str:
    """The exact requirement of the README's CUDA install line, e.g. jax[cuda12]>=0.9.2,<0.13,..."""
    found = INSTALL_LINE.findall(readme.read_text())
    if not found:
        raise ValueError(f'no `pip install -U "jax[cuda...]..."` line in {readme}')
    return found[0]


def install_check(args, timeout: float) -> dict:
    """pip's dry run of the README's CUDA line, dependencies resolved (the extra's plugin included)."""
    rec: dict = {"readme": args.readme}
    try:
        req = install_requirement(Path(args.readme))
    except (OSError, ValueError) as exc:
        return {**rec, "status": "failed", "ok": False, "error": str(exc)}
    report = Path(tempfile.mkdtemp(prefix="gpu_hour_pip_")) / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--no-input",
           "--disable-pip-version-check", "--timeout", "10", "--retries", "1", "--report", str(report), req]
    rec.update(requirement=req, command=shlex.join(["pip", *cmd[3:]]))
    tick = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**rec, "status": "failed", "ok": False, "seconds": time.perf_counter() - tick,
                "error": f"pip did not finish in {timeout:.0f} s"}
    rec["seconds"] = time.perf_counter() - tick
    resolved = {}
    if proc.returncode == 0 and report.is_file():
        for item in json.loads(report.read_text()).get("install", []):
            resolved[item["metadata"]["name"].lower().replace("_", "-")] = item["metadata"]["version"]
    shutil.rmtree(report.parent, ignore_errors=True)
    plugin = [k for k in resolved if k.startswith("jax-cuda") and k.endswith("-plugin")]
    ok = proc.returncode == 0 and "jax" in resolved and bool(plugin)
    rec.update(ok=ok, status="ok" if ok else "failed",
               resolved={k: v for k, v in resolved.items() if k.startswith("jax")},
               resolved_count=len(resolved))
    if not ok:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
        rec["error"] = f"pip exit {proc.returncode}: " + " | ".join(lines[-3:])[-600:]
    return rec


def run_child(args, phase: str, deadline_at: float, cache_dir: str, workdir: Path, log_dir: Path) -> dict:
    out = workdir / f"{phase}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--config", args.config, "--batching", args.batching,
           "--members", str(args.members), "--chunks", str(args.chunks), "--cache-dir", cache_dir,
           "--child-phase", phase, "--child-out", str(out), "--child-deadline", str(deadline_at)]
    if args.envs is not None:
        cmd += ["--envs", str(args.envs)]
    if args.compile_only:
        cmd += ["--compile-only"]
    cmd += ["--", *args.overrides]
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "PYTHONUNBUFFERED": "1"}
    tick = time.perf_counter()
    error, stderr = None, ""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max(1.0, deadline_at - time.time()))
        stderr = proc.stderr
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-4:]
            error = f"exit {proc.returncode}: " + " | ".join(tail)[-800:]
    except subprocess.TimeoutExpired as exc:
        error = "killed at the deadline"
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    try:
        rec = json.loads(out.read_text())
    except (OSError, ValueError):
        rec = {"phase": phase, "status": "started"}
    rec["process_s"] = time.perf_counter() - tick
    if error:
        rec["status_reached"] = rec.get("status")  # how far the phase got before it failed
        rec["status"] = "killed" if error.startswith("killed") else "failed"
        rec["error"] = error
        log = log_dir / f"{Path(args.out).stem}.{phase}.log"
        try:  # the whole story of a failed phase beside the JSON (one GPU hour: no second chance to rerun)
            log.write_text(stderr[-200_000:])
            rec["log"] = str(log)
        except OSError:
            pass
    return rec


def gib(x) -> str:
    if not isinstance(x, (int, float)):
        return "n/a"
    return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def phase_line(phase: str, rec: dict) -> str:
    if rec.get("status") == "skipped":
        return f"{phase}: skipped ({rec['reason']})"
    if phase == "install":
        if rec.get("ok"):
            return f"install: ok, {rec['requirement']} resolves to " + ", ".join(
                f"{k} {v}" for k, v in rec["resolved"].items()) + f" ({rec['seconds']:.0f} s)"
        return f"install: FAILED ({rec.get('error', '?')})"[:400]
    head = f"{phase}: {rec.get('members', '?')} member(s) x {rec.get('num_envs', '?')} envs, {rec.get('status')}"
    parts = []
    if "compile_s" in rec:
        cache = rec.get("compile_cache", {})
        parts.append(f"compile {rec['compile_s']:.1f} s (cache hits {cache.get('hits')}, misses {cache.get('misses')})")
    if "env_steps_per_s" in rec:
        parts.append(f"{rec['env_steps_per_s']:,.0f} env steps/s over {rec['chunks_timed']} chunks")
    if "planned_peak_bytes" in rec and phase != "warm":
        parts.append(f"planned peak {gib(rec['planned_peak_bytes'])}, measured {gib(rec.get('measured_peak_bytes'))}")
    if rec.get("error"):
        parts.append(f"error: {rec['error'][:300]}")
    return head + ("; " + "; ".join(parts) if parts else "")


def summarize(phases: dict) -> dict:
    get = lambda p, k: phases.get(p, {}).get(k)  # noqa: E731
    single, pop, off = (get(p, "env_steps_per_s") for p in ("single", "population", "eval_off"))
    s = {
        "single_env_steps_per_s": single,
        "population_members": get("population", "members"),
        "population_env_steps_per_s": pop,
        "population_env_steps_per_s_per_member": get("population", "env_steps_per_s_per_member"),
        "population_over_single": pop / single if pop and single else None,
        "cold_compile_s": get("single", "compile_s"),
        "warm_compile_s": get("warm", "compile_s"),
        "warm_compile_cache_hits": (get("warm", "compile_cache") or {}).get("hits"),
        "warm_compile_method": WARM_METHOD,
        "population_compile_s": get("population", "compile_s"),
        "planned_peak_bytes": {p: get(p, "planned_peak_bytes") for p in ("single", "population", "eval_off")},
        "measured_peak_bytes": {p: get(p, "measured_peak_bytes") for p in ("single", "population", "eval_off")},
        "eval_mode": get("single", "eval_mode"),
        "eval_off_env_steps_per_s": off,
        "eval_on_over_off": single / off if single and off else None,  # < 1: evaluation costs throughput
        "cuda_install_ok": get("install", "ok"),
        "cuda_install_resolved": get("install", "resolved"),
    }
    return s


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except ArgError as exc:
        print(f"gpu_hour: error: {exc}", file=sys.stderr)
        return 2
    if args.child_phase:
        return child_main(args)

    from pql_jax import config as cfg_mod
    from pql_jax.errors import UserError

    try:
        config = cfg_mod.load(args.config, base_overrides(args))
        if "eval_off" in args.phase_list:
            cfg_mod.load(args.config, [*base_overrides(args), "env.eval_envs=0"])
    except (UserError, OSError) as exc:
        print(f"gpu_hour: error: {exc}", file=sys.stderr)
        return 2
    if "warm" in args.phase_list and "single" not in args.phase_list:
        print("gpu_hour: error: the warm phase reads the cache that the single phase writes: list both",
              file=sys.stderr)
        return 2
    if args.cache_dir and Path(args.cache_dir).is_dir() and any(Path(args.cache_dir).iterdir()) \
            and "single" in args.phase_list:
        print(f"gpu_hour: error: --cache-dir {args.cache_dir} is not empty: the single phase's compile would "
              "not be cold", file=sys.stderr)
        return 2

    start = time.time()
    deadline_at = start + args.deadline
    out = Path(args.out)
    own_cache = args.cache_dir is None
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="gpu_hour_cache_")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gpu_hour_phases_"))
    result = {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "packages": package_versions(), "nvidia_smi": nvidia_smi(), "device": None},
        "settings": {"config": args.config, "env": config.env.name, "num_envs": config.env.num_envs,
                     "members": args.members, "batching": args.batching, "chunks": args.chunks,
                     "compile_only": args.compile_only,
                     "chunk_steps": config.run.chunk_steps, "eval_mode": config.run.eval_mode,
                     "eval_envs": config.env.eval_envs, "overrides": base_overrides(args),
                     "deadline_s": args.deadline, "phases": args.phase_list, "cache_dir": cache_dir,
                     "env_vars": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("XLA_", "JAX_"))}},
        "phases": {},
        "skipped": {},
        "summary": {},
        "elapsed_s": 0.0,
        "complete": False,
    }
    write_json(out, result)
    print(f"gpu_hour: {config.env.name} at {config.env.num_envs} envs, K={args.members}, deadline "
          f"{args.deadline:.0f} s, writing {out}", flush=True)
    try:
        for phase in args.phase_list:
            remaining = deadline_at - time.time()
            reason = None
            if remaining < args.min_phase:
                reason = f"{remaining:.0f} s left of the {args.deadline:.0f} s deadline (< --min-phase {args.min_phase:.0f})"
            elif phase == "warm" and result["phases"].get("single", {}).get("compile_s") is None:
                reason = "the single phase compiled nothing into the cache"
            elif phase == "eval_off" and config.env.eval_envs == 0:
                reason = "the config evaluates nothing already (env.eval_envs=0)"
            if reason:
                rec = {"status": "skipped", "reason": reason}
                result["skipped"][phase] = reason
            elif phase == "install":
                rec = install_check(args, min(args.install_timeout, remaining))
            else:
                rec = run_child(args, phase, deadline_at, cache_dir, workdir, out.parent)
                if result["machine"]["device"] is None and rec.get("device"):
                    result["machine"]["device"] = {**rec["device"], "bytes_limit": rec.get("device_bytes_limit")}
            result["phases"][phase] = rec
            result["summary"] = summarize(result["phases"])
            result["elapsed_s"] = time.time() - start
            write_json(out, result)
            print(phase_line(phase, rec), flush=True)
        result["complete"] = True
        result["elapsed_s"] = time.time() - start
        write_json(out, result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if own_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)
    print(f"gpu_hour: done in {result['elapsed_s']:.0f} s; skipped: {', '.join(result['skipped']) or 'nothing'}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
