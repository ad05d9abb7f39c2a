"""Reading and validating the two input tables: learning curves and crossings.

Every problem with the input becomes one ``UserError`` line that names the column or value,
so the command line can print it and exit with status 2 before anything is written.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile

import numpy as np
import pandas as pd

from pql_jax import values
from pql_jax.errors import UserError
from pql_jax.scaling.columns import (HPARAM_COLUMNS, LABEL_COLUMNS, apply_aliases, duplicate_hint, map_columns,
                                     read_column_map, refuse_hidden_settings)

CURVE_REQUIRED = ("env", "seed", "step", "return")
CROSSING_REQUIRED = ("utd", "data")

POSITIVE = ("utd", "batch_size", "lr", "model_size", "data")
NONNEGATIVE = ("step", "data_std", "flops", "critic_updates")


RUN_TABLES = ("results.csv", "metrics.csv")  # a sweep's and a single run's results table


def read_table(source, what: str = "table") -> pd.DataFrame:
    """A DataFrame from a CSV path, a run directory (its results.csv / metrics.csv), a DataFrame
    (copied) or a list of these (concatenated; `member` names are prefixed by the source index)."""
    if isinstance(source, (list, tuple)):
        if len(source) == 1:
            return read_table(source[0], what)
        frames = []
        for i, one in enumerate(source):
            df = read_table(one, what)
            if "member" in df.columns:
                df["member"] = f"{i}:" + df["member"].astype(str)
            frames.append(df)
        return pd.concat(frames, ignore_index=True, sort=False)
    if isinstance(source, pd.DataFrame):
        return source.copy()
    path = os.fspath(source)
    if os.path.isdir(path):
        found = [os.path.join(path, name) for name in RUN_TABLES if os.path.isfile(os.path.join(path, name))]
        if not found:
            raise UserError(f"{what}: {path} is a directory without {' or '.join(RUN_TABLES)}")
        path = found[0]
    if not os.path.isfile(path):
        raise UserError(f"{what} file not found: {path}")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {str(exc).splitlines()[0]}") from None
    if df.empty:
        raise UserError(f"{what} {path} has no rows")
    return df


def require_columns(df: pd.DataFrame, required, what: str, mapping: bool = False, found=None) -> None:
    """Raise naming every missing column, what was found (``found``: the file's own names, where
    they were renamed), and close spellings (with ``mapping``, how to map them with ``--columns``)."""
    missing = [c for c in required if c not in df.columns]
    if not missing:
        return
    found = [str(c) for c in (df.columns if found is None else found)]
    hints, pairs = [], []
    for m in missing:
        close = difflib.get_close_matches(m, found, n=1, cutoff=0.6)
        if close:
            hints.append(f"'{close[0]}' for '{m}'?")
            pairs.append(f"{m}={close[0]}")
    hint = f"; did you mean {' '.join(hints)}" if hints else ""
    if mapping:
        hint += f"; map your names with --columns {','.join(pairs) or missing[0] + '=COLUMN'}"
    raise UserError(f"{what}: missing column(s) {', '.join(missing)} (found: {', '.join(found)}){hint}")


def _numeric_column(df: pd.DataFrame, col: str, what: str) -> pd.Series:
    """Convert a column to float, accepting fraction strings such as 1/1024 or 1:1024."""
    s = df[col]
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return s.astype(float)
    out = []
    for i, v in zip(df.index, s):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(np.nan)
            continue
        try:
            out.append(values.parse_number(v))
        except (ValueError, TypeError, OverflowError):
            raise UserError(f"{what}: non-numeric value {v!r} in column '{col}' (row {i + 2}; "
                            f"{values.NUMBER_FORMS})") from None
    return pd.Series(out, index=df.index, dtype=float)


def _check_values(df: pd.DataFrame, cols, what: str, allow_nan=()) -> None:
    """Raise on NaN/Inf, non-positive (POSITIVE) or negative (NONNEGATIVE) values."""
    for col in cols:
        v = df[col].to_numpy(float)
        bad_nan = np.isnan(v) & (col not in allow_nan)
        if bad_nan.any():
            raise UserError(f"{what}: NaN in column '{col}' (row {int(np.argmax(bad_nan)) + 2})")
        if np.isinf(v).any():
            raise UserError(f"{what}: Inf in column '{col}' (row {int(np.argmax(np.isinf(v))) + 2})")
        if col in POSITIVE and (v[~np.isnan(v)] <= 0).any():
            i = int(np.argmax(np.nan_to_num(v, nan=1.0) <= 0))
            raise UserError(f"{what}: column '{col}' must be positive, found {v[i]:g} (row {i + 2})")
        if col in NONNEGATIVE and (v[~np.isnan(v)] < 0).any():
            i = int(np.argmax(np.nan_to_num(v, nan=0.0) < 0))
            raise UserError(f"{what}: column '{col}' must not be negative, found {v[i]:g} (row {i + 2})")


def normalise_returns(df: pd.DataFrame, max_return) -> pd.DataFrame:
    """Scale returns per env to 0..1000 given a max return (float or {env: float})."""
    if max_return is None:
        return df
    if isinstance(max_return, dict):
        missing = sorted(set(df["env"]) - set(max_return))
        if missing:
            raise UserError(f"no max return given for env(s) {', '.join(missing)}")
        scale = df["env"].map({k: float(v) for k, v in max_return.items()})
    else:
        scale = pd.Series(float(max_return), index=df.index)
    if (scale <= 0).any():
        raise UserError("max return must be positive")
    df = df.copy()
    df["return"] = df["return"] * 1000.0 / scale
    return df


def load_curves(source, max_return=None, columns=None) -> tuple[pd.DataFrame, list[str]]:
    """Read and validate learning curves; return (table, notes).

    ``columns``: a ``read_column_map`` mapping (or its text) naming the table's columns. Without
    an ``env`` column the curves are one task, named 'all'. Rows without an eval return are
    dropped (missing eval points); runs flagged ``diverged`` are excluded and listed in the
    notes. Hyperparameter columns present among ``HPARAM_COLUMNS`` are kept as floats; other
    columns are not used, but one that looks like a hyperparameter (constant within each run and
    splitting the seeds of a run group into settings, or telling apart rows that would otherwise
    be duplicates) is refused by name, unless the mapping ignores it.
    """
    notes: list[str] = []
    mapping = read_column_map(columns)
    df = read_table(source, "curves")
    own = list(df.columns)
    if mapping:
        df = map_columns(df, mapping, notes)
    df = apply_aliases(df, notes)
    if "env" not in df.columns:
        df["env"] = "all"
        notes.append("no env column: the curves are read as one task, named 'all'")
    require_columns(df, CURVE_REQUIRED, "curves", mapping=True, found=own)
    df["env"] = df["env"].astype(str)
    extra = [c for c in ("flops", "critic_updates", "diverged", "stopped") if c in df.columns]
    num = ["seed", "step", "return"] + [c for c in HPARAM_COLUMNS if c in df.columns] + extra
    for col in num:
        df[col] = _numeric_column(df, col, "curves")
    n_missing = int(df["return"].isna().sum())
    if n_missing:
        df = df[df["return"].notna()]
        notes.append(f"{n_missing} rows without an eval return were skipped")
    if df.empty:
        raise UserError("curves: no rows with a return value")
    _check_values(df, [c for c in num if c not in ("diverged", "stopped")], "curves",
                  allow_nan=("flops", "critic_updates"))
    hp = [c for c in HPARAM_COLUMNS if c in df.columns]
    if "diverged" in df.columns:
        run_key = ["env", "seed"] + hp + (["member"] if "member" in df.columns else [])
        div = df.groupby(run_key, dropna=False)["diverged"].transform("max") > 0
        if div.any():
            runs = df[div].drop_duplicates(run_key)
            desc = "; ".join(f"{r.env} seed={r.seed:g}" + "".join(f" {h}={getattr(r, h):g}" for h in hp)
                             for r in runs.head(5).itertuples())
            more = f" and {len(runs) - 5} more" if len(runs) > 5 else ""
            notes.append(f"excluded {len(runs)} diverged run(s): {desc}{more}")
            df = df[~div]
        if df.empty:
            raise UserError("curves: every run diverged")
    df = normalise_returns(df, max_return)
    order = ["env"] + hp + ["seed", "step"]  # a sweep's usual row order: one comparison per column then
    level = sorted_levels(df, order)
    used = set(num) | {"env"} | set(LABEL_COLUMNS) | set(mapping.get("ignore", ()))
    unused = [c for c in df.columns if c not in used]
    dup = None if level is not None and (level < len(order)).all() else df.duplicated(order)
    if dup is not None and dup.any():
        r = df[dup].iloc[0]
        raise UserError(f"curves: duplicate rows for one run at env={r['env']} seed={r['seed']:g} "
                        f"step={r['step']:g}" + duplicate_hint(df, order, r, unused))
    if unused:
        refuse_hidden_settings(df, order, level, unused)
    return df.reset_index(drop=True), notes


def sorted_levels(df: pd.DataFrame, cols) -> np.ndarray | None:
    """Per pair of consecutive rows, the position in ``cols`` of the first column in which they
    differ (``len(cols)`` where they are equal in all), when the rows are sorted ascending by
    ``cols`` (lexicographically, strictly increasing at that column); None otherwise.

    One O(n) pass per column: tables written run after run are usually sorted, and this lets
    callers skip the hashing (``duplicated``) or sorting of every row, the largest costs of
    reading a sweep of a million rows. pandas has no such check over several columns."""
    level = np.full(max(len(df) - 1, 0), len(cols))
    tied = None  # the pairs equal in every column so far (None: all of them)
    for k, col in enumerate(cols):
        a = df[col].to_numpy()
        if a.dtype.kind not in "biufO":
            return None
        prev, nxt = (a[:-1], a[1:]) if tied is None else (a[tied], a[tied + 1])
        differ = nxt != prev  # NaN != NaN: told apart here, then refused below
        try:
            increasing = bool(np.all(prev[differ] < nxt[differ]))  # NaN or mixed types: not sorted
        except TypeError:
            return None
        if not increasing:
            return None
        level[np.flatnonzero(differ) if tied is None else tied[differ]] = k
        tied = np.flatnonzero(~differ) if tied is None else tied[~differ]
        if not len(tied):
            break
    return level


def load_crossings(source) -> pd.DataFrame:
    """Read and validate a crossings table (env optional, utd, data, optional extras)."""
    df = apply_aliases(read_table(source, "crossings"))
    require_columns(df, CROSSING_REQUIRED, "crossings")
    df["env"] = df["env"].astype(str) if "env" in df.columns else "all"
    cols = [c for c in ("utd", "data", "data_std", "threshold", "model_size", "batch_size", "lr")
            if c in df.columns]
    for col in cols:
        df[col] = _numeric_column(df, col, "crossings")
    _check_values(df, cols, "crossings")
    return df.reset_index(drop=True)


def require_distinct(df: pd.DataFrame, col: str, what: str, n: int = 3, by: str = "env") -> None:
    """Raise unless every group has at least n distinct values of col."""
    counts = df.groupby(by)[col].nunique()
    low = counts[counts < n]
    if len(low):
        env = low.index[0]
        vals = ", ".join(f"{v:g}" for v in sorted(df.loc[df[by] == env, col].unique()))
        where = "" if env == "all" else f" for env {env}"
        raise UserError(f"{what}: a law needs at least {n} distinct {col} values{where}, found {vals}")


class atomic_output_dir:  # noqa: N801 - used as a context manager like open()
    """Write into a temporary directory next to ``out``; on success move every file into
    ``out`` (created if needed, other files there left alone); on error remove the temporary
    directory so nothing half-written appears."""

    def __init__(self, out):
        self.out = os.path.abspath(os.fspath(out))
        self.tmp = None

    def __enter__(self) -> str:
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise UserError(f"output {self.out} exists and is not a directory")
        parent = os.path.dirname(self.out)
        if not os.path.isdir(parent):
            raise UserError(f"output parent directory does not exist: {parent}")
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out)}.tmp-", dir=parent)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                if not os.path.exists(self.out):
                    os.replace(self.tmp, self.out)
                    self.tmp = None
                else:
                    for root, _, files in os.walk(self.tmp):
                        rel = os.path.relpath(root, self.tmp)
                        dest = os.path.normpath(os.path.join(self.out, rel))
                        os.makedirs(dest, exist_ok=True)
                        for f in files:
                            os.replace(os.path.join(root, f), os.path.join(dest, f))
        finally:
            if self.tmp and os.path.exists(self.tmp):
                shutil.rmtree(self.tmp, ignore_errors=True)
        return False


def write_json(path: str, obj) -> None:
    """Write JSON with NaN as null and numpy scalars as numbers."""

    def clean(o):
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (np.floating, float)):
            return None if not np.isfinite(o) else float(o)
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, np.bool_):
            return bool(o)
        if isinstance(o, np.ndarray):
            return clean(o.tolist())
        return o

    with open(path, "w") as fh:
        json.dump(clean(obj), fh, indent=1)
