"""Checkpoint pause: how long training stops per checkpoint of a ~1 GB state, synchronous vs
asynchronous saves (`run.checkpoint_async`), and whether the chunk after an asynchronous save
slows down while orbax writes in the background.

For each mode: build a test:pointmass program whose replay buffer takes `--gb` GB, then
`--saves` times: save (timed: the pause), run one chunk (timed), and at the end wait for the
last write. The buffer's contents do not matter for the timing (zeros compress no better here:
orbax writes raw arrays).

    python benchmarks/bench_checkpoint.py --gb 1 --saves 3 --out /tmp/bench_checkpoint.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="replay buffer size in GB")
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--dir", help="where checkpoints are written (default: a temp dir)")
    parser.add_argument("--out", help="write the raw numbers here (JSON)")
    args = parser.parse_args()

    import jax

    from pql_jax import config as cfg_mod
    from pql_jax.learner.pql import make_learner
    from pql_jax.learner.state import hparams_from_config
    from pql_jax.run.checkpoint import Checkpointer
    from pql_jax.run.program import GroupProgram
    from pql_jax.plan.sweep import single

    probe = cfg_mod.load(ROOT / "configs" / "pointmass.yaml", ["agent.buffer_capacity=1000000"])
    learner = make_learner(probe)
    shapes = jax.eval_shape(learner.init, jax.random.PRNGKey(0), hparams_from_config(probe))
    per_transition = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(shapes.buffer)) / 1_000_000
    capacity = int(args.gb * 1e9 / per_transition)
    config = cfg_mod.load(ROOT / "configs" / "pointmass.yaml", [f"agent.buffer_capacity={capacity}",
                                                                "run.chunk_steps=25"])
    program = GroupProgram.build(single(config).groups[0])
    results = {"meta": {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count(), "command": " ".join(sys.argv), "jax": jax.__version__,
                        "buffer_capacity": capacity, "bytes_per_transition": per_transition}, "modes": {}}
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_ckpt_"))
    try:
        for mode in ("sync", "async"):
            states = program.initial_state()
            state_bytes = sum(x.nbytes for x in jax.tree.leaves(states))
            states, _ = program.step(states, 0)  # compile and warm up
            ckpt = Checkpointer(root / mode, keep=2, asynchronous=mode == "async")
            pauses, chunks = [], []
            for i in range(args.saves):
                pauses.append(ckpt.save((i + 1) * 25, states, {"chunk": i + 1}))
                tick = time.perf_counter()
                states, _ = program.step(states, (i + 1) * 25)
                chunks.append(time.perf_counter() - tick)
            tick = time.perf_counter()
            ckpt.close()
            results["modes"][mode] = {"state_bytes": state_bytes, "pause_s": pauses, "chunk_after_save_s": chunks,
                                      "final_wait_s": time.perf_counter() - tick}
            print(json.dumps({mode: results["modes"][mode]}), flush=True)
            shutil.rmtree(root / mode, ignore_errors=True)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print("| mode | state (GB) | pause per save (s) | chunk right after a save (s) |")
    print("|---|---|---|---|")
    for mode, r in results["modes"].items():
        print(f"| {mode} | {r['state_bytes'] / 1e9:.2f} | " + ", ".join(f"{p:.2f}" for p in r["pause_s"]) + " | "
              + ", ".join(f"{c:.2f}" for c in r["chunk_after_save_s"]) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
