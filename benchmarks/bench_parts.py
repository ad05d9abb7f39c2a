"""Job-array parts + merge vs the whole sweep, in one script run. The in-process program cache is
cleared before each run (and the persistent compilation cache is not enabled here), so each part
pays its own compiles, as separate machines would.

Runs SWEEP (default `configs/sweeps/pointmass_utd.yaml`) whole, then as N parts one after another
and merges them; prints the wall time of each, the merge time, the parts' sum and max (the job
array's wall time on N machines), and whether the merged table equals the whole one.

    python benchmarks/bench_parts.py [--parts 2] [SWEEP [key=value ...]]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pql_jax.plan import parts
from pql_jax.run import launch
from pql_jax.run.program import _PROGRAMS
from pql_jax.run.tables import read_rows

TIMING = ("wall_time", "env_steps_per_s", "updates_per_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", nargs="?", default="configs/sweeps/pointmass_utd.yaml")
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_parts_"))
    quiet = dict(progress=False, log=lambda *a: None, batching="map")
    _PROGRAMS.clear()
    tick = time.perf_counter()
    launch.train_sweep_file(args.sweep, root / "whole", args.overrides, **quiet)
    whole = time.perf_counter() - tick
    part_s = []
    for i in range(1, args.parts + 1):
        _PROGRAMS.clear()
        tick = time.perf_counter()
        launch.train_sweep_file(args.sweep, root / f"part{i}", args.overrides, part=(i, args.parts), **quiet)
        part_s.append(time.perf_counter() - tick)
    tick = time.perf_counter()
    parts.merge([root / f"part{i}" for i in range(1, args.parts + 1)], root / "merged")
    merge_s = time.perf_counter() - tick
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    equal = strip(read_rows(root / "whole" / "results.csv")) == strip(read_rows(root / "merged" / "results.csv"))
    print(json.dumps({"sweep": args.sweep, "overrides": args.overrides, "parts": args.parts, "date": time.strftime("%Y-%m-%d"),
                      "whole_s": round(whole, 2), "part_s": [round(p, 2) for p in part_s],
                      "parts_sum_s": round(sum(part_s), 2), "parts_max_s": round(max(part_s), 2),
                      "merge_s": round(merge_s, 3), "merged_equals_whole": equal}, indent=1))


if __name__ == "__main__":
    main()
