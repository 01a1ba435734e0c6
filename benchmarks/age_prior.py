"""Is the teacher's over-estimation of teenagers a prior effect that decoding could undo? Cache protocol: the shipped
teacher (torch fp32, both views) on the cached val and test faces of both datasets, its age distribution decoded
three ways:

- as shipped (the expectation);
- prior-corrected: the logits minus alpha × log(training prior), where the prior is the teacher's mean predicted
  distribution over 2,000 cached training faces per dataset (weighted by the train parts' sizes), or only its
  spikes (the label histogram smoothed at 2 years over the same smoothed at 10: UTKFace's heap at 26, the decades);
- recalibrated: the median true age of validation faces within ±2.5 years of each predicted age, made monotone
  (isotonic), applied to test faces.

Reported: MAE per dataset and part, per age bin, and a child-heavy mix (bins weighted 0.37, 0.34, 0.14, 0.08, 0.05,
0.015, 0.008 from 0–10 to 61+: roughly the age mix of public scanned-photo sets of mostly children).

    python benchmarks/age_prior.py --out docs/age_prior.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from agelens.data.cache import FaceCache
from agelens.data.views import centre_crop
from agelens.models.inputs import to_input
from agelens.models.weights import resolve_model
from agelens.utils import atomic_write_json

BINS = ((0, 10), (11, 20), (21, 30), (31, 40), (41, 50), (51, 60), (61, 200))
CHILD_HEAVY = np.array([0.37, 0.34, 0.14, 0.08, 0.05, 0.015, 0.008])


def logits(model, cache: FaceCache, idx: np.ndarray, crop: int, size: int, flip: bool) -> np.ndarray:
    """(views, N, ages) logits of the faces, each view a batch pass (both views: the face and its mirror)."""
    out = []
    for k in range(0, len(idx), 64):
        imgs = np.stack([centre_crop(np.asarray(cache.images[i]), crop, size) for i in idx[k:k + 64]])
        x = to_input(torch.from_numpy(imgs), *model.mean_std, "cpu", False)
        with torch.no_grad():
            views = [x, x.flip(3)] if flip else [x]
            out.append(np.stack([model(v)["logits"].float().numpy() for v in views]))
    return np.concatenate(out, axis=1)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def decode(z: np.ndarray, offset: np.ndarray | float = 0.0) -> np.ndarray:
    """Expected age of each face, the views' expectations averaged."""
    ages = np.arange(z.shape[-1], dtype=np.float64)
    return (softmax(z - offset) @ ages).mean(0)


def report(pred: np.ndarray, truth: np.ndarray) -> dict:
    err = np.abs(pred - truth)
    bins = [float(err[(truth >= lo) & (truth <= hi)].mean()) for lo, hi in BINS]
    signed = [float((pred - truth)[(truth >= lo) & (truth <= hi)].mean()) for lo, hi in BINS]
    return {"mae": round(float(err.mean()), 3), "child_heavy_mae": round(float(CHILD_HEAVY @ bins), 3),
            "bin_mae": [round(b, 2) for b in bins], "bin_signed": [round(b, 2) for b in signed]}


def smooth(h: np.ndarray, sigma: float) -> np.ndarray:
    x = np.arange(-25, 26)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return np.convolve(np.pad(h, 25, mode="edge"), k / k.sum(), "valid")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="teacher")
    ap.add_argument("--train", type=int, default=2000, help="cached training faces per dataset for the prior")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    model, cfg, _ = resolve_model(a.model)
    model.eval()
    crop, size = cfg.data.crop_size, cfg.data.input_size
    z, truth, prior, counts, labels = {}, {}, 0.0, 0, []
    for ds in ("utkface", "aaf"):
        for part in ("val", "test"):
            c = FaceCache(f"cache/{ds}/{part}")
            z[f"{ds}/{part}"] = logits(model, c, np.arange(len(c)), crop, size, True)
            truth[f"{ds}/{part}"] = np.asarray(c.ages, np.float64)
        c = FaceCache(f"cache/{ds}/train")
        idx = np.sort(np.random.default_rng(0).choice(len(c), min(a.train, len(c)), replace=False))
        prior = prior + softmax(logits(model, c, idx, crop, size, False)[0]).mean(0) * len(c)
        counts += len(c)
        labels.append(np.asarray(c.ages))
        print(ds, "done", flush=True)
    log_prior = np.log(prior / counts)
    hist = np.bincount(np.clip(np.concatenate(labels).round().astype(int), 0, len(log_prior) - 1),
                       minlength=len(log_prior)).astype(np.float64)
    spikes = np.log(smooth(hist, 2.0) + 1) - np.log(smooth(hist, 10.0) + 1)
    res: dict = {"command": f"python benchmarks/age_prior.py --model {a.model} --train {a.train}",
                 "protocol": "Cache: cached aligned faces, torch fp32, face + mirror", "decodings": {}}
    arms = {"shipped": 0.0, **{f"prior x{al}": al * log_prior for al in (0.25, 0.5, 1.0)},
            **{f"spikes x{al}": al * spikes for al in (0.5, 1.0)}}
    for name, off in arms.items():
        res["decodings"][name] = {k: report(decode(v, off), truth[k]) for k, v in z.items()}
    val_pred = np.concatenate([decode(z[f"{ds}/val"]) for ds in ("utkface", "aaf")])
    val_true = np.concatenate([truth[f"{ds}/val"] for ds in ("utkface", "aaf")])
    from sklearn.isotonic import IsotonicRegression

    grid = np.arange(0, 90, 1.0)
    med = np.array([np.median(val_true[np.abs(val_pred - g) <= 2.5]) if (np.abs(val_pred - g) <= 2.5).sum() >= 20
                    else g for g in grid])
    iso = IsotonicRegression(out_of_bounds="clip").fit(grid, med)
    res["decodings"]["recalibrated (fitted on val)"] = {
        k: report(iso.predict(decode(z[k])), truth[k]) for k in z if k.endswith("/test")}
    for name, rows in res["decodings"].items():
        print(name, json.dumps({k: (v["mae"], v["child_heavy_mae"], v["bin_signed"][1]) for k, v in rows.items()}))
    if a.out:
        atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
