"""The measured phases of benchmarks/gpu_hour.py (which holds the arguments, the deadline, the JSON and
the summary; its docstring says what each phase measures).

A model phase (single, warm, population, eval_off) runs in a process of its own, `gpu_hour.py
--child-phase PHASE`: `child_main` builds the phase's group program, compiles its chunk, runs it and
rewrites its record (--child-out) after every step, so the driver reads how far a killed phase got.
The install phase, pip's dry run of the README's CUDA line, runs in the driver's process.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL_PHASES = ("single", "warm", "population", "eval_off")
INSTALL_LINE = re.compile(r'pip install -U "(jax\[cuda[^"]*)"')
CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}
DURATION_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
                   "/jax/core/compile/backend_compile_duration": "backend_compile_or_cache_read"}
WARM_METHOD = ("a second process (new jit objects, empty in-memory caches) compiling the same program; "
               "the executable is read from the persistent compilation cache that `single` wrote")
WRITE_MARGIN_S = 5.0
"""Seconds kept before the deadline to write a phase's results: a timed chunk starts only if one as
long as the last still ends before the deadline less this."""


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
# a model phase, in its own process


def child_main(args, process_start: float) -> int:
    """One model phase: build, compile (times, cache hits, planned memory), then, unless the phase is
    `warm` or --compile-only, run the first chunk and time the next ones (env steps/s, measured peak).
    `process_start`: the driver module's clock before its heavy imports (startup times count them)."""
    rec: dict = {"phase": args.child_phase, "status": "started"}
    save = functools.partial(write_json, Path(args.child_out), rec)
    save()

    import jax

    counts, durations = watch_compiles(args.cache_dir)
    config, members, group, gp = build_program(args, rec)
    rec["startup_s"] = time.perf_counter() - process_start
    rec["status"] = "compiling"
    save()

    memory = compile_chunk(args, group, counts, durations, rec, process_start)
    if args.child_phase == "warm" or args.compile_only:
        if args.child_phase == "warm":
            rec["warm_method"] = WARM_METHOD
        rec["status"] = "ok"
        save()
        return 0
    save()
    limit = rec["device_bytes_limit"]
    if limit and memory.peak_bytes > limit:
        rec["status"] = "does_not_fit"
        rec["error"] = f"planned peak {memory.peak_bytes} bytes > the device's {limit} bytes: not run"
        save()
        return 0

    states = first_chunk(gp, rec)
    save()
    states, times = time_chunks(args, gp, states, config, members, rec, save)
    jax.block_until_ready(states)
    rec.update(measured_peak(jax.devices()[0], memory.peak_bytes))
    rec["status"] = "ok" if times else "no_timed_chunks"
    rec["wall_s"] = time.perf_counter() - process_start
    save()
    return 0


def watch_compiles(cache_dir: str) -> tuple[dict[str, int], dict[str, float]]:
    """Point JAX at this phase's persistent cache (whatever the environment says: a test's shared cache
    would make `single` warm); return the cache hit/miss counts and compile durations that JAX's
    monitoring events will keep up to date from now on."""
    import jax

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
    return counts, durations


def build_program(args, rec: dict):
    """The phase's config, its member count, its members as one group and the group's program (not yet
    compiled); the phase's settings and the device go into `rec`."""
    import jax

    from pql_jax import config as cfg_mod
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
    rec["batching"] = gp.shared.batching
    return config, members, group, gp


def compile_chunk(args, group, counts: dict, durations: dict, rec: dict, process_start: float):
    """Compile the group's chunk (the program keeps it for the run) through its memory analysis; the
    compile's time, cache hits and misses, parts and planned memory go into `rec`."""
    import jax
    from pql_jax.plan.memory import group_memory

    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    before = dict(counts)
    durations.clear()
    memory = group_memory(group, args.batching)
    rec.update(compile_s=memory.compile_seconds,
               compile_cache={k: counts[k] - before[k] for k in counts},
               compile_parts_s=dict(durations),
               time_to_compiled_s=time.perf_counter() - process_start,
               planned_peak_bytes=memory.peak_bytes,
               memory_analysis={"argument_bytes": memory.argument_bytes, "output_bytes": memory.output_bytes,
                                "alias_bytes": memory.alias_bytes, "temp_bytes": memory.temp_bytes},
               device_bytes_limit=limit, status="compiled")
    return memory


def first_chunk(gp, rec: dict):
    """Initial states and the first chunk, untimed for the rates (it loads kernels, fills caches)."""
    import jax

    device = jax.devices()[0]
    tick = time.perf_counter()
    states = gp.initial_state()
    jax.block_until_ready(states)
    rec["init_s"] = time.perf_counter() - tick
    rec["bytes_in_use_after_init"] = (device.memory_stats() or {}).get("bytes_in_use")
    tick = time.perf_counter()
    states, _ = gp.step(states, 0)  # metrics on the host: the chunk has finished
    rec["first_chunk_s"] = time.perf_counter() - tick
    rec["status"] = "timing"
    return states


def time_chunks(args, gp, states, config, members: int, rec: dict, save):
    """Up to args.chunks timed chunks after the first, each timed to its metrics on the host; stops
    early when the next (as long as the last) would end past the deadline less WRITE_MARGIN_S. The
    rates go into `rec` and are saved after every chunk (a phase killed at the deadline keeps them)."""
    steps, times = config.run.chunk_steps, []
    chunk_env_steps = steps * config.env.num_envs * members
    for index in range(1, args.chunks + 1):
        last = times[-1] if times else rec["first_chunk_s"]
        if time.time() + last + WRITE_MARGIN_S > args.child_deadline:
            rec["chunks_cut"] = f"{args.chunks - len(times)} of {args.chunks} timed chunks left out: deadline"
            break
        tick = time.perf_counter()
        states, _ = gp.step(states, index * steps)
        times.append(time.perf_counter() - tick)
        rec.update(chunk_rates(times, chunk_env_steps, members))
        save()
    return states, times


def chunk_rates(times: list[float], chunk_env_steps: int, members: int) -> dict:
    """Env steps/s over the timed chunks (envs x vector steps x members per chunk)."""
    env_steps = len(times) * chunk_env_steps
    rate = env_steps / sum(times)
    median = sorted(times)[len(times) // 2]  # robust to one slow chunk (a lazily loaded kernel, a GC pause)
    return dict(chunk_s=times, chunks_timed=len(times), timed_env_steps=env_steps, env_steps_per_s=rate,
                env_steps_per_s_per_member=rate / members, env_steps_per_s_median_chunk=chunk_env_steps / median)


def measured_peak(device, planned_peak_bytes: int) -> dict:
    """The device's measured peak memory against the planned one, or why the backend gives none."""
    stats = device.memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return dict(measured_peak_bytes=int(stats["peak_bytes_in_use"]), bytes_in_use_end=int(stats["bytes_in_use"]),
                    measured_over_planned=stats["peak_bytes_in_use"] / planned_peak_bytes)
    return {"measured_peak_bytes": None,
            "measured_peak_reason": (f"device.memory_stats() gives no peak_bytes_in_use on the {device.platform} "
                                     f"backend (got {'None' if stats is None else sorted(stats)})")}


# ----------------------------------------------------------------------------------------------
# the install phase, in the driver's process


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
    resolved = pip_report(report) if proc.returncode == 0 else {}
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


def pip_report(report: Path) -> dict[str, str]:
    """{package: version} that pip's --report would install (names normalised), {} without a report."""
    if not report.is_file():
        return {}
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
            for item in json.loads(report.read_text()).get("install", [])}
