"""Where the teacher's guard heads are sure enough to skip the separate networks, measured on faces as `predict`
finds them.

The cascade (`inference.finding.TrunkGuard`) runs the separate occlusion detector and face network only on crops
whose head score falls inside a band; `train.trunk_guards` sets first bands from aligned validation crops. End to
end the crops score differently (in a 200-photo profile the separate networks still ran on 0.74 and 0.86 crops per
UTKFace photo, a quarter of the time per photo), so the bands are measured here on held-out data, with one
invariant: skipping the separate network changes none of its verdicts on these faces, with a margin.

- occlusion, `skip_below`: half the lowest head score among held-out occluded faces that the separate detector
  scores at the soft route's lower bound or above (from there the student's age weighs in): real masks and
  sunglasses of the realocc fit half, and the paper's six occluder types drawn on UTKFace validation photos
  before detection, as `benchmarks/occlusion_e2e.py` draws them on test photos. The newer families are measured
  and reported, not part of the rule: on several of them (hair, hand, scarf, object, face shield) the teacher
  answers better than the student end to end (docs/occlusion_e2e.md), and their head scores reach 1e-5.
- face, `skip_above`: the highest head score among held-out non-faces (the odd quarter of the guards' negatives,
  `cache/guards`) that the separate face network rejects at the detector step's threshold, its distance to 1
  halved. (TrunkGuard.scores decides only faces the detector proposed; the fallback steps ask the separate
  network alone.)

The share of clean validation faces (UTKFace, All-Age-Faces) that skip each network is reported.

    python -m agelens.train.guard_bands --n 250 --out runs/guard_bands [--write-card]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ..data.splits import sample_names, split_part
from ..errors import NoFaceError
from ..faces.detect import DETECTED_THRESHOLD, FaceAnalyzer
from ..faces.prepare import largest_face
from ..imageio import load_image
from ..occlusion.synth import FAMILIES, OcclusionError, occlude
from ..utils import atomic_write_json, weights_dir
from .guards import realocc_half

KINDS = tuple(k for kinds in FAMILIES.values() for k in kinds)


def scores(est, path: Path) -> dict | None:
    """Head and separate-network scores of the largest face `predict` finds in a file (None: no face)."""
    try:
        faces = est.faces_of(load_image(path))
    except NoFaceError:
        return None
    k = max(range(len(faces)), key=lambda i: (faces[i][0][2] - faces[i][0][0]) * (faces[i][0][3] - faces[i][0][1]))
    c = faces[k][2][None]
    return {"head_occ": float(est.detector.head_scores(c)[0]), "sep_occ": float(est.detector.fallback.scores(c)[0]),
            "head_face": float(est.verifier.head_scores(c)[0]), "sep_face": float(est.verifier.fallback.scores(c)[0])}


def collect(est, shared: Path, n: int, n_kinds: int, seed: int = 0) -> list[dict]:
    """Rows {set, ...scores}: a seeded sample of UTKFace validation photos clean and with each occluder kind drawn
    before detection (every paper type on n photos, the newer kinds on the first n_kinds of them), a seeded sample
    of All-Age-Faces validation photos, the realocc fit half."""
    import pandas as pd

    rows = []
    utk_val = sample_names(split_part(Path("splits/utkface_seed0.json"), "val"), n, seed)
    an = FaceAnalyzer(fast=False)  # FaceMesh with iris points: the occluders are placed from them
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(utk_val):
            rgb = load_image(shared / "utkface" / name)
            faces = [f for f in an.find_faces(rgb) if f.landmarks is not None]
            if not faces:
                continue
            lm = largest_face(faces).landmarks
            for k, kind in enumerate(("clean",) + KINDS):
                if k > len(FAMILIES["paper"]) and i >= n_kinds:
                    continue
                try:
                    img = rgb if kind == "clean" else occlude(rgb, lm, kind, np.random.default_rng((seed, i, k))).image
                except OcclusionError:
                    continue
                p = Path(tmp) / "face.jpg"
                cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                r = scores(est, p)
                if r is not None:
                    rows.append({"set": f"utk_{kind}", **r})
    for f in sample_names(split_part(Path("splits/aaf_seed0.json"), "val"), n, seed):
        r = scores(est, shared / "aaf" / f)
        if r is not None:
            rows.append({"set": "aaf_clean", **r})
    occ = pd.read_csv(shared / "realocc.csv")
    occ = occ[occ.file.map(realocc_half) == "fit"]
    for f, kind in zip(occ.file, occ.occluder, strict=True):
        r = scores(est, shared / f)
        if r is not None:
            rows.append({"set": f"real_{kind}", **r})
    return rows


def negative_scores(est, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(head, separate) face scores of the held-out non-faces (the odd quarter, as train.trunk_guards holds out)."""
    neg = np.load(data / "guards.npz", mmap_mode="r")["neg"][1::4]
    head, sep = [], []
    for i in range(0, len(neg), 64):
        c = np.asarray(neg[i:i + 64])
        head.append(est.verifier.head_scores(c))
        sep.append(est.verifier.fallback.scores(c))
    return np.concatenate(head), np.concatenate(sep)


def bands(rows: list[dict], neg_head: np.ndarray, neg_sep: np.ndarray, occ_min: float) -> dict:
    """The two bands and what they do on the measured faces. occ_min: the separate detector's score from which an
    occluded face counts (the soft route's lower bound: from there the student's age weighs in)."""
    sets = sorted({r["set"] for r in rows})
    by = {s: {k: np.array([r[k] for r in rows if r["set"] == s]) for k in ("head_occ", "sep_occ", "head_face")}
          for s in sets}
    occluded = [s for s in sets if s.startswith("real_") or s[4:] in FAMILIES["paper"]]
    flagged = np.concatenate([by[s]["head_occ"][by[s]["sep_occ"] >= occ_min] for s in occluded])
    skip_below = float(flagged.min()) / 2
    rejected = neg_head[neg_sep < DETECTED_THRESHOLD]
    skip_above = 1 - (1 - float(rejected.max())) / 2
    report = {s: {"n": len(v["head_occ"]), "occlusion_skipped": round(float((v["head_occ"] < skip_below).mean()), 4),
                  "face_skipped": round(float((v["head_face"] >= skip_above).mean()), 4)} for s, v in by.items()}
    return {"occlusion": {"skip_below": round(skip_below, 4), "lowest_flagged_head_score": round(float(flagged.min()), 5),
                          "n_flagged": len(flagged)},
            "face": {"skip_above": round(skip_above, 6), "highest_rejected_negative": round(float(rejected.max()), 6),
                     "n_negatives": len(neg_head), "negatives_skipped": int((neg_head >= skip_above).sum())},
            "per_set": report}


def write_card(res: dict, weights: Path) -> None:
    card_p = weights / "teacher.json"
    card = json.loads(card_p.read_text())
    card["guard_cascade"] = {"occlusion": {"skip_below": res["occlusion"]["skip_below"]},
                             "face": {"skip_above": res["face"]["skip_above"]}}
    card.setdefault("guard_metrics", {})["cascade"] = {k: res[k] for k in ("occlusion", "face", "per_set",
                                                                            "recipe")}
    atomic_write_json(card_p, card)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=250, help="UTKFace and All-Age-Faces validation photos")
    ap.add_argument("--n-kinds", type=int, default=80, help="UTKFace photos for each newer occluder kind")
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--data", type=Path, default=Path("cache/guards"), help="`python -m agelens.train.guards data`")
    ap.add_argument("--out", type=Path, default=Path("runs/guard_bands"))
    ap.add_argument("--write-card", action="store_true", help="write the bands into the shipped teacher's card")
    a = ap.parse_args(argv)
    from ..inference.predictor import SOFT_BAND, AgeEstimator

    t0 = time.perf_counter()
    est = AgeEstimator.from_pretrained()
    if not hasattr(est.detector, "fallback") or est.detector.fallback is None or est.verifier.fallback is None:
        raise SystemExit("the shipped teacher has no guard heads with separate networks behind them: no cascade")
    rows = collect(est, a.shared, a.n, a.n_kinds)
    neg_head, neg_sep = negative_scores(est, a.data)
    res = bands(rows, neg_head, neg_sep, SOFT_BAND[0])
    res["recipe"] = f"python -m agelens.train.guard_bands --n {a.n} --n-kinds {a.n_kinds} --write-card"
    res["seconds"] = round(time.perf_counter() - t0)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out / "bands.json", res)
    atomic_write_json(a.out / "rows.json", rows)  # every measured face's head and separate scores
    print(json.dumps(res, indent=1))
    if a.write_card:
        write_card(res, weights_dir())
        print(f"wrote {weights_dir() / 'teacher.json'}")


if __name__ == "__main__":
    from ..utils import run_tool

    run_tool(main)
