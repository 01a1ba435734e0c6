"""Fit the people table of the ImageNet check (`faces.animal.PeopleTable`), from human faces only.

Every face `predict` finds (the check switched off) on the fit photos: UTKFace and All-Age-Faces train photos, more
train photos of both under one test degradation each (`data.augment.TEST_DEGRADATIONS` in turn), UTKFace train
photos with an occluder of each family in turn drawn on the photo, and realocc's fit half (real masks and
sunglasses). Each
face's context crop (`animal.context_crop`) is read by the ImageNet classifier. The table's classes are those with
the largest mean probability over all these faces, together carrying `cover` of it; its threshold is the `quantile`
of the class mass over the faces the people veto is asked about (a fallback step's, or the detector under
`animal.PEOPLE_BELOW`: `inference.finding.without_non_faces`; its verifier gate, `animal.FACE_SURE`, which only saves
time, is not applied here). No image without a face is used: what the check turns away is measured afterwards
(`benchmarks/no_face.py`, `benchmarks/cat_check.py`).

    python -m agelens.train.people --out src/agelens/weights/people_classes.json     # about 4 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import NoFaceError

COVER = 0.95  # share of the human faces' mean ImageNet probability the table's classes carry
QUANTILE = 0.003  # the threshold: this quantile of the class mass over the asked human faces


def fit_table(probs: np.ndarray, asked: np.ndarray, cover: float = COVER, quantile: float = QUANTILE
              ) -> tuple[np.ndarray, float]:
    """(classes, threshold) from (N, 1000) ImageNet probabilities of human faces and which of them the check is
    asked about: the classes with the largest mean probability, carrying `cover` of it together, and the
    `quantile` of their mass over the asked faces."""
    if len(probs) == 0 or not asked.any():
        raise ValueError("no human faces to fit the people table on")
    mean = probs.mean(0)
    order = np.argsort(-mean, kind="stable")
    k = int(np.searchsorted(np.cumsum(mean[order]) / mean.sum(), cover)) + 1
    classes = np.sort(order[:k])
    mass = probs[asked][:, classes].sum(1)
    return classes, float(np.quantile(mass, quantile))


def collect(est, photos, log=print) -> tuple[np.ndarray, np.ndarray, dict]:
    """(probs, asked, faces per group) over (group, rgb) photos: every face `find_and_align` answers with the check
    switched off, read on its context crop."""
    from ..faces import animal
    from ..inference.finding import find_and_align

    check = animal.shipped()
    if check is None:
        raise SystemExit("the ImageNet check cannot be exported here (torch is needed once)")
    probs, asked, counts, t0 = [], [], {}, time.time()
    for i, (group, rgb) in enumerate(photos):
        try:
            faces = find_and_align(rgb, est.analyzer, est.cache_size, True, est.verifier, upright=est.upright,
                                   vet=False)
        except NoFaceError:
            continue
        probs.append(check.probs([animal.context_crop(rgb, f[0]) for f in faces]))
        asked += [animal.people_asked(score, how) for _, score, _, _, how, *_ in faces]
        counts[group] = counts.get(group, 0) + len(faces)
        if i % 500 == 0:
            log(f"{i} photos, {len(asked)} faces, {time.time() - t0:.0f} s")
    return np.concatenate(probs), np.array(asked, bool), counts


def fit_photos(shared: Path, n_utk: int, n_aaf: int, n_degraded: int, n_occluded: int, seed: int = 0):
    """(group, rgb) fit photos: train parts of the saved splits and realocc's fit half, as the module says."""
    from ..data.augment import TEST_DEGRADATIONS, degrade_for_test
    from ..data.splits import split_part
    from ..faces.detect import FaceAnalyzer
    from ..faces.prepare import largest_face
    from ..imageio import load_image
    from ..occlusion.synth import ALL_TYPES, OcclusionError, occlude
    from .guards import realocc_files

    rng = np.random.default_rng(seed)
    utk = [shared / "utkface" / f for f in rng.permutation(sorted(split_part("splits/utkface_seed0.json", "train")))]
    aaf = [shared / "aaf" / f for f in rng.permutation(sorted(split_part("splits/aaf_seed0.json", "train")))]
    for p in utk[:n_utk]:
        yield "utkface", load_image(p)
    for p in aaf[:n_aaf]:
        yield "aaf", load_image(p)
    degraded = [p for pair in zip(utk[n_utk:], aaf[n_aaf:], strict=False) for p in pair][:n_degraded]
    for i, p in enumerate(degraded):
        name = TEST_DEGRADATIONS[i % len(TEST_DEGRADATIONS)]
        yield f"degraded:{name}", degrade_for_test(load_image(p), name, seed * 100_003 + i)
    placer = FaceAnalyzer()  # FaceMesh landmarks to place the occluders from
    for i, p in enumerate(utk[n_utk + n_degraded: n_utk + n_degraded + n_occluded]):
        rgb = load_image(p)
        faces = [f for f in placer.find_faces(rgb) if f.landmarks is not None]
        if not faces:
            continue
        kind = ALL_TYPES[i % len(ALL_TYPES)]
        try:
            yield f"occluded:{kind}", occlude(rgb, largest_face(faces).landmarks, kind,
                                              np.random.default_rng((seed, i))).image
        except OcclusionError:
            continue
    for f in realocc_files(shared, "fit"):
        yield "realocc_fit", load_image(shared / f)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--utk", type=int, default=800, help="UTKFace train photos")
    ap.add_argument("--aaf", type=int, default=800, help="All-Age-Faces train photos")
    ap.add_argument("--degraded", type=int, default=600, help="train photos (both datasets) under a degradation")
    ap.add_argument("--occluded", type=int, default=600, help="UTKFace train photos with a drawn occluder")
    ap.add_argument("--cover", type=float, default=COVER)
    ap.add_argument("--quantile", type=float, default=QUANTILE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="src/agelens/weights/people_classes.json")
    a = ap.parse_args(argv)
    from ..faces import animal
    from ..inference.predictor import AgeEstimator
    from ..utils import atomic_write_json

    t0 = time.time()
    est = AgeEstimator.from_pretrained()
    probs, asked, counts = collect(est, fit_photos(a.shared, a.utk, a.aaf, a.degraded, a.occluded, a.seed))
    classes, threshold = fit_table(probs, asked, a.cover, a.quantile)
    out = {"format": animal.FORMAT, "classes": classes.tolist(), "threshold": round(threshold, 5),
           "cover": a.cover, "quantile": a.quantile,
           "fit": {"command": "python -m agelens.train.people " + " ".join(sys.argv[1:] if argv is None else argv),
                   "faces": int(len(probs)), "asked": int(asked.sum()), "faces_per_group": counts,
                   "photos": "train parts of the saved splits (UTKFace, All-Age-Faces; clean, degraded, with a drawn "
                             "occluder) and realocc's fit half; no image without a face",
                   "seconds": round(time.time() - t0)}}
    atomic_write_json(a.out, out)
    print({k: out[k] for k in ("threshold", "cover", "quantile")}, len(classes), "classes", out["fit"])


if __name__ == "__main__":
    from ..utils import run_tool

    run_tool(main)
