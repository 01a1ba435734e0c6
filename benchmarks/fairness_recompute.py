"""Age-standardised fairness figures recomputed from `agelens evaluate` outputs' predictions.csv with today's
`evaluate.metrics.standardised_mae` (no model runs): per attribute the spread, its interval and the groups left out,
for runs whose metrics.json was written by an earlier method; beside them the same with every face of a group's
age bin counted, however few (`min_cell=1`, the method before 2026-12-06).

    python benchmarks/fairness_recompute.py runs/e2e_refit runs/e2e_old --out docs/fairness_recompute.json
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from agelens.data.adapters import load_duplicate_groups
from agelens.evaluate.metrics import standardised_mae
from agelens.utils import atomic_write_json


def recompute(run: Path, n_boot: int, groups_csv: Path | None = None) -> dict:
    with open(run / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("pred")]  # blank: a face evaluate could not prepare
    if not rows or not {"age", "pred", "gender", "race"} <= set(rows[0]):
        raise SystemExit(f"{run}/predictions.csv: not an `agelens evaluate` output with gender and race")
    true = np.array([float(r["age"]) for r in rows])
    pred = np.array([float(r["pred"]) for r in rows])
    genders, races = [r["gender"] or None for r in rows], [r["race"] or None for r in rows]
    # duplicate groups resampled whole, as `evaluate` does with the records' groups (since 2026-12-06)
    dups = load_duplicate_groups(groups_csv) if groups_csv else {}
    clusters = [dups.get(Path(r["path"]).name) for r in rows] if dups else None
    std = standardised_mae(pred, true, genders, races, n_boot=n_boot, clusters=clusters)
    # every face of a group's age bin counted, however few (the method before 2026-12-06)
    every = standardised_mae(pred, true, genders, races, n_boot=n_boot, min_cell=1, clusters=clusters)
    before = json.loads((run / "metrics.json").read_text()).get("standardised", {}) if (run / "metrics.json").is_file() else {}
    out = {"n": len(rows), "mae": round(float(np.abs(pred - true).mean()), 4), "min_cell": std["min_cell"],
           "resampled": std["resampled"]}
    for attr in ("gender", "race", "gender×race"):
        a, b, e = std.get(attr, {}), before.get(attr, {}), every.get(attr, {})
        out[attr] = {"spread": a.get("spread"), "spread_ci95": a.get("spread_ci95"),
                     "left_out_reasons": a.get("left_out_reasons"),
                     "by_group": {g: v["mae"] for g, v in a.get("by_group", {}).items()},
                     "thin_bins": {g: v["thin_bins"] for g, v in a.get("by_group", {}).items() if v["thin_bins"]},
                     "every_face_counted": {"spread": e.get("spread"), "spread_ci95": e.get("spread_ci95"),
                                            "left_out": e.get("left_out_of_spread"),
                                            "by_group": {g: v["mae"] for g, v in e.get("by_group", {}).items()}},
                     "before": {"spread": b.get("spread"), "spread_ci95": b.get("spread_ci95")}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--groups-csv", type=Path, default=None,
                    help="duplicate groups (UTKFace's CSV: group,file) resampled whole")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    res = {"command": "python benchmarks/fairness_recompute.py " + " ".join(map(str, a.runs))
           + (f" --groups-csv {a.groups_csv}" if a.groups_csv else "") + (f" --out {a.out}" if a.out else ""),
           "runs": {str(r): recompute(r, a.bootstrap, a.groups_csv) for r in a.runs}}
    for run, r in res["runs"].items():
        print(f"{run} (n {r['n']}, MAE {r['mae']:.3f})")
        for attr in ("gender", "race", "gender×race"):
            x = r[attr]
            e = x["every_face_counted"]
            print(f"  {attr:12s} spread {x['spread']} {x['spread_ci95']}  (every face counted: {e['spread']} "
                  f"{e['spread_ci95']}; metrics.json: {x['before']['spread']} {x['before']['spread_ci95']})"
                  + (f"  left out: {x['left_out_reasons']}" if x["left_out_reasons"] else ""))
    if a.out:
        atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
