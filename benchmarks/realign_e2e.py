"""Does realigning the student's crops (`faces.realign`) pay end to end? Seeded photos of a split part, each saved
clean and under each occluder kind (drawn on the photo from the clean face's FaceMesh, JPEG q95), are found and
aligned as `predict` does; on the face nearest the clean face's box this reports
- how far the realignment moves the crop (mean over its corners and centre, px in 256 px crops);
- the student's MAE on the crop as found, realigned, and on the occluded photo aligned by the clean face's
  landmarks (the ceiling: what perfect alignment would give);
- the routed MAE (`analyse_crops`, as `predict` answers) without and with realignment.
The student reads each crop as the estimator is set (`AgeEstimator.student_views`: three views since 2026-12-02;
docs/realign_val.md was made with one view).

    python benchmarks/realign_e2e.py --part val --n 200 --seed 5 --out docs/realign_val   # writes .json and .md
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from agelens.data.adapters import load_dataset
from agelens.data.splits import sample_names, split_part
from agelens.errors import NoFaceError
from agelens.faces.align import align_face, transform_points
from agelens.faces.detect import FaceAnalyzer
from agelens.faces.prepare import largest_face
from agelens.faces.realign import shipped
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator, face_source
from agelens.occlusion.synth import OCCLUSION_TYPES, OcclusionError, occlude
from agelens.utils import atomic_write_json, atomic_write_text
from occlusion_e2e import found_nearest, nearest_box, save_jpeg

KINDS = OCCLUSION_TYPES + ("fabric_mask", "scarf", "hand", "cap+fabric_mask", "scarf+sunglasses")
FRAME = np.array([[0, 0], [256, 0], [0, 256], [256, 256], [128, 128]], np.float32)


def file_ages(dataset: str, root: Path) -> dict[str, float]:
    """File name → true age, from the dataset's adapter (All-Age-Faces' ages are in its CSV, not its names)."""
    return {Path(r.path).name: float(r.age) for r in load_dataset(dataset, str(root)).records}


def student_faces(est: AgeEstimator, n: int, seed: int, part: str = "val", dataset: str = "utkface"):
    """Seeded photos of a split part of a dataset (splits/DATASET_seed0.json), each under each of KINDS (drawn on
    the photo from the clean face's FaceMesh, saved as JPEG q95), found as predict finds them: yields (age, kind,
    the found face nearest the clean face's box) for the faces found with a source (`face_source`) to warp from."""
    placer = FaceAnalyzer()
    split = f"splits/{dataset}_seed0.json"
    root = Path(json.loads(Path(split).read_text())["root"])
    ages = file_ages(dataset, root)
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(sample_names(sorted(split_part(split, part)), n, seed)):
            rgb = load_image(root / name)
            faces = [f for f in placer.find_faces(rgb) if f.landmarks is not None]
            if not faces:
                continue
            face = largest_face(faces)
            for k, cond in enumerate(KINDS):
                try:
                    img = occlude(rgb, face.landmarks, cond, np.random.default_rng((seed, i, k))).image
                except OcclusionError:
                    continue
                chosen = found_nearest(est, img, face.box, Path(tmp) / "face.jpg")
                if chosen is not None and face_source(chosen) is not None:  # not a whole-image face
                    yield float(ages[name]), cond, chosen
            if (i + 1) % 25 == 0:
                print(f"{i + 1}/{n} photos", flush=True)


def run(a: argparse.Namespace) -> dict:
    est = AgeEstimator.from_pretrained(backend=a.backend)
    net = shipped()
    if net is None:
        raise SystemExit("no realignment network shipped (src/agelens/weights/realign.onnx)")
    placer = FaceAnalyzer()  # mediapipe's FaceMesh with iris points: the alignment the training crops were made with
    split = f"splits/{a.dataset}_seed0.json"
    root = Path(json.loads(Path(split).read_text())["root"])
    names = sample_names(sorted(split_part(split, a.part)), a.n, a.seed)
    ages = file_ages(a.dataset, root)
    conds = ("clean",) + KINDS
    rows: dict[str, list] = {c: [] for c in conds}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            rgb = load_image(root / name)
            faces = [f for f in placer.find_faces(rgb) if f.landmarks is not None]
            if not faces:
                continue
            face = largest_face(faces)
            age = ages[name]
            for k, cond in enumerate(conds):
                try:
                    img = rgb if cond == "clean" else occlude(rgb, face.landmarks, cond,
                                                               np.random.default_rng((a.seed, i, k))).image
                except OcclusionError:
                    continue
                p = Path(tmp) / "face.jpg"
                save_jpeg(p, img)
                occ = load_image(p)
                try:
                    found = est.faces_of(occ)
                except NoFaceError:
                    rows[cond].append({"answered": False})
                    continue
                j = nearest_box([f[0] for f in found], face.box)
                crop, src = found[j][2][None], [face_source(found[j])]
                ideal = align_face(occ, face.keypoints, est.cache_size)[0]
                corr = net.corrections(crop, sources=src)[0]
                est.realign = False
                s_found = float(est._ages(est.student, crop)[0][0])
                s_ideal = float(est._ages(est.student, ideal[None])[0][0])
                routed_off = est.analyse_crops(crop)
                est.realign = True
                s_in_crop = float(est._ages(est.student, crop)[0][0])  # no source: warped within the crop
                s_real = float(est._ages(est.student, crop, sources=src)[0][0])
                routed_on = est.analyse_crops(crop, sources=src)
                rows[cond].append({
                    "answered": True, "y": age, "student_found": s_found, "student_realigned": s_real,
                    "student_in_crop": s_in_crop,
                    "student_ideal": s_ideal, "routed_off": float(routed_off["age"][0]),
                    "routed_on": float(routed_on["age"][0]), "occluded": bool(routed_on["occluded"][0]),
                    "correction_px": float(np.linalg.norm(transform_points(FRAME, corr) - FRAME, axis=1).mean())})
            if (i + 1) % 25 == 0:
                print(f"{i + 1}/{len(names)} photos", flush=True)
    return {"rows": rows, "n_photos": len(names)}


def summarise(rows: dict[str, list]) -> dict:
    out = {}
    keys = ("student_found", "student_in_crop", "student_realigned", "student_ideal", "routed_off", "routed_on")
    pooled: dict[str, list] = {"all occluded": []}
    for cond, rs in rows.items():
        ans = [r for r in rs if r["answered"]]
        if not ans:
            continue
        y = np.array([r["y"] for r in ans])
        out[cond] = {"n": len(rs), "answered": round(len(ans) / len(rs), 4),
                     **{k: round(float(np.abs(np.array([r[k] for r in ans]) - y).mean()), 3) for k in keys},
                     "flagged": round(float(np.mean([r["occluded"] for r in ans])), 4),
                     "correction_px": round(float(np.mean([r["correction_px"] for r in ans])), 2)}
        if cond != "clean":
            pooled["all occluded"] += ans
        if cond in OCCLUSION_TYPES:
            pooled.setdefault("paper types", []).extend(ans)
    for name, ans in pooled.items():
        y = np.array([r["y"] for r in ans])
        diff = {k: np.abs(np.array([r[k] for r in ans]) - y) for k in keys}
        d = diff["routed_on"] - diff["routed_off"]
        boot = np.random.default_rng(0).choice(len(d), (2000, len(d))).astype(np.int64)
        lo, hi = np.percentile(d[boot].mean(1), [2.5, 97.5])
        e = diff["student_realigned"] - diff["student_in_crop"]
        lo2, hi2 = np.percentile(e[boot].mean(1), [2.5, 97.5])
        out[name] = {"n": len(ans), **{k: round(float(v.mean()), 3) for k, v in diff.items()},
                     "routed_change": round(float(d.mean()), 3), "routed_change_ci95": [round(lo, 3), round(hi, 3)],
                     "source_change": round(float(e.mean()), 3), "source_change_ci95": [round(lo2, 3), round(hi2, 3)]}
    return out


def markdown(res: dict, cmd: str) -> str:
    lines = [f"# Realigned student crops, end to end ({res['part']} part, {res['n_photos']} photos)", "",
             f"Command: `{cmd}`", "",
             "Occluder drawn on the photo from the clean face's FaceMesh, JPEG q95, found and aligned as predict "
             "does. Student MAE on the crop as found / realigned (`faces.realign`) within the crop (edges "
             "replicated) / realigned from the photo (its `CropSource`, as predict does) / the photo aligned by the "
             "clean face's landmarks (the ceiling). Routed = predict's answer without / with realignment (the "
             "teacher answers unflagged faces the same way in both). Change: routed MAE with minus without; from "
             "the photo minus within the crop; paired bootstrap 95 % over faces.", "",
             "| condition | faces | student: found / in crop / from photo / ideal | routed: without / with | flagged "
             "| mean correction (px) |",
             "|---|---|---|---|---|---|"]
    for cond, r in res["summary"].items():
        if "answered" not in r:
            continue
        lines.append(f"| {cond} | {r['n']} | {r['student_found']} / {r['student_in_crop']} / "
                     f"{r['student_realigned']} / {r['student_ideal']} "
                     f"| {r['routed_off']} / {r['routed_on']} | {r['flagged']:.1%} | {r['correction_px']} |")
    for name in ("paper types", "all occluded"):
        r = res["summary"][name]
        lines.append(f"| **{name}** | {r['n']} | {r['student_found']} / {r['student_in_crop']} / "
                     f"{r['student_realigned']} (change {r['source_change']} {r['source_change_ci95']}) / "
                     f"{r['student_ideal']} | {r['routed_off']} / **{r['routed_on']}**, change {r['routed_change']} "
                     f"{r['routed_change_ci95']} | | |")
    lines += ["", f"Wall time {res['seconds']} s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="val")
    ap.add_argument("--dataset", default="utkface")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path, default=Path("docs/realign_val"))
    a = ap.parse_args()
    t0 = time.time()
    res = run(a)
    res = {"part": a.part, "dataset": a.dataset, "n_photos": res["n_photos"], "seed": a.seed, "backend": a.backend,
           "summary": summarise(res["rows"]), "seconds": round(time.time() - t0)}
    cmd = (f"python benchmarks/realign_e2e.py --part {a.part} --dataset {a.dataset} --n {a.n} --seed {a.seed} "
           f"--backend {a.backend} --out {a.out}")
    atomic_write_json(a.out.with_suffix(".json"), {"command": cmd, **res})
    atomic_write_text(a.out.with_suffix(".md"), markdown(res, cmd))
    print(markdown(res, cmd))


if __name__ == "__main__":
    main()
