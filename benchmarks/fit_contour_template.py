"""Fit `faces.mesh.CONTOUR_TEMPLATE`: where the fast landmark path's five keypoints (eye-contour centres, nose tip,
mouth corners) fall in 256 px crops aligned the iris way (mediapipe's FaceMesh with iris refinement, the alignment
every cache and shipped model was made with), averaged over train photos of UTKFace and All-Age-Faces and made
left-right symmetric. Also prints how far the two alignments then differ (crop pixels, 256 px crops).

    python benchmarks/fit_contour_template.py --n 600
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from agelens.faces.align import (
    TEMPLATE_KEYPOINTS,
    keypoints_from_mesh,
    similarity_transform,
    transform_points,
)
from agelens.faces.detect import FaceAnalyzer
from agelens.faces.mesh import LandmarkModel, contour_keypoints, template_keypoints
from agelens.faces.prepare import largest_face
from agelens.imageio import load_image

CORNERS = np.array([[0, 0], [256, 0], [0, 256], [256, 256], [128, 128]], np.float32)


def train_files(split: str, n: int, seed: int) -> list[Path]:
    s = json.loads(Path(split).read_text())
    files = sorted(s["parts"]["train"])
    idx = np.random.default_rng(seed).choice(len(files), min(n, len(files)), replace=False)
    return [Path(s["root"]) / files[i] for i in sorted(idx)]


def pairs(files: list[Path], an: FaceAnalyzer, lmm: LandmarkModel) -> list[tuple[np.ndarray, np.ndarray]]:
    """(iris keypoints, fast-path 468 landmarks) for the largest detected face of each file, where both exist."""
    out = []
    for f in files:
        rgb = load_image(f)
        faces = an.detect(rgb)
        if not faces:
            continue
        face = largest_face(faces)
        old = an._mesh_in_box(rgb, face.box)
        new, _ = lmm(rgb, face.box, face.keypoints[:2])
        if old is not None and new is not None:
            out.append((keypoints_from_mesh(old), new))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=600, help="train photos per dataset")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    an, lmm = FaceAnalyzer(), LandmarkModel()
    fit, check = [], []
    for split in ("splits/utkface_seed0.json", "splits/aaf_seed0.json"):
        p = pairs(train_files(split, a.n, a.seed), an, lmm)
        fit += p[::2]
        check += p[1::2]
    pts = np.stack([transform_points(contour_keypoints(new), similarity_transform(kp, TEMPLATE_KEYPOINTS))
                    for kp, new in fit]).mean(0)
    mirror = pts[[1, 0, 2, 4, 3]] * [-1, 1] + [256, 0]  # left-right mirror: swap the pairs, reflect x
    tpl = (pts + mirror) / 2
    print(f"fitted on {len(fit)} faces:\n{np.round(tpl, 1).tolist()}")
    shift = []
    for kp, new in check:  # the old crop's corners and centre, through the image, into the new crop
        corners = transform_points(CORNERS, cv2.invertAffineTransform(similarity_transform(kp, TEMPLATE_KEYPOINTS)))
        moved = transform_points(corners, similarity_transform(template_keypoints(new, tpl), TEMPLATE_KEYPOINTS))
        shift.append(np.linalg.norm(moved - CORNERS, axis=1).max())
    print(f"held-out {len(check)} faces: the crop's corners move at most {np.mean(shift):.2f} px on average between the two "
          f"alignments (p95 {np.percentile(shift, 95):.2f}) in the 256 px crop")


if __name__ == "__main__":
    main()
