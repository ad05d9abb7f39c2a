"""How a paper-scale workflow's sweeps split across GPUs and hosts, on paper, from the plan.

For a workflow file (default `configs/workflows/cheetah_run.yaml`) this loads the hparam sweep
it writes (its own grid, widths included) and, for each layout, prints what each machine runs and
how well the work balances, from the planned FLOPs of every member (`pql_jax.plan.parts.member_cost`:
its exact critic updates and actor updates; compiles counted as in `parts.group_cost`):

- one program over D devices (`jax.distributed` over hosts, or one host's GPUs): every group's
  members are sharded over the D devices, ceil(members / D) per device, groups one after another;
  device-slot use = members / (D x ceil(members / D)) (the rest is padding);
- N job-array parts (`--part I/N` or `--parts N --launch submitit`), each on its own device(s):
  `parts.split` with lock-step costs (whole groups by LPT, cut further where that shortens the
  busiest part: a piece holding only the smaller UTDs of a group also wastes less on masking);
  balance = mean / max part time;
- `--hosts` parts of `--host-devices` devices each (a host's GPUs as one part, sharded within it).

Speed-up: planned FLOPs of the busiest device on one device over those with the layout, i.e. the
speed-up if time were proportional to FLOPs, with a group's members in lock step (vmapped, the
costliest member sets the pace) and no communication cost (none is needed between members).

Nothing is compiled and nothing is timed: the figures are planned FLOPs ratios, not GPU speeds.

    python benchmarks/bench_split.py [WORKFLOW.yaml] [--devices 8 32] [--parts 8 4]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
from pathlib import Path

from pql_jax.plan import parts
from pql_jax.plan.costs import sweep_costs
from pql_jax.plan.sweep import load_sweep


def hparam_sweep(workflow: str):
    """The workflow's hparam_sweep stage as a Sweep (its own grid; written to a temp file)."""
    from pql_jax.workflow.spec import load_workflow
    from pql_jax.workflow.sweeps import hparam_grid, write_sweep

    wf = load_workflow(workflow)
    tmp = Path(tempfile.mkdtemp(prefix="bench_split_"))
    try:
        path = tmp / "hparam_sweep" / "sweep.yaml"
        path.parent.mkdir()
        write_sweep(wf, path, {}, *hparam_grid(wf), wf.spec.get("seeds"))
        return load_sweep(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def group_time(group, costs, devices: int) -> float:
    """Planned FLOPs on the busiest of `devices` devices running `group` sharded: members run in
    lock step (vmapped, their updates masked), so ceil(members / devices) x the costliest member,
    plus one compile (as `parts.group_cost` with lockstep, for `devices` = 1)."""
    per = math.ceil(len(group.members) / devices)
    return per * max(parts.member_cost(m, costs[m.index]) for m in group.members) + parts.compile_cost(group, costs)


def sweep_time(sweep, costs, devices: int) -> float:
    """Groups one after another, each sharded over `devices` devices."""
    return sum(group_time(g, costs, devices) for g in sweep.groups)


def sharded(sweep, costs, devices: int, base: float) -> dict:
    """One program over `devices` devices: members per device, slot use, speed-up over `base`."""
    slots = sum(devices * math.ceil(len(g.members) / devices) for g in sweep.groups)
    return {"members_per_device": sorted({math.ceil(len(g.members) / devices) for g in sweep.groups}),
            "slot_use": len(sweep.members) / slots, "speedup": base / sweep_time(sweep, costs, devices)}


def job_array(sweep, costs, count: int, devices: int, base: float) -> dict:
    """`count` parts by LPT (`parts.split`), each one program over its own `devices` devices."""
    shares = [s for s in parts.split(sweep, costs, count, lockstep=True) if s.groups]
    times = [sweep_time(share, costs, devices) for share in shares]
    return {"groups_per_part": [len(s.groups) for s in shares], "balance": sum(times) / count / max(times),
            "speedup": base / max(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workflow", nargs="?", default="configs/workflows/cheetah_run.yaml")
    ap.add_argument("--devices", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--parts", type=int, nargs="+", default=[8, 4])
    ap.add_argument("--hosts", type=int, default=4, help="hosts of --host-devices GPUs, one part each")
    ap.add_argument("--host-devices", type=int, default=8)
    args = ap.parse_args()
    sweep = hparam_sweep(args.workflow)
    costs = sweep_costs(sweep)
    base = sweep_time(sweep, costs, 1)
    print(f"{args.workflow} hparam_sweep: {len(sweep.members)} members in {len(sweep.groups)} compiled groups "
          f"({', '.join(str(len(g.members)) for g in sweep.groups)} members); planned "
          f"{sum(parts.group_cost(g, costs) for g in sweep.groups):.3g} FLOPs (members' own updates)")
    print("\n| layout | per machine | device-slot use / balance | speed-up vs 1 device |\n|---|---|---|---|")
    for d in args.devices:
        s = sharded(sweep, costs, d, base)
        print(f"| one program over {d} devices | {s['members_per_device']} member(s) per device per group "
              f"| slot use {s['slot_use']:.0%} | {s['speedup']:.1f}x |")
    for n in args.parts:
        j = job_array(sweep, costs, n, 1, base)
        print(f"| {n} job-array parts, 1 device each | {min(j['groups_per_part'])}-{max(j['groups_per_part'])} "
              f"groups per part | balance {j['balance']:.0%} | {j['speedup']:.1f}x |")
    h = job_array(sweep, costs, args.hosts, args.host_devices, base)
    print(f"| {args.hosts} parts (hosts) x one program over {args.host_devices} devices | "
          f"{min(h['groups_per_part'])}-{max(h['groups_per_part'])} groups per host "
          f"| balance {h['balance']:.0%} | {h['speedup']:.1f}x |")

if __name__ == "__main__":
    main()
