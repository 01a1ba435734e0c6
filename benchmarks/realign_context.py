"""Where should the realigned crop be warped from? The student's MAE on seeded validation photos under 11 occluder
kinds (drawn on the photo from the clean face's FaceMesh, JPEG q95, found and aligned as predict does), with the
realignment's readings and final warp taken from:
- crop: the found crop itself (edges replicated past it);
- photo_final: readings within the crop, the final warp from the photo;
- ctxD: a frame of the photo around the crop, D px wider on every side of the 256 px crop (32, 64, 96);
- photo: the whole photo.
Also the crop as found (no realignment). Prints MAE per group and the paired change against `crop` (bootstrap 95 %).

    python benchmarks/realign_context.py --n 120 --seed 5 --out runs/aligndiag/ctx_val_120_5.json
    python benchmarks/realign_context.py --n 150 --seed 11 --out runs/aligndiag/ctx_val_150_11.json
    python benchmarks/realign_context.py --pool runs/aligndiag/ctx_val_120_5.json runs/aligndiag/ctx_val_150_11.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agelens.faces.align import TEMPLATE_KEYPOINTS, similarity_transform, warp
from agelens.faces.realign import compose, shipped
from agelens.inference.predictor import SINGLE_VIEW, AgeEstimator, face_source
from agelens.occlusion.synth import OCCLUSION_TYPES
from agelens.utils import atomic_write_json
from realign_e2e import student_faces

VARIANTS = ("found", "crop", "photo_final", "ctx32", "ctx64", "ctx96", "photo")


def shift(d: float) -> np.ndarray:
    return np.array([[1, 0, d], [0, 1, d]], np.float32)


def correction(net, sample, side: int = 256, iterations: int = 3) -> np.ndarray:
    """The realignment's correction when each reading sees sample(correction so far)."""
    m = np.eye(2, 3, dtype=np.float32)
    for _ in range(iterations):
        pts = net.points(sample(m)[None])[0] * side
        m = compose(similarity_transform(pts, TEMPLATE_KEYPOINTS * side / 256), m)
    return m


def run(n: int, seed: int, part: str) -> list[dict]:
    est = AgeEstimator.from_pretrained(backend="auto")
    est.realign, est.student_views = False, SINGLE_VIEW  # the variants are made here, each read as one view
    net, rows = shipped(), []
    for age, cond, chosen in student_faces(est, n, seed, part):
        src = face_source(chosen)
        crop, photo, m = chosen[2], src.image, src.matrix
        c = net.corrections(crop[None])[0]
        crops = {"found": crop, "crop": warp(crop, c, 256), "photo_final": warp(photo, compose(c, m), 256)}
        for d in (32, 64, 96):
            frame = warp(photo, compose(shift(d), m), 256 + 2 * d)
            cd = correction(net, lambda x, f=frame, d=d: warp(f, compose(x, shift(-d)), 256))
            crops[f"ctx{d}"] = warp(frame, compose(cd, shift(-d)), 256)
        cp = correction(net, lambda x, photo=photo, m=m: warp(photo, compose(x, m), 256))
        crops["photo"] = warp(photo, compose(cp, m), 256)
        ages = est._ages(est.student, np.stack([crops[v] for v in VARIANTS]))[0]
        rows.append({"cond": cond, "y": age, **{v: float(a) for v, a in zip(VARIANTS, ages, strict=True)}})
    return rows


def report(rows: list[dict]) -> None:
    y = np.array([r["y"] for r in rows])
    for group in ("paper types", "all occluded"):
        sel = np.array([group == "all occluded" or r["cond"] in OCCLUSION_TYPES for r in rows])
        err = {v: np.abs(np.array([r[v] for r in rows]) - y)[sel] for v in VARIANTS}
        print(group, int(sel.sum()), "faces:", {v: round(float(e.mean()), 3) for v, e in err.items()})
        boot = np.random.default_rng(0).choice(int(sel.sum()), (2000, int(sel.sum())))
        for v in VARIANTS[2:]:
            d = err[v] - err["crop"]
            lo, hi = np.percentile(d[boot].mean(1), [2.5, 97.5])
            print(f"  {v} - crop: {d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--part", default="val")
    ap.add_argument("--out", type=Path, default=None, help="JSON of the per-face rows")
    ap.add_argument("--pool", type=Path, nargs="+", default=None, help="report these saved rows together instead")
    a = ap.parse_args()
    if a.pool:
        rows = [r for f in a.pool for r in json.loads(f.read_text())]
    else:
        rows = run(a.n, a.seed, a.part)
        if a.out:
            atomic_write_json(a.out, rows)
    report(rows)


if __name__ == "__main__":
    main()
