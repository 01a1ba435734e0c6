"""Fit the face-orientation classifier (`agelens.faces.orientation`): which quarter turn a detected face is at.

Training faces are framed as predict frames them: the square crop around the box the detector finds on the turned
image (on it, else inside the padded border, as `find_faces` retries; a turned face's box is often off centre).
- Photos: train-part photos of UTKFace and All-Age-Faces, each turned a random number of quarter turns (the
  class), and the "fit" half of realocc (real masks and sunglasses), each turned all four ways; 20 % of them
  through the realistic photo degradations first; up to three detections per photo.
- Cached aligned training faces for the occluders the photos lack: 40 % under a synthetic occluder (any family),
  30 % degraded, jittered around the alignment (±20°, scale 0.85–1.2, shift ±8 %), turned, then framed by the
  detector (70 %) or left as they are.
A small CNN (`turn_net`, exported to ONNX) reads the turn. Validation, every face turned all four ways:
val-part photos of both datasets, the realocc "measure" half, and cached val faces clean / occluded / degraded.

    python -m agelens.train.orientation --out src/agelens/weights/orientation.onnx   # the shipped recipe, ~6 min
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
from ..faces.detect import FaceAnalyzer, pad_border
from ..faces.orientation import CONFIDENT, LOOK_AGAIN, SIZE, OrientationModel, as_input, box_crop
from ..imageio import load_image
from ..occlusion.synth import ALL_TYPES, OcclusionError, occlude

CACHES = ("cache/utkface", "cache/aaf")
OCCLUDED_P, DEGRADED_P = 0.4, 0.3
DETECTOR_P = 0.7  # share of cached training faces framed by the detector's box on the turned face (`framed`)
PHOTO_DEGRADED_P = 0.2


def jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = img.shape[0]
    centre = (s / 2 + rng.uniform(-0.08, 0.08) * s, s / 2 + rng.uniform(-0.08, 0.08) * s)
    m = cv2.getRotationMatrix2D(centre, float(rng.uniform(-20, 20)), float(rng.uniform(0.85, 1.2)))
    return cv2.warpAffine(img, m, (s, s), borderMode=cv2.BORDER_REFLECT)


def draw(cache: FaceCache, i: int, rng: np.random.Generator, condition: str | None = None) -> np.ndarray:
    """One cached face as the classifier meets it; condition None draws occluded/degraded at the recipe's rates,
    "clean" / "occluded" / "degraded" forces one."""
    img, lm = np.array(cache.images[i]), np.array(cache.landmarks[i])
    occluded = rng.random() < OCCLUDED_P if condition is None else condition == "occluded"
    if occluded and np.isfinite(lm).all():
        with contextlib.suppress(OcclusionError):  # a face this occluder cannot cover as its family asks: clean
            img = occlude(img, lm, ALL_TYPES[int(rng.integers(len(ALL_TYPES)))], rng).image
    if rng.random() < DEGRADED_P if condition is None else condition == "degraded":
        img = augment.realistic(img, rng)
    return jitter(img, rng)


def detections(img: np.ndarray, analyzer: FaceAnalyzer, most: int = 1) -> list[tuple[float, ...]]:
    """Boxes the detector finds on the image (else inside the padded border, mapped back), the `most` highest
    scoring first."""
    faces, p = analyzer.detect(img), 0
    if not faces:
        padded, p = pad_border(img)
        faces = analyzer.detect(padded)
    faces = sorted(faces, key=lambda f: -f.score)[:most]
    return [(f.box[0] - p, f.box[1] - p, f.box[2] - p, f.box[3] - p) for f in faces]


def framed(img: np.ndarray, analyzer: FaceAnalyzer | None) -> np.ndarray:
    """What predict's classifier reads for this (turned) face crop: the square crop around the detector's box
    (`detections`), else the whole crop (the whole-image fallback); the crop itself without an analyzer."""
    boxes = detections(img, analyzer) if analyzer is not None else []
    return box_crop(img, boxes[0]) if boxes else img


def photo_set(paths: list[str], rng: np.random.Generator, analyzer: FaceAnalyzer, all_turns: bool,
              degraded_p: float = 0.0, most: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """SIZE px box crops and turns of the faces the detector finds on these photos, each photo turned all four ways
    or one random way (and through the realistic degradations with probability degraded_p first)."""
    x, y = [], []
    for path in paths:
        rgb = load_image(path)
        if rng.random() < degraded_p:
            rgb = augment.realistic(rgb, rng)
        for k in range(4) if all_turns else (int(rng.integers(4)),):
            img = np.ascontiguousarray(np.rot90(rgb, k))
            for b in detections(img, analyzer, most):
                x.append(box_crop(img, b))
                y.append(k)
    return np.stack(x).reshape(-1, SIZE, SIZE, 3), np.array(y)


def photo_paths(shared: Path, part: str, n: int, seed: int) -> dict[str, list[str]]:
    """A seeded sample of n photos per source: UTKFace and All-Age-Faces from the saved splits' `part`, realocc
    from its "fit" half (part "train") or its "measure" half (any other part)."""
    from ..data.splits import split_part
    from .guards import realocc_files

    rng = np.random.default_rng(seed)

    def pick(files: list[str]) -> list[str]:
        return [files[i] for i in sorted(rng.permutation(len(files))[:n])]

    half = "fit" if part == "train" else "measure"
    return {"utkface": pick([str(shared / "utkface" / f) for f in split_part(Path("splits/utkface_seed0.json"), part)]),
            "aaf": pick([str(shared / "aaf" / f) for f in split_part(Path("splits/aaf_seed0.json"), part)]),
            "realocc": pick([str(shared / f) for f in realocc_files(shared, half)])}


def turned_set(cache: FaceCache, idx: np.ndarray, rng: np.random.Generator, condition: str | None,
               all_turns: bool, analyzer: FaceAnalyzer | None = None, detector_p: float = 1.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """SIZE px crops and turns of these faces, each turned all four ways or one random way; framed as predict
    frames them (`framed`) with probability detector_p, else the jittered crop as it is."""
    x, y = [], []
    for i in idx:
        img = draw(cache, int(i), rng, condition)
        for k in range(4) if all_turns else (int(rng.integers(4)),):
            turned = np.ascontiguousarray(np.rot90(img, k))
            x.append(as_input(framed(turned, analyzer if rng.random() < detector_p else None)))
            y.append(k)
    return np.stack(x), np.array(y)


def evaluate(p: np.ndarray, y: np.ndarray) -> dict:
    """What find_and_align acts on, from the (N, 4) probabilities of faces turned y quarter turns: an upright face
    under LOOK_AGAIN costs a second look (up to three detector passes); a turned face under it is looked for again,
    and the search needs the face, turned upright, to read upright with at least CONFIDENT."""
    up = y == 0
    return {"n": int(len(y)), "accuracy": round(float(np.mean(p.argmax(1) == y)), 4),
            "upright_not_looked_again": round(float(np.mean(p[up, 0] >= LOOK_AGAIN)), 4),
            "upright_read_confidently": round(float(np.mean(p[up, 0] >= CONFIDENT)), 4),
            "turned_looked_again": round(float(np.mean(p[~up, 0] < LOOK_AGAIN)), 4)}


def build_data(shared: Path, caches: list[str], photos: int, cached: int, val: int, seed: int) -> dict:
    """The training and validation crops (uint8, SIZE px) and their turns, by source."""
    t0 = time.time()
    rng = np.random.default_rng(seed)
    analyzer = FaceAnalyzer(fast=None)  # the detector predict runs (LiteRT where installed)
    data = {}
    for src, paths in photo_paths(shared, "train", photos, seed).items():
        # realocc's few real masks and sunglasses are the hardest faces to read: each of them turned every way
        data[f"train/{src} photos"] = photo_set(paths, rng, analyzer, src == "realocc", PHOTO_DEGRADED_P)
    for root in caches:
        c = FaceCache(f"{root}/train")
        data[f"train/{root} cached faces"] = turned_set(c, rng.choice(len(c), min(cached, len(c)), replace=False),
                                                        rng, None, False, analyzer, DETECTOR_P)
    for src, paths in photo_paths(shared, "val", val, seed + 1).items():
        data[f"val/{src} photos"] = photo_set(paths, rng, analyzer, True)
    for root in caches:
        c = FaceCache(f"{root}/val")
        idx = np.random.default_rng(seed + 1).choice(len(c), min(val, len(c)), replace=False)
        for cond in ("clean", "occluded", "degraded"):
            data[f"val/{root.rstrip('/').split('/')[-1]} {cond}"] = turned_set(
                c, idx, np.random.default_rng(seed + 2), cond, True, analyzer)
    print(f"data: { {k: len(v[1]) for k, v in data.items()} } ({time.time() - t0:.0f} s)", flush=True)
    return data


def turn_net():  # noqa: ANN201 - torch is a training-only import
    """A small CNN: uint8 NHWC SIZE px crops → turn probabilities (scaling and softmax inside, for the export)."""
    import torch
    from torch import nn

    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class TurnNet(nn.Module):  # about 9 M multiply-adds a face: a fraction of a millisecond on one core
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(block(3, 24), block(24, 48), block(48, 96), block(96, 192))
            self.fc = nn.Linear(192, 4)

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
            return self.fc(self.features(x).mean((2, 3)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.logits(x).softmax(1)

    return TurnNet()


def fit_net(x: np.ndarray, y: np.ndarray, epochs: int, seed: int, batch: int = 128):  # noqa: ANN201
    """Train the CNN (AdamW, cosine; mirrored crops too: a mirror turns k quarter turns into 4 - k)."""
    import torch

    torch.manual_seed(seed)
    net = turn_net()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    net.train()
    for ep in range(epochs):
        order, total = torch.from_numpy(rng.permutation(len(x))), 0.0
        for s in range(len(x) // batch):
            i = order[s * batch:(s + 1) * batch]
            xb, yb = xt[i], yt[i].clone()
            flip = torch.from_numpy(rng.random(len(i)) < 0.5)
            xb[flip] = xb[flip].flip(2)
            yb[flip] = (4 - yb[flip]) % 4
            gain = torch.from_numpy(rng.uniform(0.7, 1.3, (len(i), 1, 1, 1)).astype(np.float32))
            xb = (xb.float() * gain + torch.from_numpy(rng.uniform(-25, 25, (len(i), 1, 1, 1)).astype(np.float32)))
            loss = torch.nn.functional.cross_entropy(net.logits(xb.clamp(0, 255)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {ep + 1}/{epochs}: loss {total / max(1, len(x) // batch):.4f}", flush=True)
    return net.eval()


def export(net, out: Path) -> None:  # noqa: ANN001
    """The network to ONNX (uint8 NHWC in, probabilities out), written atomically."""
    from ..export.onnx import export_crop_net

    export_crop_net(net, out, SIZE, "probs")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("src/agelens/weights/orientation.onnx"))
    ap.add_argument("--data", type=Path, default=Path("runs/orientation_data.npz"),
                    help="the crops: read when the file exists, else built and written there")
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--caches", nargs="+", default=list(CACHES), help="cache folders with train/ and val/ parts")
    ap.add_argument("--photos", type=int, default=4000, help="training photos per source (realocc: all of its half)")
    ap.add_argument("--n", type=int, default=2500, help="cached training faces per cache")
    ap.add_argument("--val", type=int, default=300, help="validation photos per source and cached faces per cache")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    t0 = time.time()
    if a.data.is_file():
        with np.load(a.data) as z:
            data = {k[:-2]: (z[k], z[k[:-2] + " y"]) for k in z.files if k.endswith(" x")}
    else:
        data = build_data(a.shared, a.caches, a.photos, a.n, a.val, a.seed)
        from ..utils import atomic_write_npz

        atomic_write_npz(a.data, **{f"{k} x": v[0] for k, v in data.items()}, **{f"{k} y": v[1] for k, v in data.items()})
    train = [v for k, v in data.items() if k.startswith("train/")]
    x, y = np.concatenate([v[0] for v in train]), np.concatenate([v[1] for v in train])
    net = fit_net(x, y, a.epochs, a.seed)
    export(net, a.out)
    model = OrientationModel(a.out, threads=2)
    metrics = {k[4:]: evaluate(model.probs(v[0]), v[1]) for k, v in data.items() if k.startswith("val/")}
    for k, m in metrics.items():
        print(f"{k}: {m}", flush=True)
    from ..utils import atomic_write_json

    card = {"name": "orientation", "kind": "quarter-turn classifier (small CNN, ONNX) on the detector box crop",
            "data": {"training crops": {k[6:]: int(len(v[1])) for k, v in data.items() if k.startswith("train/")},
                     "photos": "train parts of the saved splits; realocc: its fit half (validation: val parts, "
                               "realocc's measure half)"},
            "licence": "trained on UTKFace (non-commercial), All-Age-Faces (research use) and realocc photos; the "
                       "weights inherit those terms",
            "recipe": {"photos_per_source": a.photos, "photo_degraded_p": PHOTO_DEGRADED_P,
                       "cached_faces_per_cache": a.n, "occluded_p": OCCLUDED_P, "degraded_p": DEGRADED_P,
                       "detector_framed_p": DETECTOR_P, "jitter": "rotation ±20°, scale 0.85–1.2, shift ±8 %",
                       "epochs": a.epochs, "seed": a.seed,
                       "command": f"python -m agelens.train.orientation --out {a.out} --photos {a.photos} "
                                  f"--n {a.n} --epochs {a.epochs}"},
            "val_metrics": metrics, "look_again": LOOK_AGAIN, "confident": CONFIDENT,
            "seconds": round(time.time() - t0)}
    atomic_write_json(a.out.with_suffix(".json"), card)
    print(f"wrote {a.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    from ..utils import run_tool

    run_tool(main)
