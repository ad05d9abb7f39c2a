"""How large do the shipped tasks' observations and rewards get: the margin under `env.blowup_bound`.

For each shipped task (the env.name of every configs/*.yaml, once each), rolls `--steps` vector
steps of a uniform random policy at `--envs` envs through the env adapter with the blow-up guard
off (`env.blowup_bound=0`) and prints, per task, the largest |observation entry| and |reward| seen,
and how many steps were non-finite. The guard's default must sit far above these.

    nice -n 5 python benchmarks/bench_obs_range.py                 # every task but the Dog
    python benchmarks/bench_obs_range.py --tasks test:pointmass    # one task
"""

from __future__ import annotations

import argparse
import glob
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from pql_jax import config as cfg_mod
from pql_jax.envs import make_env

SKIP = ("dmc:DogStand",)  # its env copies run in a loop at a few env steps/s on the CPU


def task_configs() -> dict[str, str]:
    """env.name -> the first shipped config that trains it."""
    out: dict[str, str] = {}
    for path in sorted(glob.glob("configs/*.yaml")):
        out.setdefault(cfg_mod.load(path).env.name, path)
    return out


def measure(path: str, envs: int, steps: int) -> dict:
    """Largest |obs| and |reward| of a random-policy rollout, and its non-finite steps."""
    config = cfg_mod.load(path, [f"env.num_envs={envs}", "env.blowup_bound=0"])
    env = make_env(config.env)

    def body(state, key):
        action = jax.random.uniform(key, (envs, env.action_size), minval=-1.0, maxval=1.0)
        state, out = env.step(state, action)
        finite = ~out.nonfinite
        return state, (jnp.max(jnp.where(finite[:, None], jnp.abs(out.next_obs), 0.0)),
                       jnp.max(jnp.where(finite, jnp.abs(out.reward), 0.0)), jnp.sum(out.nonfinite))

    keys = jax.random.split(jax.random.PRNGKey(0), steps + 1)
    tick = time.perf_counter()
    _, (obs, reward, bad) = jax.jit(lambda s, k: jax.lax.scan(body, s, k))(env.reset(keys[0], envs), keys[1:])
    return {"max_abs_obs": float(obs.max()), "max_abs_reward": float(reward.max()), "nonfinite": int(bad.sum()),
            "seconds": time.perf_counter() - tick}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", help="comma-separated env names (default: every shipped task but the Dog)")
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args(argv)
    configs = task_configs()
    names = args.tasks.split(",") if args.tasks else [n for n in configs if n not in SKIP]
    unknown = [n for n in names if n not in configs]
    if unknown:
        print(f"bench_obs_range: no shipped config trains {', '.join(unknown)}", file=sys.stderr)
        return 2
    print(f"| task | max abs obs | max abs reward | non-finite steps | s |  ({args.envs} envs x {args.steps} steps)")
    for name in names:
        r = measure(configs[name], args.envs, args.steps)
        print(f"| {name} | {r['max_abs_obs']:.4g} | {r['max_abs_reward']:.4g} | {r['nonfinite']} | {r['seconds']:.0f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
