"""Where should the soft route's band lie? Per-face rows end to end, then every candidate band scored on the same
faces.

Each seeded photo of a split part is saved as JPEG q95 and found as `predict` finds it (`faces_of`): photos of both
datasets clean and under each test degradation (`benchmarks/generalise.py`'s seeds; largest face), and UTKFace
photos under each occluder of `occlusion.synth` (the paper's six types and the newer families, placed from the
clean face's FaceMesh; the face nearest the clean face's box). Each face gets the teacher's (age, spread), the
student's mean over its views and its single view (the two ways `analyse_crops` reads it, by weight) and the
occlusion score. A band (lo, hi) gives the student the weight `inference.predictor.soft_weight` gives with that band; per band: MAE of clean and degraded photos per dataset, of the paper types and of
the newer families, and the share of clean / degraded faces the student reads (its time).

    python benchmarks/route_band.py --part val --n 200 --rows runs/route_band_val.npz --out runs/route_band_val.json

--rows keeps the per-face rows (and reuses them when the file exists). --foreign adds the kinds of
`benchmarks/foreign_occluders.py` (not drawn by our synthesizer) as their own group.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import generalise as g  # noqa: E402
from agelens.data.augment import TEST_DEGRADATIONS  # noqa: E402
from agelens.faces.detect import FaceAnalyzer  # noqa: E402
from agelens.faces.prepare import largest_face  # noqa: E402
from agelens.faces.realign import SINGLE_VIEW  # noqa: E402
from agelens.imageio import load_image  # noqa: E402
from agelens.inference.predictor import SOFT_BAND, VIEWS_FROM, AgeEstimator, face_source, soft_weight  # noqa: E402
from agelens.occlusion.synth import OCCLUSION_TYPES, OcclusionError, occlude  # noqa: E402
from agelens.utils import atomic_write_json  # noqa: E402
from occlusion_e2e import NEW_KINDS, found_nearest, save_jpeg  # noqa: E402

FIELDS = ("group", "cond", "y", "ta", "sa", "s1", "occ")
BANDS = [SOFT_BAND, (0.2, 0.8), (0.2, 0.6), (0.15, 0.6), (0.1, 0.7), (0.1, 0.5), (0.1, 0.4), (0.05, 0.5),
         (0.3, 0.6), (0.2, 0.5)]


def face_row(est: AgeEstimator, chosen: tuple) -> tuple[float, ...]:
    crop, src = chosen[2][None], [face_source(chosen)]
    ta = est.trunk(crop)[0][0]
    sa = est._ages(est.student, crop, sources=src)[0][0]
    s1 = est._ages(est.student, crop, sources=src, view_set=SINGLE_VIEW)[0][0]
    return float(ta), float(sa), float(s1), float(est.detector.scores(crop)[0])


def collect(part: str, n: int, seed: int, foreign: bool) -> dict[str, np.ndarray]:
    est = AgeEstimator.from_pretrained()
    placer = FaceAnalyzer()
    rec: dict[str, list] = {k: [] for k in FIELDS}

    def add(group, cond, y, row):
        for k, v in zip(FIELDS, (group, cond, y, *row), strict=True):
            rec[k].append(v)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        for ds in ("utkface", "aaf"):
            for i, (f, age) in enumerate(g.test_files(ds, n, seed, part)):
                rgb = load_image(f)
                for cond in ("clean", *TEST_DEGRADATIONS):
                    img = rgb if cond == "clean" else g.degraded(rgb, cond, i, seed)
                    save_jpeg(path, img)
                    try:
                        faces = est.faces_of(load_image(path))
                    except Exception:
                        continue
                    add(f"{ds}:{'clean' if cond == 'clean' else 'degraded'}", cond, age,
                        face_row(est, largest_face(faces, box=lambda x: x[0])))
                if (i + 1) % 50 == 0:
                    print(f"{ds} {i + 1}/{n}", flush=True)
        kinds = [("paper", k) for k in OCCLUSION_TYPES] + [("newer", k) for k in NEW_KINDS]
        if foreign:
            from foreign_occluders import KINDS, draw

            kinds += [("foreign", k) for k in KINDS]
        for i, (f, age) in enumerate(g.test_files("utkface", n, seed + 1, part)):
            rgb = load_image(f)
            placed = [x for x in placer.find_faces(rgb) if x.landmarks is not None]
            if not placed:
                continue
            face = largest_face(placed)
            for k, (group, kind) in enumerate(kinds):
                rng = np.random.default_rng((seed, i, k))
                try:
                    img = draw(rgb, face.landmarks, kind, rng) if group == "foreign" else \
                        occlude(rgb, face.landmarks, kind, rng).image
                except OcclusionError:
                    continue
                chosen = found_nearest(est, img, face.box, path)
                if chosen is not None:
                    add(group, kind, age, face_row(est, chosen))
            if (i + 1) % 25 == 0:
                print(f"occluded {i + 1}/{n}", flush=True)
    return {k: np.array(v) for k, v in rec.items()}


def answers(d: dict[str, np.ndarray], band: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(routed age, student weight) per face under a band, as `analyse_crops` routes: the student's views from
    VIEWS_FROM, its single view below."""
    w = soft_weight(d["occ"], d["occ"] >= 0.5, band)
    return (1 - w) * d["ta"] + w * np.where(w >= VIEWS_FROM, d["sa"], d["s1"]), w


def score(d: dict[str, np.ndarray], band: tuple[float, float]) -> dict:
    age, w = answers(d, band)
    err = np.abs(age - d["y"])
    out = {}
    for grp in sorted(set(d["group"])):
        m = d["group"] == grp
        if grp in ("paper", "newer", "foreign"):  # the mean over kinds (each kind weighs the same)
            out[grp] = round(float(np.mean([err[m & (d["cond"] == c)].mean() for c in sorted(set(d["cond"][m]))])), 3)
        else:
            out[grp] = round(float(err[m].mean()), 3)
            out[f"{grp} student share"] = round(float((w[m] > 0).mean()), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="val")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--foreign", action="store_true")
    ap.add_argument("--rows", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.rows is not None and a.rows.is_file():
        d = dict(np.load(a.rows))
    else:
        d = collect(a.part, a.n, a.seed, a.foreign)
        if a.rows is not None:
            np.savez(a.rows, **d)
    res = {"command": f"python benchmarks/route_band.py --part {a.part} --n {a.n} --seed {a.seed}"
                      + (" --foreign" if a.foreign else ""),
           "faces": int(len(d["y"])), "bands": {f"{lo}-{hi}": score(d, (lo, hi)) for lo, hi in BANDS}}
    kinds = sorted(set(d["cond"][np.isin(d["group"], ["paper", "newer", "foreign"])]))
    res["per_kind"] = {}
    for lo, hi in BANDS:
        err = np.abs(answers(d, (lo, hi))[0] - d["y"])
        res["per_kind"][f"{lo}-{hi}"] = {k: round(float(err[d["cond"] == k].mean()), 3) for k in kinds}
    print(json.dumps(res["bands"], indent=1))
    if a.out:
        atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
