"""How far photo degradations move each model's age, face by face, by the working resolution they hit (Cache).

A scanned print or a small face in a photo gets its grain, noise, blur and JPEG blocks at the photo's pixel size,
coarse relative to the face. Here each cached validation face is scaled to a share of its side (1.0, 0.5, 0.3,
0.2), degraded there (`data.augment`'s scan_grain, lowres, noise, jpeg; seeded per face) and scaled back, and each
model answers the clean and the degraded view (centre crop, one view, fp32): mean and mean absolute change of the
age, and the MAE. Cached aligned faces skip detection; `benchmarks/generalise.py` measures the same degradations end
to end on the photos.

    python benchmarks/degradation_shift.py --cache cache/aaf/val --models shipped=teacher new=runs/teacher_x

Writes OUT.json when --out is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from agelens.data import augment
from agelens.data.cache import FaceCache
from agelens.data.views import centre_crop
from agelens.models.inputs import to_input
from agelens.models.weights import resolve_model
from agelens.utils import atomic_write_json

KINDS = ("scan_grain", "lowres", "noise", "jpeg")
SCALES = (1.0, 0.5, 0.3, 0.2)


def ages_of(model, imgs: list[np.ndarray], crop: int, size: int) -> np.ndarray:
    x = to_input(torch.from_numpy(np.stack([centre_crop(i, crop, size) for i in imgs])), *model.mean_std, "cpu", False)
    with torch.no_grad():
        return torch.cat([model.head.decode(model(x[k:k + 50]))[0] for k in range(0, len(x), 50)]).numpy()


def load_models(specs: list[str]) -> dict[str, tuple]:
    """LABEL=MODEL ... -> {label: (model in eval mode, crop size, input size)}, as `ages_of` takes them."""
    models = {}
    for spec in specs:
        label, _, name = spec.partition("=")
        model, cfg, _ = resolve_model(name)
        models[label] = (model.eval(), cfg.data.crop_size, cfg.data.input_size)
    return models


def degraded(imgs: list[np.ndarray], kind: str, scale: float) -> list[np.ndarray]:
    out = []
    for j, img in enumerate(imgs):
        h, w = img.shape[:2]
        small = cv2.resize(img, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else img
        d = augment.DEGRADATIONS[kind](np.ascontiguousarray(small), np.random.default_rng((1, j)))
        out.append(cv2.resize(d, (w, h), interpolation=cv2.INTER_LINEAR) if scale < 1 else d)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("cache/aaf/val"))
    ap.add_argument("--models", nargs="+", default=["shipped=teacher"], help="LABEL=MODEL ...")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cache = FaceCache(a.cache)
    idx = np.sort(np.random.default_rng(a.seed).choice(len(cache), min(a.n, len(cache)), replace=False))
    truth = np.asarray(cache.ages, np.float32)[idx]
    clean = [np.asarray(cache.images[i]) for i in idx]
    models = load_models(a.models)
    base = {k: ages_of(m, clean, c, s) for k, (m, c, s) in models.items()}
    res = {"cache": str(a.cache), "n": len(idx), "models": a.models,
           "clean": {k: {"mae": round(float(np.abs(p - truth).mean()), 3)} for k, p in base.items()}, "degraded": {}}
    print(json.dumps(res["clean"]))
    for kind in KINDS:
        for scale in SCALES:
            imgs = degraded(clean, kind, scale)
            row = {}
            for k, (m, c, s) in models.items():
                p = ages_of(m, imgs, c, s)
                row[k] = {"shift": round(float(np.mean(p - base[k])), 3),
                          "abs_shift": round(float(np.mean(np.abs(p - base[k]))), 3),
                          "mae": round(float(np.abs(p - truth).mean()), 3)}
            res["degraded"][f"{kind} x{scale}"] = row
            print(f"{kind:10s} x{scale:.1f}  " + "  ".join(
                f"{k}: shift {v['shift']:+.2f} |shift| {v['abs_shift']:.2f} MAE {v['mae']:.2f}" for k, v in row.items()))
    if a.out:
        atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
