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

Every model phase runs in its own process (its code: gpu_hour_phases.py; this module is the driver),
so each gets a clean device (its measured peak is its own), a crash or an out-of-memory error ends
that phase only, and the deadline (default 8 minutes, checked before each phase and inside the timed
chunks) is enforced by killing a phase that overruns it.
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
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

from gpu_hour_phases import (MODEL_PHASES, WARM_METHOD, base_overrides, child_main,  # noqa: E402
                             install_check, write_json)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without an install of pql_jax beside it

SCHEMA = "pql_jax.gpu_hour/1"
PHASES = (*MODEL_PHASES, "install")
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt",
            "mujoco", "mujoco-mjx", "playground", "brax", "flax", "optax", "numpy", "pql_jax")


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


def child_command(args, phase: str, deadline_at: float, cache_dir: str, out: Path) -> list[str]:
    """This script again, as one model phase's process writing its record to `out`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--config", args.config, "--batching", args.batching,
           "--members", str(args.members), "--chunks", str(args.chunks), "--cache-dir", cache_dir,
           "--child-phase", phase, "--child-out", str(out), "--child-deadline", str(deadline_at)]
    if args.envs is not None:
        cmd += ["--envs", str(args.envs)]
    if args.compile_only:
        cmd += ["--compile-only"]
    return [*cmd, "--", *args.overrides]


def run_child(args, phase: str, deadline_at: float, cache_dir: str, workdir: Path, log_dir: Path) -> dict:
    """One model phase in its own process, killed if it runs past the deadline: its record as far as
    it got, and for a phase that failed, its status, error and stderr log (OUT_STEM.PHASE.log)."""
    out = workdir / f"{phase}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "PYTHONUNBUFFERED": "1"}
    tick = time.perf_counter()
    error, stderr = None, ""
    try:
        proc = subprocess.run(child_command(args, phase, deadline_at, cache_dir, out), capture_output=True,
                              text=True, env=env, timeout=max(1.0, deadline_at - time.time()))
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
        mark_failed(rec, error, stderr, log_dir / f"{Path(args.out).stem}.{phase}.log")
    return rec


def mark_failed(rec: dict, error: str, stderr: str, log: Path) -> None:
    """A failed or killed phase's record: how far it got, the error, and its stderr in `log`."""
    rec["status_reached"] = rec.get("status")  # how far the phase got before it failed
    rec["status"] = "killed" if error.startswith("killed") else "failed"
    rec["error"] = error
    try:  # the whole story of a failed phase beside the JSON (one GPU hour: no second chance to rerun)
        log.write_text(stderr[-200_000:])
        rec["log"] = str(log)
    except OSError:
        pass


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


def check_command(args):
    """The config as the phases will load it, or a one-line error: a bad config or override, a warm phase
    without the single one, a --cache-dir that would make the single phase's compile warm."""
    from pql_jax import config as cfg_mod
    from pql_jax.errors import UserError

    try:
        config = cfg_mod.load(args.config, base_overrides(args))
        if "eval_off" in args.phase_list:
            cfg_mod.load(args.config, [*base_overrides(args), "env.eval_envs=0"])
    except (UserError, OSError) as exc:
        return None, str(exc)
    if "warm" in args.phase_list and "single" not in args.phase_list:
        return None, "the warm phase reads the cache that the single phase writes: list both"
    if args.cache_dir and Path(args.cache_dir).is_dir() and any(Path(args.cache_dir).iterdir()) \
            and "single" in args.phase_list:
        return None, f"--cache-dir {args.cache_dir} is not empty: the single phase's compile would not be cold"
    return config, None


def new_result(args, config, cache_dir: str) -> dict:
    """The JSON before any phase: the command, the machine, the settings."""
    return {
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


def skip_reason(args, phase: str, remaining: float, result: dict, config) -> str | None:
    """Why `phase` is not run (too little time left, nothing for it to measure), or None."""
    if remaining < args.min_phase:
        return f"{remaining:.0f} s left of the {args.deadline:.0f} s deadline (< --min-phase {args.min_phase:.0f})"
    if phase == "warm" and result["phases"].get("single", {}).get("compile_s") is None:
        return "the single phase compiled nothing into the cache"
    if phase == "eval_off" and config.env.eval_envs == 0:
        return "the config evaluates nothing already (env.eval_envs=0)"
    return None


def run_phases(args, config, result: dict, out: Path, cache_dir: str, start: float) -> None:
    """Each phase in turn unless skipped, the JSON rewritten and a line printed after each."""
    deadline_at = start + args.deadline
    workdir = Path(tempfile.mkdtemp(prefix="gpu_hour_phases_"))
    try:
        for phase in args.phase_list:
            remaining = deadline_at - time.time()
            reason = skip_reason(args, phase, remaining, result, config)
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


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except ArgError as exc:
        print(f"gpu_hour: error: {exc}", file=sys.stderr)
        return 2
    if args.child_phase:
        return child_main(args, PROCESS_START)
    config, error = check_command(args)
    if error:
        print(f"gpu_hour: error: {error}", file=sys.stderr)
        return 2

    start = time.time()
    out = Path(args.out)
    own_cache = args.cache_dir is None
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="gpu_hour_cache_")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    result = new_result(args, config, cache_dir)
    write_json(out, result)
    print(f"gpu_hour: {config.env.name} at {config.env.num_envs} envs, K={args.members}, deadline "
          f"{args.deadline:.0f} s, writing {out}", flush=True)
    try:
        run_phases(args, config, result, out, cache_dir, start)
    finally:
        if own_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)
    print(f"gpu_hour: done in {result['elapsed_s']:.0f} s; skipped: {', '.join(result['skipped']) or 'nothing'}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
