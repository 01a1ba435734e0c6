"""Does blurring the colour (YCrCb chroma) before the teacher steady its answer under JPEG re-encoding, and at what
cost? On cached validation crops: each face brought to a small photo's resolution (30-60 % of the crop) and saved
as JPEG q95, that file re-saved at q75 (`agelens.train.head_refit.jpeg_pair`), both scaled back; the chroma then
blurred by SIGMA photo pixels. Reports the mean and p99 age change between the two files and the MAE of the q95 file
and of the clean crop (its chroma blurred by 2 x SIGMA crop pixels, as if the crop were a photo at half its size). Teacher, torch fp32, one view.

    python benchmarks/chroma_blur.py --n 500 --out docs/chroma_blur.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from agelens.data.cache import FaceCache
from agelens.data.views import centre_views
from agelens.inference.backends.torch import TorchModel
from agelens.models.inputs import to_input
from agelens.train.head_refit import RESAVE_SCALE, jpeg_pair
from agelens.utils import atomic_write_json


def chroma_blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return rgb
    y = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    y[..., 1:] = cv2.GaussianBlur(y[..., 1:], (0, 0), sigma)
    return cv2.cvtColor(y, cv2.COLOR_YCrCb2RGB)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="validation crops per dataset")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0, 2, 4, 8], help="chroma blur, photo pixels")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    t = TorchModel.load("teacher", tta_flip=False)

    def ages(imgs: list[np.ndarray]) -> np.ndarray:
        v, out = centre_views(imgs, t.crop_size, t.input_size), []
        for i in range(0, len(v), 64):
            x = to_input(torch.from_numpy(np.ascontiguousarray(v[i:i + 64])), *t.model.mean_std, "cpu", True)
            out.append(t.model.predict(x, tta_flip=False)[0].float().numpy())
        return np.concatenate(out)

    res: dict = {"command": f"python benchmarks/chroma_blur.py --n {a.n} --sigmas {' '.join(map(str, a.sigmas))}"}
    for ds in ("aaf", "utkface"):
        c = FaceCache(f"cache/{ds}/val", verify=False)
        idx = np.random.default_rng(0).permutation(len(c.records))[:a.n]
        imgs = [np.asarray(c.images[i]) for i in idx]
        y = np.array([c.records[i].age for i in idx])
        rng = np.random.default_rng(1)
        scales = rng.uniform(*RESAVE_SCALE, len(imgs))
        pairs = [jpeg_pair(im, rng, scale=f) for im, f in zip(imgs, scales)]
        res[ds] = []
        for sp in a.sigmas:  # SIGMA photo pixels = SIGMA / scale crop pixels
            pa = ages([chroma_blur(p[0], sp / f) for p, f in zip(pairs, scales)])
            pb = ages([chroma_blur(p[1], sp / f) for p, f in zip(pairs, scales)])
            pc = ages([chroma_blur(im, sp * 2.0) for im in imgs])
            row = {"sigma": sp, "mae_clean": round(float(np.abs(pc - y).mean()), 3),
                   "mae_q95": round(float(np.abs(pa - y).mean()), 3), "change": round(float(np.abs(pa - pb).mean()), 3),
                   "p99": round(float(np.percentile(np.abs(pa - pb), 99)), 2)}
            res[ds].append(row)
            print(ds, json.dumps(row), flush=True)
    if a.out:
        atomic_write_json(Path(a.out), res)


if __name__ == "__main__":
    main()
