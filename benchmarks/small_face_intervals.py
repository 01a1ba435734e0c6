"""Do predict's 90 % intervals hold on small faces? Split photos shrunk (long side 160, 112, 80, 56, 40 px, and as
they are) and centred on a 320 px grey canvas, answered one by one by `AgeEstimator.predict` (defaults, no job
adaptation); the largest face of each is scored. Coverage, MAE and the multiplier of the interval's half width that
90 % coverage would need (q90 of |error| / half width: above 1, the intervals are too narrow), per width of the
found box in pixels and per dataset and size.

    python benchmarks/small_face_intervals.py --part val --n 150 --out docs/small_face_intervals_val.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from agelens import AgeEstimator, NoFaceError  # noqa: E402
from agelens.utils import atomic_write_json  # noqa: E402
from generalise import test_files  # noqa: E402

SIDES = (0, 160, 112, 80, 56, 40)  # 0: the photo as it is
WIDTHS = (0, 24, 32, 40, 48, 64, 96, 10**6)  # bins of the found box's width, px


def on_canvas(photo: Image.Image, side: int) -> np.ndarray:
    if side == 0:
        return np.asarray(photo)
    s = side / max(photo.size)
    small = photo.resize((max(1, round(photo.size[0] * s)), max(1, round(photo.size[1] * s))), Image.BILINEAR)
    canvas = Image.new("RGB", (320, 320), (128, 128, 128))
    canvas.paste(small, ((320 - small.size[0]) // 2, (320 - small.size[1]) // 2))
    return np.asarray(canvas)


def cell(rows: list[dict]) -> dict:
    if not rows:
        return {"faces": 0}
    err = np.array([abs(r["age"] - r["true"]) for r in rows])
    half = np.array([max(1e-6, (r["high"] - r["low"]) / 2) for r in rows])
    return {"faces": len(rows), "coverage": round(float(np.mean([r["low"] <= r["true"] <= r["high"] for r in rows])), 3),
            "mae": round(float(err.mean()), 2), "mean_spread": round(float(np.mean([r["spread"] for r in rows])), 2),
            "z_multiplier_for_90": round(float(np.quantile(err / half, 0.9)), 2),
            "student_answered": int(sum(r["model"] != "teacher" for r in rows))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", default="val")
    ap.add_argument("--n", type=int, default=150, help="photos per dataset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    est, rows, missed, t0 = AgeEstimator.from_pretrained(), [], {}, time.time()
    for ds in ("utkface", "aaf"):
        for path, true in test_files(ds, a.n, a.seed, a.part):
            photo = Image.open(path).convert("RGB")
            for side in SIDES:
                try:
                    faces = est.predict(on_canvas(photo, side))
                except NoFaceError:
                    missed[f"{ds} {side}"] = missed.get(f"{ds} {side}", 0) + 1
                    continue
                f = faces[0].to_dict()  # the largest face
                rows.append({"dataset": ds, "side": side, "true": true, "width": f["box"][2] - f["box"][0],
                             "age": f["age"], "spread": f["spread"], "low": f["interval"][0],
                             "high": f["interval"][1], "model": f["model"]})
    out = {"command": " ".join(sys.argv), "backend": est.backend, "seconds": round(time.time() - t0),
           "missed": missed,
           "by_size": {f"{ds} {side or 'as is'}": cell([r for r in rows if r["dataset"] == ds and r["side"] == side])
                       for ds in ("utkface", "aaf") for side in SIDES},
           "by_box_width": {f"{lo}-{hi if hi < 10**6 else ''}": cell([r for r in rows if lo <= r["width"] < hi])
                            for lo, hi in zip(WIDTHS, WIDTHS[1:], strict=False)}}
    atomic_write_json(a.out, out)
    for k, v in out["by_box_width"].items():
        print(f"box width {k} px: {v}")


if __name__ == "__main__":
    main()
