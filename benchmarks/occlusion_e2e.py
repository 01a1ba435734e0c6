"""Occluded faces end to end: occluders drawn on the ORIGINAL image (placed from the clean image's FaceMesh), saved
as JPEG, then the whole `predict` pipeline (detection, alignment, occlusion detector, routing) on the file, as a
user would run it. Beside it, the aligned-crop protocol of `occlusion_report.py` (occluder drawn on the aligned
crop of the clean image, detection skipped) on the same faces, so both stay visible. Also:

- real occluders: the "measure" half of ../shared/data/realocc (real masks and sunglasses; the "fit" half trains
  the guards, `agelens.train.guards`): faces found and share flagged occluded, per source;
- specificity: the share of clean test faces flagged occluded;
- images without a human face (scikit-image's sample photos other than the astronaut, the cameraman and the LFW
  subset, plus seeded crops of them): each must come back "no face found".

    python benchmarks/occlusion_e2e.py --n 300 --out docs/occlusion_e2e

Writes OUT.json and OUT.md. Run from the repo root; the occluded files go to a temporary folder that is removed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from agelens.data.splits import sample_names, split_part
from agelens.errors import NoFaceError
from agelens.faces.detect import FaceAnalyzer
from agelens.faces.prepare import largest_face, prepare_face
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator, face_source
from agelens.occlusion.synth import FAMILIES, OCCLUSION_TYPES, OcclusionError, occlude
from agelens.train.guards import realocc_half
from agelens.utils import atomic_write_json, atomic_write_text

NOT_FACES = ("astronaut", "camera", "lfw_subset", "cells3d", "data_dir", "download_all", "file_hash",
             "lbp_frontal_face_cascade_filename")


def save_jpeg(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])


def nearest_box(boxes: list, ref_box: tuple[float, ...]) -> int:
    """The index of the box (x1, y1, x2, y2) whose centre is nearest ref_box's centre."""
    cx, cy = (ref_box[0] + ref_box[2]) / 2, (ref_box[1] + ref_box[3]) / 2
    return min(range(len(boxes)), key=lambda i: ((boxes[i][0] + boxes[i][2]) / 2 - cx) ** 2
               + ((boxes[i][1] + boxes[i][3]) / 2 - cy) ** 2)


def found_nearest(est: AgeEstimator, rgb: np.ndarray, ref_box: tuple[float, ...], path: Path) -> tuple | None:
    """The photo saved as JPEG q95 at path and found as `predict` finds it (`faces_of`): the face nearest ref_box,
    None when no face is found."""
    save_jpeg(path, rgb)
    try:
        found = est.faces_of(load_image(path))
    except NoFaceError:
        return None
    return found[nearest_box([f[0] for f in found], ref_box)]


def answer(est: AgeEstimator, path: Path, ref_box: tuple[float, ...] | None = None) -> dict:
    """The face `predict` gives for this file (the one nearest the reference box, else the largest), plus the
    teacher's and the student's own ages for it, so hard and soft routing are compared on the same faces."""
    rgb = load_image(path)
    try:  # AgeEstimator.predict, step by step, to keep the crop of the chosen face
        faces = est.faces_of(rgb)
    except NoFaceError:
        return {"answered": False}
    r = est.analyse_faces(faces)
    preds = est.predictions(faces, r, {})
    if ref_box is not None:
        k = nearest_box([p.box for p in preds], ref_box)
    else:
        k = preds.index(largest_face(preds))
    d = preds[k].to_dict()
    out = {"answered": True, "age": d["age"], "occluded": d["occluded"], "model": d["model"],
           "detection": d["detection"], "score": d["occlusion_score"], "n_faces": len(faces)}
    if est.student is not None:
        crop = faces[k][2][None]
        out["teacher_age"] = float(est._ages(est.teacher, crop)[0][0])
        out["student_age"] = float(est._ages(est.student, crop, sources=[face_source(faces[k])])[0][0])
    return out


def placed_face(placer: FaceAnalyzer, rgb: np.ndarray):
    """The largest face `placer` finds with landmarks (what an occluder is placed from), or None."""
    faces = [f for f in placer.find_faces(rgb) if f.landmarks is not None]
    return largest_face(faces) if faces else None


def placed_photos(placer: FaceAnalyzer, files: list[Path], every: int = 25, ages: list[float] | None = None):
    """(index, file, photo, clean face, age) for each file whose face `placed_face` finds (the age from `ages`, else
    from a UTKFace file name), printing progress every `every` files."""
    for i, f in enumerate(files):
        rgb = load_image(f)
        face = placed_face(placer, rgb)
        if face is not None:
            yield i, f, rgb, face, float(f.name.split("_")[0]) if ages is None else ages[i]
        if (i + 1) % every == 0:
            print(f"{i + 1}/{len(files)} photos", flush=True)


def occluded_on_photo(placer: FaceAnalyzer, rgb: np.ndarray, kinds: tuple[str, ...], key: tuple[int, ...]
                      ) -> tuple[object, dict[str, np.ndarray]] | None:
    """The largest face `placer` finds with landmarks, and per kind the photo with that occluder drawn from them
    (seeded by (*key, index of the kind)); kinds that cannot be placed are left out; None without such a face."""
    face = placed_face(placer, rgb)
    if face is None:
        return None
    out = {}
    for k, kind in enumerate(kinds):
        try:
            out[kind] = occlude(rgb, face.landmarks, kind, np.random.default_rng((*key, k))).image
        except OcclusionError:
            continue
    return face, out


def soft_age(r: dict) -> float:
    """Teacher and student blended by the occlusion probability."""
    p = float(r["score"])
    return (1 - p) * r["teacher_age"] + p * r["student_age"]


def summarise(rows: list[dict], ages: np.ndarray | None = None) -> dict:
    ans = [r for r in rows if r["answered"]]
    out = {"n": len(rows), "answered": round(len(ans) / max(1, len(rows)), 4),
           "flagged_occluded": round(float(np.mean([bool(r["occluded"]) for r in ans])) if ans else 0.0, 4),
           "detection": dict(Counter(r["detection"] for r in ans)), "models": dict(Counter(r["model"] for r in ans))}
    if ages is not None and ans:
        pairs = [(r, a) for r, a in zip(rows, ages, strict=True) if r["answered"]]
        out["mae"] = round(float(np.mean([abs(r["age"] - a) for r, a in pairs])), 3)
        if "teacher_age" in pairs[0][0]:  # soft route: teacher and student blended by the occlusion score
            out["mae_teacher"] = round(float(np.mean([abs(r["teacher_age"] - a) for r, a in pairs])), 3)
            out["mae_student"] = round(float(np.mean([abs(r["student_age"] - a) for r, a in pairs])), 3)
            out["mae_soft"] = round(float(np.mean([abs(soft_age(r) - a) for r, a in pairs])), 3)
    return out


NEW_KINDS = tuple(k for fam, kinds in FAMILIES.items() if fam != "paper" for k in kinds)


def utk_protocols(est: AgeEstimator, an: FaceAnalyzer, files: list[Path], tmp: Path, seed: int,
                  n_new: int) -> dict:
    """End-to-end and aligned-crop rows for clean, each paper occlusion type (all files) and each kind of the
    newer families (the first n_new files)."""
    conds = ("clean",) + OCCLUSION_TYPES + NEW_KINDS
    e2e: dict[str, list] = {c: [] for c in conds}
    crops: dict[str, list] = {c: [] for c in conds}
    ages: dict[str, list] = {c: [] for c in conds}
    for i, f in enumerate(files):
        rgb = load_image(f)
        faces = [x for x in an.find_faces(rgb) if x.landmarks is not None]
        if not faces:  # the clean image has no mesh: no occluder can be placed (same files for every type)
            continue
        face = largest_face(faces)
        crop, crop_lm = prepare_face(rgb, an, est.cache_size, aligned=False, face=face)
        age = float(f.name.split("_")[0])
        for k, cond in enumerate(conds):
            if cond in NEW_KINDS and i >= n_new:
                continue
            rng = np.random.default_rng((seed, i, k))
            try:
                img = rgb if cond == "clean" else occlude(rgb, face.landmarks, cond, rng).image
                occ_crop = crop if cond == "clean" else occlude(crop, crop_lm, cond, np.random.default_rng(
                    (seed, i, k, 1))).image
            except OcclusionError:
                continue
            p = tmp / f"{cond.replace('+', '_')}_{i}.jpg"
            save_jpeg(p, img)
            e2e[cond].append(answer(est, p, face.box))
            p.unlink()
            crops[cond].append(occ_crop)
            ages[cond].append(age)
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{len(files)} faces", flush=True)
    out = {}
    for cond in conds:
        a = np.array(ages[cond])
        r = est.analyse_crops(np.stack(crops[cond])) if crops[cond] else {"age": np.zeros(0), "occluded": []}
        out[cond] = {"end_to_end": summarise(e2e[cond], a),
                     "aligned_crop": {"n": len(a), "mae": round(float(np.abs(r["age"] - a).mean()), 3) if len(a) else None,
                                      "flagged_occluded": round(float(np.mean(r["occluded"])), 4) if len(a) else None}}
        print(cond, json.dumps(out[cond]), flush=True)
    for name, kinds in (("all paper types", OCCLUSION_TYPES), ("all newer families", NEW_KINDS)):
        occ = [r for c in kinds for r in e2e[c]]
        occ_ages = np.concatenate([np.array(ages[c]) for c in kinds])
        out[name] = {"end_to_end": summarise(occ, occ_ages),
                     "aligned_crop": {"n": int(sum(out[c]["aligned_crop"]["n"] for c in kinds))}}
    return out


def realocc_rows(est: AgeEstimator, shared: Path, limit: int) -> dict:
    import pandas as pd

    d = pd.read_csv(shared / "realocc.csv")
    d = d[d.file.map(realocc_half) == "measure"]
    out = {}
    for (source, kind), g in d.groupby([d.source.str.split("@").str[0], "occluder"]):
        rows = [answer(est, shared / f) for f in g.file[:limit]]
        out[f"{source} ({kind})"] = summarise(rows)
        print(source, kind, json.dumps(out[f"{source} ({kind})"]), flush=True)
    return out


def aaf_rows(est: AgeEstimator, shared: Path, n: int) -> dict:
    """Clean All-Age-Faces photos (another dataset, eye-aligned head-and-shoulder crops; a seeded sample of the
    test part of splits/aaf_seed0.json, never trained on): answered, MAE, and the share wrongly flagged occluded
    (specificity on clean faces of other photos)."""
    from generalise import test_files  # benchmarks/generalise.py: the same seeded test sample

    files = test_files("aaf", n, 0)
    rows = [answer(est, f) for f, _ in files]
    return summarise(rows, np.array([a for _, a in files], np.float64))


def sample_images() -> list[tuple[str, np.ndarray]]:
    import skimage.data as skd

    out = []
    for name in sorted(n for n in dir(skd) if not n.startswith("_") and n not in NOT_FACES):
        try:
            img = np.asarray(getattr(skd, name)())
        except Exception:  # needs a download, or not an image
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, 2)
        if img.ndim != 3 or img.shape[2] not in (3, 4) or min(img.shape[:2]) < 32:
            continue
        if img.dtype != np.uint8:
            f = img.astype(np.float64)
            img = (255 * (f - f.min()) / max(1e-9, float(np.ptp(f)))).astype(np.uint8)
        out.append((name, np.ascontiguousarray(img[..., :3])))
    return out


def seeded_crops(img: np.ndarray, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """n crops of the image, each 30-80 % of each side at a random place (drawn from rng in turn)."""
    h, w = img.shape[:2]
    out = []
    for _ in range(n):
        s = rng.uniform(0.3, 0.8)
        ch, cw = int(h * s), int(w * s)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append(img[y:y + ch, x:x + cw])
    return out


def no_face_rows(est: AgeEstimator, tmp: Path, crops_per_image: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    rows = []
    for name, img in sample_images():
        views = [("whole", img)] + [(f"crop{k}", c) for k, c in enumerate(seeded_crops(img, rng, crops_per_image))]
        for tag, v in views:
            p = tmp / f"{name}_{tag}.png"
            cv2.imwrite(str(p), cv2.cvtColor(np.ascontiguousarray(v), cv2.COLOR_RGB2BGR))
            r = answer(est, p)
            rows.append({"image": f"{name}/{tag}", **r})
            p.unlink()
    wrong = [r for r in rows if r["answered"]]
    return {"n": len(rows), "no_face_found": round(1 - len(wrong) / max(1, len(rows)), 4),
            "answered": [{k: r[k] for k in ("image", "age", "detection")} for r in wrong]}


def markdown(res: dict) -> str:
    lines = ["# Occluded faces end to end", "", res["protocol"], "", f"Command: `{res['command']}`", "",
             "## UTKFace test faces, occluder drawn on the original image vs on the aligned crop", "",
             "| condition | answered (e2e) | MAE routed (e2e) | teacher / student / soft route (e2e) | flagged occluded (e2e) "
             "| found by | MAE routed (aligned crop) |",
             "|---|---|---|---|---|---|---|"]
    for cond, r in res["utk"].items():
        e, c = r["end_to_end"], r["aligned_crop"]
        soft = " / ".join(f"{e.get(k, float('nan')):.3f}" for k in ("mae_teacher", "mae_student", "mae_soft"))
        lines.append(f"| {cond} | {e['answered']:.1%} | {e.get('mae', float('nan')):.3f} | {soft} | "
                     f"{e['flagged_occluded']:.1%} | "
                     f"{', '.join(f'{k} {v}' for k, v in sorted(e['detection'].items()))} | "
                     f"{c.get('mae') if c.get('mae') is not None else '—'} |")
    lines += ["", "## Real occluders (realocc, measure half): faces found and flagged occluded (largest face per photo)",
              "", "| source | photos | answered | flagged occluded (recall) | found by |", "|---|---|---|---|---|"]
    for src, r in res["realocc"].items():
        lines.append(f"| {src} | {r['n']} | {r['answered']:.1%} | {r['flagged_occluded']:.1%} | "
                     f"{', '.join(f'{k} {v}' for k, v in sorted(r['detection'].items()))} |")
    r = res["aaf_clean"]
    lines += ["", "## Clean photos of another dataset (All-Age-Faces, not its train part)", "",
              f"{r['n']} photos: answered {r['answered']:.1%}, MAE {r.get('mae', float('nan')):.3f} (teacher / student / "
              f"soft {r.get('mae_teacher', float('nan')):.3f} / {r.get('mae_student', float('nan')):.3f} / "
              f"{r.get('mae_soft', float('nan')):.3f}), flagged occluded {r['flagged_occluded']:.1%}."]
    nf = res["no_face"]
    lines += ["", "## Images without a human face", "",
              f"{nf['n']} images (scikit-image sample photos and seeded crops of them): "
              f"{nf['no_face_found']:.1%} answered \"no face found\".", ""]
    if nf["answered"]:
        lines += ["Answered with an age: " + ", ".join(f"{r['image']} ({r['age']}, {r['detection']})"
                                                         for r in nf["answered"]), ""]
    lines.append(f"Wall time {res['seconds']} s.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="splits/utkface_seed0.json")
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--n", type=int, default=300, help="first N test faces (file-name order)")
    ap.add_argument("--n-new", type=int, default=100, help="first N test faces for each kind of the newer families")
    ap.add_argument("--realocc", type=int, default=400, help="photos per realocc source and occluder")
    ap.add_argument("--aaf", type=int, default=300, help="clean All-Age-Faces photos (not in AAF's train part)")
    ap.add_argument("--crops", type=int, default=3, help="random crops per non-face sample image")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/occlusion_e2e")
    a = ap.parse_args()
    t0 = time.perf_counter()
    est = AgeEstimator.from_pretrained(backend=a.backend)
    an = FaceAnalyzer()
    files = [a.shared / "utkface" / f for f in sample_names(sorted(split_part(a.split, "test")), a.n, a.seed)]
    res = {"command": "python benchmarks/occlusion_e2e.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k not in ("shared", "split")),
        "protocol": (f"{len(files)} test faces of {a.split}, a seeded random sample (seed {a.seed}; the first N in "
                     "file-name order would be children and teenagers). End to end: occluder placed "
                     "from the clean image's FaceMesh on the original 200 px image, saved as JPEG q95, then "
                     "`AgeEstimator.predict(file)` (shipped models, default settings, backend "
                     f"{est.backend}). Aligned crop: the same occluder type drawn on the aligned crop of the clean "
                     "image, detection skipped (the protocol of occlusion_report.py). Paper types on every face; "
                     f"the newer families (occlusion/families.py; their kinds are in the shipped student's and "
                     "detector's training, drawn on other faces: families never seen are measured by "
                     f"benchmarks/lofo.py) on the first {a.n_new} faces each. Seeded occluders (seed {a.seed}). Soft route: "
                     "teacher and student ages blended by the occlusion probability, on the same faces.")}
    with tempfile.TemporaryDirectory() as tmp:
        res["utk"] = utk_protocols(est, an, files, Path(tmp), a.seed, a.n_new)
        res["realocc"] = realocc_rows(est, a.shared, a.realocc)
        res["aaf_clean"] = aaf_rows(est, a.shared, a.aaf)
        print("aaf", json.dumps(res["aaf_clean"]), flush=True)
        res["no_face"] = no_face_rows(est, Path(tmp), a.crops, a.seed)
    res["seconds"] = round(time.perf_counter() - t0)
    atomic_write_json(Path(a.out).with_suffix(".json"), res)
    atomic_write_text(Path(a.out).with_suffix(".md"), markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
