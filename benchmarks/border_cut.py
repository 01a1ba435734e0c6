"""Faces cut by the image border, end to end: each photo (UTKFace crops and All-Age-Faces photos of a split part)
cut through its face (the top, bottom, left or right 30 % / 45 % of the face's box taken off with the image), then
the whole face search on the cut image (`AgeEstimator.faces_of`) and the largest face answered three ways: routed
as shipped (`route="auto"`), by the teacher alone and by the student alone. Per cut: answered share, the share of
the aligned crop that lies outside the image (replicated edge pixels), the student's mean weight and each way's
MAE. The question it answers: does routing a cut face to the student (the occlusion detector reads the replicated
border as an occluder) cost accuracy?

    python benchmarks/border_cut.py --part val --n 60 --out docs/border_cut_val.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from agelens.data.splits import split_part
from agelens.errors import NoFaceError
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
CUTS = [("clean", None, 0.0), ("top", 1, 0.3), ("top", 1, 0.45), ("bottom", 3, 0.3), ("bottom", 3, 0.45),
        ("left", 0, 0.3), ("left", 0, 0.45), ("right", 2, 0.3)]
ROUTES = ("auto", "teacher", "student")


def sample(part: str, n: int, seed: int = 0) -> list[tuple[str, str, float]]:
    """(dataset, path, age): n UTKFace and n All-Age-Faces photos of the part, seeded."""
    rng = np.random.default_rng(seed)
    utk = sorted(split_part(str(HERE.parent / "splits" / "utkface_seed0.json"), part))
    utk = [("utkface", str(SHARED / "utkface" / Path(f).name), float(Path(f).name.split("_")[0]))
           for f in rng.choice(utk, n, replace=False)]
    d = pd.read_csv(SHARED / "aaf.csv")
    d = d[d.file.isin(set(split_part(str(HERE.parent / "splits" / "aaf_seed0.json"), part)))].sort_values("file")
    d = d.iloc[np.sort(rng.choice(len(d), n, replace=False))]
    return utk + [("aaf", str(SHARED / "aaf" / f), float(a)) for f, a in zip(d.file, d.age, strict=True)]


def outside_share(source, grid: int = 32) -> float:
    """The share of an aligned crop (its `faces.realign.CropSource`) whose pixels lie outside the image."""
    if source is None:
        return 0.0
    h, w = source.image.shape[:2]
    inv = cv2.invertAffineTransform(np.asarray(source.matrix, np.float64))
    g = (np.arange(grid) + 0.5) * source.size / grid
    xx, yy = np.meshgrid(g, g)
    x, y = inv @ np.stack([xx.ravel(), yy.ravel(), np.ones(grid * grid)])
    return float(np.mean((x < 0) | (x >= w) | (y < 0) | (y >= h)))


def area(face: tuple) -> float:
    b = face[0]
    return (b[2] - b[0]) * (b[3] - b[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", default="val")
    ap.add_argument("--n", type=int, default=60, help="photos per dataset")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    est = AgeEstimator.from_pretrained()
    rows = []
    for ds, path, age in sample(a.part, a.n):
        rgb = load_image(path)
        try:
            b = max(est.faces_of(rgb), key=area)[0]
        except NoFaceError:
            continue
        bw, bh = b[2] - b[0], b[3] - b[1]
        for name, side, frac in CUTS:
            x0, y0, x1, y1 = 0, 0, rgb.shape[1], rgb.shape[0]
            y0 = int(b[1] + frac * bh) if side == 1 else y0
            y1 = int(b[3] - frac * bh) if side == 3 else y1
            x0 = int(b[0] + frac * bw) if side == 0 else x0
            x1 = int(b[2] - frac * bw) if side == 2 else x1
            row = {"dataset": ds, "file": path, "age": age, "cut": f"{name} {frac:g}" if side is not None else name}
            try:
                f = max(est.faces_of(np.ascontiguousarray(rgb[y0:y1, x0:x1])), key=area)
            except NoFaceError:
                rows.append({**row, "found": False})
                continue
            row.update(found=True, outside=outside_share(f[5]))
            for route in ROUTES:
                est.route = route
                r = est.analyse_faces([f])
                row[route] = float(r["age"][0])
                if route == "auto":
                    row["student_weight"] = float(r["student_weight"][0])
            est.route = "auto"
            rows.append(row)
    d = pd.DataFrame(rows)
    f = d[d.found]
    table = {}
    for cut, g in f.groupby("cut", sort=False):
        table[cut] = {"n": int(len(g)), "answered": round(float(len(g) / (d.cut == cut).sum()), 4),
                      "outside_median": round(float(g.outside.median()), 3),
                      "student_weight": round(float(g.student_weight.mean()), 3),
                      **{f"mae_{r}": round(float((g[r] - g.age).abs().mean()), 3) for r in ROUTES}}
    print(f"{'cut':12} {'n':>4} {'answered':>8} {'outside':>7} {'w':>5} " + " ".join(f"{r:>8}" for r in ROUTES))
    for cut, t in table.items():
        print(f"{cut:12} {t['n']:4d} {t['answered']:8.3f} {t['outside_median']:7.3f} {t['student_weight']:5.2f} "
              + " ".join(f"{t['mae_' + r]:8.3f}" for r in ROUTES))
    if a.out:
        atomic_write_json(a.out, {"command": f"python benchmarks/border_cut.py --part {a.part} --n {a.n}",
                                  "table": table})


if __name__ == "__main__":
    main()
