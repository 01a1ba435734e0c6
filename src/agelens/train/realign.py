"""Fit the realignment network (`agelens.faces.realign`): where the alignment template's keypoints are in a crop.

Training crops: cached train-part faces of UTKFace and All-Age-Faces (256 px, aligned on the clean face's
landmarks), 85 % under a synthetic occluder of any family, 30 % through the realistic photo degradations, then
warped by a random similarity J about the centre (half of them small: scale e^N(0, 0.06), rotation N(0, 3°),
shift N(0, 6 px); half wide: scale e^U(±0.25), rotation U(±10°), shift U(±25 px)) and shrunk to SIZE px. The
target is the template's five keypoints mapped by J, as fractions of the side. A small CNN (six 3×3 convolution
layers, two fully connected) learns them with a smooth-L1 loss in pixels; mirrored crops too. Validation: the same
recipe on the val parts (mean keypoint error in 256 px crops). The end-to-end effect, on occluded photos found and
aligned as predict does them, is measured by `benchmarks/realign_e2e.py`.

    python -m agelens.train.realign --out src/agelens/weights/realign.onnx   # the shipped recipe
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import cv2
import numpy as np

from ..data import augment
from ..data.cache import FaceCache
from ..faces.align import TEMPLATE_KEYPOINTS, TEMPLATE_SIZE, transform_points, warp
from ..faces.realign import SIZE, RealignModel, centred_similarity, mirrored_points
from ..occlusion.synth import ALL_TYPES, OcclusionError, occlude

CACHES = ("cache/utkface", "cache/aaf")
OCCLUDED_P, DEGRADED_P = 0.85, 0.3
CHUNK = 250


def sample_jitter(rng: np.random.Generator, side: float = TEMPLATE_SIZE) -> np.ndarray:
    """A random similarity (2×3) about the centre of a side px crop: half small, half wide (module docstring)."""
    u = side / TEMPLATE_SIZE
    if rng.random() < 0.5:
        ls, th, t = rng.normal(0, 0.06), rng.normal(0, 3.0), rng.normal(0, 6.0, 2) * u
    else:
        ls, th, t = rng.uniform(-0.25, 0.25), rng.uniform(-10, 10), rng.uniform(-25, 25, 2) * u
    return centred_similarity(float(np.exp(ls)), th, t, side)


def sample(img: np.ndarray, lm: np.ndarray, rng: np.random.Generator, occluded_p: float = OCCLUDED_P,
           degraded_p: float = DEGRADED_P) -> tuple[np.ndarray, np.ndarray]:
    """One cached aligned face (S px, its landmarks) → (SIZE px jittered crop, (10,) target keypoints / side)."""
    side = img.shape[0]
    if rng.random() < occluded_p and np.isfinite(lm).all():
        with contextlib.suppress(OcclusionError):  # a face this kind cannot cover stays clean
            img = occlude(img, lm, ALL_TYPES[int(rng.integers(len(ALL_TYPES)))], rng).image
    if rng.random() < degraded_p:
        img = augment.realistic(img, rng)
    j = sample_jitter(rng, side)
    x = cv2.resize(warp(img, j, side), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    y = transform_points(TEMPLATE_KEYPOINTS * (side / TEMPLATE_SIZE), j) / side
    return x, y.reshape(-1).astype(np.float32)


_CACHES: dict[str, FaceCache] = {}


def _chunk(job: tuple[str, np.ndarray, int]) -> tuple[np.ndarray, np.ndarray]:
    path, idx, seed = job
    if path not in _CACHES:
        _CACHES[path] = FaceCache(path)
    cache = _CACHES[path]
    xs, ys = zip(*(sample(np.array(cache.images[i]), np.array(cache.landmarks[i]),
                          np.random.default_rng((seed, int(i)))) for i in idx), strict=True)
    return np.stack(xs), np.stack(ys)


def build(caches: list[str], part: str, n: int, seed: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """n seeded samples per cache's `part` (faces drawn at random, with replacement past the cache's size)."""
    jobs = []
    for k, root in enumerate(caches):
        path = f"{root}/{part}"
        size = len(FaceCache(path))
        idx = np.random.default_rng((seed, k)).choice(size, n, replace=n > size)
        jobs += [(path, idx[j:j + CHUNK], seed * 1000 + k * 100 + j) for j in range(0, n, CHUNK)]
    if workers > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            res = pool.map(_chunk, jobs)
    else:
        res = [_chunk(j) for j in jobs]
    return np.concatenate([r[0] for r in res]), np.concatenate([r[1] for r in res])


def make_net():  # noqa: ANN201 - torch is imported lazily
    import torch
    from torch import nn

    def block(i: int, o: int, s: int) -> list:
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    class RealignNet(nn.Module):
        """uint8 NHWC crops → (N, 10) keypoints as fractions of the side."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*block(3, 24, 2), *block(24, 48, 2), *block(48, 48, 1), *block(48, 96, 2),
                                      *block(96, 96, 1), *block(96, 160, 2), nn.Flatten(),
                                      nn.Linear(160 * (SIZE // 16) ** 2, 256), nn.ReLU(inplace=True), nn.Linear(256, 10))
            with torch.no_grad():  # start at the template: the crop taken as aligned
                self.body[-1].bias.copy_(torch.from_numpy(TEMPLATE_KEYPOINTS.reshape(-1) / TEMPLATE_SIZE))
                self.body[-1].weight.mul_(0.1)

        def points(self, x: torch.Tensor) -> torch.Tensor:
            """float NCHW in [-0.5, 0.5]."""
            return self.body(x)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.points(x.permute(0, 3, 1, 2).float() / 255.0 - 0.5)

    return RealignNet()


def mirrored(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crops mirrored left-right and their keypoints (the pairs swapped, x reflected)."""
    return np.ascontiguousarray(x[:, :, ::-1]), mirrored_points(y.reshape(-1, 5, 2)).reshape(-1, 10)


def fit_net(x: np.ndarray, y: np.ndarray, epochs: int, seed: int, batch: int = 128, lr: float = 2e-3):  # noqa: ANN201
    """AdamW with a one-cycle schedule; each batch mirrored with probability 0.5."""
    import torch

    torch.manual_seed(seed)
    net = make_net()
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    for ep in range(epochs):
        net.train()
        order, total = rng.permutation(len(x)), 0.0
        for s in range(len(x) // batch):
            i = np.sort(order[s * batch:(s + 1) * batch])
            xb, yb = x[i], y[i]
            if rng.random() < 0.5:
                xb, yb = mirrored(xb, yb)
            p = net(torch.from_numpy(xb))
            loss = torch.nn.functional.smooth_l1_loss(p * TEMPLATE_SIZE, torch.from_numpy(yb) * TEMPLATE_SIZE,
                                                      beta=2.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {ep + 1}/{epochs}: loss {total / max(1, len(x) // batch):.3f}", flush=True)
    return net.eval()


def export(net, out: Path) -> None:  # noqa: ANN001
    """The network to ONNX (uint8 NHWC in, (N, 10) keypoints out), written atomically."""
    from ..export.onnx import export_crop_net

    export_crop_net(net, out, SIZE, "points")


def point_error(model: RealignModel, x: np.ndarray, y: np.ndarray) -> dict:
    """Mean and p95 keypoint error (px in 256 px crops) of the network's reading, against leaving the crop as it
    is (the template's keypoints)."""
    d = np.linalg.norm((model.points(x) - y.reshape(-1, 5, 2)) * TEMPLATE_SIZE, axis=2).mean(1)
    d0 = np.linalg.norm((TEMPLATE_KEYPOINTS / TEMPLATE_SIZE - y.reshape(-1, 5, 2)) * TEMPLATE_SIZE, axis=2).mean(1)
    return {"n": len(d), "mean_px": round(float(d.mean()), 2), "p95_px": round(float(np.percentile(d, 95)), 2),
            "as_found_mean_px": round(float(d0.mean()), 2)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("src/agelens/weights/realign.onnx"))
    ap.add_argument("--data", type=Path, default=Path("runs/realign_data.npz"),
                    help="the crops: read when the file exists, else built and written there")
    ap.add_argument("--caches", nargs="+", default=list(CACHES), help="cache folders with train/ and val/ parts")
    ap.add_argument("--n", type=int, default=30000, help="training samples per cache")
    ap.add_argument("--val", type=int, default=1000, help="validation samples per cache")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t0 = time.time()
    if a.data.is_file():
        with np.load(a.data) as z:
            x, y, xv, yv = z["x"], z["y"], z["xv"], z["yv"]
    else:
        x, y = build(a.caches, "train", a.n, a.seed, a.workers)
        xv, yv = build(a.caches, "val", a.val, a.seed + 1, a.workers)
        from ..utils import atomic_write_npz

        atomic_write_npz(a.data, x=x, y=y, xv=xv, yv=yv)
    print(f"{len(x)} training crops, {len(xv)} validation crops ({time.time() - t0:.0f} s)", flush=True)
    net = fit_net(x, y, a.epochs, a.seed)
    export(net, a.out)
    metrics = point_error(RealignModel(a.out, threads=2), xv, yv)
    print(f"validation: {metrics}", flush=True)
    from ..utils import atomic_write_json

    card = {"name": "realign", "kind": "keypoint regressor (small CNN, ONNX) on the aligned crop the student reads",
            "data": {"training crops": int(len(x)), "caches": list(a.caches),
                     "faces": "train parts of the saved splits (validation: val parts)"},
            "licence": "trained on UTKFace (non-commercial) and All-Age-Faces (research use) crops; the weights "
                       "inherit those terms",
            "recipe": {"samples_per_cache": a.n, "occluded_p": OCCLUDED_P, "degraded_p": DEGRADED_P,
                       "jitter": "half small (scale e^N(0,0.06), rotation N(0,3°), shift N(0,6 px)), half wide "
                                 "(scale e^U(±0.25), rotation U(±10°), shift U(±25 px)), 256 px crops",
                       "epochs": a.epochs, "seed": a.seed,
                       "command": f"python -m agelens.train.realign --out {a.out} --n {a.n} --epochs {a.epochs}"},
            "val_synthetic": metrics, "seconds": round(time.time() - t0)}
    atomic_write_json(a.out.with_suffix(".json"), card)
    print(f"wrote {a.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    from ..utils import run_tool

    run_tool(main)
