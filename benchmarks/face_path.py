"""The fast face path (`FaceAnalyzer(fast=True)`: mediapipe's BlazeFace and plain 468-point landmark model run
through LiteRT, `faces.blazeface` + `faces.mesh`) against mediapipe's graphs (FaceDetection, FaceMesh with iris
refinement), end to end: the same estimator (shipped models, ONNX, one thread) reads each image twice, once per
path, in turn, so both see the same machine load. Reports MAE on UTKFace and All-Age-Faces
test photos, on UTKFace test photos with the paper's occluders drawn on the original image (placed from the clean
image's FaceMesh, saved as JPEG q95, as `occlusion_e2e.py` does), the occlusion flag on real masks and sunglasses
(realocc measure half), how often the two paths' ages differ, and the mean time of a whole `predict` call.

    python benchmarks/face_path.py --n 400 --occluded 100 --realocc 150 --out docs/face_path.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agelens.errors import NoFaceError
from agelens.faces.detect import FaceAnalyzer
from agelens.faces.prepare import largest_face
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.occlusion.synth import OCCLUSION_TYPES, OcclusionError, occlude
from agelens.train.guards import realocc_half
from agelens.utils import atomic_write_json
from generalise import test_files
from occlusion_e2e import save_jpeg

PATHS = {"litert": True, "mediapipe": False}


def run(est: AgeEstimator, analyzers: dict, path: Path) -> dict:
    """path name → (age, occluded, seconds) of the largest face, or None when no face was found."""
    out = {}
    for name, an in analyzers.items():
        est._analyzer = an
        est._memo.clear()  # no teacher pass carried over from the other path
        t = time.perf_counter()
        try:
            f = largest_face(est.predict(path))
            out[name] = (f.age, bool(f.extra["occluded"]), time.perf_counter() - t)
        except NoFaceError:
            out[name] = (None, None, time.perf_counter() - t)
    return out


def summarise(rows: list[dict], ages: list[float] | None) -> dict:
    res = {}
    for name in PATHS:
        got = [r[name] for r in rows]
        answered = [g for g in got if g[0] is not None]
        d = {"n": len(got), "answered": len(answered) / len(got), "flagged": float(np.mean([g[1] for g in answered])),
             "ms": 1000 * float(np.mean([g[2] for g in got]))}
        if ages is not None:
            d["mae"] = float(np.mean([abs(g[0] - a) for g, a in zip(got, ages, strict=True) if g[0] is not None]))
        res[name] = d
    both = [(r["litert"][0], r["mediapipe"][0]) for r in rows
            if r["litert"][0] is not None and r["mediapipe"][0] is not None]
    diff = np.abs(np.subtract(*zip(*both, strict=True))) if both else np.zeros(1)
    res["age_change"] = {"mean": float(diff.mean()), "p99": float(np.percentile(diff, 99)),
                         "over_5_years": float((diff > 5).mean())}
    return res


def occluded_rows(est: AgeEstimator, analyzers: dict, n: int, seed: int = 0) -> dict:
    """Both paths on UTKFace test photos under each paper occluder, drawn on the original image."""
    placer = FaceAnalyzer()  # mediapipe's FaceMesh with iris points, which the occluders are placed from
    rows, ages = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (p, age) in enumerate(test_files("utkface", n, 0)):
            rgb = load_image(p)
            faces = [f for f in placer.find_faces(rgb) if f.landmarks is not None]
            if not faces:
                continue
            lm = largest_face(faces).landmarks
            for k, kind in enumerate(OCCLUSION_TYPES):
                try:
                    img = occlude(rgb, lm, kind, np.random.default_rng((seed, i, k))).image
                except OcclusionError:
                    continue
                f = Path(tmp) / f"{i}_{k}.jpg"
                save_jpeg(f, img)
                rows.append(run(est, analyzers, f))
                ages.append(age)
    placer.close()
    return summarise(rows, ages)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="test photos per dataset (UTKFace, All-Age-Faces)")
    ap.add_argument("--occluded", type=int, default=100, help="UTKFace test photos under each paper occluder")
    ap.add_argument("--realocc", type=int, default=150, help="photos of the realocc measure half")
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    est = AgeEstimator.from_pretrained(threads=1)
    analyzers = {name: FaceAnalyzer(fast=flag) for name, flag in PATHS.items()}
    report = {}
    run(est, analyzers, Path(test_files("utkface", 1, 1)[0][0]))  # load every model before timing
    for ds in ("utkface", "aaf"):
        files = test_files(ds, a.n, 0)
        rows = [run(est, analyzers, p) for p, _ in files]
        report[ds] = summarise(rows, [age for _, age in files])
        print(ds, report[ds], flush=True)
    report["utkface_occluded"] = occluded_rows(est, analyzers, a.occluded)
    print("utkface_occluded", report["utkface_occluded"], flush=True)
    d = pd.read_csv(Path(a.shared) / "realocc.csv")
    d = d[d.file.map(realocc_half) == "measure"]
    files = d.file.sample(min(a.realocc, len(d)), random_state=0)
    report["realocc"] = summarise([run(est, analyzers, Path(a.shared) / f) for f in files], None)
    print("realocc", report["realocc"], flush=True)
    if a.out:
        atomic_write_json(Path(a.out), {"command": "python benchmarks/face_path.py " + " ".join(
            f"--{k} {v}" for k, v in vars(a).items() if k != "shared"), **report})


if __name__ == "__main__":
    main()
