"""How `faces.animal`'s small-face gate was chosen: every face candidate `predict` finds (before the ImageNet check)
on a selection set of images without a face and of real faces, with its detector score, size in its image and
people mass; per people-mass bar for small faces the detector was unsure of (`animal.small_and_unsure`), how many
images without a face would still be answered and how many real faces would be turned away. The check as shipped
before the gate decides the rest (`inference.finding.without_non_faces` with the gate off); the fallback steps'
second look (`find_and_align`) is not simulated, so a real photo counted as losing its last face here may still be
answered end to end.

Selection set (none of it in the end-to-end measurements of docs/occlusion_report.md): scikit-image views of
--seeds (12 crops each, `benchmarks/no_face.py`'s images), realocc's fit half, UTKFace and All-Age-Faces
validation photos clean, under each test degradation and (UTKFace) with each paper occluder drawn on the photo.

    python benchmarks/small_face_gate.py --out docs/small_face_gate.json      # about 10 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from agelens import AgeEstimator  # noqa: E402
from agelens.data.augment import TEST_DEGRADATIONS  # noqa: E402
from agelens.errors import NoFaceError  # noqa: E402
from agelens.faces import animal  # noqa: E402
from agelens.faces.detect import FaceAnalyzer  # noqa: E402
from agelens.imageio import load_image  # noqa: E402
from agelens.inference import finding  # noqa: E402
from agelens.occlusion.synth import OCCLUSION_TYPES  # noqa: E402
from agelens.utils import atomic_write_json  # noqa: E402
from generalise import degraded, test_files  # noqa: E402
from occlusion_e2e import occluded_on_photo, placed_photos, sample_images, save_jpeg, seeded_crops  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BARS = (0.78, 0.80, 0.82, 0.84, 0.86)


def candidates(est: AgeEstimator, rgb: np.ndarray, image: str, group: str) -> list[dict]:
    """Every face `find_and_align` gives before the ImageNet check: kept by the check without the gate or not,
    small and unsure or not, its people mass."""
    try:
        faces = finding.find_and_align(rgb, est.analyzer, est.cache_size, True, est.verifier, vet=False)
    except NoFaceError:
        return []
    real = animal.small_and_unsure
    animal.small_and_unsure = lambda *a: False  # the check as it was before the gate
    try:
        kept = {id(f) for f in finding.without_non_faces(rgb, faces, est.verifier)}
    finally:
        animal.small_and_unsure = real
    _, mass = animal.shipped().scores(rgb, [f[0] for f in faces])
    return [{"image": image, "group": group, "kept": id(f) in kept, "small": real(f[0], f[1], rgb.shape),
             "mass": float(m)} for f, m in zip(faces, mass, strict=True)]


def collect(est: AgeEstimator, a: argparse.Namespace) -> list[dict]:
    import pandas as pd

    from agelens.train.guards import realocc_half

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        png, jpg = Path(tmp) / "x.png", Path(tmp) / "x.jpg"
        for seed in a.seeds:  # images without a face, as no_face.py writes them
            rng = np.random.default_rng(seed)
            for name, img in sample_images():
                for tag, v in [("whole", img)] + [(f"crop{k}", c) for k, c in enumerate(seeded_crops(img, rng, 12))]:
                    cv2.imwrite(str(png), cv2.cvtColor(np.ascontiguousarray(v), cv2.COLOR_RGB2BGR))
                    rows += candidates(est, load_image(png), f"{name}/{tag}/{seed}", "no face")
        d = pd.read_csv(SHARED / "realocc.csv")
        d = d[d.file.map(realocc_half) == "fit"].sample(min(a.realocc, len(d)), random_state=3)
        for f in d.file:
            rows += candidates(est, load_image(SHARED / f), f, "realocc fit half")
        an = FaceAnalyzer()
        for ds in ("utkface", "aaf"):
            files = test_files(ds, a.n, 3, part="val")
            for i, (f, _) in enumerate(files):
                rgb = load_image(f)
                rows += candidates(est, rgb, f.name, f"{ds} clean")
                if i < a.n_deg:
                    for name in TEST_DEGRADATIONS:
                        rows += candidates(est, degraded(rgb, name, i, 5), f"{f.name}/{name}", f"{ds} degraded")
            if ds == "utkface":
                for i, f, rgb, _, _ in placed_photos(an, [f for f, _ in files[:a.n_occ]], every=10 ** 9):
                    placed = occluded_on_photo(an, rgb, tuple(OCCLUSION_TYPES), (3, i))
                    for kind, img in ({} if placed is None else placed[1]).items():
                        save_jpeg(jpg, img)
                        rows += candidates(est, load_image(jpg), f"{f.name}/{kind}", "utkface occluded")
    return rows


def table(rows: list[dict]) -> dict:
    kept = [r for r in rows if r["kept"]]
    real = [r for r in kept if r["group"] != "no face"]
    asked = [r for r in real if r["small"]]
    groups = sorted({r["group"] for r in rows})
    res = {"asked_share": {g: round(float(np.mean([r["small"] for r in kept if r["group"] == g] or [0])), 4)
                           for g in groups},
           "asked_real_faces": len(asked),
           "asked_mass_quantiles": {q: round(float(np.quantile([r["mass"] for r in asked], q)), 3)
                                    for q in (0.003, 0.005, 0.01, 0.05)} if asked else {},
           "bars": {}}
    for bar in (None, *BARS):
        def left(r, bar=bar):
            return r["kept"] and not (bar is not None and r["small"] and r["mass"] < bar)

        by_image: dict[tuple[str, str], bool] = {}  # (group, image) -> a face left, for images with a kept face
        for r in kept:
            key = (r["group"], r["image"])
            by_image[key] = by_image.get(key, False) or left(r)
        res["bars"]["without the gate" if bar is None else str(bar)] = {
            "no-face images answered": sum(v for (g, _), v in by_image.items() if g == "no face"),
            "real faces turned away": sum(not left(r) for r in real),
            "real photos left without a face": sum(not v for (g, _), v in by_image.items() if g != "no face")}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    ap.add_argument("--realocc", type=int, default=500, help="photos of realocc's fit half")
    ap.add_argument("--n", type=int, default=400, help="validation photos per dataset")
    ap.add_argument("--n-deg", type=int, default=60, help="of them, photos under each test degradation")
    ap.add_argument("--n-occ", type=int, default=100, help="UTKFace photos under each paper occluder")
    ap.add_argument("--out", type=Path, default=Path("docs/small_face_gate.json"))
    a = ap.parse_args()
    t0 = time.time()
    est = AgeEstimator.from_pretrained()
    res = {"command": " ".join(["python benchmarks/small_face_gate.py", *sys.argv[1:]]), "backend": est.backend,
           "gate": {"small_side": animal.SMALL_SIDE, "below": animal.SMALL_BELOW, "bar": animal.SMALL_PEOPLE},
           **table(collect(est, a)), "seconds": round(time.time() - t0)}
    atomic_write_json(a.out, res)
    for k, v in res.items():
        print(k, v)


if __name__ == "__main__":
    main()
