"""Where does the mirrored view pay? Fits a shipped age model's `tta_spread` (the card's selective flip-TTA cut:
`AgeEstimator.trunk` for the teacher, `inference.backends.mirror_unsure` for both) and measures it end to end.

Photos of the UTKFace and All-Age-Faces validation parts (seeded samples) are found and aligned as `predict` does;
the model's single-view graph reads the largest face and its mirror. The cut is the median single-view spread on
validation (so about half the faces get the second view); the test parts' photos then give MAE for one view,
both views, and the mirror only at or above the cut. Routing is left out (the model alone).

--model student: each photo first gets one of the paper's six occluders (seeded type), placed from the clean
photo's FaceMesh and drawn on the photo itself, then saved as JPEG q95 in memory, as `benchmarks/occlusion_e2e.py`
does: the faces the student answers.

    python benchmarks/tta_spread.py --n 300 --out docs/tta_spread.json
    python benchmarks/tta_spread.py --model student --n 300 --out docs/tta_spread_student.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agelens import AgeEstimator
from agelens.errors import NoFaceError
from agelens.imageio import load_image
from agelens.inference.backends.onnx import OnnxModel
from agelens.utils import atomic_write_json
from generalise import encode, test_files  # benchmarks/generalise.py: seeded samples, in-memory encoding

DATASETS = ("utkface", "aaf")


def occluded_photo(an, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """rgb with a random paper occluder on its largest face (placed from FaceMesh), through JPEG q95; None when
    the clean photo has no mesh to place it from."""
    from agelens.faces.prepare import largest_face
    from agelens.occlusion.kinds import OCCLUSION_TYPES
    from agelens.occlusion.synth import OcclusionError, occlude

    faces = [f for f in an.find_faces(rgb) if f.landmarks is not None]
    if not faces:
        return None
    try:
        img = occlude(rgb, largest_face(faces).landmarks, OCCLUSION_TYPES[rng.integers(len(OCCLUSION_TYPES))], rng).image
    except OcclusionError:
        return None
    return encode(img, ".jpg", 95)


def views(est: AgeEstimator, single: OnnxModel, dataset: str, part: str, n: int, seed: int, an=None) -> np.ndarray:
    """(true age, single-view age, its spread, mirrored view's age) per photo with a face; with a FaceAnalyzer
    `an`, each photo occluded first (`occluded_photo`)."""
    rows = []
    rng = np.random.default_rng((seed, DATASETS.index(dataset), part == "test"))
    for p, age in test_files(dataset, n, seed, part):
        rgb = load_image(p)
        if an is not None and (rgb := occluded_photo(an, rgb, rng)) is None:
            continue
        try:
            faces = est.faces_of(rgb)
        except NoFaceError:
            continue
        box, _, crop, *_ = max(faces, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))
        v = single.views(crop[None])
        a1, s1 = single.run(v)
        a2, _ = single.run(np.ascontiguousarray(v[:, :, ::-1]))
        rows.append((age, a1[0], s1[0], a2[0]))
    return np.array(rows, np.float32)


def mae(r: np.ndarray, cut: float | None) -> float:
    both = (r[:, 1] + r[:, 3]) / 2
    pred = r[:, 1] if cut is None else np.where(r[:, 2] >= cut, both, r[:, 1])
    return float(np.abs(pred - r[:, 0]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="photos per dataset and part")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--model", choices=("teacher", "student"), default="teacher")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    est = AgeEstimator.from_pretrained(threads=1, tta_flip="full")
    single = OnnxModel(est.onnx_dir / f"{a.model}.notta.onnx", threads=1)
    an = None
    if a.model == "student":
        from agelens.faces.detect import FaceAnalyzer

        an = FaceAnalyzer(fast=False)  # FaceMesh with iris points places the occluders, as occlusion_e2e does
    val = {d: views(est, single, d, "val", a.n, a.seed, an) for d in DATASETS}
    cut = float(np.median(np.concatenate([v[:, 2] for v in val.values()])))
    test = {d: views(est, single, d, "test", a.n, a.seed, an) for d in DATASETS}
    res = {"command": f"python benchmarks/tta_spread.py --model {a.model} --n {a.n} --seed {a.seed}"
                      + (f" --out {a.out}" if a.out else ""),
           "model": a.model, "tta_spread": round(cut, 3), "parts": {}}
    for part, data in (("val", val), ("test", test)):
        for d, r in {**data, "both datasets": np.concatenate(list(data.values()))}.items():
            both = float(np.abs((r[:, 1] + r[:, 3]) / 2 - r[:, 0]).mean())
            res["parts"][f"{part} {d}"] = {"n": len(r), "one_view": round(mae(r, None), 3), "both_views": round(both, 3),
                                           "selective": round(mae(r, cut), 3),
                                           "mirrored_share": round(float((r[:, 2] >= cut).mean()), 3)}
    print(json.dumps(res, indent=1))
    if a.out:
        atomic_write_json(Path(a.out), res)


if __name__ == "__main__":
    main()
