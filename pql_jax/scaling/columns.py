"""The column names of learning curves: which columns are read, their aliases, a user's own
names mapped with ``--columns``, and the check that no unused column hides a setting.

Another trainer's CSV names its columns its own way (``env_step``, ``eval_return``, ``batch``);
everything here turns them into the names the fits read, or names the column in one line.
"""

from __future__ import annotations

import difflib
import os

import numpy as np
import pandas as pd

from pql_jax import values
from pql_jax.errors import UserError

#: Hyperparameter columns recognised in learning curves (after aliasing ``critic_lr`` -> ``lr``).
HPARAM_COLUMNS = ("utd", "batch_size", "lr", "model_size")
ALIASES = {"critic_lr": "lr", "learning_rate": "lr", "returns": "return", "env_steps": "step", "env_step": "step",
           "eval_return": "return", "batch": "batch_size", "task": "env"}
#: Columns of learning curves that are read (besides labels): what ``--columns`` may map to.
CURVE_COLUMNS = ("env", "seed", "step", "return") + HPARAM_COLUMNS + ("flops", "critic_updates", "diverged")
#: Columns of our own results tables that label runs, not settings (never taken for an unused
#: hyperparameter): the member's name, its compiled group, the UTD as text.
LABEL_COLUMNS = ("member", "group", "utd_label")
#: How an error asks for an unused hyperparameter column to be mapped.
MAP_HINT = "--columns NAME={col} (NAME one of utd, batch_size, lr, model_size)"


def apply_aliases(df: pd.DataFrame, notes: list | None = None) -> pd.DataFrame:
    """Rename known alias columns (critic_lr -> lr, ...) unless the canonical name exists; with
    ``notes``, say which were renamed."""
    ren = {}
    for a, c in ALIASES.items():
        if a in df.columns and c not in df.columns and c not in ren.values():
            ren[a] = c
    if notes is not None and ren:
        notes.append("read column(s) " + ", ".join(f"{a} as {c}" for a, c in ren.items())
                     + " (map others with --columns NAME=COLUMN)")
    return df.rename(columns=ren)


def read_column_map(spec) -> dict:
    """A mapping of curve columns (``--columns``): 'step=env_step,return=eval_return,ignore=host'
    or the path of a YAML file holding ``{step: env_step, ignore: [host, ...]}`` (or that dict).
    Returns {curve column: the file's column, 'ignore': [columns]}; names are checked here, the
    file's columns when the curves are read (``load_curves``)."""
    if spec is None or isinstance(spec, dict):
        items = list((spec or {}).items())
    else:
        text = str(spec).strip()
        if "=" in text:
            items = [tuple(x.strip() for x in part.split("=", 1)) for part in text.split(",") if part.strip()]
            bad = [part for part in text.split(",") if part.strip() and "=" not in part]
            if bad:
                raise UserError(f"--columns: {bad[0].strip()!r} is not NAME=COLUMN")
        else:
            if not os.path.isfile(text):
                raise UserError(f"--columns: expected NAME=COLUMN,... (e.g. step=env_step,return=eval_return) or a "
                                f"YAML file of that mapping; no file {text!r}")
            data = values.read_yaml(text, "--columns file")
            if not isinstance(data, dict):
                raise UserError(f"--columns file {text} must hold a mapping such as "
                                "{step: env_step, return: eval_return}")
            items = list(data.items())
    out: dict = {"ignore": []}
    for name, col in items:
        name = str(name).strip()
        if name == "ignore":
            out["ignore"] += [str(c) for c in (col if isinstance(col, (list, tuple)) else [col])]
            continue
        name = ALIASES.get(name, name) if name not in CURVE_COLUMNS else name
        if name not in CURVE_COLUMNS:
            raise UserError(f"--columns: unknown name {name!r}; the names are {', '.join(CURVE_COLUMNS)} "
                            "(or ignore), each set to a column of yours, e.g. step=env_step")
        if col is None or not str(col).strip():
            raise UserError(f"--columns: no column given for {name}")
        if name in out:
            raise UserError(f"--columns: {name} is mapped twice")
        out[name] = str(col).strip()
    cols = [v for k, v in out.items() if k != "ignore"]
    twice = sorted({c for c in cols if cols.count(c) > 1})
    if twice:
        raise UserError(f"--columns: column {twice[0]!r} is mapped to more than one name")
    return out if len(out) > 1 or out["ignore"] else {}


def map_columns(df: pd.DataFrame, mapping: dict, notes: list) -> pd.DataFrame:
    """Rename the columns of a ``read_column_map`` mapping; a column of the table that has the
    name a mapped column takes is replaced (and the notes say so)."""
    pairs = {k: v for k, v in mapping.items() if k != "ignore"}
    for col in list(pairs.values()) + list(mapping.get("ignore") or []):
        if col not in df.columns:
            close = difflib.get_close_matches(col, [str(c) for c in df.columns], n=1, cutoff=0.6)
            raise UserError(f"--columns: no column {col!r} in the curves (found: {', '.join(map(str, df.columns))})"
                            + (f"; did you mean {close[0]!r}?" if close else ""))
    replaced = [k for k, v in pairs.items() if k in df.columns and k != v and k not in pairs.values()]
    if replaced:
        notes.append("--columns: the file's column(s) " + ", ".join(replaced) + " replaced by "
                     + ", ".join(pairs[k] for k in replaced))
    return df.drop(columns=replaced).rename(columns={v: k for k, v in pairs.items()})


def duplicate_hint(df: pd.DataFrame, order: list, row, unused: list) -> str:
    """What the duplicate rows of ``row``'s key differ in: the unused columns that tell them
    apart (fewest distinct values first: settings before metrics), or which columns are unused."""
    same = np.ones(len(df), bool)
    for c in order:
        same &= (df[c] == row[c]).to_numpy()
    rows = df[same]
    differ = [c for c in unused if rows[c].nunique(dropna=False) > 1]
    if differ:
        differ.sort(key=lambda c: df[c].nunique())
        col = differ[0]
        more = f" (also {', '.join(differ[1:3])}{' ...' if len(differ) > 3 else ''})" if len(differ) > 1 else ""
        return (f": they differ in column '{col}'{more}, which is not used; if it is a hyperparameter, map it with "
                f"{MAP_HINT.format(col=col)}, else give each run its own seed")
    listed = f" (unused columns: {', '.join(unused[:8])}{' ...' if len(unused) > 8 else ''})" if unused else ""
    return f"; are seeds or hyperparameter columns missing?{listed}"


def refuse_hidden_settings(df: pd.DataFrame, order: list, level, unused: list) -> None:
    """Raise naming an unused column that is constant within every run and takes at least two
    values among the seeds of one run group, some shared by several seeds: a hyperparameter
    whose settings would be averaged as if they were seeds. (A run label takes one value per
    seed; a metric changes within a run: neither is refused.)

    Cheap on a large table: runs are the consecutive rows of ``order`` but its step (the table's
    own order when ``level`` says it is sorted), and a column is only hashed once it is found
    constant within every run by comparing neighbouring rows."""
    nkey = len(order) - 1  # the run: order without its step
    if level is not None:
        pos, same = np.arange(len(df)), level >= nkey
    else:
        codes = df.groupby(order[:-1], sort=False, dropna=False).ngroup().to_numpy()
        pos = np.argsort(codes, kind="stable")
        same = codes[pos[1:]] == codes[pos[:-1]]
    cands = []
    for c in unused:
        a = df[c].to_numpy()[pos]
        if not same.any() or not (a[1:][same] != a[:-1][same]).any():
            cands.append(c)
    if not cands:
        return
    heads = df.iloc[pos[np.concatenate([[True], ~same])]]  # the first row of every run
    groups = heads.groupby(order[:-2], sort=False, dropna=False)
    n_seeds = groups["seed"].nunique()
    for c in cands:
        n_vals = groups[c].nunique()
        bad = (n_vals >= 2) & (n_vals < n_seeds)
        if bad.any():
            key = bad.index[bad.to_numpy()][0]
            key = key if isinstance(key, tuple) else (key,)
            sub = heads[(heads[order[:-2]] == pd.Series(key, index=order[:-2])).all(axis=1)]
            desc = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in zip(order[:-2], key))
            vals = ", ".join(map(str, pd.unique(sub[c])[:4]))
            raise UserError(f"curves: column '{c}' is not used but splits the seeds of one setting ({desc}: "
                            f"{c} = {vals}), whose settings would be averaged as seeds; if it is a hyperparameter "
                            f"map it with {MAP_HINT.format(col=c)}, else leave it out with --columns ignore={c}")
