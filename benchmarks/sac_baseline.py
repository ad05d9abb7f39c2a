"""brax SAC baseline on a Playground env: `train_sac(...)` returns a dict of results; the CLI
prints it as one JSON line.

Needs JAX 0.9.2 (brax 0.14.2's SAC calls jax.device_put_replicated, which JAX 0.10 removed):
`bash benchmarks/setup_sac_venv.sh` creates benchmarks/.venv-sac with it, brax 0.14.2,
playground 0.2.0 and this project. `benchmarks/bench_vs_sac.py` imports `train_sac` and runs it
in the same process as pql_jax; on its own:

    benchmarks/.venv-sac/bin/python benchmarks/sac_baseline.py --env CartpoleSwingup \
        --num-envs 128 --batch-size 512 --grad-updates-per-step 8 --hidden 256,256 \
        --env-steps 300000 --num-evals 11 --seed 0

Defaults follow Playground's tuned brax SAC config for dm_control
(mujoco_playground.config.dm_control_suite_params.brax_sac_config): 128 envs, batch 512,
8 grad updates per vector step, lr 1e-3, gamma 0.99, min replay 8192, LayerNorm Q network,
observation normalisation; networks are brax's default 2 x 256 relu MLPs.

Timing (brax SAC calls progress_fn at step 0 after an initial eval, then after every training
epoch and its eval). The first epoch includes compiling the training epoch (brax compiles anew
on every `train` call), so the compile-free window runs from the first post-training callback
to the last one:
  loop_sps     env steps in that window / its wall time (training epochs + evals + Python),
  train_sps    the same steps / brax's own training time in the window (training/walltime),
  eval_s       eval time in the window (eval/walltime), the rest being Python/host overhead.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="CartpoleSwingup", help="Playground env name (playground: prefix allowed)")
    p.add_argument("--num-envs", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--grad-updates-per-step", type=int, default=8)
    p.add_argument("--hidden", default="256,256", help="hidden layer sizes of policy and Q networks")
    p.add_argument("--q-layer-norm", type=int, default=1, help="LayerNorm in the Q network (1/0)")
    p.add_argument("--env-steps", type=int, default=200_000, help="total env steps (num_timesteps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episode-length", type=int, default=None, help="default: the env config's")
    p.add_argument("--action-repeat", type=int, default=None, help="default: Playground's tuned value")
    p.add_argument("--num-evals", type=int, default=11,
                   help="brax counts the step-0 eval: N evals = 1 initial + N-1 training epochs")
    p.add_argument("--num-eval-envs", type=int, default=16)
    p.add_argument("--stochastic-eval", action="store_true", help="sample actions in eval (brax's default)")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--min-replay-size", type=int, default=None)
    p.add_argument("--max-replay-size", type=int, default=None, help="default: the env-step budget")
    return p.parse_args(argv)


def train_sac(env: str = "CartpoleSwingup", *, num_envs: int = 128, batch_size: int = 512,
              grad_updates_per_step: int = 8, hidden=(256, 256), q_layer_norm: bool = True,
              env_steps: int = 200_000, seed: int = 0, episode_length: int | None = None,
              action_repeat: int | None = None, num_evals: int = 11, num_eval_envs: int = 16,
              stochastic_eval: bool = False, learning_rate: float | None = None,
              min_replay_size: int | None = None, max_replay_size: int | None = None) -> dict:
    """Train brax's SAC on Playground env `env` once; returns the result dict (evals, timings).

    None means Playground's tuned value (or the env config's, for episode_length)."""
    t_start = time.time()
    import jax
    from brax.training.agents.sac import networks as sac_networks
    from brax.training.agents.sac import train as sac
    from mujoco_playground import registry, wrapper

    env_name = env.split(":", 1)[1] if env.startswith("playground:") else env
    environment = registry.load(env_name, config_overrides={"impl": "jax"})
    env_cfg = registry.get_default_config(env_name)
    try:
        from mujoco_playground.config import dm_control_suite_params
        tuned = dm_control_suite_params.brax_sac_config(env_name)
    except Exception:  # noqa: BLE001 - non-dm_control env: fall back to brax_sac_config's values
        tuned = None
    get = lambda key, default: (tuned[key] if tuned is not None and key in tuned else default)  # noqa: E731

    hidden = tuple(int(h) for h in hidden)
    episode_length = episode_length or int(env_cfg.episode_length)
    action_repeat = action_repeat or int(get("action_repeat", 1))
    settings = dict(
        num_timesteps=env_steps, num_evals=num_evals, reward_scaling=float(get("reward_scaling", 1.0)),
        episode_length=episode_length, normalize_observations=True, action_repeat=action_repeat,
        discounting=float(get("discounting", 0.99)),
        learning_rate=learning_rate or float(get("learning_rate", 1e-3)),
        num_envs=num_envs, num_eval_envs=num_eval_envs, batch_size=batch_size,
        grad_updates_per_step=grad_updates_per_step,
        max_replay_size=max_replay_size or env_steps,
        min_replay_size=min_replay_size if min_replay_size is not None else int(get("min_replay_size", 8192)),
        deterministic_eval=not stochastic_eval, seed=seed,
    )
    network_factory = functools.partial(sac_networks.make_sac_networks, hidden_layer_sizes=hidden,
                                        q_network_layer_norm=bool(q_layer_norm))

    points = []  # one per progress_fn call

    def progress(step, metrics):
        points.append({"env_steps": int(step), "wall_s": time.time() - t_start,
                       "eval_return": float(metrics["eval/episode_reward"]),
                       "train_walltime_s": float(metrics.get("training/walltime", 0.0)),
                       "eval_walltime_s": float(metrics.get("eval/walltime", 0.0))})
        print(f"[sac] {env_name} seed {seed} step {step} return {points[-1]['eval_return']:.1f} "
              f"t {points[-1]['wall_s']:.1f}s", file=sys.stderr, flush=True)

    t_train = time.time()
    sac.train(environment=environment, eval_env=registry.load(env_name, config_overrides={"impl": "jax"}),
              wrap_env_fn=wrapper.wrap_for_brax_training, network_factory=network_factory,
              progress_fn=progress, **settings)
    t_end = time.time()

    trained = [p for p in points if p["env_steps"] > 0]
    result = {
        "method": "brax_sac", "env": f"playground:{env_name}", "seed": seed,
        "jax": jax.__version__,
        "settings": {**settings, "hidden": list(hidden), "q_layer_norm": bool(q_layer_norm)},
        "evals": [{"env_steps": p["env_steps"], "eval_return": p["eval_return"], "wall_s": p["wall_s"]} for p in points],
        "final_return": points[-1]["eval_return"], "final_env_steps": points[-1]["env_steps"],
        "total_wall_s": t_end - t_start, "train_call_s": t_end - t_train,
    }
    if len(trained) >= 2:
        first, last = trained[0], trained[-1]
        steps = last["env_steps"] - first["env_steps"]
        window = last["wall_s"] - first["wall_s"]
        train_s = last["train_walltime_s"] - first["train_walltime_s"]
        eval_s = last["eval_walltime_s"] - first["eval_walltime_s"]
        result.update({
            "window_env_steps": steps, "window_s": window, "window_train_s": train_s, "window_eval_s": eval_s,
            "loop_sps": steps / window, "train_sps": steps / train_s,
            "eval_share": eval_s / window, "other_share": max(window - train_s - eval_s, 0.0) / window,
            "startup_s": first["wall_s"],
        })
    return result


def main(argv=None):
    args = parse_args(argv)
    result = train_sac(
        args.env, num_envs=args.num_envs, batch_size=args.batch_size,
        grad_updates_per_step=args.grad_updates_per_step, hidden=[int(h) for h in args.hidden.split(",")],
        q_layer_norm=bool(args.q_layer_norm), env_steps=args.env_steps, seed=args.seed,
        episode_length=args.episode_length, action_repeat=args.action_repeat, num_evals=args.num_evals,
        num_eval_envs=args.num_eval_envs, stochastic_eval=args.stochastic_eval,
        learning_rate=args.learning_rate, min_replay_size=args.min_replay_size,
        max_replay_size=args.max_replay_size)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
