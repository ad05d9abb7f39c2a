"""Random-policy return statistics of a `dmc:` MJX port against dm_control itself, resumable.

Reproduces the random-policy rows of the MJX ports in benchmarks/RESULTS.md#dmc-random-returns
(issue "Real physics evidence", section 1: "a random policy gives matching reward statistics over
many episodes"). Full episodes (dm_control's 1000-step time limit) of a uniform random policy run
in dm_control, in dm_control's task on the port's adapted model (Dog only: no noslip, the port's
contact set), and in the port; the report gives each side's mean return +- standard error (sample
SD, n named) and the differences in combined SE. Episodes that blow up (dm_control's
PhysicsError, a non-finite port return) are counted and left out of the statistics.

Every finished episode is appended to --store (JSON lines) at once, and a rerun skips what the
store holds: a Dog episode of the port takes ~8 min on a 2-core CPU (~2 env steps/s), so the
n >= 100 episodes per side accumulate over several runs (or machines: copy the store). Episode i
is the same whatever run or chunk computes it: its initial state and actions are drawn from
seeds derived from (side, i) alone. The store's first line records the settings that shape the
numbers (task, solver caps, contact set, episode length, the action draw); a rerun with other
settings is refused.

The random policy draws as training acts (`ACTIONS`): canonical u uniform in [-1, 1] per entry,
mapped with `pql_jax.envs.to_control` onto dm_control's action spec [minimum, maximum] (the
model's ctrlrange), the same mapping on every side. Stores written before 2026-12-07 drew uniform
in [minimum, maximum] directly: the same distribution (an affine image of a uniform), so their
statistics stay valid, but not the same numbers per episode, so such a store (its settings lack
`actions`) is refused rather than mixed with new episodes.

Run (needs dm_control: pip install -e ".[dmc]"):
    python scripts/dmc_random_returns.py --task QuadrupedWalk --episodes 100 \
        --store runs/random_quadruped_walk.jsonl
    python scripts/dmc_random_returns.py --task DogStand --episodes 100 --batching map --chunk 1 \
        --store runs/random_dog_stand.jsonl          # hours; stop and rerun at will
    # the same with --shard 0/2 and --shard 1/2 in two processes: one per core, one store
    python scripts/dmc_random_returns.py --store runs/random_dog_stand.jsonl --report-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pql_jax.envs.dmc import reference

ACTIONS = "canonical U[-1,1] -> to_control(spec)"  # the draw scheme, recorded in the store's settings
SIDE_SEEDS = {"dm_control": 2, "dm_control_adapted": 5, "port": 3}  # base seed of each side's episodes


class StoreError(Exception):
    """The store cannot be used as asked (malformed, or written with other settings)."""


def read_store(path: Path, settings: dict | None) -> tuple[dict, dict[str, dict[int, float]]]:
    """The store's settings and its returns by side and episode (NaN: a blow-up); with `settings`,
    refuse a store written with others. A missing store reads as empty."""
    if not path.exists():
        if settings is None:
            raise StoreError(f"{path}: no such store")
        return settings, {}
    lines = path.read_text().split("\n")
    if lines[-1]:
        raise StoreError(f"{path}: last line is incomplete (a run killed mid-write?); remove it to go on")
    records, stored = {}, None
    for number, line in enumerate(lines[:-1], 1):
        try:
            row = json.loads(line)
            if number == 1:
                stored = dict(row["settings"])
                continue
            side, episode, value = str(row["side"]), int(row["episode"]), row["return"]
            value = math.nan if value is None else float(value)
        except (ValueError, KeyError, TypeError) as err:
            raise StoreError(f"{path}:{number}: not a store line ({type(err).__name__}: {err})") from None
        records.setdefault(side, {})[episode] = value
    if stored is None:
        raise StoreError(f"{path}: empty store (no settings line)")
    if settings is not None and stored != settings:
        diff = {k: (stored.get(k), settings.get(k)) for k in set(stored) | set(settings) if stored.get(k) != settings.get(k)}
        raise StoreError(f"{path} was written with other settings (stored, asked): {diff}")
    return stored, records


def _append(path: Path, rows: list[dict]) -> None:
    """Append whole lines and make them durable before going on."""
    with path.open("a") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


def fill(path: Path, settings: dict, sides: dict[str, tuple[int, Callable]], chunk: int,
         log: Callable[[str], None] = print, shard: tuple[int, int] = (0, 1)) -> dict[str, dict[int, float]]:
    """Run each side's missing episodes, `chunk` at a time, appending each chunk to the store.
    `sides`: name -> (episodes wanted, run(list of episode indices) -> list of returns; a `run.tags`
    dict is stored with each of its episodes);
    `shard` (k, n): only the episodes i with i % n == k (n processes can share one store)."""
    _, records = read_store(path, settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _append(path, [{"settings": settings}])
    for side, (wanted, run) in sides.items():
        done = records.setdefault(side, {})
        todo = [i for i in range(wanted) if i not in done and i % shard[1] == shard[0]]
        for start in range(0, len(todo), chunk):
            batch = todo[start:start + chunk]
            t0 = time.time()
            returns = run(batch)
            seconds = time.time() - t0
            rows = [{"side": side, "episode": i, "return": float(r) if math.isfinite(r) else None,
                     "seconds": round(seconds / len(batch), 2), **getattr(run, "tags", {})}
                    for i, r in zip(batch, returns)]
            _append(path, rows)
            done.update({i: float(r) for i, r in zip(batch, returns)})
            log(f"{side}: {len(done)}/{wanted} episodes ({seconds / len(batch):.1f} s per episode)")
    return records


def stats(returns: dict[int, float]) -> dict:
    """Mean return +- SE (sample SD) over the finite returns; blow-ups counted apart."""
    values = np.asarray(list(returns.values()), np.float64)
    ok = values[np.isfinite(values)]
    sd = float(np.std(ok, ddof=1)) if len(ok) > 1 else math.nan
    return {"mean": float(np.mean(ok)) if len(ok) else math.nan, "se": sd / math.sqrt(len(ok)) if len(ok) else math.nan,
            "std": sd, "n": int(len(ok)), "blowups": int(len(values) - len(ok))}


def report(settings: dict, records: dict[str, dict[int, float]]) -> dict:
    """Each side's statistics and the differences between sides in combined SE."""
    out = {"settings": settings, **{side: stats(records[side]) for side in SIDE_SEEDS if records.get(side)}}
    pairs = [("port", "dm_control"), ("dm_control_adapted", "dm_control"), ("port", "dm_control_adapted")]
    for a, b in pairs:
        if a in out and b in out:
            se = math.hypot(out[a]["se"], out[b]["se"])  # 0 only for constant returns: no difference in SE
            out[f"{a}_vs_{b}_in_se"] = (out[a]["mean"] - out[b]["mean"]) / se if se > 0 else math.nan
    return out


def dm_control_side(env, base: int, episode_length: int) -> Callable[[list[int]], list[float]]:
    """Episodes of a dm_control env under the random policy (`ACTIONS`); episode i's initial state
    and actions come from seeds (base, i), whatever ran before it."""
    from pql_jax.envs import to_control

    spec = env.action_spec()
    low, high = np.asarray(spec.minimum, np.float64), np.asarray(spec.maximum, np.float64)

    def run(episodes: list[int]) -> list[float]:
        returns = []
        for i in episodes:
            env.task.random.seed([base, i])
            rng = np.random.default_rng([base, i])
            env.reset()
            total = 0.0
            try:
                for _ in range(episode_length):
                    total += env.step(to_control(rng.uniform(-1.0, 1.0, spec.shape), low, high)).reward
            except Exception:  # noqa: BLE001 - dm_control's PhysicsError: a blow-up
                total = math.nan
            returns.append(total)
        return returns

    return run


def port_side(env, low, high, base: int, episode_length: int, batching: str,
              chunk: int, options: dict | None = None) -> Callable[[list[int]], list[float]]:
    """Episodes of an MJX env (`reset(key)`, `step(state, action)`) under the random policy
    (`ACTIONS`: canonical draws mapped onto [low, high] by `to_control`, in float32 as training maps),
    `chunk` per compiled call (a short batch is padded, so one program serves every call; XLA
    `options` as `pql_jax.envs.compiler_options`); episode i's draws come from fold_in(key(base), i)
    alone."""
    import jax
    import jax.numpy as jnp

    from pql_jax.envs import over_copies, to_control

    low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)

    def episode(key):
        reset_key, action_key = jax.random.split(key)

        def body(carry, k):
            state, total = carry
            state = env.step(state, to_control(jax.random.uniform(k, low.shape, minval=-1.0, maxval=1.0), low, high))
            return (state, total + state.reward), None

        start = (env.reset(reset_key), jnp.zeros(()))
        (_, total), _ = jax.lax.scan(body, start, jax.random.split(action_key, episode_length))
        return total

    returns = jax.jit(over_copies(episode, batching), compiler_options=options)

    def run(episodes: list[int]) -> list[float]:
        padded = episodes + [episodes[-1]] * (chunk - len(episodes))
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(base), i))(jnp.asarray(padded))
        return [float(x) for x in np.asarray(returns(keys))[:len(episodes)]]

    run.tags = {"xla_options": options or {}}  # rounding only: stored per episode, not a setting
    return run


def build_sides(settings: dict, episodes: int, dm_episodes: int, batching: str, chunk: int,
                cpu_fusion: str = "auto") -> dict:
    """The three sides of a comparison (two without an adapted model), lazily built; the port's
    programs compiled as training compiles them, `env.cpu_fusion` = `cpu_fusion`."""
    from pql_jax.config import EnvConfig
    from pql_jax.envs import compiler_options, dmc
    from pql_jax.envs.dmc import dog

    length, task = settings["episode_length"], settings["task"]
    ref = reference.load(*reference.DM_NAMES[task], seed=0)
    sides = {"dm_control": (dm_episodes, dm_control_side(ref, SIDE_SEEDS["dm_control"], length))}
    if task.startswith("Dog"):
        ada = dog.dm_control_adapted(task, seed=0, contacts=settings["contacts"])
        sides["dm_control_adapted"] = (dm_episodes, dm_control_side(ada, SIDE_SEEDS["dm_control_adapted"], length))
    env = dmc.load(task, solver_caps=tuple(settings["solver_caps"]), contacts=settings["contacts"])
    spec = ref.action_spec()
    options = compiler_options(EnvConfig(name=f"dmc:{task}", cpu_fusion=cpu_fusion))
    sides["port"] = (episodes, port_side(env, spec.minimum, spec.maximum, SIDE_SEEDS["port"], length, batching, chunk,
                                         options))
    return sides


def _caps(text: str | None) -> list[int] | None:
    """--port-solver I/L as [I, L] ([0, 0]: the model's own), None if malformed."""
    from validate_dmc_ports import _parse_caps  # the sibling script's parser (scripts/ is on sys.path)

    caps = _parse_caps([text] if text is not None else [])
    return None if caps is None else list(caps[0]) if caps else [0, 0]


def _shard(text: str) -> tuple[int, int] | None:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit()) or not 0 <= int(k) < int(n):
        return None
    return int(k), int(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="QuadrupedWalk", choices=sorted(reference.DM_NAMES))
    parser.add_argument("--store", type=Path, required=True, help="JSON-lines store of finished episodes")
    parser.add_argument("--episodes", type=int, default=100, help="port episodes wanted (in all runs)")
    parser.add_argument("--dm-episodes", type=int, help="episodes wanted per dm_control side (default: --episodes)")
    parser.add_argument("--episode-length", type=int, default=1000, help="control steps (dm_control's limit: 1000)")
    parser.add_argument("--chunk", type=int, default=10, help="port episodes per compiled call (stored together)")
    parser.add_argument("--batching", choices=["vmap", "map"], default="vmap",
                        help="how a chunk's port episodes are batched (map: a loop, for Dog on the CPU)")
    parser.add_argument("--port-solver", metavar="I/L", help="cap the port's solver (default: the model's own)")
    parser.add_argument("--dog-contacts", choices=["floor", "self"], default="floor")
    parser.add_argument("--cpu-fusion", choices=["auto", "on", "off"], default="auto",
                        help="XLA's CPU fusion in the port's program (env.cpu_fusion; changes rounding only)")
    parser.add_argument("--shard", metavar="K/N", default="0/1",
                        help="run only episodes i with i %% N == K: N processes (e.g. one per core) fill one store")
    parser.add_argument("--report-only", action="store_true", help="print the store's statistics; run nothing")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    caps = _caps(args.port_solver)
    shard = _shard(args.shard)
    problems = [f"--{name} must be >= 1 (got {value})" for name, value in
                (("episodes", args.episodes), ("dm-episodes", args.dm_episodes), ("episode-length", args.episode_length),
                 ("chunk", args.chunk)) if value is not None and value < 1]
    if shard is None:
        problems.append(f"--shard must be K/N with 0 <= K < N (got {args.shard!r})")
    if caps is None:
        problems.append(f"--port-solver must be I/L, two integers >= 1 (got {args.port_solver!r})")
    if args.dog_contacts != "floor" and not args.task.startswith("Dog"):
        problems.append(f"--dog-contacts applies to the Dog tasks only, not {args.task}")
    if problems:
        print(f"error: {problems[0]}", file=sys.stderr)
        return 2
    settings = {"task": args.task, "episode_length": args.episode_length, "solver_caps": caps,
                "contacts": args.dog_contacts, "actions": ACTIONS}
    try:
        if args.report_only:
            settings, records = read_store(args.store, None)
        else:
            read_store(args.store, settings)  # refuse a bad store before compiling anything
            from pql_jax.run import compile_cache

            if why := reference.available():
                print(f"error: {why}", file=sys.stderr)
                return 2
            compile_cache.enable()
            sides = build_sides(settings, args.episodes, args.dm_episodes or args.episodes, args.batching, args.chunk,
                                args.cpu_fusion)
            records = fill(args.store, settings, sides, args.chunk, log=lambda m: print(m, flush=True), shard=shard)
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = report(settings, records)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
