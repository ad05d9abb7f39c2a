"""Planning figures from compiled programs (no allocation): chunk temporaries with the old whole-state
divergence select vs now, and members per 80 GB device of a workflow's sweep.

    python benchmarks/bench_plan.py temp --buffer 2000000
    python benchmarks/bench_plan.py members configs/workflows/cheetah_run.yaml --limit-gb 80

Compiled here for the CPU backend: on a CPU-only machine the figures are the CPU-compiled program's
`memory_analysis()`, used as an estimate of the GPU program's (XLA's GPU buffer assignment differs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def temp_bytes(buffer: int, whole_state: bool) -> dict:
    """memory_analysis of a pointmass chunk; `whole_state` restores the old select over the whole state."""
    from pql_jax import config as cfg_mod
    from pql_jax.learner import pql
    from pql_jax.run import program as program_mod
    from pql_jax.run.program import GroupProgram
    from pql_jax.plan.sweep import single

    saved = pql._FROZEN
    if whole_state:
        pql._FROZEN = tuple(pql.TrainState.__dataclass_fields__)
    program_mod._PROGRAMS.clear()
    try:
        config = cfg_mod.load(ROOT / "configs" / "pointmass.yaml", [f"agent.buffer_capacity={buffer}"])
        gp = GroupProgram.build(single(config).groups[0])
        ma = gp.compile().memory_analysis()
    finally:
        pql._FROZEN = saved
        program_mod._PROGRAMS.clear()
    return {"whole_state_select": whole_state, "buffer_capacity": buffer, "argument": ma.argument_size_in_bytes,
            "output": ma.output_size_in_bytes, "alias": ma.alias_size_in_bytes, "temp": ma.temp_size_in_bytes}


def members(workflow: str, limit_gb: float, batching: str) -> list[dict]:
    """Per group of the workflow's hparam_sweep: members per device from the compiled chunk."""
    import tempfile

    from pql_jax.plan.memory import group_memory
    from pql_jax.plan.costs import member_costs
    from pql_jax.plan.sweep import load_sweep
    from pql_jax.workflow.spec import load_workflow
    from pql_jax.workflow.sweeps import hparam_grid, write_sweep

    wf = load_workflow(workflow)
    path = Path(tempfile.mkdtemp()) / "hparam_sweep" / "sweep.yaml"
    path.parent.mkdir()
    write_sweep(wf, path, {}, *hparam_grid(wf), wf.spec.get("seeds"))
    sweep = load_sweep(path)
    limit = limit_gb * 1e9
    out = []
    for group in sweep.groups:
        costs = member_costs(group.members[0])
        tick = time.perf_counter()
        mem = group_memory(group, batching)
        out.append({"group": group.index, "members": len(group.members), "batch_size": group.config.agent.batch_size,
                    "buffer_bytes_per_member": costs.buffer_bytes,
                    "compiled_peak_bytes": mem.peak_bytes, "compiled_argument_bytes": mem.argument_bytes,
                    "compiled_temp_bytes": mem.temp_bytes, "compiled_bytes_per_member": mem.peak_bytes / mem.local,
                    "compiled_members_per_device": mem.members_fit(limit), "batching": mem.batching,
                    "platform": mem.platform, "compile_s": round(time.perf_counter() - tick, 1)})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("temp")
    t.add_argument("--buffer", type=int, default=2_000_000)
    m = sub.add_parser("members")
    m.add_argument("workflow")
    m.add_argument("--limit-gb", type=float, default=80.0)
    m.add_argument("--batching", default="vmap")
    args = parser.parse_args()
    if args.what == "temp":
        for whole in (True, False):
            print(json.dumps(temp_bytes(args.buffer, whole)), flush=True)
    else:
        members(args.workflow, args.limit_gb, args.batching)


if __name__ == "__main__":
    main()
