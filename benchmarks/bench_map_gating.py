"""Training time of one `map` group whose members mix UTDs, against the same group all at the
largest UTD (test:pointmass, 8 members: UTD 1/128, 1/64, 1/32, 1/16 x 2 seeds, 32 envs, 32k env
steps, no evaluation; compile excluded, best of 3). Since members under `map` gate update slots by
their own schedule, the mixed group costs its useful updates, not the busiest member's.

    python benchmarks/bench_map_gating.py          # PYTHONPATH=<other checkout> to time another version
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax

import yaml

from pql_jax.counts import num_chunks
from pql_jax.plan import sweep
from pql_jax.run.program import GroupProgram

POINTMASS = Path(__file__).resolve().parents[1] / "configs" / "pointmass.yaml"

OVERRIDES = ["run.total_env_steps=32000", "run.chunk_steps=50", "run.eval_every=1000"]


def time_group(body: dict, tmp: Path, name: str) -> tuple[int, float, int]:
    """(members, best-of-3 training seconds, critic updates done) of the sweep's only group."""
    path = tmp / name
    path.write_text(yaml.safe_dump({"base": str(POINTMASS), **body}))
    group = sweep.load_sweep(path, OVERRIDES).groups[0]
    program = GroupProgram.build(group, "map")
    program.compile()
    best = []
    for _ in range(3):
        states = program.initial_state()
        jax.block_until_ready(states)
        tick = time.perf_counter()
        for i in range(num_chunks(group.config)):
            states, metrics = program.step(states, i * group.config.run.chunk_steps, evaluate=False)
        best.append(time.perf_counter() - tick)
    return len(group.members), min(best), int(metrics["critic_updates"].sum())


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    print("| group (map batching) | members | training s (best of 3) | critic updates done |\n|---|---|---|---|")
    for label, body in (("UTD 1/128, 1/64, 1/32, 1/16", {"seeds": 2, "grid": {"utd": ["1/128", "1/64", "1/32", "1/16"]}}),
                        ("all at UTD 1/16", {"seeds": 2, "zip": {"utd": ["1/16"] * 4}})):
        members, seconds, updates = time_group(body, tmp, label.replace(" ", "_").replace("/", "") + ".yaml")
        print(f"| {label} | {members} | {seconds:.2f} | {updates:,} |")


if __name__ == "__main__":
    main()
