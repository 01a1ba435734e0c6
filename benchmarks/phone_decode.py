"""Phone-size JPEG files end to end: decoded whole, or at the size the faces need (`imageio.decode_reduced`:
libjpeg's 1/2, 1/4, 1/8 DCT scaling while the long side stays at least `FACE_MIN_SIDE`), side by side in one run.

Each test photo is enlarged to a 12 MP phone photo's long side (4032 px; bicubic, sensor noise, JPEG q90, written
to a file) and run through `AgeEstimator.predict(file)` both ways, in turns. Reported: MAE, the mean absolute age
change between the two decodes, the box difference in file pixels, and ms per predict (decode included).

    python benchmarks/phone_decode.py --n 100 --out docs/phone_decode

Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

import agelens.inference.predictor as predictor
import generalise as g  # benchmarks/ is on the path when this file runs as a script
from agelens.errors import NoFaceError
from agelens.faces.prepare import largest_face
from agelens.imageio import FACE_MIN_SIDE, load_image

LONG_SIDE = 4032
DECODES = {"whole": None, f"reduced (long side >= {FACE_MIN_SIDE})": FACE_MIN_SIDE}


def phone_file(rgb: np.ndarray, path: Path, rng: np.random.Generator) -> None:
    """The photo enlarged to LONG_SIDE (bicubic), with sensor noise at the new pixel size, saved as JPEG q90."""
    h, w = rgb.shape[:2]
    k = LONG_SIDE / max(h, w)
    big = cv2.resize(rgb, (round(w * k), round(h * k)), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    big += rng.normal(0, 3.0, big.shape[:2])[..., None] + rng.normal(0, 1.5, big.shape)
    big = cv2.cvtColor(np.clip(big, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 90])


def largest(est, path: Path) -> tuple[float, list[float]] | None:
    try:
        p = largest_face(est.predict(path))
    except NoFaceError:
        return None
    return p.age, p.box


def run(est, files: list, tmp: Path) -> dict:
    ages = np.array([a for _, a in files])
    got = {d: [] for d in DECODES}
    ms = {d: [] for d in DECODES}
    for i, (f, _) in enumerate(files):
        path = tmp / f"{i}.jpg"
        phone_file(load_image(f), path, np.random.default_rng(i))
        for d, side in DECODES.items():  # both decodes of the same file, in turn
            predictor.load_reduced.__defaults__ = (side,)
            est._memo.clear()
            t = time.perf_counter()
            got[d].append(largest(est, path))
            ms[d].append(1000 * (time.perf_counter() - t))
        if (i + 1) % 25 == 0:
            print(f"  {i + 1}/{len(files)}", flush=True)
    predictor.load_reduced.__defaults__ = (FACE_MIN_SIDE,)
    out = {}
    whole = got["whole"]
    for d in DECODES:
        ok = np.array([r is not None for r in got[d]])
        p = np.array([r[0] if r else np.nan for r in got[d]])
        both = [(a, b) for a, b in zip(whole, got[d], strict=True) if a and b]
        change = [abs(a[0] - b[0]) for a, b in both]
        box = [float(np.abs(np.subtract(a[1], b[1])).max()) for a, b in both]
        out[d] = {"answered": round(float(ok.mean()), 4), "mae": round(float(np.abs(p[ok] - ages[ok]).mean()), 3),
                  "change_vs_whole": round(float(np.mean(change)), 3),
                  "share_over_5": round(float(np.mean(np.array(change) > 5)), 4),
                  "box_diff_px_median": round(float(np.median(box)), 1),
                  "ms_per_predict": round(float(np.median(ms[d])), 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="test photos per dataset")
    ap.add_argument("--datasets", nargs="+", default=["utkface", "aaf"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/phone_decode")
    args = ap.parse_args()
    est = predictor.AgeEstimator.from_pretrained()
    res = {"n": args.n, "long_side": LONG_SIDE, "face_min_side": FACE_MIN_SIDE, "datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for ds in args.datasets:
            res["datasets"][ds] = run(est, g.test_files(ds, args.n, args.seed), Path(tmp))
            print(ds, res["datasets"][ds], flush=True)
    lines = [f"# Phone-size JPEG files: whole or reduced decoding ({time.strftime('%Y-%m-%d')})", "",
             f"`python benchmarks/phone_decode.py --n {args.n} --out {args.out}`", "",
             f"Test photos enlarged to a {LONG_SIDE} px long side as a phone would take them (bicubic, sensor noise, "
             "JPEG q90), through `AgeEstimator.predict(file)`, largest face. Change: mean absolute age change "
             "between the two decodes of the same file; box: the median of the largest coordinate difference, in "
             "file pixels. Both decodes ran in turns on the same files.", "",
             "| dataset | decode | answered | MAE | change vs whole / > 5 y | box diff, px | ms per predict |",
             "|---|---|---|---|---|---|---|"]
    for ds, r in res["datasets"].items():
        for d, v in r.items():
            lines.append(f"| {ds} | {d} | {100 * v['answered']:.1f} % | {v['mae']:.3f} | "
                         f"{v['change_vs_whole']:.2f} / {100 * v['share_over_5']:.1f} % | {v['box_diff_px_median']:.1f} "
                         f"| {v['ms_per_predict']:.1f} |")
    g.write_report(args.out, res, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
