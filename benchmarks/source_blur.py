"""Blur enlarged faces at the photo's own pixel scale, tried for JPEG stability (issue 19) and not kept.

All-Age-Faces photos are 160 px, so their faces are enlarged 2-3x on the way to the 256 px template, and the
JPEG blocks of the small photo with them: re-saving such a photo at q75 moves its age by 1.1 years. The probe
blurs every enlarged crop (`faces.align.warp`, scale s > 1, both the template and the landmark input) with a
Gaussian of SIGMA × s template pixels, i.e. SIGMA source pixels, and measures end to end on the test photos:
MAE clean, grayscale, scan grain and lowres (`generalise.py`'s seeded degradations), and the mean age change
JPEG q95 → q75, with the paired clean difference and its 95 % bootstrap interval.

    python benchmarks/source_blur.py --n 250 --out docs/source_blur.json
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

import agelens.faces.align as align
import agelens.faces.mesh as mesh
import generalise as g  # benchmarks/ is on the path when this file runs as a script
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json

PLAIN = align.warp


def blurred_warp(sigma: float):
    def warp(rgb, m, size, border=cv2.BORDER_REPLICATE):
        out = PLAIN(rgb, m, size, border)
        s = float(np.sqrt(abs(np.linalg.det(np.asarray(m, np.float64)[:, :2]))))
        return cv2.GaussianBlur(out, (0, 0), sigma * s) if sigma > 0 and s > 1 else out
    return warp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=250, help="test photos per dataset")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.5, 0.8])
    ap.add_argument("--out", default="docs/source_blur.json")
    a = ap.parse_args()
    est = AgeEstimator.from_pretrained(backend="onnx")
    res = {}
    for ds in ("utkface", "aaf"):
        rows = []
        for i, (f, age) in enumerate(g.test_files(ds, a.n, 0)):
            rgb = load_image(f)
            ref = g.encode(rgb, ".jpg", 95)
            imgs = {"clean": ref, "q75": g.variant(ref, "jpeg_q75"), "gray": g.degraded(rgb, "grayscale", i, 0),
                    "scan": g.degraded(rgb, "scan_grain", i, 0), "lowres": g.degraded(rgb, "lowres", i, 0)}
            r = {"age": age}
            for sg in a.sigmas:
                align.warp = mesh.warp = blurred_warp(sg)
                for k, im in imgs.items():
                    est._memo.clear()  # the teacher's per-crop memo would answer an unblurred crop again
                    out = g.one_age(est, im)
                    r[f"{k}_{sg}"] = None if out is None else out[0]
            rows.append(r)
        align.warp = mesh.warp = PLAIN
        res[ds] = {"rows": rows, "summary": {}}
        for sg in a.sigmas:
            summ = {k: float(np.mean([abs(r[f"{k}_{sg}"] - r["age"]) for r in rows if r[f"{k}_{sg}"] is not None]))
                    for k in ("clean", "gray", "scan", "lowres")}
            d = np.array([abs(r[f"q75_{sg}"] - r[f"clean_{sg}"]) for r in rows
                          if r[f"q75_{sg}"] is not None and r[f"clean_{sg}"] is not None])
            summ |= {"q75_change": float(d.mean()), "q75_over_5": float((d > 5).mean())}
            base = a.sigmas[0]
            pd_ = np.array([abs(r[f"clean_{sg}"] - r["age"]) - abs(r[f"clean_{base}"] - r["age"]) for r in rows
                            if r[f"clean_{sg}"] is not None and r[f"clean_{base}"] is not None])
            summ["paired_clean"] = g.paired_ci(pd_)
            res[ds]["summary"][str(sg)] = summ
            print(ds, sg, {k: round(v, 3) if isinstance(v, float) else v for k, v in summ.items()}, flush=True)
    atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
