"""How many student passes does an occluded face need? The student answers nearly every face of a masked photo; by
default it reads each at three scales (`STUDENT_VIEWS`) with the mirrored view added where a view's spread
reaches its card's `tta_spread` (about 4.3 passes a face, most of `predict`'s time on such photos); the option
`FAST_STUDENT_VIEWS` with `student_mirror` reads one view 4 % smaller, plain and mirrored (2 passes). Seeded photos
of a split part under 11 occluder kinds (drawn on the photo from the clean face's FaceMesh, JPEG q95; UTKFace, or All-Age-Faces with --dataset aaf),
found and realigned as predict does (`realign_e2e.student_faces`); the student reads each of the three scales
plain and mirrored once, then view policies are scored on those readings: MAE of the student alone (paper types,
all kinds), mean passes a face, and the paired change against the three-scale policy (`shipped` in the output, as
it was when the lever was measured; bootstrap 95 %).

Policies: `shipped` (each scale, its mirror where unsure); `centre-first c` (the centre view and its mirror where
unsure; the other two scales, each with its mirror where unsure, only where the centre's spread reaches c, at the
quantiles of the centre's spread given by --quantiles); `views, no mirror`; `centre + mirror`; `1/1.04 + mirror`
(the FAST_STUDENT_VIEWS option); `scales 1.04 and 1/1.04`; `centre and 1/1.04, each mirrored`; `centre + mirror where
unsure`; `all six`.

    python benchmarks/student_passes.py --part val --n 150 --seed 21 --out runs/student_passes_val.json
    python benchmarks/student_passes.py --part val --dataset aaf --n 150 --seed 21 --out runs/student_passes_val_aaf.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agelens.data.views import centre_views
from agelens.faces.realign import realigned
from agelens.inference.predictor import AgeEstimator, face_source
from agelens.occlusion.synth import OCCLUSION_TYPES
from agelens.utils import atomic_write_json
from realign_e2e import student_faces

# the three scales read per face, in the order the policies index them (STUDENT_VIEWS as of 2026-12-04)
SCALES = ((1.0, 0.0), (1.04, 0.0), (1 / 1.04, 0.0))


def readings(part: str, n: int, seed: int, dataset: str = "utkface") -> tuple[list[dict], float]:
    """Per face: kind, true age, and the student's (age, spread) at each of SCALES plain and mirrored
    ((3, 2) arrays); and the card's tta_spread."""
    est = AgeEstimator.from_pretrained(backend="auto")
    s, rows = est.student, []
    for age, cond, chosen in student_faces(est, n, seed, part, dataset):
        crops = realigned(chosen[2][None], [face_source(chosen)], SCALES, est.realign)
        v = centre_views(crops, s.crop_size, s.input_size)
        plain, mirrored = s.run(v), s.run(np.ascontiguousarray(v[:, :, ::-1]))
        rows.append({"cond": cond, "y": age,
                     "ages": np.stack([plain[0], mirrored[0]], 1).tolist(),
                     "spreads": np.stack([plain[1], mirrored[1]], 1).tolist()})
    return rows, float(est.student_tta_spread)


def with_mirror(a: np.ndarray, s: np.ndarray, cut: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, V) ages and pass counts: each view, averaged with its mirror where its plain spread reaches cut."""
    flip = s[:, :, 0] >= cut
    return np.where(flip, a.mean(2), a[:, :, 0]), 1 + flip.astype(np.float64)


def centre_first(m: np.ndarray, p: np.ndarray, s: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """(N,) ages and passes: the centre view (its mirror where unsure), the other scales too where the centre's plain
    spread reaches c; m, p: `with_mirror`'s ages and pass counts."""
    more = s[:, 0, 0] >= c
    return np.where(more, m.mean(1), m[:, 0]), np.where(more, p.sum(1), p[:, 0])


def policies(a: np.ndarray, s: np.ndarray, cut: float, quantiles: list[float], cuts: dict | None = None
             ) -> dict[str, tuple]:
    """name → ((N,) answered ages, (N,) passes); cuts: fixed centre-first cuts (name → cut) besides the quantiles."""
    m, p = with_mirror(a, s, cut)
    out = {"shipped": (m.mean(1), p.sum(1)),
           "views, no mirror": (a[:, :, 0].mean(1), np.full(len(a), 3.0)),
           "centre + mirror": (a[:, 0].mean(1), np.full(len(a), 2.0)),
           "1/1.04 + mirror": (a[:, 2].mean(1), np.full(len(a), 2.0)),
           "scales 1.04 and 1/1.04": (a[:, 1:, 0].mean(1), np.full(len(a), 2.0)),
           "centre and 1/1.04, each mirrored": (a[:, [0, 2]].reshape(len(a), -1).mean(1), np.full(len(a), 4.0)),
           "centre + mirror where unsure": (m[:, 0], p[:, 0]),
           "all six": (a.reshape(len(a), -1).mean(1), np.full(len(a), 6.0))}
    for q in quantiles:
        c = float(np.quantile(s[:, 0, 0], q))
        out[f"centre-first {c:.2f} (q{q:.2f})"] = centre_first(m, p, s, c)
    for name, c in (cuts or {}).items():
        out[name] = centre_first(m, p, s, c)
    return out


def report(rows: list[dict], cut: float, quantiles: list[float], cuts: dict | None = None) -> dict:
    """Each policy's MAE per group, passes a face, paired change against `shipped` with a bootstrap 95 % CI.
    cuts: fixed centre-first cuts (name → cut) to score instead of quantiles of these readings."""
    y = np.array([r["y"] for r in rows])
    a, s = np.array([r["ages"] for r in rows]), np.array([r["spreads"] for r in rows])
    pol = policies(a, s, cut, quantiles, cuts)
    out = {}
    for group in ("paper types", "all kinds"):
        sel = np.array([group == "all kinds" or r["cond"] in OCCLUSION_TYPES for r in rows])
        base = np.abs(pol["shipped"][0][sel] - y[sel])
        boot = np.random.default_rng(0).choice(int(sel.sum()), (2000, int(sel.sum())))
        print(f"\n{group}, {int(sel.sum())} faces")
        res = {}
        for name, (ages, passes) in pol.items():
            e = np.abs(ages[sel] - y[sel])
            d = (e - base)[boot].mean(1)
            res[name] = {"mae": round(float(e.mean()), 3), "passes": round(float(passes[sel].mean()), 2),
                         "change": round(float((e - base).mean()), 3),
                         "ci95": [round(float(np.quantile(d, 0.025)), 3), round(float(np.quantile(d, 0.975)), 3)]}
            r = res[name]
            print(f"  {name:36s} MAE {r['mae']:.3f}  passes {r['passes']:.2f}  change {r['change']:+.3f} "
                  f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]")
        out[group] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", default="val", choices=("val", "test"))
    ap.add_argument("--dataset", default="utkface", choices=("utkface", "aaf"))
    ap.add_argument("--n", type=int, default=150, help="photos (each under 11 occluder kinds)")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--quantiles", type=float, nargs="*", default=[0.25, 0.4, 0.5, 0.6, 0.75])
    ap.add_argument("--cut", type=float, action="append", default=[],
                    help="also score centre-first at this fixed centre spread (repeatable; e.g. a cut chosen on val)")
    ap.add_argument("--out", type=Path, default=None, help="JSON with the readings and the table")
    ap.add_argument("--report", type=Path, nargs="+", default=None,
                    help="score saved readings (--out files of earlier runs, pooled) instead of reading faces")
    a = ap.parse_args()
    if a.report:
        saved = [json.loads(f.read_text()) for f in a.report]
        if len({d["tta_spread"] for d in saved}) > 1:
            raise SystemExit("these readings were made with different tta_spread cuts: report them one by one")
        report([r for d in saved for r in d["rows"]], saved[0]["tta_spread"], a.quantiles,
               {f"centre-first {c:.2f} (fixed)": c for c in a.cut})
        return
    rows, cut = readings(a.part, a.n, a.seed, a.dataset)
    table = report(rows, cut, a.quantiles, {f"centre-first {c:.2f} (fixed)": c for c in a.cut})
    if a.out:
        atomic_write_json(a.out, {"command": f"python benchmarks/student_passes.py --part {a.part} --dataset "
                                  f"{a.dataset} --n {a.n} --seed {a.seed}", "tta_spread": cut, "table": table, "rows": rows})


if __name__ == "__main__":
    main()
