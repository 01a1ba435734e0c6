"""Answered shares end to end with the shipped weights (`AgeEstimator.predict` on image files): images without a
human face (scikit-image samples and seeded crops, as `benchmarks/occlusion_e2e.py`), 250 seeded test photos per
dataset clean and under lowres, scan grain, noise and blur (`benchmarks/generalise.py`'s sample and degradation
seeds), and the realocc measure half. It is for comparing face verifiers: swap `src/agelens/weights/faceness.*`
and run it again.

    python benchmarks/faceness_degraded.py --out runs/faceness_shipped.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import generalise as g  # benchmarks/ is on the path when this file runs as a script
import occlusion_e2e as o
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json

CONDITIONS = ("clean", "lowres", "scan_grain", "noise", "blur")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=250, help="test photos per dataset")
    ap.add_argument("--realocc", type=int, default=300, help="photos per realocc source")
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    est = AgeEstimator.from_pretrained()
    res: dict = {"command": " ".join(["python benchmarks/faceness_degraded.py", *sys.argv[1:]])}
    with tempfile.TemporaryDirectory() as tmp:
        res["no_face"] = o.no_face_rows(est, Path(tmp), 3, 0)
    print("no face found", res["no_face"]["no_face_found"], flush=True)
    for ds in ("aaf", "utkface"):
        files = g.test_files(ds, a.n, 0)
        for name in CONDITIONS:
            errs = []
            for i, (f, age) in enumerate(files):
                rgb = load_image(f)
                img = rgb if name == "clean" else g.degraded(rgb, name, i, 0)
                r = g.one_age(est, img)
                errs.append(None if r is None else abs(r[0] - age))
            ok = [e for e in errs if e is not None]
            res[f"{ds} {name}"] = {"answered": round(len(ok) / len(errs), 4), "mae": round(float(np.mean(ok)), 3)}
            print(ds, name, json.dumps(res[f"{ds} {name}"]), flush=True)
    res["realocc"] = o.realocc_rows(est, a.shared, a.realocc)
    if a.out:
        atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
