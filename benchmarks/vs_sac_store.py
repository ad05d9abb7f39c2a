"""The resumable run store of benchmarks/bench_vs_sac.py: a JSONL file of one record per finished run.

Every record carries a fingerprint of the settings that decide comparability; a file holding
another fingerprint is refused, a half-written last line (a killed run) is ignored, and the
runs a file already holds are skipped when the same command is run again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


class BadInput(Exception):
    """A user error: printed as one line, exit status 2."""



def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def read_records(path):
    """Records of a JSONL file: (records, notes, offset of a half-written last line or None).

    A last line that is not complete JSON (a run killed while appending) is ignored with a note;
    a bad line before the last one is an error."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    records, notes, partial_at, offset = [], [], None, 0
    for i, raw in enumerate(lines):
        start, offset = offset, offset + len(raw) + 1
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            if all(not rest.strip() for rest in lines[i + 1:]):
                notes.append(f"note: {path} line {i + 1} is half-written (a killed run?); ignored")
                partial_at = start
                continue
            raise BadInput(f"{path} line {i + 1} is not a JSON record; repair or move the file") from None
        records.append(record)
    return records, notes, partial_at


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def matching_records(records, fp: str, settings: dict, path):
    """The records made with these settings; a record with another fingerprint is an error."""
    for r in records:
        if r.get("fingerprint") != fp:
            theirs, ours = _flatten(r.get("settings") or {}), _flatten(settings)
            diff = [f"{k} {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in sorted(set(theirs) | set(ours))
                    if theirs.get(k) != ours.get(k)]
            raise BadInput(f"{path} holds runs with other settings ({'; '.join(diff[:4]) or 'no fingerprint'}"
                           f"{'; ...' if len(diff) > 4 else ''}): use the same options, another --out, or --new-out")
    return list(records)


def run_key(r) -> tuple:
    return (r["env"], r["method"], int(r["seed"]))


def dedupe(records):
    """One record per (task, method, seed): the first; returns (records, notes)."""
    seen, out, notes = set(), [], []
    for r in records:
        if run_key(r) in seen:
            notes.append(f"note: {r['env']} {r['method']} seed {r['seed']} appears twice; the first is used")
            continue
        seen.add(run_key(r))
        out.append(r)
    return out, notes


def plan_runs(seed_counts: dict, methods, done: set):
    """(to run, already done) lists of (task, method, seed), interleaved per seed:
    task 1 pql seed 0, sac seed 0, pql seed 1, ...; then task 2."""
    todo, skipped = [], []
    for task, n in seed_counts.items():
        for seed in range(n):
            for method in methods:
                (skipped if (task, method, seed) in done else todo).append((task, method, seed))
    return todo, skipped


def append_record(path, record: dict):
    """Append one JSON line and make it durable before the next run starts."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
