"""Composite "old print" looks end to end: each test photo turned sepia, blurred, its contrast cut and scan grain
added together (the single degradations of `benchmarks/degradation_shift.py` one at a time move MAE far less),
then `AgeEstimator.predict` (largest face) routed as shipped and with the teacher alone. Per dataset and look:
answered share, the share of faces the student answers (weight >= 0.5), MAE routed and teacher alone.

    python benchmarks/old_print.py --n 120 --out docs/old_print.json
    python benchmarks/old_print.py --part val --models shipped=teacher new=runs/teacher_print/best.pt

--part val samples the validation parts (`generalise.test_files`, seed 0) to choose between teachers; --models
compares teachers (LABEL=MODEL, "teacher" the shipped one) on the same photos and looks, each with the shipped
student, detector and guards. With --out, every answered photo is also written to OUT's stem + .predictions.csv
(path = file name, condition = dataset_look, age, pred = routed age, pred_teacher, student_weight), so that two
runs (e.g. before and after a model changes) pair face by face:
    python benchmarks/paired_bins.py DIR_OLD DIR_NEW --csv NAME.predictions.csv --conditions aaf_moderate

Looks: moderate = blur sigma 1.0, contrast x0.5, grain sigma 12 levels; heavy = blur 1.5, contrast x0.3, grain 20
(both on sepia of the grey image, seeded per photo).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ab_predict import labelled  # benchmarks/ is on the path when this file runs as a script
from agelens import AgeEstimator
from agelens.errors import NoFaceError
from agelens.imageio import load_image
from agelens.utils import atomic_write, atomic_write_json
from generalise import test_files

LOOKS = {"clean": None, "moderate": (1.0, 0.5, 12.0), "heavy": (1.5, 0.3, 20.0)}


def old_print(rgb: np.ndarray, blur: float, contrast: float, grain: float, seed: int) -> np.ndarray:
    """Sepia of the grey image, Gaussian blur, contrast scaled about the mean, Gaussian grain (grey), uint8."""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    img = np.stack([g * 1.07, g * 0.74 + 20, g * 0.43 + 20], -1)
    img = cv2.GaussianBlur(img, (0, 0), blur)
    img = (img - img.mean()) * contrast + img.mean()
    img += np.random.default_rng(seed).normal(0, grain, img.shape[:2])[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def largest(est: AgeEstimator, img: np.ndarray):
    """The prediction for the largest face."""
    return max(est.predict(img), key=lambda p: (p.box[2] - p.box[0]) * (p.box[3] - p.box[1]))


def sample(which: str, part: str, n: int) -> tuple[list, list]:
    """The photos and true ages: the test parts as before (`ab_predict.labelled`), or a seeded sample of another."""
    if part == "test":
        return labelled(which, n)
    rows = test_files(which, n, 0, part)
    return [r[0] for r in rows], [r[1] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=120, help="photos per dataset")
    ap.add_argument("--part", default="test", choices=("test", "val"), help="which split part to sample")
    ap.add_argument("--models", nargs="+", default=["shipped=teacher"], help="LABEL=MODEL ... (teachers to compare)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    table: dict = {}
    rows: list[dict] = []
    for spec in a.models:
        label, model = spec.split("=", 1)
        est = AgeEstimator.from_pretrained(None if model == "teacher" else model)

        for which in ("aaf", "utkface"):
            files, ages = sample(which, a.part, a.n)
            for name, look in LOOKS.items():
                err = {"auto": [], "teacher": []}
                weights = []
                for i, (f, age) in enumerate(zip(files, ages, strict=True)):
                    img = load_image(f)
                    if look is not None:
                        img = old_print(img, *look, seed=i)
                    try:
                        est.route = "auto"
                        routed = largest(est, img)
                        est.route = "teacher"
                        alone = largest(est, img)
                    except NoFaceError:
                        continue
                    finally:
                        est.route = "auto"
                    weights.append(routed.extra.get("student_weight") or 0.0)
                    rows.append({"path": Path(f).name, "condition": f"{which}_{name}" if len(a.models) == 1 else
                                 f"{label}:{which}_{name}", "age": age, "pred": routed.age, "pred_teacher": alone.age,
                                 "student_weight": weights[-1]})
                    err["auto"].append(abs(routed.age - age))
                    err["teacher"].append(abs(alone.age - age))
                w = np.array(weights)
                row = {"answered": round(len(w) / len(files), 3),
                       "student": round(float((w >= 0.5).mean()), 3) if len(w) else None,
                       **{f"mae_{k}": round(float(np.mean(v)), 3) if v else None for k, v in err.items()}}
                key = f"{which} {name}" if len(a.models) == 1 else f"{label} {which} {name}"
                table[key] = row
                print(f"{label:8} {which:8} {name:9} answered {row['answered']:.3f}  student {row['student']}  "
                      f"MAE routed {row['mae_auto']}  teacher alone {row['mae_teacher']}", flush=True)
    if a.out:
        cmd = f"python benchmarks/old_print.py --n {a.n}" + (f" --part {a.part}" if a.part != "test" else "") + (
            f" --models {' '.join(a.models)}" if a.models != ["shipped=teacher"] else "")
        atomic_write_json(a.out, {"command": cmd, "table": table})
        csv = Path(a.out).with_suffix(".predictions.csv")
        atomic_write(csv, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))


if __name__ == "__main__":
    main()
