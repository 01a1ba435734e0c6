"""Could the landmark model's face-presence probability veto non-human faces (the cat crops that pass every
guard)? Presence of every detection on scikit-image's sample images and seeded crops (made as occlusion_e2e.py makes
them), against the largest detected face of human photos: clean validation photos of both datasets, UTKFace
validation photos under each paper type (drawn on the photo, JPEG q95) and the realocc calibration half.

    python benchmarks/presence_veto.py --out docs/presence_veto.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from agelens.faces.detect import FaceAnalyzer
from agelens.faces.mesh import LandmarkModel
from agelens.imageio import load_image
from agelens.occlusion.synth import OCCLUSION_TYPES
from agelens.train.guards import realocc_half
from agelens.utils import atomic_write_json
from generalise import encode, test_files
from occlusion_e2e import occluded_on_photo, sample_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="clean photos per dataset (occluded: 3/4 of it)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    an, mesh_an, lmm = FaceAnalyzer(fast=True), FaceAnalyzer(fast=False), LandmarkModel()

    def presences(rgb: np.ndarray) -> list[tuple[float, float]]:
        """(presence, box width) of every detection."""
        return [(lmm(rgb, f.box, f.keypoints[:2])[1], f.box[2] - f.box[0]) for f in an.detect(rgb)]

    def largest(rgb: np.ndarray) -> float | None:
        p = presences(rgb)
        return max(p, key=lambda r: r[1])[0] if p else None

    rng = np.random.default_rng(0)
    non_faces = []
    for name, img in sample_images():
        h, w = img.shape[:2]
        views = [("whole", img)]
        for k in range(3):
            s = rng.uniform(0.3, 0.8)
            ch, cw = int(h * s), int(w * s)
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            views.append((f"crop{k}", img[y:y + ch, x:x + cw]))
        for tag, v in views:
            non_faces += [{"image": f"{name}/{tag}", "presence": round(p, 4)}
                          for p, _ in presences(np.ascontiguousarray(v))]
    sets: dict[str, list] = {
        "UTKFace clean": [largest(load_image(f)) for f, _ in test_files("utkface", a.n, 5, "val")],
        "All-Age-Faces clean": [largest(load_image(f)) for f, _ in test_files("aaf", a.n, 5, "val")]}
    for i, (f, _) in enumerate(test_files("utkface", 3 * a.n // 4, 5, "val")):
        placed = occluded_on_photo(mesh_an, load_image(f), OCCLUSION_TYPES, (i,))
        for t, img in (placed[1] if placed else {}).items():
            sets.setdefault(f"UTKFace {t}", []).append(largest(encode(img, ".jpg", 95)))
    d = pd.read_csv("../shared/data/realocc.csv")
    d = d[d.file.map(realocc_half) != "measure"]
    for src in ("rwmfd", "maskon", "sgs"):
        files = [f for f in d.file if Path(f).name.startswith(src)][:150]
        sets[f"realocc {src}"] = [largest(load_image(Path("../shared/data") / f)) for f in files]
    res = {"command": f"python benchmarks/presence_veto.py --n {a.n}",
           "non_face_detections": sorted(non_faces, key=lambda r: -r["presence"]), "faces": {}}
    for k, v in sets.items():
        v = np.array([x for x in v if x is not None])
        res["faces"][k] = {"n": len(v), "p1": round(float(np.percentile(v, 1)), 4),
                           "p10": round(float(np.percentile(v, 10)), 4), "median": round(float(np.median(v)), 4),
                           "share_below_0.01": round(float((v < 0.01).mean()), 3)}
    print(json.dumps(res, indent=1))
    if a.out:
        atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
