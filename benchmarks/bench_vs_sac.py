"""pql_jax versus brax's SAC trainer at matched settings: learning and speed.

Runs in the project venv; the baseline runs as a subprocess in benchmarks/.venv-sac
(create it with `bash benchmarks/setup_sac_venv.sh`; brax 0.14.2's SAC needs JAX <= 0.9).

    .venv/bin/python benchmarks/bench_vs_sac.py --out benchmarks/bench_vs_sac.json
    .venv/bin/python benchmarks/bench_vs_sac.py --quick          # smoke run, a few minutes

Matched per task: num_envs, batch size, hidden sizes (2 x 256 relu MLPs, constant width,
LayerNorm as brax's Q network: pql_jax's agent.layer_norm applies it to actor and critic),
update ratio (brax's grad_updates_per_step per vector step == pql_jax agent.utd * num_envs),
random-action prefill (brax min_replay_size == pql_jax warmup_steps * num_envs), replay capacity
(>= the budget, nothing evicted), env-step budget, episode length, and eval work (the same
number of evals on the same number of envs, deterministic policy, full episodes: pql_jax evals
once per chunk, brax SAC once per epoch plus once at step 0). The algorithms keep their own
remaining hyperparameters (learning rates, tau, n-step, exploration...).

Speed is measured without compilation: the first pql_jax chunk and the first brax SAC epoch
include compiling, so both are timed from the end of that first chunk/epoch to the end of the
run. loop_sps includes evals (both pay for the same evals); train_sps excludes eval time
(brax: its own eval/walltime; pql_jax: a separately timed call of the same jitted eval, times
the number of chunks). outside_frac is pql_jax's share of loop wall time spent outside the
jitted chunk calls (host-side Python: metrics transfer, bookkeeping).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SAC_PYTHON = HERE / ".venv-sac" / "bin" / "python"
DEFAULT_TASKS = ["playground:CartpoleSwingup", "playground:CartpoleBalance"]
THRESHOLDS = {"CartpoleSwingup": 400.0, "CartpoleBalance": 800.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="pql_jax vs brax SAC at matched settings")
    p.add_argument("--tasks", default=None, help=f"comma-separated (default: {','.join(DEFAULT_TASKS)})")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--env-steps", type=int, default=200_000, help="env-step budget per run")
    p.add_argument("--evals", type=int, default=10,
                   help="evals per run during training (= pql_jax chunks = brax SAC epochs)")
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
                   help="extra pql_jax config override, e.g. agent.n_step=1 (recorded in the output)")
    p.add_argument("--only", choices=["pql", "sac"], default=None, help="run one side only")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: first task, 1 seed, 24576 steps, 3 evals (a few minutes)")
    p.add_argument("--out", default=None, help="write raw numbers here (JSON)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.env_steps, args.evals = 1, 24_576, 3
        args.tasks = args.tasks or DEFAULT_TASKS[0]
    args.tasks = (args.tasks or ",".join(DEFAULT_TASKS)).split(",")
    for item in args.threshold:
        task, value = item.split("=", 1)
        THRESHOLDS[task.split(":")[-1]] = float(value)
    if args.evals < 2:
        p.error("--evals must be >= 2 (the first chunk/epoch includes compilation)")
    return args


def steps_to_threshold(evals, threshold):
    for point in evals:
        if point["eval_return"] >= threshold:
            return point["env_steps"]
    return None


# ---- pql_jax ------------------------------------------------------------------------------
_LEARNERS = {}  # task -> (learner, jitted init, jitted chunk, jitted eval, cfg): compiled once per task


def pql_overrides(args, task):
    n = args.num_envs
    per_chunk = -(-args.env_steps // (n * args.evals))  # vector steps per chunk
    total = per_chunk * n * args.evals
    warmup = -(-args.min_replay // n)
    return [
        f"env.name={task}", f"env.num_envs={n}", f"env.episode_length={args.episode_length}",
        f"env.eval_envs={args.eval_envs}",
        f"agent.batch_size={args.batch_size}", f"agent.utd={args.grad_updates_per_step}/{n}",
        f"agent.critic_width={args.width}", f"agent.critic_depth={args.depth}",
        f"agent.actor_width={args.width}", f"agent.actor_depth={args.depth}", "agent.taper=false",
        f"agent.layer_norm={'true' if args.layer_norm else 'false'}", f"agent.activation={args.activation}",
        f"agent.warmup_steps={warmup}", f"agent.buffer_capacity={max(total, args.batch_size, n * 8)}",
        f"run.chunk_steps={per_chunk}", f"run.total_env_steps={total}",
        *args.pql_override,
    ]


def run_pql(args, task, seed):
    import jax
    from pql_jax import config as C
    from pql_jax.learner import pql as T
    from pql_jax.learner.state import PopulationSchedule, hparams_from_config

    t_start = time.time()
    overrides = pql_overrides(args, task)
    if task not in _LEARNERS:
        cfg = C.load(None, overrides)
        learner = T.make_train(cfg)
        _LEARNERS[task] = (learner, jax.jit(learner.init), jax.jit(learner.chunk, donate_argnums=0),
                           jax.jit(learner.evaluate), cfg)
        fresh = True
    else:
        fresh = False
    learner, init, chunk, evaluate, cfg = _LEARNERS[task]
    hp = hparams_from_config(cfg)
    state = init(jax.random.PRNGKey(seed), hp)  # the seed enters only here
    jax.block_until_ready(state)
    n_chunks = learner.num_chunks
    evals, inside, t_first = [], 0.0, None
    t_loop = time.time()
    for i in range(n_chunks):
        t0 = time.time()
        state, metrics = chunk(state, PopulationSchedule.of(hp, i * cfg.run.chunk_steps))
        jax.block_until_ready(metrics)
        t1 = time.time()
        if i > 0:
            inside += t1 - t0
        metrics = T.metrics_to_host(metrics)
        evals.append({"env_steps": int(metrics["env_steps"]), "eval_return": float(metrics["eval_return"]),
                      "online_return": float(metrics["online_return"]), "wall_s": time.time() - t_start,
                      "critic_updates": int(metrics["critic_updates"]), "diverged": bool(metrics["diverged"])})
        print(f"[pql] {task} seed {seed} step {evals[-1]['env_steps']} return {evals[-1]['eval_return']:.1f} "
              f"t {evals[-1]['wall_s']:.1f}s", file=sys.stderr, flush=True)
        if i == 0:
            t_first = time.time()
            first_chunk_s = t_first - t0
    t_end = time.time()
    # Eval cost: the same jitted eval the chunk runs, timed on its own (after one warm-up call).
    key = jax.random.PRNGKey(10_000 + seed)
    jax.block_until_ready(evaluate(state, key))
    t0 = time.time()
    reps = 3
    for r in range(reps):
        jax.block_until_ready(evaluate(state, jax.random.fold_in(key, r)))
    eval_call_s = (time.time() - t0) / reps

    window = t_end - t_first
    steps = evals[-1]["env_steps"] - evals[0]["env_steps"]
    eval_s = eval_call_s * (n_chunks - 1)
    return {
        "method": "pql_jax", "env": task, "seed": seed, "jax": jax.__version__, "overrides": overrides,
        "evals": evals, "final_return": evals[-1]["eval_return"], "final_env_steps": evals[-1]["env_steps"],
        "critic_updates": evals[-1]["critic_updates"], "diverged": evals[-1]["diverged"],
        "total_wall_s": t_end - t_start, "startup_s": t_first - t_start, "first_chunk_s": first_chunk_s,
        "compiled_here": fresh, "window_env_steps": steps, "window_s": window, "window_inside_s": inside,
        "window_eval_s": eval_s, "eval_call_s": eval_call_s,
        "loop_sps": steps / window, "train_sps": steps / max(window - eval_s, 1e-9),
        "eval_share": eval_s / window, "outside_frac": 1.0 - inside / window,
    }


# ---- brax SAC ----------------------------------------------------------------------------
def run_sac(args, task, seed):
    if not SAC_PYTHON.exists():
        raise SystemExit(f"{SAC_PYTHON} missing: run `bash benchmarks/setup_sac_venv.sh` first")
    cmd = [str(SAC_PYTHON), str(HERE / "sac_baseline.py"), "--env", task,
           "--num-envs", str(args.num_envs), "--batch-size", str(args.batch_size),
           "--grad-updates-per-step", str(args.grad_updates_per_step),
           "--hidden", ",".join([str(args.width)] * args.depth), "--q-layer-norm", str(args.layer_norm),
           "--env-steps", str(args.env_steps), "--seed", str(seed), "--episode-length", str(args.episode_length),
           "--num-evals", str(args.evals + 1), "--num-eval-envs", str(args.eval_envs),
           "--min-replay-size", str(args.min_replay), "--action-repeat", "1"]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["JAX_PLATFORMS"] = "cpu"
    print(f"[sac] {task} seed {seed}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr.splitlines():
        if line.startswith("[sac]"):
            print(line, file=sys.stderr, flush=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-30:])
        raise RuntimeError(f"brax SAC baseline failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(lines[-1])
    result["command"] = " ".join(cmd)
    return result


# ---- report -----------------------------------------------------------------------------
def _ms(values, fmt="{:.0f}"):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(np.mean(values))} ± {fmt.format(np.std(values))}"


def summarize(runs, args):
    summary = {}
    for task in args.tasks:
        name = task.split(":")[-1]
        threshold = THRESHOLDS.get(name)
        row = {"threshold": threshold}
        for method in ("pql_jax", "brax_sac"):
            rs = [r for r in runs if r["env"] == task and r["method"] == method]
            if not rs:
                continue
            hits = [steps_to_threshold(r["evals"], threshold) if threshold is not None else None for r in rs]
            row[method] = {
                "seeds": [r["seed"] for r in rs],
                "final_return": [r["final_return"] for r in rs],
                "final_env_steps": [r["final_env_steps"] for r in rs],
                "steps_to_threshold": hits,
                "loop_sps": [r.get("loop_sps") for r in rs], "train_sps": [r.get("train_sps") for r in rs],
                "eval_share": [r.get("eval_share") for r in rs],
                "outside_frac": [r.get("outside_frac", r.get("other_share")) for r in rs],
                "startup_s": [r.get("startup_s") for r in rs], "total_wall_s": [r["total_wall_s"] for r in rs],
            }
        if "pql_jax" in row and "brax_sac" in row:
            for key in ("loop_sps", "train_sps"):
                a = np.mean([v for v in row["pql_jax"][key] if v]) if any(row["pql_jax"][key]) else float("nan")
                b = np.mean([v for v in row["brax_sac"][key] if v]) if any(row["brax_sac"][key]) else float("nan")
                row[f"{key}_ratio"] = float(a / b)
        summary[task] = row
    return summary


def markdown(summary):
    lines = ["| task | method | final return | env steps to threshold (hits) | loop env steps/s | train env steps/s "
             "| eval share | outside-chunk frac | startup s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, row in summary.items():
        for method in ("pql_jax", "brax_sac"):
            if method not in row:
                continue
            m = row[method]
            hits = [h for h in m["steps_to_threshold"] if h is not None]
            reach = f"{_ms(hits)} ({len(hits)}/{len(m['seeds'])})" if row["threshold"] is not None else "n/a"
            outside = _ms(m["outside_frac"], "{:.4f}") if method == "pql_jax" else "—"
            label = task.split(':')[-1] + (f" (≥{row['threshold']:.0f})" if row["threshold"] is not None else "")
            lines.append(f"| {label} | {method} | {_ms(m['final_return'])} "
                         f"| {reach} | {_ms(m['loop_sps'])} | {_ms(m['train_sps'])} | {_ms(m['eval_share'], '{:.3f}')} "
                         f"| {outside} | {_ms(m['startup_s'])} |")
        if "loop_sps_ratio" in row:
            lines.append(f"| {task.split(':')[-1]} | **ratio pql/sac** | | | **{row['loop_sps_ratio']:.2f}x** "
                         f"| **{row['train_sps_ratio']:.2f}x** | | | |")
    return "\n".join(lines)


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.time()
    runs = []
    for task in args.tasks:
        for seed in range(args.seeds):  # interleaved so load drift on a shared machine hits both sides
            if args.only in (None, "pql"):
                runs.append(run_pql(args, task, seed))
            if args.only in (None, "sac"):
                runs.append(run_sac(args, task, seed))
    summary = summarize(runs, args)
    table = markdown(summary)
    meta = {
        "date_utc": started.isoformat(timespec="seconds"), "duration_s": time.time() - t0,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{_cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "loadavg_end": os.getloadavg(), "args": vars(args),
    }
    print(table)
    print(f"\n{meta['date_utc']}, {meta['duration_s']:.0f} s, {meta['machine']}, load avg at end {meta['loadavg_end']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
        print(f"raw numbers: {args.out}")


if __name__ == "__main__":
    main()
