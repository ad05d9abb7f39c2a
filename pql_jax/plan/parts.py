"""A sweep split into job-array parts (one machine each, no communication), and the parts merged back;
also the queue of pieces local workers take (`queue`, pql_jax.run.local_parts).

`pql-jax sweep SWEEP.yaml --part I/N` trains a deterministic share of the members into its own run
directory; `pql-jax merge DIR... --out DIR` checks the parts and writes one results table and one
TensorBoard tree, equal to the sweep run whole (map batching: a member's numbers do not depend on
its group-mates, see tests/test_population.py).

Shares are whole compiled groups where possible, so no part compiles a program it does not need:
groups are assigned largest first to the least-loaded part (LPT scheduling), by estimated cost
(planned critic and actor FLOPs of the members' whole runs, plus one compile counted as that of
`COMPILE_UPDATES` critic updates). With fewer groups than parts, the largest group is halved
(by members) until there are enough; groups are halved further while that shortens the busiest
part (see `split`). A split group keeps its index, so every row's `group` column equals the
whole sweep's.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import yaml

from pql_jax.counts import run_vector_steps, update_counts
from pql_jax.errors import UserError
from pql_jax.plan.costs import Costs
from pql_jax.plan.sweep import Group, Member, Sweep
from pql_jax.run.tables import read_rows, write_rows_atomic

COMPILE_UPDATES = 2000
"""A group's compile, in critic updates of its own size (a rough equivalence for balancing)."""
PART_FILE = "part.yaml"


def parse_part(text: str) -> tuple[int, int]:
    """`I/N` (1 <= I <= N) -> (I, N); UserError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UserError(f"--part must be I/N with 1 <= I <= N (got {text!r})")
    return int(match[1]), int(match[2])


def member_cost(member: Member, costs: Costs) -> float:
    """Planned FLOPs of a member's whole run (its exact critic updates and the actor updates)."""
    config = member.config
    critic_updates = float(update_counts(config, run_vector_steps(config)).sum())
    return critic_updates * (costs.flops_per_critic_update + costs.flops_per_actor_update / config.agent.critic_actor_ratio)


def group_cost(group: Group, costs: dict[int, Costs], lockstep: bool = False) -> float:
    """Estimated cost of training `group` on one machine: its members' FLOPs plus one compile.
    `lockstep` (vmap batching): members step together and a masked update costs as much as a
    real one, so every member pays the costliest member's updates."""
    each = [member_cost(m, costs[m.index]) for m in group.members]
    work = len(each) * max(each) if lockstep else sum(each)
    return work + compile_cost(group, costs)


def compile_cost(group: Group, costs: dict[int, Costs]) -> float:
    """A group's one compile, counted as `COMPILE_UPDATES` critic updates of its own size."""
    return COMPILE_UPDATES * costs[group.members[0].index].flops_per_critic_update


def split(sweep: Sweep, costs: dict[int, Costs], parts: int, lockstep: bool = False) -> list[Sweep]:
    """The `parts` shares of `sweep` (a part may be empty when there are fewer members than parts).

    Whole groups by LPT first; then the costliest group (or piece) is halved again and again, up
    to `MAX_PIECES_PER_PART` pieces per part, and the assignment with the smallest makespan wins
    (each extra piece pays its own compile). With about as many groups as parts, whole groups
    balance badly: 9 equal groups on 8 parts leave one part with twice the work of the rest.
    `lockstep`: cost members as vmap batching runs them (`group_cost`)."""
    unit_cost = lambda g: group_cost(g, costs, lockstep)
    units = list(sweep.groups)
    while len(units) < parts and _halve_costliest(units, unit_cost):
        pass
    best = _lpt(units, unit_cost, parts)
    while len(units) < MAX_PIECES_PER_PART * parts and _halve_costliest(units, unit_cost):
        trial = _lpt(units, unit_cost, parts)
        if max(trial[0]) < max(best[0]) * (1 - 1e-9):
            best = trial
    return [_share(sweep, share) for share in best[1]]


MAX_PIECES_PER_PART = 4
"""How finely `split` may cut groups to balance the parts (pieces per part, on average)."""


PIECES_PER_WORKER = 2
"""Queue pieces per local worker (`queue`): taken costliest first, 2 per worker leave no worker
idle for longer than about one piece at a stage's end; more cut groups into smaller pieces, and
every new piece size is a program to compile (15-25 CPU s each on a 2-core CPU; the quickstart's
widening round with 3 per worker cut its groups of 9 into pieces of 3, 3 programs the grid's
pieces of 9 would have shared, RESULTS#quickstart-queue)."""


def queue(sweep: Sweep, costs: dict[int, Costs], workers: int) -> list[Sweep]:
    """`sweep` cut into pieces for `workers` local workers that take them from a queue as they
    finish (pql_jax.run.local_parts), in the order they are to be taken.

    Static shares balance only as well as their cost model: on a CPU the planned FLOPs miss the
    env and evaluation steps and the compiles (the quickstart's UTD sweep: 43 s against 95 s), so
    a queue balances by what the pieces really take. Pieces hold at most 1/(`PIECES_PER_WORKER` x
    `workers`) of the members (by count: on a CPU a small member's time is mostly its env steps,
    which every member of a sweep shares), each group cut into equal pieces that keep the group's
    update slots (lax.map's member count and the update slots are part of the program's shape, so
    the pieces of a group share one program). Costliest (planned FLOPs) first, but the first
    `workers` pieces come from different groups where there are enough, so no two workers compile
    one program at once."""
    if workers <= 1:
        return [sweep]
    most = math.ceil(len(sweep.members) / (PIECES_PER_WORKER * workers))
    pieces = []
    for g in sweep.groups:
        n = len(g.members)
        size = n // min(d for d in range(1, n + 1) if n % d == 0 and n // d <= most)
        pieces += [replace(g, members=g.members[i:i + size], update_slots=g.max_updates) for i in range(0, n, size)]
    work = lambda p: sum(member_cost(m, costs[m.index]) for m in p.members)
    pieces.sort(key=lambda p: (-work(p), p.index, p.members[0].index))
    first = []
    for p in pieces:  # the costliest piece of each group, costliest groups first, leads
        if len(first) < workers and all(f.index != p.index for f in first):
            first.append(p)
    rest = [p for p in pieces if all(p is not f for f in first)]
    return [_share(sweep, [p]) for p in first + rest]


def _halve_costliest(units: list[Group], unit_cost) -> bool:
    """Replace the costliest unit of more than one member by its two halves; False if none."""
    biggest = max((u for u in units if len(u.members) > 1), key=unit_cost, default=None)
    if biggest is None:
        return False
    half = len(biggest.members) // 2
    at = units.index(biggest)
    units[at:at + 1] = [replace(biggest, members=biggest.members[:half]),
                        replace(biggest, members=biggest.members[half:])]
    return True


def _lpt(units: list[Group], unit_cost, parts: int) -> tuple[list[float], list[list[Group]]]:
    """Largest cost first onto the least-loaded part: (loads, units per part)."""
    loads, shares = [0.0] * parts, [[] for _ in range(parts)]
    for unit in sorted(units, key=lambda u: (-unit_cost(u), u.index, u.members[0].index)):
        target = min(range(parts), key=lambda p: (loads[p], p))
        loads[target] += unit_cost(unit)
        shares[target].append(unit)
    return loads, shares


def _share(sweep: Sweep, share: list[Group]) -> Sweep:
    """A part as a sweep: its pieces of one group joined (members in the group's order)."""
    groups = {}
    for unit in sorted(share, key=lambda u: (u.index, u.members[0].index)):
        joined = groups[unit.index].members if unit.index in groups else ()
        groups[unit.index] = replace(unit, members=joined + unit.members)
    members = tuple(m for g in groups.values() for m in g.members)
    return replace(sweep, members=members, groups=tuple(groups.values()))


def part_record(sweep: Sweep, part: Sweep, index: int, parts: int, sweep_text: str, overrides) -> str:
    """What `merge` checks a part against: the whole sweep's identity and this part's members."""
    final = {m.name: run_vector_steps(m.config) * m.config.env.num_envs for m in part.members}
    return yaml.safe_dump({"sweep": sweep.name, "sweep_file": sweep_text, "overrides": list(overrides),
                           "members": [m.name for m in sweep.members], "part": f"{index}/{parts}",
                           "part_members": final}, sort_keys=False)


def merge(dirs: list[str | Path], out: str | Path, table: str = "results.csv") -> Path:
    """Check the parts in `dirs` and write their merged table and TensorBoard tree into `out`.

    UserError (nothing written) for parts of different sweeps, a member missing or in two parts,
    or a part whose members did not finish."""
    dirs, out = [Path(d) for d in dirs], Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already holds files; choose another --out")
    records = []
    for d in dirs:
        if not (d / PART_FILE).is_file():
            raise UserError(f"{d} holds no sweep part (no {PART_FILE}): run it with pql-jax sweep --part I/N")
        records.append(yaml.safe_load((d / PART_FILE).read_text()))
    first = records[0]
    for d, rec in zip(dirs, records):
        for key in ("sweep_file", "overrides", "members"):
            if rec[key] != first[key]:
                raise UserError(f"{d} is a part of a different sweep than {dirs[0]} (its {key} differ)")
    owner: dict[str, Path] = {}
    for d, rec in zip(dirs, records):
        for name in rec["part_members"]:
            if name in owner:
                raise UserError(f"member {name} is in two parts: {owner[name]} and {d}")
            owner[name] = d
    missing = [m for m in first["members"] if m not in owner]
    if missing:
        raise UserError(f"{len(missing)} member(s) in no part given, e.g. {missing[0]}; merge every part of the sweep")
    rows, columns = finished_rows(dirs, records, table)
    position = {name: i for i, name in enumerate(first["members"])}
    rows.sort(key=lambda r: (int(r["group"]), int(float(r["vector_steps"])), position[r["member"]]))
    tmp = out.with_name(f"{out.name}.merging.{os.getpid()}")  # two parts may finish and merge at once
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_rows_atomic(tmp / table, rows, columns)
    for d in dirs:  # a part's tb/ holds its own members' runs only (named by tensorboard.run_name)
        for run in sorted((d / "tb").iterdir()) if (d / "tb").is_dir() else ():
            if run.is_dir():
                shutil.copytree(run, tmp / "tb" / run.name)
    for name in ("sweep.yaml", "members.yaml"):
        if (dirs[0] / name).is_file():
            shutil.copy2(dirs[0] / name, tmp / name)
    (tmp / "merged.yaml").write_text(yaml.safe_dump({"parts": [str(d) for d in dirs]}, sort_keys=False))
    try:
        if out.exists():
            out.rmdir()  # empty (checked above): replaced by the merged directory
        tmp.rename(out)
    except OSError:  # another process merged the same parts first: its result stands
        shutil.rmtree(tmp, ignore_errors=True)
    return out / table


def finished_rows(dirs, records, table: str) -> tuple[list[dict], list[str]]:
    """Every part's rows of its own members; UserError if one has neither reached its last env step
    nor stopped early (a row with `stopped` = 1, pql_jax.run.early_stop)."""
    rows, columns = [], []
    for d, rec in zip(dirs, records):
        part_rows = read_rows(d / table)
        for name, final in rec["part_members"].items():
            own = [r for r in part_rows if r["member"] == name]
            done = max((int(float(r["env_steps"])) for r in own), default=0)
            stopped = any(r.get("stopped") not in (None, "", "0", "0.0") for r in own)
            if done < final and not stopped:
                raise UserError(f"{d}: member {name} is unfinished ({done:,} of {final:,} env steps); "
                                f"resume that part (pql-jax sweep ... --part {rec['part']} --resume) first")
        rows += [r for r in part_rows if r["member"] in rec["part_members"]]
        columns += [c for c in (part_rows[0].keys() if part_rows else ()) if c not in columns]
    return rows, columns
