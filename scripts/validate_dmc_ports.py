"""Check the MJX ports of dm_control tasks (`dmc:QuadrupedWalk`, `dmc:DogStand`, ...) against dm_control itself,
and time them through the env adapter. Reproduces benchmarks/RESULTS.md#mjx-ports (issue "Real physics
evidence", section 1).

Four parts, each printed as it finishes (and written as JSON with --out); `steps` runs the port
with the model's own solver, or capped at --port-solver I/L. (The random-policy return statistics
are scripts/dmc_random_returns.py: resumable, as a Dog episode takes minutes.)
- `steps`: for --seeds dm_control resets, copy the initial qpos/qvel/act into the port, apply the
  same random action sequence (`random_action`, below) for --steps control steps in both, and report per field
  the largest |port - dm_control| over steps 1..5, 1..100 and over all steps, next to the field's RMS
  over dm_control's trajectory. --x64 runs the port in float64 too: differences that shrink to
  ~1e-9 there are float32 rounding amplified by the contact solve, not a modelling difference.
  Dog tasks are also compared with dm_control's task on the port's adapted model (no noslip,
  floor contacts: `dog.dm_control_adapted`), which splits the drift into the adaptations'
  (adapted vs dm_control) and MJX's (port vs adapted).
- `adaptations` (Dog): which adaptation moves the model away from dm_control. dm_control's own
  task, from the same states and actions, on four variants: a 1e-9 nudge of the initial
  velocities (the trajectory's own sensitivity, the floor of any comparison), no noslip only,
  floor contacts only, and both (the port's model); MuJoCo on the CPU, no MJX, seconds.
- `solver`: how far capping the constraint solver (--solver-caps, iterations/line-search
  iterations, as Playground caps its DM Control models) moves the port's model: MuJoCo on the CPU
  with the cap against the same model uncapped (dm_control's own for Quadruped, the adapted one for
  Dog), from the same states and actions, beside the 1e-9 nudge floor; seconds.
- `speed`: compile time and env steps/s of the adapter's vector step (pql_jax.envs.make_env) at
  --envs counts (control steps; one control step = 4 physics steps for Quadruped, 3 for Dog), with
  the adapter's --batching (`map` for Dog on the CPU: its vmapped programs do not compile in useful
  time there), for the model's own solver and each of --solver-caps, with each --cpu-fusion
  setting (env.cpu_fusion: XLA's CPU fusion; off by default for Dog, measured ~12x faster there).

Random actions are drawn as training produces them (`random_action`): canonical u uniform in
[-1, 1] per entry, mapped with `pql_jax.envs.to_control` onto dm_control's action spec
[minimum, maximum] (the model's ctrlrange), and the same mapped action goes to every side
(dm_control, the adapted model, the port: the port gets it cast to its dtype). Until 2026-12-07
the scripts drew uniform in [minimum, maximum] directly: the same affine image of a uniform, so
the distribution, and every statistic measured with it, is unchanged; with the same generator
state the two draws are even the same numbers up to float64 rounding (a few 1e-16).

Run (needs dm_control: pip install -e ".[dmc]"):
    python scripts/validate_dmc_ports.py --task QuadrupedWalk --parts steps speed \
        --x64 --out runs/dmc_quadruped_walk.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from pql_jax.envs.dmc import reference

FIELDS = {  # dm_control's flattened Quadruped observation, by field
    "Quadruped": {"hinge_qpos": (0, 16), "hinge_qvel": (16, 32), "act": (32, 44), "torso_velocity": (44, 47),
                  "torso_upright": (47, 48), "accelerometer": (48, 51), "gyro": (51, 54),
                  "force_torque": (54, 78)},
    "Dog": {"joint_angles": (0, 73), "joint_velocities": (73, 146), "torso_pelvis_height": (146, 148),
            "z_projection": (148, 157), "torso_com_velocity": (157, 160), "accelerometer": (160, 163),
            "velocimeter": (163, 166), "gyro": (166, 169), "foot_forces": (169, 181), "touch_sensors": (181, 185),
            "actuator_state": (185, 223)},
}


def _domain(task: str) -> str:
    return task.removesuffix("Walk").removesuffix("Run").removesuffix("Stand")


def _adapted(task: str, seed: int, contacts: str = "floor"):
    """dm_control's task on the port's adapted model (Dog, with its `contacts` set), else None."""
    if _domain(task) != "Dog":
        return None
    from pql_jax.envs.dmc import dog

    return dog.dm_control_adapted(task, seed=seed, contacts=contacts)


def _set_state(env, qpos, qvel, act) -> None:
    """Reset a dm_control env (its task's bookkeeping), then put its physics at (qpos, qvel, act)."""
    env.reset()
    with env.physics.reset_context():
        env.physics.data.qpos[:], env.physics.data.qvel[:], env.physics.data.act[:] = qpos, qvel, act


def random_action(rng: np.random.Generator, spec) -> np.ndarray:
    """One random action as training produces one: canonical u ~ U[-1, 1] per entry, mapped by
    `pql_jax.envs.to_control` onto [spec.minimum, spec.maximum] (float64)."""
    from pql_jax.envs import to_control

    u = rng.uniform(-1.0, 1.0, spec.shape)
    return to_control(u, np.asarray(spec.minimum, np.float64), np.asarray(spec.maximum, np.float64))


def _field_table(diffs: np.ndarray, scale: np.ndarray, fields: dict) -> dict:
    return {name: {"max_5": float(np.nanmax(diffs[:, 1:6, lo:hi])),  # the span of tests/test_dmc_ports.py
                   "max_100": float(np.nanmax(diffs[:, 1:101, lo:hi])), "max_all": float(np.nanmax(diffs[:, 1:, lo:hi])),
                   "rms": float(np.sqrt(np.mean(np.square(scale[:, :, lo:hi]))))} for name, (lo, hi) in fields.items()}


def compare_steps(task: str, seeds: int, steps: int, x64: bool, caps: tuple[int, int] = (0, 0),
                  contacts: str = "floor", fusion: str = "auto") -> dict:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", x64)
    from pql_jax.config import EnvConfig
    from pql_jax.envs import compiler_options, dmc
    dtype = jnp.float64 if x64 else jnp.float32
    env = dmc.load(task, solver_caps=caps, contacts=contacts)
    options = compiler_options(EnvConfig(name=f"dmc:{task}", cpu_fusion=fusion))  # as training compiles it
    step, reset_from = jax.jit(env.step, compiler_options=options), jax.jit(env.reset_from, compiler_options=options)
    ref, ada = reference.load(*reference.DM_NAMES[task], seed=0), _adapted(task, seed=0, contacts=contacts)
    fields = FIELDS[_domain(task)]
    diffs, scale, rdiff, rscale, t0 = [], [], [], [], time.time()
    adiffs, a_dm, ardiff, a_dm_r, first = [], [], [], [], []
    for seed in range(seeds):
        ts = ref.reset()
        qpos, qvel, act = reference.state(ref)
        state = reset_from(*(jnp.asarray(x, dtype) for x in (qpos, qvel, act)))
        if ada is not None:
            _set_state(ada, qpos, qvel, act)
        rng = np.random.default_rng(1000 + seed)
        spec = ref.action_spec()
        d_ep, s_ep, r_ep, rr_ep = [np.abs(np.asarray(state.obs) - reference.flat_obs(ts.observation))], [], [], []
        ad_ep, adm_ep, ar_ep, adm_r_ep, over = [d_ep[0]], [d_ep[0] * 0], [], [], None
        for i in range(steps):
            action = random_action(rng, spec)
            ts = ref.step(action)
            state = step(state, jnp.asarray(action, dtype))
            dm_obs, port_obs = reference.flat_obs(ts.observation), np.asarray(state.obs, np.float64)
            d_ep.append(np.abs(port_obs - dm_obs))
            s_ep.append(dm_obs)
            r_ep.append(abs(float(state.reward) - ts.reward))
            rr_ep.append(ts.reward)
            if ada is not None:
                ta = ada.step(action)
                ada_obs = reference.flat_obs(ta.observation)
                ad_ep.append(np.abs(port_obs - ada_obs)), adm_ep.append(np.abs(ada_obs - dm_obs))
                ar_ep.append(abs(float(state.reward) - ta.reward)), adm_r_ep.append(abs(ta.reward - ts.reward))
            if over is None and (ad_ep if ada is not None else d_ep)[-1].max() > 1e-3:
                over = i + 1
        diffs.append(d_ep), scale.append(s_ep), rdiff.append(r_ep), rscale.append(rr_ep), first.append(over)
        adiffs.append(ad_ep), a_dm.append(adm_ep), ardiff.append(ar_ep), a_dm_r.append(adm_r_ep)
    diffs, scale, rdiff = np.asarray(diffs), np.asarray(scale), np.asarray(rdiff)  # [seed, step(+1), obs]
    out = {"task": task, "dtype": "float64" if x64 else "float32", "seeds": seeds, "steps": steps,
           "seconds": round(time.time() - t0, 1), "initial_obs_max": float(diffs[:, 0].max()),
           "first_step_obs_over_1e-3": first,
           "reward": {"max_5": float(rdiff[:, :5].max()), "max_100": float(rdiff[:, :100].max()),
                      "max_all": float(rdiff.max()),
                      "rms": float(np.sqrt(np.mean(np.square(rscale))))},
           "fields": _field_table(diffs, scale, fields)}
    if ada is not None:  # first_step_obs_over_1e-3 is then port vs adapted
        ardiff, a_dm_r = np.asarray(ardiff), np.asarray(a_dm_r)
        out["port_vs_adapted"] = {"reward": {"max_100": float(ardiff[:, :100].max()), "max_all": float(ardiff.max())},
                                  "fields": _field_table(np.asarray(adiffs), scale, fields)}
        out["adapted_vs_dm_control"] = {"reward": {"max_100": float(a_dm_r[:, :100].max()),
                                                   "max_all": float(a_dm_r.max())},
                                        "fields": _field_table(np.asarray(a_dm), scale, fields)}
    return out


def _dm_variants(task: str, seed: int) -> dict:
    """dm_control's Dog task (`seed`) on the model variants that split the port's adaptations: a
    1e-9 nudge of the initial velocities (the trajectory's own sensitivity, the floor of any
    comparison), each adaptation alone, and both (the port's model)."""
    from pql_jax.envs.dmc import dog

    nudged, no_noslip = (reference.load(*reference.DM_NAMES[task], seed=seed) for _ in range(2))
    no_noslip.physics.model.opt.noslip_iterations = 0
    floor_only = dog.dm_control_adapted(task, seed=seed)
    floor_only.physics.model.opt.noslip_iterations = nudged.physics.model.opt.noslip_iterations
    return {"nudge_1e-9": nudged, "no_noslip": no_noslip, "floor_contacts": floor_only,
            "both": dog.dm_control_adapted(task, seed=seed)}


def adaptation_drift(task: str, seeds: int, steps: int) -> dict:
    """Which adaptation moves the Dog away from dm_control: from the same state and actions as
    dm_control's own task, the largest |variant - dm_control| per field over steps 1..100 for each
    variant of `_dm_variants` (MuJoCo on the CPU for all; no MJX)."""
    return _drift(task, reference.load(*reference.DM_NAMES[task], seed=0), _dm_variants(task, seed=0), seeds, steps)


def _port_model(task: str, caps: tuple[int, int] = (0, 0)):
    """dm_control's task on the port's model (the adapted one for Dog), its solver capped at
    `caps` (iterations, line-search iterations; 0 keeps the model's own), on MuJoCo."""
    from pql_jax.envs.dmc import quadruped

    env = _adapted(task, seed=0) or reference.load(*reference.DM_NAMES[task], seed=0)
    quadruped.cap_solver(env.physics.model._model, *caps)
    return env


def solver_drift(task: str, seeds: int, steps: int, caps: list[tuple[int, int]]) -> dict:
    """How far capping the solver moves the port's model: each cap against the uncapped model
    (MuJoCo on the CPU), beside the 1e-9 nudge of the initial velocities (the floor)."""
    variants = {"nudge_1e-9": _port_model(task)} | {f"solver_{i}/{ls}": _port_model(task, (i, ls)) for i, ls in caps}
    return _drift(task, _port_model(task), variants, seeds, steps)


def _drift(task: str, ref, variants: dict, seeds: int, steps: int) -> dict:
    """From `seeds` resets of `ref` and the same random actions (`random_action`), the largest
    |variant - ref| per observation field (and of the reward) over steps 1..100 for each dm_control
    env in `variants`; the variant named `nudge_1e-9` starts with every velocity moved by +-1e-9.
    A variant whose physics blows up (dm_control's PhysicsError) is left out of that seed's later
    steps; `blowups` lists the control step at which it did, per seed (None: it did not)."""
    from dm_control.rl.control import PhysicsError

    spec, fields, t0 = ref.action_spec(), FIELDS[_domain(task)], time.time()
    diffs = {name: [] for name in variants}
    rdiffs, scale = {name: [] for name in variants}, []
    blowups = {name: [] for name in variants}
    for seed in range(seeds):
        ts = ref.reset()
        qpos, qvel, act = reference.state(ref)
        nudge = np.random.default_rng(seed).choice([-1e-9, 1e-9], size=qvel.shape)
        for name, env in variants.items():
            _set_state(env, qpos, qvel + (nudge if name == "nudge_1e-9" else 0.0), act)
        rng = np.random.default_rng(1000 + seed)
        per = {name: [np.zeros_like(reference.flat_obs(ts.observation))] for name in variants}
        rew, sc = {name: [] for name in variants}, []
        blown = dict.fromkeys(variants)
        for t in range(1, steps + 1):
            action = random_action(rng, spec)
            ts = ref.step(action)
            dm_obs = reference.flat_obs(ts.observation)
            sc.append(dm_obs)
            for name, env in variants.items():
                try:
                    tv = None if blown[name] else env.step(action)
                except PhysicsError:
                    blown[name], tv = t, None
                per[name].append(np.full_like(dm_obs, np.nan) if tv is None
                                 else np.abs(reference.flat_obs(tv.observation) - dm_obs))
                rew[name].append(np.nan if tv is None else abs(tv.reward - ts.reward))
        scale.append(sc)
        for name in variants:
            diffs[name].append(per[name]), rdiffs[name].append(rew[name]), blowups[name].append(blown[name])
    scale = np.asarray(scale)
    return {"task": task, "seeds": seeds, "steps": steps, "seconds": round(time.time() - t0, 1),
            "variants": {name: {"reward_max_100": float(np.nanmax(np.asarray(rdiffs[name])[:, :100])),
                                "fields": _field_table(np.asarray(diffs[name]), scale, fields),
                                "blowups": blowups[name]}
                         for name in variants}}


def speed(task: str, counts: list[int], steps: int, batching: str = "vmap",
          caps: list[tuple[int, int]] = ((0, 0),), fusions: list[str] = ("auto",)) -> list[dict]:
    """Compile time and env steps/s of the adapter's vector step for each env count, solver cap
    and `env.cpu_fusion` setting."""
    return [_speed(task, n, steps, batching, cap, fusion) for n in counts for cap in caps for fusion in fusions]


def _speed(task: str, n: int, steps: int, batching: str, cap: tuple[int, int], fusion: str = "auto") -> dict:
    import jax
    import jax.numpy as jnp

    from pql_jax.config import EnvConfig
    from pql_jax.envs import compiler_options, make_env

    solver = "model's own" if cap == (0, 0) else f"{cap[0]}/{cap[1]}"
    config = EnvConfig(name=f"dmc:{task}", num_envs=n, batching=batching, cpu_fusion=fusion,
                       options={"solver_iterations": cap[0], "solver_ls_iterations": cap[1]})
    env, options = make_env(config), compiler_options(config)
    reset = jax.jit(env.reset, static_argnums=1, compiler_options=options)
    step = jax.jit(env.step, compiler_options=options)
    t0 = time.time()
    reset_compiled = reset.lower(jax.random.PRNGKey(0), n).compile()
    reset_compile_s = time.time() - t0
    t0 = time.time()
    state = jax.block_until_ready(reset_compiled(jax.random.PRNGKey(0)))
    reset_s = time.time() - t0
    print(json.dumps({"envs": n, "solver": solver, "cpu_fusion": fusion, "reset_compile_s": round(reset_compile_s, 1),
                      "reset_s": round(reset_s, 2)}), flush=True)  # a part that runs out of time still tells these
    action = jnp.zeros((n, env.action_size))
    t0 = time.time()
    compiled = step.lower(state, action).compile()
    compile_s = time.time() - t0
    state, _ = compiled(state, action)  # warm-up
    jax.block_until_ready(state)
    t0 = time.time()
    for i in range(steps):
        state, out = compiled(state, jnp.sin(jnp.full((n, env.action_size), float(i))))
    jax.block_until_ready(out)
    elapsed = time.time() - t0
    row = {"envs": n, "batching": batching, "solver": solver, "cpu_fusion": fusion,
           "xla_options": options or {}, "reset_compile_s": round(reset_compile_s, 1),
           "reset_s": round(reset_s, 2), "compile_s": round(compile_s, 1), "vector_steps": steps,
           "env_steps_per_s": round(n * steps / elapsed, 1)}
    print(json.dumps(row), flush=True)
    return row


def _parse_caps(texts: list[str]) -> list[tuple[int, int]] | None:
    """`I/L` strings as (iterations, line-search iterations) pairs, both >= 1; None if malformed."""
    caps = []
    for text in texts:
        parts = text.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
            return None
        caps.append((int(parts[0]), int(parts[1])))
    return caps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="QuadrupedWalk", choices=sorted(reference.DM_NAMES))
    parser.add_argument("--parts", nargs="+", default=["steps", "speed"], choices=["steps", "speed", "adaptations", "solver"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--x64", action="store_true", help="also compare a float64 run of the port")
    parser.add_argument("--envs", type=int, nargs="+", default=[8, 32, 128, 256])
    parser.add_argument("--speed-steps", type=int, default=20)
    parser.add_argument("--batching", choices=["vmap", "map"], default="vmap",
                        help="speed part: how the port's envs are batched (map: a loop of "
                             "single-env programs, for Dog on the CPU)")
    parser.add_argument("--solver-caps", nargs="+", default=[], metavar="I/L",
                        help="solver caps (iterations/line-search iterations) for the solver and speed parts")
    parser.add_argument("--port-solver", default=None, metavar="I/L",
                        help="steps part: run the port with its solver capped at I/L (default: "
                             "the model's own)")
    parser.add_argument("--dog-contacts", choices=["floor", "self"], default="floor",
                        help="Dog tasks, steps part: the port's contact set (env.options.contacts)")
    parser.add_argument("--cpu-fusion", nargs="+", choices=["auto", "on", "off"], default=["auto"],
                        help="env.cpu_fusion for the port's programs: speed times each; steps uses the first")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if "adaptations" in args.parts and _domain(args.task) != "Dog":  # before hours of other parts
        print(f"error: --parts adaptations: {args.task} has no adapted model (Dog tasks only)", file=sys.stderr)
        return 2
    caps = _parse_caps(args.solver_caps)
    port_caps = _parse_caps([args.port_solver] if args.port_solver else [])
    if caps is None or ("solver" in args.parts and not caps) or port_caps is None:
        print(f"error: --solver-caps / --port-solver must be I/L pairs of integers >= 1 (got "
              f"{args.solver_caps} / {args.port_solver})", file=sys.stderr)
        return 2
    port_caps = port_caps[0] if port_caps else (0, 0)
    result_solver = {"port_solver": f"{port_caps[0]}/{port_caps[1]}" if port_caps != (0, 0) else "model's own",
                     "dog_contacts": args.dog_contacts}
    if args.dog_contacts != "floor" and _domain(args.task) != "Dog":
        print(f"error: --dog-contacts applies to the Dog tasks only, not {args.task}", file=sys.stderr)
        return 2
    from pql_jax.run import compile_cache

    compile_cache.enable()  # a second run (or part) reuses the compiled step
    why = reference.available()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    import jax

    result = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "jax": jax.__version__,
              "devices": [str(d) for d in jax.devices()], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join(sys.argv), **result_solver}
    if "steps" in args.parts:
        result["steps"] = [compare_steps(args.task, args.seeds, args.steps, x64=False, caps=port_caps,
                                           contacts=args.dog_contacts, fusion=args.cpu_fusion[0])]
        print(json.dumps(result["steps"][-1]), flush=True)
    if "speed" in args.parts:
        result["speed"] = speed(args.task, args.envs, args.speed_steps, args.batching, [(0, 0), *caps],
                                args.cpu_fusion)
    if "adaptations" in args.parts:
        result["adaptations"] = adaptation_drift(args.task, args.seeds, args.steps)
        print(json.dumps(result["adaptations"]), flush=True)
    if "solver" in args.parts:
        result["solver"] = solver_drift(args.task, args.seeds, args.steps, caps)
        print(json.dumps(result["solver"]), flush=True)
    if "steps" in args.parts and args.x64:  # last: x64 cannot be switched off again in-process
        result["steps"].append(compare_steps(args.task, args.seeds, args.steps, x64=True, caps=port_caps,
                                            contacts=args.dog_contacts, fusion=args.cpu_fusion[0]))
        print(json.dumps(result["steps"][-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
