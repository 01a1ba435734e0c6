"""Would the student answer better as the mean of several views of each occluded face? Seeded validation photos
under 11 occluder kinds (drawn on the photo from the clean face's FaceMesh, JPEG q95), found and realigned as
predict does; the student (alone, one plain view each, its selective mirror unless --no-mirror) reads the realigned
crop and eight views of it, each warped from the crop's source: shifted ±D px in x and in y, scaled ×1.04 and
/1.04, turned ±3°. Prints the MAE of each view alone and of view sets (mean age), and the paired change of each
set against the realigned crop alone (bootstrap 95 %), for the paper's six types and for all kinds.

    python benchmarks/student_views.py --n 100 --seed 5 --shift 3 --out runs/aligndiag/jtta_100_5_3.0.json
    python benchmarks/student_views.py --n 100 --seed 11 --shift 5 --out runs/aligndiag/jtta_100_11_5.0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agelens.faces.realign import centred_similarity, compose, shipped
from agelens.inference.predictor import SINGLE_VIEW, AgeEstimator, face_source
from agelens.occlusion.synth import OCCLUSION_TYPES
from agelens.utils import atomic_write_json
from realign_e2e import student_faces

NAMES = ("centre", "x+", "x-", "y+", "y-", "scale 1.04", "scale 1/1.04", "turn +3", "turn -3")
SETS = {"x shifts": [0, 1, 2], "y shifts": [0, 3, 4], "scales (shipped)": [0, 5, 6], "turns": [0, 7, 8],
        "scales + turns": [0, 5, 6, 7, 8], "all nine": list(range(9))}


def views(shift: float) -> list[np.ndarray]:
    return [centred_similarity(1, 0), centred_similarity(1, 0, (shift, 0)), centred_similarity(1, 0, (-shift, 0)),
            centred_similarity(1, 0, (0, shift)), centred_similarity(1, 0, (0, -shift)), centred_similarity(1.04, 0),
            centred_similarity(1 / 1.04, 0), centred_similarity(1, 3), centred_similarity(1, -3)]


def run(n: int, seed: int, shift: float, mirror: bool, scales: list[float] | None = None) -> list[dict]:
    est = AgeEstimator.from_pretrained(backend="auto")
    est.realign, est.student_views = False, SINGLE_VIEW  # the views are made here, read one by one
    if not mirror:
        est.student_tta_spread = None
    net, rows = shipped(), []
    at = views(shift) if not scales else [centred_similarity(1, 0)] + [centred_similarity(k, 0) for k in scales]
    for age, cond, chosen in student_faces(est, n, seed):
        src = face_source(chosen)
        c = net.corrections(chosen[2][None], sources=[src])[0]
        ages, spreads = est._ages(est.student, np.stack([src.resample(compose(v, c)) for v in at]))
        rows.append({"cond": cond, "y": age, "ages": [float(a) for a in ages], "spreads": [float(x) for x in spreads]})
    return rows


def report_scales(rows: list[dict], scales: list[float]) -> None:
    """--scales: each single view's MAE and its paired change against the crop as realigned."""
    y = np.array([r["y"] for r in rows])
    a = np.array([r["ages"] for r in rows])
    for group in ("paper types", "all occluded"):
        sel = np.array([group == "all occluded" or r["cond"] in OCCLUSION_TYPES for r in rows])
        e0 = np.abs(a[sel, 0] - y[sel])
        boot = np.random.default_rng(0).choice(int(sel.sum()), (2000, int(sel.sum())))
        print(f"{group}, {int(sel.sum())} faces: scale 1: {e0.mean():.3f}")
        for j, k in enumerate(scales, 1):
            d = np.abs(a[sel, j] - y[sel]) - e0
            lo, hi = np.percentile(d[boot].mean(1), [2.5, 97.5])
            print(f"  scale {k:.4f}: {e0.mean() + d.mean():.3f}, change {d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}], "
                  f"signed {float((a[sel, j] - y[sel]).mean()):+.2f}")


def report(rows: list[dict]) -> None:
    y = np.array([r["y"] for r in rows])
    a = np.array([r["ages"] for r in rows])
    print("per-face standard deviation of the nine views' ages:", round(float(a.std(1).mean()), 2))
    for group in ("paper types", "all occluded"):
        sel = np.array([group == "all occluded" or r["cond"] in OCCLUSION_TYPES for r in rows])
        e0 = np.abs(a[sel, 0] - y[sel])
        print(f"{group}, {int(sel.sum())} faces; one view each:",
              {nm: round(float(np.abs(a[sel, j] - y[sel]).mean()), 3) for j, nm in enumerate(NAMES)})
        boot = np.random.default_rng(0).choice(int(sel.sum()), (2000, int(sel.sum())))
        for nm, idx in SETS.items():
            d = np.abs(a[sel][:, idx].mean(1) - y[sel]) - e0
            lo, hi = np.percentile(d[boot].mean(1), [2.5, 97.5])
            print(f"  {nm}: {e0.mean() + d.mean():.3f}, change {d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")
        if "spreads" in rows[0]:  # the scales only where the first view's spread is in the top share
            sp = np.array([r["spreads"][0] for r in rows])[sel]
            for share in (0.25, 0.5, 0.75):
                unsure = sp >= np.quantile(sp, 1 - share)
                pred = np.where(unsure, a[sel][:, [0, 5, 6]].mean(1), a[sel, 0])
                d = np.abs(pred - y[sel]) - e0
                lo, hi = np.percentile(d[boot].mean(1), [2.5, 97.5])
                print(f"  scales where the spread is in the top {share:.0%} (from {np.quantile(sp, 1 - share):.2f}): "
                      f"{e0.mean() + d.mean():.3f}, change {d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--shift", type=float, default=3.0, help="px of the shifted views (256 px crops)")
    ap.add_argument("--no-mirror", action="store_true", help="the student's selective mirror off")
    ap.add_argument("--scales", type=float, nargs="+", default=None,
                    help="instead of the nine views: the realigned crop and these scales of it, each read alone")
    ap.add_argument("--out", type=Path, default=None, help="JSON of the per-face rows")
    ap.add_argument("--pool", type=Path, nargs="+", default=None, help="report these saved rows instead")
    a = ap.parse_args()
    if a.pool:
        rows = [r for f in a.pool for r in json.loads(f.read_text())]
    else:
        rows = run(a.n, a.seed, a.shift, not a.no_mirror, a.scales)
        if a.out:
            atomic_write_json(a.out, rows)
    if a.scales:
        report_scales(rows, a.scales)
    else:
        report(rows)


if __name__ == "__main__":
    main()
