"""A candidate student against the shipped one, end to end on the same faces: seeded UTKFace photos of a split part,
each under the paper's six occluder types and (the first --n-new photos) each newer kind, drawn on the photo from the
clean face's FaceMesh and saved as JPEG q95, then found and aligned as `predict` does (shipped pipeline, torch fp32).
Both students read each found face as predict's student does (realigned from the photo, three views, the selective
mirror at the shipped student's cut); routed ages use the shipped soft-route weight of that face. Prints MAE alone
and routed per group, with the paired change (bootstrap 95 %).

    python benchmarks/student_compare.py runs/student_realign_net [MORE ...] --part val --n 200 --n-new 60 --seed 5 \
        --out runs/student_compare.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from agelens.data.splits import sample_names, split_part
from agelens.errors import NoFaceError
from agelens.faces.detect import FaceAnalyzer
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator, face_source
from agelens.occlusion.synth import OCCLUSION_TYPES, OcclusionError, occlude
from agelens.utils import atomic_write_json
from occlusion_e2e import NEW_KINDS, nearest_box, placed_photos, save_jpeg


def face_rows(est: AgeEstimator, candidates: list, files: list[Path], n_new: int, seed: int) -> list[dict]:
    """Per occluded face found: its age, occluder kind, the teacher's age, the students' ages (the shipped one first,
    then each candidate's) and the soft weight."""
    shipped, an, rows = est.student, FaceAnalyzer(), []
    kinds = list(OCCLUSION_TYPES) + list(NEW_KINDS)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "occluded.jpg"
        for i, _, rgb, face, age in placed_photos(an, files):
            for k, kind in enumerate(kinds):
                if kind in NEW_KINDS and i >= n_new:
                    continue
                try:
                    save_jpeg(path, occlude(rgb, face.landmarks, kind, np.random.default_rng((seed, i, k))).image)
                    faces = est.faces_of(load_image(path))
                except (OcclusionError, NoFaceError):
                    continue
                preds = est.predictions(faces, est.analyse_faces(faces), {})
                j = nearest_box([p.box for p in preds], face.box)
                crop, src = faces[j][2][None], [face_source(faces[j])]
                ages = []
                for student in (shipped, *candidates):
                    est.student = student
                    ages.append(float(est._ages(student, crop, sources=src)[0][0]))
                est.student = shipped
                rows.append({"kind": kind, "age": age, "teacher": float(est._ages(est.teacher, crop)[0][0]),
                             "shipped": ages[0], "candidates": ages[1:], "w": preds[j].to_dict()["student_weight"]})
    return rows


def summary(rows: list[dict], kinds: tuple[str, ...], c: int = 0) -> dict:
    """MAE of the shipped student and candidate number `c`, alone and routed, with the paired change."""
    rs = [{**r, "candidate": r["candidates"][c]} for r in rows if r["kind"] in kinds]
    if not rs:
        return {"n": 0}
    age = np.array([r["age"] for r in rs])
    t, w = np.array([r["teacher"] for r in rs]), np.array([r["w"] for r in rs])
    out, err = {"n": len(rs)}, {}
    for who in ("shipped", "candidate"):
        s = np.array([r[who] for r in rs])
        err[who] = np.abs((1 - w) * t + w * s - age)
        out[f"{who}_alone"] = round(float(np.abs(s - age).mean()), 3)
        out[f"{who}_routed"] = round(float(err[who].mean()), 3)
    d = err["candidate"] - err["shipped"]
    boot = np.random.default_rng(0).integers(0, len(d), (2000, len(d)))
    out["change"] = round(float(d.mean()), 3)
    out["ci95"] = [round(float(q), 3) for q in np.quantile(d[boot].mean(1), [0.025, 0.975])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidates", nargs="+", help="student weights: run folders, .pt or .safetensors files")
    ap.add_argument("--part", default="val", choices=["val", "test"])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--n-new", type=int, default=60)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--split", default="splits/utkface_seed0.json")
    ap.add_argument("--root", type=Path, default=Path("../shared/data/utkface"))
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    est = AgeEstimator.from_pretrained(backend="torch")
    candidates = [replace(AgeEstimator.from_pretrained(backend="torch", student=c).student,
                          tta_flip=est.student.tta_flip, tta_spread=est.student.tta_spread) for c in a.candidates]
    files = [a.root / f for f in sample_names(sorted(split_part(a.split, a.part)), a.n, a.seed)]
    rows = face_rows(est, candidates, files, a.n_new, a.seed)
    groups = {"paper types": OCCLUSION_TYPES, "newer kinds": NEW_KINDS,
              **{k: (k,) for k in ("sunglasses+mask", "eye+mouth_block")}}
    res = {"command": "python benchmarks/student_compare.py " + " ".join(
        a.candidates + [f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k in ("part", "n", "n_new", "seed")]),
        "candidates": [{"weights": c, **{name: summary(rows, kinds, i) for name, kinds in groups.items()}}
                       for i, c in enumerate(a.candidates)]}
    for cand in res["candidates"]:
        for name in groups:
            print(cand["weights"], name, json.dumps(cand[name]))
    if a.out is not None:
        atomic_write_json(a.out, {**res, "rows": rows})


if __name__ == "__main__":
    main()
