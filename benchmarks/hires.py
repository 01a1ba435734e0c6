"""Large photos end to end: the same test faces at a phone camera's resolution, with and without the anti-aliased
warp (`agelens.faces.align.warp`), side by side in one run.

Our test photos are small (UTKFace chips 200 px, All-Age-Faces 160 px): every face is enlarged on its way to the
256 px template. A user's photo is the opposite: a 12 MP phone photo holds a face 500-1,500 px wide, shrunk 2-6x.
Each test photo is therefore also shown as a phone would take it: enlarged k times (bicubic), sensor noise at the
new resolution, JPEG q90 (`phone`). For each, `predict` runs twice, with the shipped warp (area-averaged below
`AA_SCALE`) and with the plain bilinear warp (`AA_SCALE = 0`, what predict did before). Reported: MAE, the mean
absolute age change against the photo at its own size, the share moving more than 5 years, and ms per predict.

    python benchmarks/hires.py --n 250 --out docs/hires

Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

import agelens.faces.align as align
import generalise as g  # benchmarks/ is on the path when this file runs as a script
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator

WARPS = {"anti-aliased": align.AA_SCALE, "bilinear": 0.0}


def phone(rgb: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The photo enlarged k times (bicubic), with sensor noise at the new pixel size and JPEG q90."""
    h, w = rgb.shape[:2]
    big = cv2.resize(rgb, (w * k, h * k), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    big += rng.normal(0, 3.0, big.shape[:2])[..., None] + rng.normal(0, 1.5, big.shape)
    return g.encode(np.clip(big, 0, 255).astype(np.uint8), ".jpg", 90)


def run(est: AgeEstimator, files: list, scales: list[int]) -> dict:
    sizes = ["native", *[f"x{k}" for k in scales]]
    ages = np.array([a for _, a in files])
    pred = {w: {s: [] for s in sizes} for w in WARPS}
    ms = {w: {s: [] for s in sizes} for w in WARPS}
    for i, (f, _) in enumerate(files):
        rgb = load_image(f)
        imgs = {"native": g.encode(rgb, ".jpg", 95)}
        imgs |= {f"x{k}": phone(rgb, k, np.random.default_rng((i, k))) for k in scales}
        for w, aa in WARPS.items():  # both warps on the same arrays, in turn
            align.AA_SCALE = aa
            for s, im in imgs.items():
                est._memo.clear()  # the teacher's per-crop memo would answer the second warp's identical crops
                t = time.perf_counter()
                r = g.one_age(est, im)
                ms[w][s].append(1000 * (time.perf_counter() - t))
                pred[w][s].append(np.nan if r is None else r[0])
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(files)}", flush=True)
    align.AA_SCALE = WARPS["anti-aliased"]
    out = {}
    for w in WARPS:
        out[w] = {}
        for s in sizes:
            p = np.array(pred[w][s])
            ok = ~np.isnan(p)
            base = np.array(pred[w]["native"])
            both = ok & ~np.isnan(base)
            ch = np.abs(p[both] - base[both])
            out[w][s] = {"answered": round(float(ok.mean()), 4), "mae": round(float(np.abs(p[ok] - ages[ok]).mean()), 3),
                         "change_vs_native": round(float(ch.mean()), 3) if s != "native" else 0.0,
                         "share_over_5": round(float((ch > 5).mean()), 4) if s != "native" else 0.0,
                         "ms_per_predict": round(float(np.median(ms[w][s])), 1)}
    return out


def markdown(res: dict, args) -> str:
    lines = [f"# Large photos end to end ({time.strftime('%Y-%m-%d')})", "",
             f"`python benchmarks/hires.py --n {args.n} --scales {' '.join(map(str, args.scales))} --out {args.out}`", "",
             "Test photos through `AgeEstimator.predict` (largest face), at their own size and enlarged k times as a "
             "phone would take them (bicubic, sensor noise, JPEG q90). Change: mean absolute age change against the "
             "same photo at its own size, with the same warp. Both warps ran in turns on the same images.", ""]
    for ds, r in res["datasets"].items():
        sizes = list(next(iter(r.values())))
        lines += [f"## {ds} ({args.n} test photos)", "",
                  "| warp | " + " | ".join(f"{s}: MAE" for s in sizes) + " | "
                  + " | ".join(f"{s}: change / > 5 y" for s in sizes[1:]) + " | " + " | ".join(f"{s}: ms" for s in sizes)
                  + " |", "|---|" + "---|" * (3 * len(sizes) - 1)]
        for w, d in r.items():
            lines.append(f"| {w} | " + " | ".join(f"{d[s]['mae']:.3f}" for s in sizes) + " | "
                         + " | ".join(f"{d[s]['change_vs_native']:.2f} / {100 * d[s]['share_over_5']:.1f} %"
                                      for s in sizes[1:]) + " | "
                         + " | ".join(f"{d[s]['ms_per_predict']:.1f}" for s in sizes) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=250, help="test photos per dataset")
    ap.add_argument("--scales", type=int, nargs="+", default=[3, 6])
    ap.add_argument("--datasets", nargs="+", default=["utkface", "aaf"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/hires")
    args = ap.parse_args()
    est = AgeEstimator.from_pretrained()
    res = {"n": args.n, "scales": args.scales, "aa_scale": WARPS["anti-aliased"], "datasets": {}}
    for ds in args.datasets:
        t0 = time.time()
        res["datasets"][ds] = run(est, g.test_files(ds, args.n, args.seed), args.scales)
        print(ds, res["datasets"][ds], f"{time.time() - t0:.0f} s", flush=True)
    g.write_report(args.out, res, markdown(res, args))


if __name__ == "__main__":
    main()
