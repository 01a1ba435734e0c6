"""Photos turned sideways or upside down, end to end: each test photo turned 0, 90, 180 and 270 degrees
(np.rot90, counter-clockwise; lossless), then `AgeEstimator.predict` on it (detection, alignment, guards, routing),
largest face; realocc's measure half (real masks and sunglasses, no ages) beside them. Two arms in one run on the
same images: the shipped pipeline, which looks again on the image turned each way where the largest face does not
read upright (`inference.finding._upright`), and the same pipeline with that check off (`est.upright = False`).
Per turn: answered share, MAE, the mean age change against the upright photo's answer and the time per image; on
the upright photos, the answers the check changed, each arm's time per image (one process, the arms taking turns
over --rounds rounds) and the time spent inside the check itself.

    python benchmarks/rotated.py --n 250 --realocc 250 --out docs/rotated.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json
from generalise import one_age, test_files

TURNS = (0, 1, 2, 3)


def realocc_files(n: int, seed: int) -> list[tuple[Path, float]]:
    """A seeded sample of realocc's "measure" half (never used for training), without ages."""
    from agelens.train.guards import realocc_files as half_files

    shared = Path("../shared/data")
    files = half_files(shared, "measure")
    idx = np.random.default_rng(seed).permutation(len(files))[:n]
    return [(shared / files[i], float("nan")) for i in sorted(idx)]


def run(est: AgeEstimator, images: list[np.ndarray], upright: bool) -> dict:
    est.upright = upright
    out = {}
    for k in TURNS:
        ages, secs = [], 0.0
        for rgb in images:
            img = np.ascontiguousarray(np.rot90(rgb, k))
            t = time.perf_counter()
            got = one_age(est, img)
            secs += time.perf_counter() - t
            ages.append(np.nan if got is None else got[0])
        out[k] = {"ages": np.array(ages), "seconds": secs}
    return out


def speed(est: AgeEstimator, images: list[np.ndarray], rounds: int) -> dict:
    """ms per upright image of each arm, the arms taking turns round by round (median over rounds)."""
    times: dict[str, list[float]] = {"upright check": [], "check off": []}
    for r in range(rounds):
        for arm in (("upright check", "check off") if r % 2 == 0 else ("check off", "upright check")):
            est.upright = arm == "upright check"
            t = time.perf_counter()
            for rgb in images:
                one_age(est, rgb)
            times[arm].append(1000 * (time.perf_counter() - t) / len(images))
    est.upright = True
    return {k: round(float(np.median(v)), 2) for k, v in times.items()} | {"rounds": rounds}


def check_cost(est: AgeEstimator, images: list[np.ndarray]) -> dict:
    """Time spent inside the check itself (`finding._upright`) per upright image, and how often it looked
    again (ran the detector on turned images) or switched to a turn."""
    from agelens.inference import finding

    spent, looked, switched = [0.0], [0], [0]
    check = finding._upright

    def timed(rgb, faces, find, detect):
        def counting(img):  # the check runs the detector only on turned images
            looked[0] += 1
            return detect(img)

        t = time.perf_counter()
        out = check(rgb, faces, find, counting)
        spent[0] += time.perf_counter() - t
        switched[0] += any(turn for _, _, turn in out)
        return out

    est.upright = True
    finding._upright = timed
    try:
        for rgb in images:
            one_age(est, rgb)
    finally:
        finding._upright = check
    return {"ms_per_image": round(1000 * spent[0] / len(images), 3),
            "detector_passes_on_turned_images_per_image": round(looked[0] / len(images), 3),
            "switched": switched[0]}


def summarise(arm: dict, truth: np.ndarray) -> dict:
    base = arm[0]["ages"]
    rows = {}
    for k, r in arm.items():
        a = r["ages"]
        ok = ~np.isnan(a)
        both = ok & ~np.isnan(base)
        scored = ok & ~np.isnan(truth)
        rows[f"{90 * k}"] = {
            "answered": round(float(ok.mean()), 4),
            "mae": round(float(np.abs(a[scored] - truth[scored]).mean()), 3) if scored.any() else None,
            "change_vs_upright": round(float(np.abs(a[both] - base[both]).mean()), 3) if both.any() else None,
            "off_by_10_vs_upright": round(float((np.abs(a[both] - base[both]) > 10).mean()), 4) if both.any() else None,
            "ms_per_image": round(1000 * r["seconds"] / len(a), 2)}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=250, help="test photos per dataset")
    ap.add_argument("--realocc", type=int, default=250, help="photos of realocc's measure half (no ages)")
    ap.add_argument("--rounds", type=int, default=4, help="timing rounds on the upright photos, arms in turn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    est = AgeEstimator.from_pretrained()
    res = {"command": f"python benchmarks/rotated.py --n {a.n} --realocc {a.realocc} --rounds {a.rounds} --seed {a.seed}",
           "backend": est.backend,
           "protocol": "E2E: AgeEstimator.predict on each photo turned by np.rot90 (lossless), largest face"}
    t0 = time.time()
    for ds in ("utkface", "aaf", "realocc"):
        files = test_files(ds, a.n, a.seed) if ds != "realocc" else realocc_files(a.realocc, a.seed)
        images = [load_image(p) for p, _ in files]
        truth = np.array([age for _, age in files], np.float64)
        arms = {"shipped (upright check)": run(est, images, True), "check off": run(est, images, False)}
        on, off = arms["shipped (upright check)"][0]["ages"], arms["check off"][0]["ages"]
        same = ~np.isnan(on) & ~np.isnan(off)
        res[ds] = {"n": len(files), **{name: summarise(arm, truth) for name, arm in arms.items()},
                   "upright_photos_changed_by_check": int((np.abs(on[same] - off[same]) > 1e-3).sum()
                                                          + (np.isnan(on) != np.isnan(off)).sum())}
        res[ds]["ms_per_upright_image"] = speed(est, images, a.rounds)
        res[ds]["check_itself_on_upright_images"] = check_cost(est, images)
        for name in [*arms, "ms_per_upright_image", "check_itself_on_upright_images"]:
            print(ds, name, res[ds][name], flush=True)
        print(ds, "upright photos whose answer the check changed:", res[ds]["upright_photos_changed_by_check"])
    est.upright = True
    res["seconds"] = round(time.time() - t0)
    if a.out:
        atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
