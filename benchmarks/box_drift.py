"""Where a degraded photo's face is found somewhere else: the finding stage's share of wild answers. Each test photo
(`generalise.py`'s seeded sample) is answered clean (JPEG q95) and under each of its degradations
(`agelens.data.augment.TEST_DEGRADATIONS`, seeded as there) by `AgeEstimator.predict` (shipped pipeline, default
settings). The largest face's box under a degradation is compared with the clean photo's: a box that overlaps it by
under --iou (intersection over union) is a face found elsewhere (a part of the face, another face, no face). Per
dataset and degradation: answered share, drifted boxes, MAE of the drifted faces against the rest, and each drifted
face's file, ages and how it was found, so it can be looked at.

    python benchmarks/box_drift.py --n 200 --seed 3 --out docs/box_drift.json   # 2.5 min on 2 cores
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from agelens.data.augment import TEST_DEGRADATIONS
from agelens.faces.detect import iou
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json
from generalise import degraded, encode, largest_prediction, test_files


def drift(est: AgeEstimator, files: list, seed: int, bar: float) -> dict:
    rows = {c: [] for c in TEST_DEGRADATIONS}  # per photo with a clean answer: (iou, abs error, prediction) or None
    for i, (f, age) in enumerate(files):
        rgb = load_image(f)
        ref = largest_prediction(est, encode(rgb, ".jpg", 95))
        if ref is None:
            continue
        for c in TEST_DEGRADATIONS:
            p = largest_prediction(est, degraded(rgb, c, i, seed))
            rows[c].append(None if p is None else (iou(ref.box, p.box), abs(p.age - age), p, f.name, age, ref.age))
    out = {}
    for c, rs in rows.items():
        got = [r for r in rs if r is not None]
        bad = [r for r in got if r[0] < bar]
        good = [r for r in got if r[0] >= bar]
        out[c] = {"photos": len(rs), "answered": round(len(got) / max(1, len(rs)), 4), "drifted": len(bad),
                  "mae_drifted": round(float(np.mean([r[1] for r in bad])), 2) if bad else None,
                  "mae_rest": round(float(np.mean([r[1] for r in good])), 3) if good else None,
                  "faces": [{"file": r[3], "age": r[4], "clean_answer": round(r[5], 1), "answer": round(r[2].age, 1),
                             "iou": round(r[0], 2), "detection": r[2].extra["detection"], "model": r[2].model}
                            for r in bad]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="test photos per dataset")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--iou", type=float, default=0.5, help="a box overlapping the clean one less has drifted")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    t0 = time.time()
    est = AgeEstimator.from_pretrained()
    res = {"command": f"python benchmarks/box_drift.py --n {a.n} --seed {a.seed} --iou {a.iou} --out {a.out}",
           "backend": est.backend, "datasets": {}}
    for ds in ("utkface", "aaf"):
        res["datasets"][ds] = d = drift(est, test_files(ds, a.n, a.seed), a.seed, a.iou)
        for c, r in d.items():
            if r["drifted"] or r["answered"] < 1:
                print(ds, c, {k: v for k, v in r.items() if k != "faces"}, flush=True)
    res["drifted"] = {ds: sum(r["drifted"] for r in d.values()) for ds, d in res["datasets"].items()}
    res["seconds"] = round(time.time() - t0)
    atomic_write_json(a.out, res)
    print(f"drifted {res['drifted']}; wrote {a.out}")


if __name__ == "__main__":
    main()
