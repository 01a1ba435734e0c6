"""Would more test-time views than the mirror pay? Cache protocol: the shipped teacher (ONNX, single-view graph) on
the cached validation faces of both datasets, at centre crops of 208, 224 (the model's) and 240 px of the 256 px
aligned face, each with its mirror; MAE of the combinations, and of predict's selective mirror (the card's cut).

    python benchmarks/tta_views.py --out docs/tta_views.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agelens.data.cache import FaceCache
from agelens.data.views import centre_views
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json

CROPS = (208, 224, 240)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="val")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    est = AgeEstimator.from_onnx(route="teacher")
    t, cut = est.teacher, est.tta_spread
    res: dict = {"command": f"python benchmarks/tta_views.py --part {a.part}", "tta_spread": cut}
    for ds in ("utkface", "aaf"):
        c = FaceCache(f"cache/{ds}/{a.part}", verify=False)
        imgs, y = np.asarray(c.images), np.asarray(c.ages, float)
        ages, spreads = {}, {}
        for crop in CROPS:
            v = centre_views(imgs, crop, t.input_size)
            for flip, view in ((False, v), (True, np.ascontiguousarray(v[:, :, ::-1]))):
                ages[crop, flip], spreads[crop, flip] = t.run_guards(view)[:2]
        one, s = ages[224, False], spreads[224, False]
        mirror = (one + ages[224, True]) / 2
        six = np.mean(list(ages.values()), 0)

        def mae(p: np.ndarray, y: np.ndarray = y) -> float:
            return round(float(np.abs(p - y).mean()), 3)

        res[ds] = {"n": len(y), "single view": mae(one), "mirror": mae(mirror),
                   "selective mirror (predict)": mae(np.where(s >= cut, mirror, one)),
                   "mirrored share": round(float((s >= cut).mean()), 3),
                   "224 + 208 with mirrors": mae((2 * mirror + ages[208, False] + ages[208, True]) / 4),
                   "224 + 240 with mirrors": mae((2 * mirror + ages[240, False] + ages[240, True]) / 4),
                   "all six views": mae(six), "all six views where unsure": mae(np.where(s >= cut, six, one))}
        print(ds, json.dumps(res[ds]), flush=True)
    if a.out:
        atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
