"""Two finished workflow runs side by side (a fixed grid and its refined twin): env steps and critic
updates trained per stage, stage wall times, every D_J parameter (value, Hessian SE, bootstrap SE,
flagged or not), the B* / lr* laws, and the verification verdicts.

    python benchmarks/refine_compare.py runs/cartpole_cpu runs/cartpole_cpu_refined
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

TRAINED = ("hparam_sweep", "utd_sweep", "refine", "verify")


def trained(out: Path) -> dict:
    """stage -> (env steps, critic updates) trained: the sum of each member's last row."""
    totals = {}
    for stage in TRAINED:
        d = out / stage
        # a stage's results.csv holds every member once (a widened sweep's rounds included); the
        # refine stage's holds the UTD sweep's rows too, so its rounds are read one by one
        tables = sorted(d.glob("round*/results.csv")) if stage == "refine" else [d / "results.csv"]
        env = upd = 0.0
        for t in (t for t in tables if t.is_file()):
            last = pd.read_csv(t).groupby("member").max(numeric_only=True)  # eval rows carry NaN updates
            env += float(last["env_steps"].sum())
            upd += float(last["critic_updates"].sum()) if "critic_updates" in last else np.nan
        totals[stage] = (env, upd)
    return totals


def seconds(out: Path) -> dict:
    """stage -> wall seconds from its done.json."""
    out_ = {}
    for p in sorted(out.glob("*/done.json")):
        info = json.loads(p.read_text())
        out_[p.parent.name] = info.get("seconds", np.nan)
    return out_


def flagged(out: Path) -> set:
    """(level, param) of the D_J parameters fit_laws flagged."""
    path = out / "fit_laws" / "flags.csv"
    if not path.is_file():
        return set()
    f = pd.read_csv(path)
    f = f[f["quantity"].astype(str).str.startswith("D_J law, level ")]
    return {(int(q.split("level ")[1].split()[0]), str(p)) for q, p in zip(f["quantity"], f["param"])}


def params(out: Path) -> dict:
    """(J, param) -> (value, Hessian SE, bootstrap SE, flagged)."""
    levels = json.loads((out / "fit_laws" / "fit.json").read_text())["levels"]
    flags, rows = flagged(out), {}
    for lv, fit in levels.items():
        for env, values in fit["params"].items():
            for name, v in values.items():
                se = fit.get("se", {}).get(env, {}).get(name, np.nan)
                boot = (fit.get("bootstrap_se") or {}).get(env, {}).get(name, np.nan)
                rows[(fit["thresholds"][env], name)] = (v, se, boot, (int(lv), name) in flags)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fixed")
    parser.add_argument("refined")
    args = parser.parse_args()
    a, b = Path(args.fixed), Path(args.refined)
    ta, tb = trained(a), trained(b)
    sa, sb = seconds(a), seconds(b)
    print("| stage | fixed: env steps / critic updates / s | refined |")
    print("|---|---|---|")
    for stage in ("hparam_sweep", "fit_hparams", "utd_sweep", "refine", "fit_laws", "verify", "report"):
        cells = []
        for t, s in ((ta, sa), (tb, sb)):
            env, upd = t.get(stage, (np.nan, np.nan))
            cells.append((f"{env:,.0f} / {upd:,.0f} / " if stage in TRAINED else "") + f"{s.get(stage, np.nan):.0f}")
        print(f"| {stage} | {cells[0]} | {cells[1]} |")
    tot = [sum(t[s][0] for s in TRAINED) for t in (ta, tb)]
    print(f"| all | {tot[0]:,.0f} env steps, {sum(sa.values()):.0f} s | {tot[1]:,.0f} env steps, "
          f"{sum(sb.values()):.0f} s |\n")
    pa, pb = params(a), params(b)
    print("| J | param | fixed: value +- SE [bootstrap SE] | refined |")
    print("|---|---|---|---|")
    for key in pa:
        cells = []
        for p in (pa, pb):
            v, se, boot, flag = p.get(key, (np.nan,) * 3 + (False,))
            cells.append(f"{v:.3g} +- {se:.2g} [{boot:.2g}]" + (" **flagged**" if flag else ""))
        print(f"| {key[0]:g} | {key[1]} | {cells[0]} | {cells[1]} |")
    print()
    ver = [pd.read_csv(d / "verify" / "verification.csv") for d in (a, b)]
    print("| target | J | fixed: predicted [90%] / measured / verdict | refined |")
    print("|---|---|---|---|")
    for (_, x), (_, y) in zip(ver[0].iterrows(), ver[1].iterrows()):
        cells = [f"{r['data_pred']:.0f} [{r['data_pred_lo']:.0f}, {r['data_pred_hi']:.0f}] / {r['data_measured']:.0f} / "
                 + ("verified" if r["verified"] else "not verified") for r in (x, y)]
        print(f"| {x['target']} | {x['threshold']:g} | {cells[0]} | {cells[1]} |")
    for d in (a, b):
        for sub in ("fit_hparams", "fit_laws"):
            path = d / sub / "flags.csv"
            if path.is_file():
                f = pd.read_csv(path)
                what = dict.fromkeys(f"{q} {p if isinstance(p, str) else ''}".strip()
                                     for q, p in zip(f["quantity"], f["param"]))
                print(f"\n{d} {sub}: {len(f)} flag(s): " + "; ".join(what))


if __name__ == "__main__":
    main()
