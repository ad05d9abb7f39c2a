"""Threshold levels of a fit: which ones exist, which the runs reach, and at which one the best
hyperparameters are picked (``--thresholds``, ``--n-thresholds``, ``--select-level``).

A level no run reaches is dropped with a line naming it and the highest return reached, so it
never decides the best values; a level that cannot exist is refused in one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pql_jax.errors import UserError
from pql_jax.scaling import curves as cv
from pql_jax.values import format_utd


def check_select_level(cfg: Any) -> None:
    """Refuse a threshold level (``select_level``) or a number of levels that cannot exist, before
    anything is read (a level past the reached ones is refused once they are known); ``cfg``:
    the pipeline's PipelineConfig."""
    if cfg.n_thresholds < 1 and not cfg.thresholds:
        raise UserError(f"--n-thresholds must be at least 1, got {cfg.n_thresholds}")
    lv = cfg.select_level
    if lv is None:
        return
    if isinstance(cfg.thresholds, dict):
        n = len(next(iter(cfg.thresholds.values())))
    else:
        n = len(cfg.thresholds) if cfg.thresholds else cfg.n_thresholds
    if not isinstance(lv, (int, np.integer)) or isinstance(lv, bool) or not 0 <= lv < n:
        given = f" (--thresholds {','.join(f'{t:g}' for t in cfg.thresholds)})" \
            if isinstance(cfg.thresholds, (list, tuple)) and cfg.thresholds else ""
        raise UserError(f"--select-level {lv}: there {'are' if n > 1 else 'is'} {n} threshold level{'s' * (n > 1)}"
                        f"{given}, so it must be {'0' if n == 1 else f'0 (the lowest) to {n - 1}'}")


def default_level(res: Any, gdf: pd.DataFrame, D: np.ndarray, thresholds: dict) -> int:
    """The threshold level at which best values are picked by default: the middle one of the
    levels that every (env, utd, N) cell reaches with some run (all of them, with auto thresholds);
    the lowest, with a note naming the cells that miss it, where no level is reached by all.
    ``res``: the pipeline's Results (notes are appended to it)."""
    cells = [c for c in cv.CELL_COLUMNS if c in gdf.columns]
    reach = pd.DataFrame(np.isfinite(D[:, 0, :])).groupby([gdf[c] for c in cells]).any()
    n_every = int(np.cumprod(reach.all(axis=0).to_numpy()).sum())  # reached levels form a prefix
    nj = D.shape[2]
    if n_every == nj:
        return nj // 2
    if n_every:
        J = next(iter(thresholds.values()))
        which = "the only level" if n_every == 1 else f"the middle one of the {n_every} levels"
        miss = ", ".join(f"{j:g}" for j in J[n_every:])
        res.notes.append(f"best values picked at threshold {J[n_every // 2]:g} (level {n_every // 2}), {which} that "
                         f"every {'/'.join(cells)} cell reaches (some miss {miss}); choose another with --select-level")
        return n_every // 2
    miss = reach.index[~reach[0].to_numpy()]
    desc = ", ".join(" ".join(f"{c}={format_utd(v) if c == 'utd' else v}" for c, v in
                              zip(cells, k if isinstance(k, tuple) else (k,))) for k in miss[:4])
    res.notes.append(f"no threshold level is reached by every cell: best values picked at the lowest, where "
                     f"{desc}{' ...' if len(miss) > 4 else ''} reach{'es' if len(miss) == 1 else ''} none: "
                     "lower the thresholds or train longer")
    return 0


def levels_text(thresholds: dict) -> str:
    """'2 threshold levels are reached: 0 (500), 1 (700)' (per env where they differ)."""
    J = list(thresholds.values())
    nj = len(J[0])
    each = [f"{j} ({'/'.join(sorted({f'{t[j]:g}' for t in J}))})" for j in range(nj)]
    return f"{nj} threshold level{'s are' if nj > 1 else ' is'} reached: {', '.join(each)}"


def drop_unreached(res: Any, groups: list, keys: list, thresholds: dict, D: np.ndarray):
    """Leave out the threshold levels that no run's seed-mean curve reaches (they would decide
    nothing but NaN or chance picks of the resamples); a flag names each with the highest return
    reached. Raises when none is reached. Returns (thresholds, D, the dropped thresholds' text)."""
    reached = np.isfinite(D[:, 0, :]).any(axis=0)
    if reached.all():
        return thresholds, D, []
    tops = np.array([cv.isotonic_rows(g.returns.mean(axis=0))[0][-1] for g in groups])
    top = groups[int(np.argmax(tops))]
    where = " ".join(f"{k}={format_utd(v) if k == 'utd' else (f'{v:g}' if isinstance(v, float) else v)}"
                     for k, v in zip(keys, top.key))
    highest = f"the highest seed-mean return is {tops.max():.4g}, at {where}"
    texts = ["/".join(sorted({f"{t[j]:g}" for t in thresholds.values()})) for j in range(D.shape[2])]
    if not reached.any():
        raise UserError(f"no threshold is reached by any run (thresholds {', '.join(texts)}; {highest})")
    dropped = [texts[j] for j in np.flatnonzero(~reached)]
    for j in dropped:
        res.flags.append({"quantity": "threshold", "group": "", "param": f"J={j}",
                          "problem": f"dropped: no run reaches it ({highest}); best values and laws use the others"})
    keep = np.flatnonzero(reached)
    return {e: np.asarray(t)[keep] for e, t in thresholds.items()}, D[:, :, keep], dropped
