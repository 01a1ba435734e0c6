"""Would blending the teacher's age into the student's help on flagged faces? The teacher reads every face in
predict anyway (its guard heads share the pass), so a blend costs nothing. End to end: each seeded UTKFace photo of
a split part is saved clean, under each of the paper's six types and (the first --n-new photos) under each newer
kind, then found and aligned as `predict` does; the face nearest the clean face's box gets the teacher's and the
student's (age, spread) and the occlusion score. Rules are compared on the same faces; --students adds other
student weights (torch, single view plus the shipped student's selective mirror), each scored alone and routed as
the shipped student is.

    python benchmarks/route_blend.py --part val --n 200 --n-new 100 --rows runs/blend_val.npz --out docs/route_blend.json

--rows keeps the per-face rows (and reuses them when the file exists, so the rules can be re-read without the
predict pass).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from agelens.data.splits import split_part
from agelens.data.views import centre_views
from agelens.faces.detect import FaceAnalyzer
from agelens.faces.prepare import largest_face
from agelens.imageio import load_image
from agelens.inference.backends import mirror_unsure
from agelens.inference.backends.torch import TorchModel
from agelens.inference.predictor import AgeEstimator, face_source, soft_weight
from agelens.occlusion.synth import OCCLUSION_TYPES, OcclusionError, occlude
from agelens.utils import atomic_write_json
from occlusion_e2e import NEW_KINDS, found_nearest

FIELDS = ("cond", "y", "ta", "ts", "sa", "ss", "occ")


def collect(part: str, n: int, n_new: int, seed: int, students: list[str] = ()) -> dict[str, np.ndarray]:
    est = AgeEstimator.from_pretrained(backend="auto")
    others = [TorchModel.load(s, tta_flip=False) for s in students]
    an = FaceAnalyzer()
    names = sorted(split_part("splits/utkface_seed0.json", part))
    files = [Path("../shared/data/utkface") / names[i] for i in sorted(np.random.default_rng(seed).permutation(len(names))[:n])]
    conds = ("clean",) + OCCLUSION_TYPES + NEW_KINDS
    rec: dict[str, list] = {k: [] for k in FIELDS + tuple(f"{x}{j}" for j in range(len(others)) for x in ("sa", "ss"))}
    with tempfile.TemporaryDirectory() as tmp:
        for i, f in enumerate(files):
            rgb = load_image(f)
            faces = [x for x in an.find_faces(rgb) if x.landmarks is not None]
            if not faces:
                continue
            face = largest_face(faces)
            for k, cond in enumerate(conds):
                if cond in NEW_KINDS and i >= n_new:
                    continue
                try:
                    img = rgb if cond == "clean" else occlude(rgb, face.landmarks, cond,
                                                               np.random.default_rng((11, i, k))).image
                except OcclusionError:
                    continue
                chosen = found_nearest(est, img, face.box, Path(tmp) / f"{i}_{k}.jpg")
                if chosen is None:
                    continue
                crop = chosen[2][None]
                ta, ts, _ = est.trunk(crop)
                sa, ss = est._ages(est.student, crop, sources=[face_source(chosen)])
                row = (cond, float(f.name.split("_")[0]), ta[0], ts[0], sa[0], ss[0], est.detector.scores(crop)[0])
                for m in others:
                    views = centre_views(crop, m.crop_size, m.input_size)
                    a, sp = mirror_unsure(m.run, views, est.student_tta_spread)
                    row += (a[0], sp[0])
                for key, v in zip(rec, row, strict=True):
                    rec[key].append(v)
            if (i + 1) % 25 == 0:
                print(f"{i + 1}/{len(files)} photos", flush=True)
    return {k: np.array(v) for k, v in rec.items()}


def candidates(d: dict[str, np.ndarray], students: list[str]) -> dict[str, dict]:
    """Each --students entry alone and routed (the shipped soft route with it as the student), beside the shipped."""
    cands = {"shipped": d}
    for j, name in enumerate(students):
        cands[name] = {**d, "sa": d[f"sa{j}"], "ss": d[f"ss{j}"]}
    out = {}
    for name, c in cands.items():
        r = rules(c)
        out[name] = {"routed": r["shipped soft route"], "student alone": r["student only"]}
    return out


def rules(d: dict[str, np.ndarray]) -> dict[str, dict]:
    """MAE per rule: clean, paper types, newer families and each paper type."""
    cond, y, ta, ts, sa, ss, occ = (d[k] for k in FIELDS)
    w0 = soft_weight(occ, occ >= 0.5)  # the shipped soft route's student weight
    out = {}
    cands = {"shipped soft route": w0, "teacher only": np.zeros_like(w0), "student only": np.ones_like(w0)}
    for a in (0.3, 0.5, 0.7):
        cands[f"student weight x {a}"] = w0 * a
    for p in (1, 2, 4):
        cands[f"soft route x inverse variance (spread^{p})"] = w0 * (1 / ss**p) / (1 / ss**p + 1 / ts**p)
    clean, paper = cond == "clean", np.isin(cond, OCCLUSION_TYPES)
    for name, w in cands.items():
        e = np.abs((1 - w) * ta + w * sa - y)
        out[name] = {"clean": round(float(e[clean].mean()), 3), "paper_types": round(float(e[paper].mean()), 3),
                     "newer_families": round(float(e[~clean & ~paper].mean()), 3),
                     **{t: round(float(e[cond == t].mean()), 3) for t in OCCLUSION_TYPES}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="val")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--n-new", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rows", type=Path, default=None, help="per-face rows (.npz): written, or read when present")
    ap.add_argument("--students", nargs="*", default=[], help="other student weights to score on the same faces")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.rows is not None and a.rows.is_file():
        d = dict(np.load(a.rows))
    else:
        d = collect(a.part, a.n, a.n_new, a.seed, a.students)
        if a.rows is not None:
            np.savez(a.rows, **d)
    res = {"command": f"python benchmarks/route_blend.py --part {a.part} --n {a.n} --n-new {a.n_new} --seed {a.seed}",
           "faces": len(d["y"]), "rules": rules(d)}
    if a.students:
        res["students"] = candidates(d, a.students)
    print(json.dumps(res, indent=1))
    if a.out:
        atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
