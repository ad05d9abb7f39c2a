"""Population efficiency: one K-member `pql-jax sweep` against K separate `pql-jax train` runs.

Whole-process wall time (imports, env build, compile, training, logging, checkpoints) of
  (a) one sweep process training K members (UTDs spanning 8x x seeds, one compiled group), and
  (b) K separate single-run processes with the same configs, one after another;
plus the masked-UTD cost: the same K-member population with UTDs spanning 8x against all
members at its largest UTD. Masking runs every member at the busiest member's update count, so
a ratio near 1 means mixing UTDs costs what running everyone at the largest one costs; the
useful fraction of that work is what `pql-jax plan` reports.

    python benchmarks/bench_population.py --members 8 16 --out /tmp/bench_population.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
UTDS = ["1/128", "1/64", "1/32", "1/16"]  # 8x span


def sweep_file(tmp: Path, base: Path, members: int, utds: list[str], name: str) -> Path:
    seeds = max(1, members // len(utds))
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base": str(base), "seeds": seeds, "grid": {"utd": utds[: members // seeds]}}))
    return path


def timed(cmd: list[str]) -> float:
    tick = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "pointmass.yaml"))
    parser.add_argument("--members", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--env-steps", type=int, default=16000)
    parser.add_argument("--batching", default="auto", choices=("auto", "map", "vmap"))
    parser.add_argument("--out", help="write the raw numbers here (JSON)")
    args = parser.parse_args()
    exe = [sys.executable, "-m", "pql_jax.cli"]
    common = ["--no-progress", f"run.total_env_steps={args.env_steps}"]
    results = {"meta": {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                        "cpus": __import__("os").cpu_count(), "command": " ".join(sys.argv),
                        "config": args.config, "env_steps": args.env_steps, "batching": args.batching}, "rows": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for k in args.members:
            spec = sweep_file(tmp, Path(args.config), k, UTDS, f"pop{k}")
            sweep_s = timed(exe[:3] + ["sweep", str(spec), "--out", str(tmp / f"sweep{k}"), "--member-batching",
                                       args.batching, *common])
            from pql_jax.plan.sweep import load_sweep

            members = load_sweep(spec, common[1:]).members
            single_s = 0.0
            for m in members:
                single_s += timed(exe + ["train", "--config", args.config, "--out", str(tmp / f"single{k}_{m.index}"),
                                         f"agent.utd={m.config.agent.utd}", f"run.seed={m.config.run.seed}", *common])
            equal = sweep_file(tmp, Path(args.config), k, [UTDS[-1]], f"equal{k}")
            equal_s = timed(exe + ["sweep", str(equal), "--out", str(tmp / f"equal{k}"), "--member-batching", args.batching,
                                   *common])
            row = {"members": len(members), "sweep_s": sweep_s, "separate_s": single_s,
                   "speedup": single_s / sweep_s, "equal_utd_sweep_s": equal_s, "utd_span_cost": sweep_s / equal_s}
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| members | one sweep (s) | separate runs (s) | speedup | sweep, all at UTD 1/16 (s) | UTDs 1/128..1/16 vs all 1/16 |")
    print("|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(f"| {r['members']} | {r['sweep_s']:.1f} | {r['separate_s']:.1f} | {r['speedup']:.1f}x | "
              f"{r['equal_utd_sweep_s']:.1f} | {r['utd_span_cost']:.2f}x |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
