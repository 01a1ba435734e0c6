"""Composite "old print" looks end to end: each test photo turned sepia, blurred, its contrast cut and scan grain
added together (the single degradations of `benchmarks/degradation_shift.py` one at a time move MAE far less),
then `AgeEstimator.predict` (largest face) routed as shipped and with the teacher alone. Per dataset and look:
answered share, the share of faces the student answers (weight >= 0.5), MAE routed and teacher alone.

    python benchmarks/old_print.py --n 120 --out docs/old_print.json

Looks: moderate = blur sigma 1.0, contrast x0.5, grain sigma 12 levels; heavy = blur 1.5, contrast x0.3, grain 20
(both on sepia of the grey image, seeded per photo).
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from ab_predict import labelled  # benchmarks/ is on the path when this file runs as a script
from agelens import AgeEstimator
from agelens.errors import NoFaceError
from agelens.imageio import load_image
from agelens.utils import atomic_write_json

LOOKS = {"clean": None, "moderate": (1.0, 0.5, 12.0), "heavy": (1.5, 0.3, 20.0)}


def old_print(rgb: np.ndarray, blur: float, contrast: float, grain: float, seed: int) -> np.ndarray:
    """Sepia of the grey image, Gaussian blur, contrast scaled about the mean, Gaussian grain (grey), uint8."""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    img = np.stack([g * 1.07, g * 0.74 + 20, g * 0.43 + 20], -1)
    img = cv2.GaussianBlur(img, (0, 0), blur)
    img = (img - img.mean()) * contrast + img.mean()
    img += np.random.default_rng(seed).normal(0, grain, img.shape[:2])[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=120, help="photos per dataset (test parts)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    est = AgeEstimator.from_pretrained()

    def largest(img: np.ndarray):
        return max(est.predict(img), key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))

    table: dict = {}
    for which in ("aaf", "utkface"):
        files, ages = labelled(which, a.n)
        for name, look in LOOKS.items():
            err = {"auto": [], "teacher": []}
            weights = []
            for i, (f, age) in enumerate(zip(files, ages, strict=True)):
                img = load_image(f)
                if look is not None:
                    img = old_print(img, *look, seed=i)
                try:
                    est.route = "auto"
                    routed = largest(img)
                    est.route = "teacher"
                    alone = largest(img)
                except NoFaceError:
                    continue
                finally:
                    est.route = "auto"
                err["auto"].append(abs(routed.age - age))
                err["teacher"].append(abs(alone.age - age))
                weights.append(routed.extra.get("student_weight") or 0.0)
            w = np.array(weights)
            row = {"answered": round(len(w) / len(files), 3), "student": round(float((w >= 0.5).mean()), 3) if len(w)
                   else None, **{f"mae_{k}": round(float(np.mean(v)), 3) if v else None for k, v in err.items()}}
            table[f"{which} {name}"] = row
            print(f"{which:8} {name:9} answered {row['answered']:.3f}  student {row['student']}  "
                  f"MAE routed {row['mae_auto']}  teacher alone {row['mae_teacher']}", flush=True)
    if a.out:
        atomic_write_json(a.out, {"command": f"python benchmarks/old_print.py --n {a.n}", "table": table})


if __name__ == "__main__":
    main()
