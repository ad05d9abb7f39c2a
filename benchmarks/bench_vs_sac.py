"""pql_jax versus brax's SAC trainer at matched settings: learning and speed, over seeds.

Both trainers run in ONE process on the same JAX: brax 0.14.2's SAC needs JAX 0.9.2 (it calls
jax.device_put_replicated, which JAX 0.10 removed), and 0.9.2 is also the lowest JAX this
project supports, so `bash benchmarks/setup_sac_venv.sh` builds benchmarks/.venv-sac with
JAX 0.9.2, brax 0.14.2, playground 0.2.0 and this project (editable, CI's lowest constraints),
and the script runs with that venv's python. brax SAC is `sac_baseline.train_sac`, called
in-process. Runs are interleaved per seed (pql seed 0, sac seed 0, pql seed 1, ...) so that
load drift on a shared machine hits both sides alike.

    bash benchmarks/setup_sac_venv.sh
    benchmarks/.venv-sac/bin/python benchmarks/bench_vs_sac.py --out benchmarks/bench_vs_sac.jsonl
    benchmarks/.venv-sac/bin/python benchmarks/bench_vs_sac.py --quick --out /tmp/smoke.jsonl  # minutes
    benchmarks/.venv-sac/bin/python benchmarks/bench_vs_sac.py --report-only --out benchmarks/bench_vs_sac.jsonl

Another interpreter is refused (exit 2, naming the fix) unless `--only pql`, which needs only
pql_jax (e.g. the project venv; its JAX makes a separate fingerprint, so use another --out).
`--quick` (1 seed of CartpoleSwingup, 24,576 steps, 3 evals) checks the plumbing only: its first
pql_jax chunk is all prefill, too short to compare learning or speed.

Defaults: Playground CartpoleSwingup x 5 seeds, CheetahRun x 3, WalkerWalk x 3 (seeds 0..n-1),
300,000 env steps and 10 evals per run, 128 envs; hours on a 2-core CPU. `--seeds 5` sets every
task's count, `--seeds CartpoleSwingup=8,CheetahRun=5` (or `3,CartpoleSwingup=8`) some of them.

Resuming: every finished (task, method, seed) run is appended to `--out FILE.jsonl` at once (one
JSON line, flushed and fsynced) with a fingerprint of the settings that decide comparability:
everything but the task and seed lists (env steps, evals, envs, batch, update ratio, networks,
prefill, eval envs, episode length, pql overrides) plus the versions of jax, jaxlib, brax,
playground, mujoco, mujoco-mjx, flax and optax. Re-running the same command skips the runs the
file already holds, so a killed run continues where it stopped, and a later call with more
seeds or tasks adds to the same statistics. A file holding other settings is refused (exit 2)
unless `--new-out` (which moves it aside and starts a new file); a half-written last line (a
killed run) is ignored. The pql_jax git commit is recorded in every line but is not part of the
fingerprint (the report lists the commits it mixes). `--report-only` prints the table and draws
the figures from the file without training (pass the same settings options, e.g. --quick).

Output: a Markdown table (printed, and written to FILE.md beside --out) and one learning-curve
figure per task, `vs_sac_<Task>.png` in `--figures` (default benchmarks/figures/). Statistics,
per task and method, over the n seeds run: score per seed = the mean eval return of its last 3
evaluations; mean +- standard error (sample SD with ddof=1, / sqrt(n)); env steps to threshold
= the first evaluation at or above the task's return threshold, mean +- SE over the seeds that
reached it, with hits k/n; train and loop env steps/s mean +- SE; and the speed ratio pql/sac
computed per seed pair (the same seed index of both methods), mean +- SE and min-max.
Thresholds: CartpoleSwingup 400 (as before), CheetahRun 300, WalkerWalk 500: mid-range returns
on dm_control's [0, 1000] scale, the values the issue suggested; not "solved" levels, and not
yet checked against a full run; `--threshold TASK=RETURN` overrides them (they enter only the
report, not the fingerprint). The figures plot each method at its own eval steps (brax SAC: step
0, then after the prefill and every epoch; pql_jax: the end of every chunk), which differ
between the methods by at most a fraction of an epoch.

Matched per task: num_envs, batch size, hidden sizes (2 x 256 relu MLPs, constant width,
LayerNorm as brax's Q network: pql_jax's agent.layer_norm applies it to actor and critic),
update ratio (brax's grad_updates_per_step per vector step == pql_jax agent.utd * num_envs),
random-action prefill (brax min_replay_size == pql_jax warmup_steps * num_envs), replay capacity
(>= the budget, nothing evicted), env-step budget, episode length, and eval work (the same
number of evals on the same number of envs, deterministic policy, full episodes: pql_jax evals
once per chunk, brax SAC once per epoch plus once at step 0). These are Playground's tuned brax
SAC settings for dm_control (batch 512, 8 updates per vector step, min replay 8192). The
algorithms keep their own remaining hyperparameters (learning rates, tau, n-step, exploration...).

Speed is measured without compilation: the first pql_jax chunk and the first brax SAC epoch
include compiling, so both are timed from the end of that first chunk/epoch to the end of the
run. loop_sps includes evals (both pay for the same evals); train_sps excludes eval time
(brax: its own eval/walltime; pql_jax: a separately timed call of the same jitted eval, times
the number of chunks). eval_share is the eval time's share of the window; outside_frac is
pql_jax's share of loop wall time spent outside the jitted chunk calls (host-side Python:
metrics transfer, bookkeeping). pql_jax compiles once per task (later seeds reuse the program),
brax SAC on every run; startup_s shows that, the window excludes it.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, also when imported by path
from vs_sac_options import (HERE, REPO, SETUP_HINT, SHORT, comparable_settings, package_versions,  # noqa: E402
                            parse_args)
from vs_sac_store import (BadInput, append_record, dedupe, fingerprint, matching_records,  # noqa: E402
                          plan_runs, read_records, run_key)
from vs_sac_report import METHODS, markdown, plot_task, score, summarize  # noqa: E402


def report(records, args, out, figures_dir, fp):
    summary = summarize(records, args.thresholds, args.tasks)
    if not summary:
        print("no runs to report")
        return summary
    table = markdown(summary)
    commits = sorted({str(r.get("commit")) for r in records})
    footer = (f"{len(records)} runs, settings fingerprint {fp}, pql_jax commit(s) {', '.join(commits)}"
              + (f"; raw runs: {out}" if out else ""))
    print(table)
    print("\n" + footer)
    if out:
        md = out.with_suffix(".md")
        md.write_text(table + "\n\n" + footer + "\n")
        print(f"table: {md}")
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    for task, row in summary.items():
        path = figures_dir / f"vs_sac_{task.split(':')[-1]}.png"
        plot_task(task, records, row["threshold"], path)
        print(f"figure: {path}")
    return summary


# ---- environment checks -------------------------------------------------------------------
def runtime_problem(methods) -> str | None:
    """Why this interpreter cannot run `methods`, or None."""
    try:
        import pql_jax  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"pql_jax is not importable here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if "brax_sac" not in methods:
        return None
    try:
        import jax
        import mujoco_playground  # noqa: F401
        from brax.training.agents.sac import train  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"brax SAC is not importable here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    with warnings.catch_warnings():  # JAX 0.9 warns that it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        has_replicated = hasattr(jax, "device_put_replicated")
    if not has_replicated:
        return f"brax SAC cannot run on JAX {jax.__version__} here (it needs jax.device_put_replicated, gone in JAX 0.10)"
    return None


def validate_tasks(tasks):
    from mujoco_playground import registry
    known = set(registry.ALL_ENVS)
    for task in tasks:
        if task.split(":", 1)[1] not in known:
            raise BadInput(f"unknown task {task!r}: not a Playground env (e.g. playground:CartpoleSwingup)")


def _git_commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "pql_jax"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    from pql_jax.run.program import metrics_to_host

    t_start = time.time()
    overrides = pql_overrides(args, task)
    if task not in _LEARNERS:
        cfg = C.load(None, overrides)
        learner = T.make_learner(cfg)
        _LEARNERS[task] = (learner, jax.jit(learner.init), jax.jit(learner.chunk, donate_argnums=0),
                           jax.jit(learner.evaluate), cfg)
        fresh = True
    else:
        fresh = False
    learner, init, chunk, evaluate, cfg = _LEARNERS[task]
    hp = hparams_from_config(cfg)
    state = init(jax.random.PRNGKey(seed), hp)  # the seed enters only here
    jax.block_until_ready(state)
    n_chunks = T.counts.num_chunks(cfg)
    evals, inside, t_first = [], 0.0, None
    for i in range(n_chunks):
        t0 = time.time()
        state, metrics = chunk(state, PopulationSchedule.of(hp, i * cfg.run.chunk_steps))
        jax.block_until_ready(metrics)
        t1 = time.time()
        if i > 0:
            inside += t1 - t0
        metrics = metrics_to_host(metrics)
        evals.append({"env_steps": int(metrics["env_steps"]), "eval_return": float(metrics["eval_return"][-1]),
                      "online_return": float(metrics["online_return"]), "wall_s": time.time() - t_start,
                      "critic_updates": int(metrics["critic_updates"]), "diverged": bool(metrics["diverged"])})
        print(f"[pql] {task.split(':')[-1]} seed {seed} step {evals[-1]['env_steps']} "
              f"return {evals[-1]['eval_return']:.1f} t {evals[-1]['wall_s']:.1f}s", file=sys.stderr, flush=True)
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


# ---- brax SAC (in this process) -------------------------------------------------------------
def run_sac(args, task, seed):
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from sac_baseline import train_sac

    result = train_sac(task, num_envs=args.num_envs, batch_size=args.batch_size,
                       grad_updates_per_step=args.grad_updates_per_step, hidden=[args.width] * args.depth,
                       q_layer_norm=bool(args.layer_norm), env_steps=args.env_steps, seed=seed,
                       episode_length=args.episode_length, action_repeat=1, num_evals=args.evals + 1,
                       num_eval_envs=args.eval_envs, min_replay_size=args.min_replay)
    result["sac_settings"] = result.pop("settings")  # brax's train() arguments; "settings" is the fingerprint's
    return result


RUNNERS = {"pql_jax": run_pql, "brax_sac": run_sac}


# ---- main ---------------------------------------------------------------------------------
def _main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    methods = [m for m in METHODS if args.only is None or SHORT[args.only] == m]
    settings = comparable_settings(args, package_versions())
    fp = fingerprint(settings)
    out = Path(args.out) if args.out else None
    if args.report_only and not out.exists():
        raise BadInput(f"{out} does not exist")
    if out is not None and args.new_out and out.exists():
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
        aside = out.with_name(f"{out.stem}.{stamp}{out.suffix}")
        out.rename(aside)
        print(f"--new-out: moved the old {out} to {aside}", file=sys.stderr)

    records, partial_at = [], None
    if out is not None and out.exists():
        records, notes, partial_at = read_records(out)
        records = matching_records(records, fp, settings, out)
        records, more = dedupe(records)
        for note in notes + more:
            print(note, file=sys.stderr)
    if args.report_only:
        report(records, args, out, args.figures, fp)
        return 0

    problem = runtime_problem(methods)
    if problem:
        raise BadInput(f"{problem}; {SETUP_HINT} (or --only pql)")
    validate_tasks(args.tasks)
    if partial_at is not None:  # drop the half-written line before appending after it
        with open(out, "r+b") as f:
            f.truncate(partial_at)

    todo, skipped = plan_runs(args.seed_counts, methods, {run_key(r) for r in records})
    if skipped:
        print(f"skipping {len(skipped)} runs already in {out}: "
              + "; ".join(f"{t.split(':')[-1]} {m} seed {s}" for t, m, s in skipped), file=sys.stderr)
    print(f"{len(todo)} runs to do (fingerprint {fp})", file=sys.stderr, flush=True)
    commit, machine = _git_commit(), f"{_cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}"
    command = " ".join([sys.executable, *(sys.argv if argv is None else [__file__, *argv])])
    for task, method, seed in todo:
        t0 = time.time()
        record = RUNNERS[method](args, task, seed)
        record.update({
            "fingerprint": fp, "settings": settings, "commit": commit, "machine": machine,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "run_s": time.time() - t0, "loadavg_end": os.getloadavg(), "command": command,
        })
        records.append(record)
        if out is not None:
            append_record(out, record)
        print(f"[done] {task.split(':')[-1]} {method} seed {seed}: score {score(record['evals']):.1f}, "
              f"train {record.get('train_sps', float('nan')):.0f} env steps/s ({record['run_s']:.0f} s)",
              file=sys.stderr, flush=True)
    report(records, args, out, args.figures, fp)
    print(f"load average at end {os.getloadavg()}")
    return 0


def main(argv=None):
    try:
        return _main(argv)
    except BadInput as e:
        print(f"bench_vs_sac.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
