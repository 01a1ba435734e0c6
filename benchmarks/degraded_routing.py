"""Routing of degraded clean photos end to end: does a photo degradation (grain, noise, low resolution, ...) make
the occlusion detector send an unoccluded face to the student, and what does that cost?

Each seeded test photo (`benchmarks/generalise.py`'s sample, degradations and seeds) goes through
`AgeEstimator.predict` with the shipped weights twice: as shipped (route "auto") and with route "teacher" (the
same detection and alignment, the teacher answering every face). Per dataset and condition: answered share, the
share of largest faces flagged occluded and of those the student answers (weight >= 0.5), MAE as shipped, MAE with
the teacher alone on the same photos, and the mean signed error as shipped. None of these faces is occluded, so
every flag is a false alarm. To compare occlusion detectors, run it on two trees (a git worktree with the other
weights in `src/agelens/weights/`).

    python benchmarks/degraded_routing.py --n 250 --out docs/degraded_routing
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import generalise as g  # benchmarks/ is on the path when this file runs as a script
from agelens.data.augment import TEST_DEGRADATIONS
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json, atomic_write_text

CONDITIONS = ("clean", *TEST_DEGRADATIONS)


def run_set(auto: AgeEstimator, teacher: AgeEstimator, files: list[tuple[Path, float]], seed: int,
            conditions: tuple[str, ...]) -> dict:
    rows: dict[str, list] = {c: [] for c in conditions}
    for i, (f, age) in enumerate(files):
        rgb = load_image(f)
        for c in conditions:
            img = g.encode(rgb, ".jpg", 95) if c == "clean" else g.degraded(rgb, c, i, seed)
            a = g.largest_prediction(auto, img)
            t = g.largest_prediction(teacher, img) if a is not None else None
            rows[c].append((age, a, t))
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(files)}", flush=True)
    out = {}
    for c, rs in rows.items():
        ok = [(age, a, t) for age, a, t in rs if a is not None and t is not None]
        age = np.array([r[0] for r in ok])
        pa = np.array([r[1].age for r in ok])
        pt = np.array([r[2].age for r in ok])
        flagged = np.array([bool(r[1].extra.get("occluded")) for r in ok])
        student = np.array([r[1].model != auto.teacher.name for r in ok])
        out[c] = {"n": len(rs), "answered": round(sum(r[1] is not None for r in rs) / max(1, len(rs)), 4),
                  "flagged": round(float(flagged.mean()), 4), "student_answers": round(float(student.mean()), 4),
                  "mae": round(float(np.abs(pa - age).mean()), 3),
                  "mae_teacher_only": round(float(np.abs(pt - age).mean()), 3),
                  "mean_error": round(float((pa - age).mean()), 3),
                  "mae_flagged": round(float(np.abs(pa - age)[flagged].mean()), 3) if flagged.any() else None,
                  "mae_flagged_teacher_only": (round(float(np.abs(pt - age)[flagged].mean()), 3)
                                               if flagged.any() else None)}
        print(f"  {c}: {out[c]}", flush=True)
    return out


def markdown(res: dict) -> str:
    lines = [f"# Degraded clean photos: occlusion flags and routing ({res['date']})", "",
             f"`{res['command']}`", "", "Shipped weights, `AgeEstimator.predict` on each seeded test photo (largest "
             "face). No face here is occluded: 'flagged' is the occlusion detector's false-alarm rate. MAE as "
             "shipped, and with route \"teacher\" (the teacher answering every face) on the same photos.", ""]
    for ds, d in res["results"].items():
        lines += [f"## {ds}", "", "| condition | answered | flagged occluded | student answers | MAE | MAE, teacher "
                  "alone | signed error | MAE of flagged faces (teacher alone) |", "|---|---|---|---|---|---|---|---|"]
        for c, r in d.items():
            fl = (f"{r['mae_flagged']:.2f} ({r['mae_flagged_teacher_only']:.2f})" if r["mae_flagged"] is not None
                  else "—")
            lines.append(f"| {c} | {100 * r['answered']:.1f} % | {100 * r['flagged']:.1f} % | "
                         f"{100 * r['student_answers']:.1f} % | {r['mae']:.3f} | {r['mae_teacher_only']:.3f} | "
                         f"{r['mean_error']:+.2f} | {fl} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=250, help="test photos per dataset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--datasets", nargs="+", default=["utkface", "aaf"], choices=sorted(g.SPLITS))
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    ap.add_argument("--out", type=Path, default=None, help="writes OUT.json and OUT.md")
    a = ap.parse_args()
    auto, teacher = AgeEstimator.from_pretrained(), AgeEstimator.from_pretrained(route="teacher")
    res = {"command": " ".join(["python benchmarks/degraded_routing.py", *sys.argv[1:]]),
           "date": time.strftime("%Y-%m-%d %H:%M"), "backend": auto.backend, "results": {}}
    for ds in a.datasets:
        print(ds, flush=True)
        res["results"][ds] = run_set(auto, teacher, g.test_files(ds, a.n, a.seed), a.seed, tuple(a.conditions))
    if a.out:
        atomic_write_json(a.out.with_suffix(".json"), res)
        atomic_write_text(a.out.with_suffix(".md"), markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
