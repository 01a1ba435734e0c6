"""Where does the age change under JPEG re-encoding come from: the alignment (landmarks jitter with compression) or
the model (its sensitivity to compression noise)? For each test photo saved as JPEG q95 (reference) and re-encoded
q75, the teacher's age is compared three ways:

- pipeline: each photo found and aligned on its own (5 FaceMesh keypoints), as `predict` does;
- fixed alignment: the q75 photo warped with the q95 photo's alignment, so only the pixels differ;
- many-point alignment: a similarity fitted to all 468 FaceMesh points (mean landmarks of cached val faces as
  the template) instead of 5 keypoints.

    python benchmarks/stability_source.py --model teacher --n 40 --out docs/stability_source.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agelens.data.cache import FaceCache
from agelens.faces.align import align_face, similarity_transform, warp
from agelens.faces.detect import FaceAnalyzer
from agelens.faces.prepare import largest_face
from agelens.imageio import load_image
from agelens.inference.backends.torch import TorchModel
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json
from generalise import encode, test_files


def teacher_reader(model: str = "teacher"):
    """(age of a 256 px aligned crop read by `model` alone as predict's teacher, torch fp32 with its mirror rule;
    the largest face `FaceAnalyzer` finds in an image, or None)."""
    est = AgeEstimator(TorchModel.load(model), route="teacher")
    an = FaceAnalyzer()

    def age(crop: np.ndarray) -> float:
        return float(est._ages(est.teacher, crop[None])[0][0])

    def face(img: np.ndarray):
        found = an.find_faces(img)
        return largest_face(found) if found else None

    return age, face


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="teacher")
    ap.add_argument("--n", type=int, default=40, help="test photos per dataset (UTKFace, All-Age-Faces)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the summary JSON here")
    a = ap.parse_args()
    age, face = teacher_reader(a.model)
    lm = np.asarray(FaceCache("cache/utkface/val", verify=False).landmarks[:1500])
    template = np.nanmean(lm[~np.isnan(lm).any((1, 2))], 0)[:468]

    out: dict[str, list[float]] = {"pipeline": [], "fixed_alignment": [], "many_point_alignment": []}
    for ds in ("utkface", "aaf"):
        for f, _ in test_files(ds, a.n, a.seed):
            ref = encode(load_image(f), ".jpg", 95)
            low = encode(ref, ".jpg", 75)
            fr, fl = face(ref), face(low)
            if fr is None or fl is None or fr.landmarks is None or fl.landmarks is None:
                continue
            cr, m = align_face(ref, fr.keypoints, 256)
            out["pipeline"].append(abs(age(cr) - age(align_face(low, fl.keypoints, 256)[0])))
            out["fixed_alignment"].append(abs(age(cr) - age(warp(low, m, 256))))
            mr = similarity_transform(fr.landmarks[:468], template)
            ml = similarity_transform(fl.landmarks[:468], template)
            out["many_point_alignment"].append(abs(age(warp(ref, mr, 256)) - age(warp(low, ml, 256))))
    res = {"model": a.model, "n": len(out["pipeline"]),
           **{k: {"mean_change": round(float(np.mean(v)), 3), "p99_change": round(float(np.percentile(v, 99)), 3)}
              for k, v in out.items()}}
    print(json.dumps(res))
    if a.out:
        atomic_write_json(Path(a.out), res)


if __name__ == "__main__":
    main()
