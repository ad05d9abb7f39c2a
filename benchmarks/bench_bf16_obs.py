"""bfloat16 replay observations: the error the critic's inputs carry, in units of each dimension's std.

For each shipped task (the env.name of every configs/*.yaml, once each), rolls `--steps` vector
steps of a uniform random policy at `--envs` envs, stores the transitions in a float32 and in a
bfloat16 replay buffer (pql_jax.learner.replay, every row kept), reads every stored observation
back (each row's observation and its next or final observation) and compares it with the exact
value after the learner's normalisation: clip((x - mean) / sqrt(var + 1e-8), -5, 5) with the mean
and variance of all the rollout's observations (what the running normaliser converges to). Per
dimension the RMS of the difference over all values; reported: the mean over dimensions and the
worst dimension (its index, its |mean| / std).

Columns: float32 storage (0 by construction: asserted); bfloat16 of the raw value (the scheme
before 2026-12-07); bfloat16 relative to the per-slot offset, the mean over envs of the row
(the buffer as shipped, read back through the replay code); and, simulated in numpy for
comparison, bfloat16 relative to one fixed offset per dimension: the mean of the reset
observations, and the mean over the warm-up steps (`agent.warmup_steps` of the config; every
row encoded with it, i.e. the rebase of the warm-up rows counted as free).

    nice -n 5 taskset -c 1 python benchmarks/bench_bf16_obs.py            # every task but the Dog
    python benchmarks/bench_bf16_obs.py --tasks test:pointmass --steps 64   # one task

dmc:DogStand is skipped by default: on this CPU its vmapped program does not compile in useful
time and the `map` loop runs ~2-26 env steps/s (benchmarks/RESULTS.md#mjx-ports), i.e. minutes
to tens of minutes for one rollout.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pql_jax import config as cfg_mod
from pql_jax.envs import make_env
from pql_jax.learner import replay

SKIP = {"dmc:DogStand": "not compiled: the Dog's vmapped MJX program stalls XLA on the CPU and the `map` loop "
                        "runs ~2-26 env steps/s (benchmarks/RESULTS.md#mjx-ports)"}
CLIP = 5.0


def shipped_tasks() -> dict[str, list[str]]:
    """env.name -> the configs that train it (first config's settings are used)."""
    tasks: dict[str, list[str]] = {}
    for path in sorted(glob.glob("configs/*.yaml")):
        tasks.setdefault(cfg_mod.load(path).env.name, []).append(path)
    return tasks


def rollout(config, envs: int, steps: int, seed: int):
    """[steps, envs, ...] arrays of a uniform random policy: obs, action, reward, terminal,
    truncated, next_obs, nonfinite (as the learner's vector step hands them to replay.insert)."""
    env = make_env(config.env)

    @jax.jit
    def run(key):
        reset_key, act_key = jax.random.split(key)

        def body(state, k):
            action = jax.random.uniform(k, (envs, env.action_size), minval=-1.0, maxval=1.0)
            new, out = env.step(state, action)
            return new, (state.obs, action, out.reward, out.terminal, out.truncated, out.next_obs, out.nonfinite)

        return jax.lax.scan(body, env.reset(reset_key, envs), jax.random.split(act_key, steps))[1]

    return jax.block_until_ready(run(jax.random.PRNGKey(seed)))


def stored_values(traj, dtype: str) -> np.ndarray:
    """Every observation a buffer of `dtype` gives back: [2, steps, envs, obs] (each row's observation,
    then its next or final one), with rows = steps so that row t holds time t."""
    obs, action = traj[0], traj[1]
    steps, envs, size = obs.shape

    @jax.jit
    def fill(traj):
        buf = replay.init_buffer(steps, envs, size, action.shape[-1], dtype)  # exact FIFOs: rows entries
        body = lambda b, x: (replay.insert(b, *x[:6], invalid=x[6]), None)
        buf = jax.lax.scan(body, buf, traj)[0]
        return jnp.stack([buf.obs, buf.next_obs])

    return np.asarray(fill(traj))


def bf16(x):
    return np.asarray(x, np.float32).astype(jnp.bfloat16).astype(np.float32)


def errors(got: np.ndarray, exact: np.ndarray, mean, std) -> np.ndarray:
    """Per dimension: RMS over all values of the difference after the learner's normalisation."""
    norm = lambda x: np.clip((x - mean) / std, -CLIP, CLIP)
    return np.sqrt(((norm(got) - norm(exact)) ** 2).reshape(-1, exact.shape[-1]).mean(0))


def measure(name: str, config, envs: int, steps: int, seed: int) -> dict:
    tick = time.perf_counter()
    traj = rollout(config, envs, steps, seed)
    roll_s = time.perf_counter() - tick
    exact = stored_values(traj, "float32")
    obs = np.asarray(traj[0])
    size = obs.shape[-1]
    # the float32 buffer gives every value back exactly
    assert np.array_equal(exact[0], obs), name
    nonfinite = np.asarray(traj[6])
    assert np.array_equal(exact[1][~nonfinite], np.asarray(traj[5])[~nonfinite]), name
    mean, var = obs.reshape(-1, size).mean(0), obs.reshape(-1, size).var(0)
    std = np.sqrt(var + 1e-8)
    warmup = max(1, min(config.agent.warmup_steps, steps))
    fixed = lambda offset: offset + bf16(exact - offset)
    columns = {
        "float32": np.asarray(exact),
        "bf16_raw": bf16(exact),
        "bf16_row_offset": stored_values(traj, "bfloat16"),
        "bf16_reset_offset": fixed(obs[0].mean(0)),
        "bf16_warmup_offset": fixed(obs[:warmup].reshape(-1, size).mean(0)),
    }
    out = {"task": name, "obs_size": size, "envs": envs, "steps": steps, "warmup_steps": warmup,
           "rollout_s": round(roll_s, 1), "constant_dims": int((var == 0).sum()),
           "max_abs_mean_over_std": float(np.max(np.where(var > 0, np.abs(mean) / std, 0.0))),
           "nonfinite": int(nonfinite.sum()), "episode_ends": int(np.asarray(traj[3] | traj[4]).sum())}
    for key, got in columns.items():
        e = errors(got, exact, mean, std)
        worst = int(np.argmax(e))
        out[key] = {"mean": float(e.mean()), "worst": float(e[worst]), "worst_dim": worst,
                    "worst_abs_mean_over_std": float(abs(mean[worst]) / std[worst])}
    assert out["float32"]["worst"] == 0.0, name
    return out


def table(results: list[dict]) -> list[str]:
    cell = lambda r, k: f"{r[k]['mean']:.3g} / {r[k]['worst']:.3g}"
    lines = ["| task (obs) | float32 | bf16 raw (before) | bf16 row offset (now) | fixed: reset mean | "
             "fixed: warm-up mean | worst dim before: index, abs(mean)/std |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['task']} | skipped: {r['skipped']} ||||||")
            continue
        w = r["bf16_raw"]
        lines.append(f"| {r['task']} ({r['obs_size']}) | 0 | {cell(r, 'bf16_raw')} | {cell(r, 'bf16_row_offset')} | "
                     f"{cell(r, 'bf16_reset_offset')} | {cell(r, 'bf16_warmup_offset')} | "
                     f"{w['worst_dim']}, {w['worst_abs_mean_over_std']:.3g} |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="*", help="env names (default: every configs/*.yaml env but the skipped)")
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here, one JSON object per line")
    args = parser.parse_args(argv)
    tasks = shipped_tasks()
    names = args.tasks or list(tasks)
    results = []
    for name in names:
        if name in SKIP and not args.tasks:
            results.append({"task": name, "skipped": SKIP[name]})
            continue
        path = tasks.get(name, [None])[0]
        overrides = [f"env.num_envs={args.envs}", "env.eval_envs=0", "env.val_envs=0"]
        config = cfg_mod.load(path, overrides + ([] if path else [f"env.name={name}"]))
        tick = time.perf_counter()
        try:
            r = measure(name, config, args.envs, args.steps, args.seed)
        except Exception as exc:  # noqa: BLE001 - one task's env failing must not lose the others
            r = {"task": name, "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
        r["wall_s"] = round(time.perf_counter() - tick, 1)
        r["configs"] = tasks.get(name, [])
        results.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    print(f"JAX {jax.__version__}, {args.envs} envs x {args.steps} vector steps of a uniform random policy, "
          f"seed {args.seed}; cells: mean over dimensions / worst dimension of the RMS error in std units")
    print("\n".join(table(results)))
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in results))


if __name__ == "__main__":
    main()
