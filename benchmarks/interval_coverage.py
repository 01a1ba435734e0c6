"""Interval calibration end to end: z fitted on `agelens evaluate` predictions of the val parts (photos through the
whole predict pipeline), checked on the test parts' predictions, beside the z the cards had from cached crops.

    agelens evaluate -c configs/teacher_stable.yaml --part val -o runs/cal/val_utk_clean      # and --part test,
    agelens evaluate -c runs/aaf_eval.yaml --part val -o runs/cal/val_aaf_clean              # and --occlude 1
    python benchmarks/interval_coverage.py --runs runs/cal --out docs/interval_coverage

Reads RUNS/{val,test}_{utk,aaf}_{clean,occ}/predictions.csv. Each face's interval is pred ± z·spread (clipped to
0-100) with the z of the model that answered it (column `model`): the teacher's z is fitted on its val faces of
the clean runs, the student's on its val faces of the occluded runs (--occlude 1: an occluder drawn on every
photo, on the aligned crop of the photo found end to end). Three rows: the cards' z (`--cards`, one z per model
from cached val crops), one end-to-end z per model (what `agelens calibrate --predictions` writes), and one
end-to-end z per predicted-age bin (Mondrian split conformal).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from agelens.evaluate.calibrate import conformal_z
from agelens.evaluate.metrics import AGE_BINS, interval_report
from agelens.utils import atomic_write_json, atomic_write_text

DATASETS, CONDITIONS = ("utk", "aaf"), ("clean", "occ")
AGE_EDGES = [hi + 0.5 for _, _, hi in AGE_BINS[:-1]]  # predicted-age bins: the report's age bins (0-10, …, 61+)
MIN_PER_BIN = 100  # a predicted-age bin with fewer calibration faces takes the overall z


def conformal_z_by_age(pred, true, spread, level: float = 0.9, min_n: int = MIN_PER_BIN) -> dict:
    """Mondrian split conformal: `conformal_z` within each predicted-age bin (edges AGE_EDGES); a bin with fewer
    than min_n faces takes the z of all faces."""
    pred, true, spread = (np.asarray(a, np.float64) for a in (pred, true, spread))
    overall = conformal_z(pred, true, spread, level)
    idx = np.searchsorted(AGE_EDGES, pred)
    zs, ns = [], []
    for b in range(len(AGE_EDGES) + 1):
        sel = idx == b
        ns.append(int(sel.sum()))
        zs.append(round(conformal_z(pred[sel], true[sel], spread[sel], level) if sel.sum() >= min_n else overall, 4))
    return {"edges": AGE_EDGES, "z": zs, "n": ns}


def z_per_face(pred, z: float | dict) -> np.ndarray:
    """Each face's multiplier: one z for all, or the bin's z of a `conformal_z_by_age` record."""
    pred = np.asarray(pred, np.float64)
    if isinstance(z, dict):
        return np.asarray(z["z"], np.float64)[np.searchsorted(z["edges"], pred)]
    return np.full(pred.shape, float(z))


def load(runs: Path, part: str, cond: str) -> dict[str, pd.DataFrame]:
    out = {}
    for ds in DATASETS:
        d = pd.read_csv(runs / f"{part}_{ds}_{cond}" / "predictions.csv").dropna(subset=["pred"])
        out[ds] = d
    return out


def fit(val: dict[str, pd.DataFrame], model: str) -> tuple[float, dict]:
    d = pd.concat([v[v.model == model] for v in val.values()])
    return conformal_z(d.pred, d.age, d.spread), conformal_z_by_age(d.pred, d.age, d.spread)


def check(test: dict[str, pd.DataFrame], zs: dict[str, float | dict]) -> dict:
    """Coverage per dataset and pooled, each face with the z of the model that answered it."""
    out = {}
    for name, d in [*test.items(), ("both", pd.concat(test.values()))]:
        d = d[d.model.isin(zs)]
        z = np.zeros(len(d))
        for m, zm in zs.items():
            sel = (d.model == m).to_numpy()
            z[sel] = z_per_face(d.pred[sel], zm)
        lo, hi = np.maximum(0, d.pred - z * d.spread), np.minimum(100, d.pred + z * d.spread)
        out[name] = interval_report(d.age, lo, hi)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path("runs/cal"))
    ap.add_argument("--cards", type=float, nargs=2, metavar=("TEACHER_Z", "STUDENT_Z"),
                    help="the z to compare with (default: the shipped cards' interval_z)")
    ap.add_argument("--out", type=Path, default=Path("docs/interval_coverage"))
    a = ap.parse_args()
    if a.cards is None:
        from agelens.utils import weights_dir

        a.cards = tuple(json.loads((weights_dir() / f"{m}.json").read_text())["interval_z"]
                        for m in ("teacher", "student"))
    val = {c: load(a.runs, "val", c) for c in CONDITIONS}
    test = {c: load(a.runs, "test", c) for c in CONDITIONS}
    names = {"teacher": "teacher", "student": "student"}
    t1, tb = fit(val["clean"], names["teacher"])
    s1, sb = fit(val["occ"], names["student"])
    schemes = {"shipped cards (cached val crops, one z)": {"teacher": a.cards[0], "student": a.cards[1]},
               "end to end, one z per model": {"teacher": t1, "student": s1},
               "end to end, z per predicted-age bin": {"teacher": tb, "student": sb}}
    res = {"fitted": {"teacher": {"z": round(t1, 4), "by_age": tb}, "student": {"z": round(s1, 4), "by_age": sb}},
           "schemes": {k: {c: check(test[c], z) for c in CONDITIONS} for k, z in schemes.items()}}
    atomic_write_json(a.out.with_suffix(".json"), res)
    lines = ["# Interval coverage end to end (90 % intervals)", "",
             f"`python benchmarks/interval_coverage.py --runs {a.runs} --out {a.out}`: z fitted on the val parts' "
             "end-to-end predictions, coverage on the test parts' (UTKFace 2,015 + All-Age-Faces 1,268 photos, "
             "clean and with an occluder drawn on every photo). Target: 0.88-0.92.", "",
             f"Fitted: teacher z {t1:.3f}, per predicted-age bin {tb['z']}; student z {s1:.3f}, per bin {sb['z']} "
             f"(bins: predicted age up to {', '.join(f'{e:g}' for e in tb['edges'])}, above).", "",
             "| z | test photos | UTKFace | All-Age-Faces | both | mean width | both, per true-age bin |",
             "|---|---|---|---|---|---|---|"]
    for k, by_cond in res["schemes"].items():
        for c in CONDITIONS:
            r = by_cond[c]
            bins = ", ".join(f"{b} {v:.2f}" for b, v in r["both"]["per_bin"].items())
            lines.append(f"| {k} | {'clean' if c == 'clean' else 'occluded'} | {r['utk']['coverage']:.3f} | "
                         f"{r['aaf']['coverage']:.3f} | **{r['both']['coverage']:.3f}** | {r['both']['mean_width']:.1f} "
                         f"| {bins} |")
    atomic_write_text(a.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(res["fitted"]))


if __name__ == "__main__":
    main()
