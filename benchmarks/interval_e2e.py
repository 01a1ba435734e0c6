"""90 % intervals end to end on occluded photos: seeded photos of a split part (UTKFace and All-Age-Faces), each
clean, under each of the paper's six occluder types and (the first --n-new photos) each newer kind, drawn on the
photo from the clean face's FaceMesh and saved as JPEG q95, then `AgeEstimator.predict` on the file (shipped
models, default settings: the student reads realigned crops at three views). Reports how often predict's own
`interval` holds the true age, per condition and per answering model, with the mean width; and writes, per
dataset, an `agelens evaluate`-style predictions.csv (age, pred, spread, model) of the answered faces, which
`agelens calibrate MODEL --predictions ...` fits a model's z on (val parts only).

    python benchmarks/interval_e2e.py --part val --n 200 --n-new 40 --seed 3 --out runs/interval_e2e_val

--one-occluder: each photo clean and under one paper occluder (type i mod 6), drawn as `benchmarks/generalise.py`'s
"occluded" condition draws it (`generalise.occluded_photo`, seeded by --seed), the largest face read; with --n 0
every photo of the part (the whole test parts: coverage to a point, where 250 photos move it by about two).

Writes OUT/summary.json, OUT/summary.md and OUT/<dataset>_predictions.csv. Run from the repo root.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

import generalise as g  # benchmarks/ is on the path when this file runs as a script
from agelens.errors import NoFaceError
from agelens.faces.detect import FaceAnalyzer
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.occlusion.synth import OCCLUSION_TYPES
from agelens.utils import atomic_write_json, atomic_write_text
from occlusion_e2e import NEW_KINDS, nearest_box, occluded_on_photo, save_jpeg

GROUPS = {"clean": ("clean",), "paper types": OCCLUSION_TYPES, "newer kinds": NEW_KINDS}


def row(dataset: str, f: Path, cond: str, age: float, p) -> dict:
    """A predictions.csv row: the photo, its condition and true age, and FacePrediction p's age, spread, interval
    and model."""
    return {"dataset": dataset, "file": f.name, "condition": cond, "age": age, "pred": p.age, "spread": p.spread,
            "lo": p.interval[0], "hi": p.interval[1], "model": p.model}


def face_rows(est: AgeEstimator, files: list[tuple[Path, float]], n_new: int, seed: int, dataset: str) -> list[dict]:
    """One row per answered face: true age, predicted age, spread, interval, model, condition."""
    an, rows = FaceAnalyzer(), []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        for i, (f, age) in enumerate(files):
            rgb = load_image(f)
            kinds = OCCLUSION_TYPES + (NEW_KINDS if i < n_new else ())
            placed = occluded_on_photo(an, rgb, kinds, (seed, i))
            if placed is None:
                continue
            face, occluded = placed
            for cond, img in (("clean", rgb), *occluded.items()):
                save_jpeg(path, img)
                try:
                    preds = est.predict(path)
                except NoFaceError:
                    continue
                rows.append(row(dataset, f, cond, age, preds[nearest_box([q.box for q in preds], face.box)]))
            if (i + 1) % 50 == 0:
                print(f"{dataset}: {i + 1}/{len(files)} photos", flush=True)
    return rows


def one_occluder_rows(est: AgeEstimator, files: list[tuple[Path, float]], seed: int, dataset: str) -> list[dict]:
    """generalise.py's clean and "occluded" conditions: per photo (JPEG q95) the largest face's row, clean and
    with one paper occluder (type i mod 6) drawn from the clean photo's FaceMesh."""
    an, rows = FaceAnalyzer(), []
    for i, (f, age) in enumerate(files):
        rgb = load_image(f)
        for cond, img in (("clean", g.encode(rgb, ".jpg", 95)), ("occluded", g.occluded_photo(an, rgb, i, seed))):
            p = None if img is None else g.largest_prediction(est, img)
            if p is not None:
                rows.append(row(dataset, f, cond, age, p))
        if (i + 1) % 250 == 0:
            print(f"{dataset}: {i + 1}/{len(files)} photos", flush=True)
    return rows


def cover(rows: list[dict], boots: int = 1000) -> dict:
    """Coverage (with its 95 % bootstrap interval over faces), mean width and MAE of the rows' intervals."""
    if not rows:
        return {"n": 0}
    age = np.array([r["age"] for r in rows])
    lo, hi = np.array([r["lo"] for r in rows]), np.array([r["hi"] for r in rows])
    hit = (lo <= age) & (age <= hi)
    rng = np.random.default_rng(0)
    ci = np.percentile([hit[rng.integers(0, len(hit), len(hit))].mean() for _ in range(boots)], [2.5, 97.5])
    return {"n": len(rows), "coverage": round(float(hit.mean()), 4), "ci": [round(float(c), 4) for c in ci],
            "mean_width": round(float((hi - lo).mean()), 2),
            "mae": round(float(np.mean([abs(r["pred"] - r["age"]) for r in rows])), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="val")
    ap.add_argument("--n", type=int, default=200, help="photos per dataset (0: every photo of the part)")
    ap.add_argument("--one-occluder", action="store_true", help="clean and one paper occluder per photo, as "
                    "generalise.py's occluded condition (--n-new unused)")
    ap.add_argument("--n-new", type=int, default=40, help="of those, photos also under each newer kind")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--datasets", nargs="+", default=["utkface", "aaf"])
    ap.add_argument("--out", type=Path, default=Path("runs/interval_e2e_val"))
    ap.add_argument("--backend", default="auto", help="predict's backend (auto: as predict chooses on this CPU)")
    a = ap.parse_args()
    t0 = time.time()
    est = AgeEstimator.from_pretrained(backend=a.backend)
    rows = []
    for ds in a.datasets:
        files = g.test_files(ds, a.n or 10**9, a.seed, a.part)
        rows += (one_occluder_rows(est, files, a.seed, ds) if a.one_occluder
                 else face_rows(est, files, a.n_new, a.seed, ds))
    a.out.mkdir(parents=True, exist_ok=True)
    for ds in a.datasets:  # evaluate's predictions.csv columns that `agelens calibrate --predictions` reads
        rs = [r for r in rows if r["dataset"] == ds]
        tmp = a.out / f".{ds}_predictions.csv.tmp"
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["path", "age", "pred", "spread", "model", "condition", "lo", "hi"])
            w.writeheader()
            for r in rs:
                w.writerow({"path": r["file"], **{k: r[k] for k in ("age", "pred", "spread", "model", "condition",
                                                                  "lo", "hi")}})
        tmp.replace(a.out / f"{ds}_predictions.csv")
    groups = {"clean": ("clean",), "occluded": ("occluded",)} if a.one_occluder else GROUPS
    table = {}
    for group, conds in groups.items():
        for model in ("all", "teacher", "student"):
            rs = [r for r in rows if r["condition"] in conds and model in ("all", r["model"])]
            table[f"{group} / {model}"] = cover(rs)
    per_ds = {ds: {group: cover([r for r in rows if r["dataset"] == ds and r["condition"] in conds])
                   for group, conds in groups.items()} for ds in a.datasets}
    cmd = (f"python benchmarks/interval_e2e.py --part {a.part} --n {a.n} "
           + ("--one-occluder" if a.one_occluder else f"--n-new {a.n_new}") + f" --seed {a.seed} --out {a.out}"
           + (f" --backend {a.backend}" if a.backend != "auto" else ""))
    res = {"command": cmd, "backend": est.backend, "z": {"teacher": getattr(est.teacher, "interval_z", None),
                                                          "student": getattr(est.student, "interval_z", None)},
           "table": table, "per_dataset": per_ds, "seconds": round(time.time() - t0)}
    atomic_write_json(a.out / "summary.json", res)
    lines = ["# 90 % intervals end to end on occluded photos", "", f"Command: `{cmd}` (backend {est.backend}, "
             f"z teacher {res['z']['teacher']}, student {res['z']['student']}; {res['seconds']} s)", "",
             "| condition / model | faces | coverage [95 %] | mean width | MAE |", "|---|---|---|---|---|"]
    for k, r in table.items():
        if r["n"]:
            lines.append(f"| {k} | {r['n']} | {r['coverage']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                         f"{r['mean_width']:.1f} | {r['mae']:.2f} |")
    lines += ["", "| dataset | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for ds, per_group in per_ds.items():
        lines.append(f"| {ds} | " + " | ".join(f"{r['coverage']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] ({r['n']})"
                                              if r["n"] else "—" for r in per_group.values()) + " |")
    atomic_write_text(a.out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
