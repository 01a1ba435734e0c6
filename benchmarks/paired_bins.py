"""Two models on the same faces, paired face by face: MAE change per age bin with a bootstrap 95 % interval, and the
mean signed error of each (who is over- or under-estimated), from two `agelens evaluate` outputs.

    agelens evaluate -c configs/teacher_stable.yaml --model teacher --part test -o runs/e2e_old
    agelens evaluate -c configs/teacher_stable.yaml --model runs/teacher_x --route auto --part test -o runs/e2e_new
    python benchmarks/paired_bins.py runs/e2e_old runs/e2e_new [--out runs/paired.json]

`--route auto` routes the candidate teacher as the shipped one is (occluded faces to the shipped student); without
it a model of one's own answers every face.

Faces are matched on `path` (and `condition`, where both files have one: `benchmarks/interval_e2e.py` writes each
photo under several occluders, `--csv aaf_predictions.csv`); a face only one of them answered is left out (the count
is printed). `--conditions` keeps only the rows of those conditions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from agelens.evaluate.metrics import AGE_BINS, age_bin
from agelens.utils import atomic_write_json


def compare(old: Path, new: Path, boots: int = 1000, seed: int = 0, csv: str = "predictions.csv",
            conditions: list[str] | None = None) -> list[dict]:
    a, b = (pd.read_csv(Path(d) / csv) for d in (old, new))
    for f in (a, b):
        f.dropna(subset=["pred"], inplace=True)
        if "abs_error" not in f:
            f["abs_error"] = (f.pred - f.age).abs()
    key = ["path", "condition"] if "condition" in a and "condition" in b else ["path"]
    if conditions:
        if key == ["path"]:
            raise SystemExit(f"--conditions needs a `condition` column in both {csv} files")
        a, b = a[a.condition.isin(conditions)], b[b.condition.isin(conditions)]
    m = a.merge(b, on=key, suffixes=("_o", "_n"))
    if len(m) < max(len(a), len(b)):
        print(f"{max(len(a), len(b)) - len(m)} face(s) answered by one model only are left out")
    rng = np.random.default_rng(seed)
    rows = []
    bins = m.age_o.map(age_bin)
    for label in ["all", *(b for b, _, _ in AGE_BINS)]:
        s = m if label == "all" else m[bins == label]
        if s.empty:
            continue
        d = (s.abs_error_n - s.abs_error_o).to_numpy()
        ci = np.percentile([d[rng.integers(0, len(d), len(d))].mean() for _ in range(boots)], [2.5, 97.5])
        rows.append({"ages": label, "n": len(s),
                     "mae_old": round(float(s.abs_error_o.mean()), 3), "mae_new": round(float(s.abs_error_n.mean()), 3),
                     "diff": round(float(d.mean()), 3), "ci": [round(float(c), 3) for c in ci],
                     "signed_old": round(float((s.pred_o - s.age_o).mean()), 2),
                     "signed_new": round(float((s.pred_n - s.age_o).mean()), 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--csv", default="predictions.csv", help="the file in each folder")
    ap.add_argument("--conditions", nargs="+", default=None, help="only these conditions (interval_e2e.py's rows)")
    a = ap.parse_args()
    rows = compare(a.old, a.new, csv=a.csv, conditions=a.conditions)
    print(f"| ages | n | {a.old.name} | {a.new.name} | difference [95 %] | signed error |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ages']} | {r['n']} | {r['mae_old']:.2f} | {r['mae_new']:.2f} | {r['diff']:+.2f} "
              f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}] | {r['signed_old']:+.2f} → {r['signed_new']:+.2f} |")
    if a.out:
        atomic_write_json(a.out, {"old": str(a.old), "new": str(a.new), "csv": a.csv, "conditions": a.conditions,
                                  "bins": rows})


if __name__ == "__main__":
    main()
