"""The pipeline's two guards, trained on faces as the predictor sees them:

- `faceness`: face or not, on the aligned crop of a face found only by FaceMesh or on the whole image (the last
  two steps of `FaceAnalyzer.find_faces`). Positives: UTKFace and All-Age-Faces training faces, aligned and as whole
  images, clean and under every synthetic occluder family (`synth.ALL_TYPES`, double ones included), and real
  masked / sunglasses faces from the fit half of realocc. Negatives: patches of the realocc photos away from every face, sample images that ship
  with scikit-learn and matplotlib (never scikit-image's: those are the measurement set), and procedural images
  (noise, gradients, shapes, colour wheels, stripes, text pages, star fields, cell-like blobs); with
  `--extra-negatives DIR`, also the faces a detector proposes on photos of animals (`face_like_negatives`).
- `occlusion` (fine-tuned from the shipped detector): real masked / sunglasses faces of the realocc fit half and
  synthetic occluders as positives, clean training faces (some with see-through glasses) as negatives; the
  threshold is set on clean validation faces for 99 % specificity.

    python -m agelens.train.guards data --out cache/guards [--extra-negatives DIR]   # collect crops (~2 min)
    python -m agelens.train.guards fit faceness --data cache/guards --out runs/faceness
    python -m agelens.train.guards fit occlusion --data cache/guards --out runs/occlusion_real

Realocc is split in two halves by a hash of the file name (`realocc_half`): "fit" is used here, "measure" only by
`benchmarks/occlusion_e2e.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import torch

from ..config import ModelConfig, RunConfig, config_to_dict
from ..data.augment import old_print as old_print_look
from ..data.dataset import degrade
from ..data.splits import sample_names, split_part
from ..data.views import resize_square
from ..errors import ConfigError
from ..faces.detect import FaceAnalyzer, pad_border, whole_image_crop
from ..faces.prepare import largest_face, prepare_face
from ..imageio import load_image
from ..models.inputs import to_input
from ..models.model import build_model
from ..occlusion.detector import OcclusionDetector
from ..occlusion.kinds import FAMILIES, kinds_without
from ..occlusion.synth import ALL_TYPES, OCCLUSION_TYPES, OcclusionError, add_clear_glasses, occlude
from ..utils import atomic_write, atomic_write_json

SIZE = 256  # crops as the predictor aligns them
CROP, INPUT = 224, 112  # the guards' view: centre 224 of 256, at 112 px (as the shipped occlusion detector)


def realocc_half(file: str) -> str:
    """'fit' or 'measure': a fixed half of realocc by file name."""
    return "fit" if int(hashlib.md5(file.encode()).hexdigest(), 16) % 2 == 0 else "measure"


def realocc_files(shared: Path, half: str) -> list[str]:
    """realocc.csv's files (relative to `shared`, in the CSV's order) in one half, "fit" or "measure"."""
    import pandas as pd

    return [f for f in pd.read_csv(shared / "realocc.csv").file if realocc_half(f) == half]


# ---- positives: faces as the predictor crops them ----------------------------------------------------------------


def whole_image_landmarks(shape: tuple[int, int], lm: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Landmarks of an image mapped into `whole_image_crop` of it."""
    h, w = shape
    side = max(h, w)
    off = np.array([(side - w) // 2, (side - h) // 2], np.float32)
    return ((lm + off) * (size / side)).astype(np.float32)


def collect_faces(paths: list[str], analyzer: FaceAnalyzer, whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """Aligned crops (and, with whole=True, whole-image crops) + landmarks of the largest face of each file."""
    crops, lms = [], []
    for p in paths:
        try:
            rgb = load_image(p)
            faces = analyzer.find_faces(rgb)
        except Exception:  # unreadable file: skipped, as prepare does
            continue
        faces = [f for f in faces if f.landmarks is not None]
        if not faces:
            continue
        f = largest_face(faces)
        crop, lm = prepare_face(rgb, analyzer, SIZE, aligned=False, face=f)
        crops.append(crop)
        lms.append(lm)
        if whole:
            crops.append(whole_image_crop(rgb, SIZE))
            lms.append(whole_image_landmarks(rgb.shape[:2], f.landmarks))
    return np.stack(crops), np.stack(lms).astype(np.float32)


# ---- negatives: images without a face -------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((SIZE, SIZE, 3), np.float32)
    for octave in range(int(rng.integers(1, 5))):
        g = int(rng.integers(2, 6)) * 2 ** octave
        out += cv2.resize(rng.normal(0, 1, (g, g, 3)).astype(np.float32), (SIZE, SIZE),
                          interpolation=cv2.INTER_CUBIC) / (octave + 1)
    out = (out - out.min()) / (np.ptp(out) + 1e-6)
    return (out * rng.uniform(120, 255) + rng.uniform(0, 60)).clip(0, 255).astype(np.uint8)


def _shapes(rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    for _ in range(int(rng.integers(1, 12))):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 0:
            cv2.circle(img, tuple(int(v) for v in rng.integers(0, SIZE, 2)), int(rng.integers(5, 90)), c, -1,
                       cv2.LINE_AA)
        elif kind == 1:
            p = rng.integers(0, SIZE, (2, 2))
            cv2.rectangle(img, tuple(int(v) for v in p[0]), tuple(int(v) for v in p[1]), c, -1)
        else:
            cv2.fillPoly(img, [rng.integers(0, SIZE, (int(rng.integers(3, 7)), 2)).astype(np.int32)], c, cv2.LINE_AA)
    return img


def _colour_wheel(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[:SIZE, :SIZE].astype(np.float32) - SIZE / 2 + rng.normal(0, 20, 2)[:, None, None]
    hue = (np.degrees(np.arctan2(y, x)) % 360) / 2
    r = np.hypot(x, y) / (SIZE / 2)
    sat = np.clip(r if rng.random() < 0.5 else 1 - r, 0, 1) * 255
    hsv = np.stack([hue, sat, np.full_like(hue, rng.uniform(150, 255))], -1).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _stripes(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    a = rng.uniform(0, np.pi)
    f = rng.uniform(0.02, 0.3)
    v = np.sin((x * np.cos(a) + y * np.sin(a)) * f)
    if rng.random() < 0.4:  # checkerboard / grid
        v = v * np.sin((-x * np.sin(a) + y * np.cos(a)) * f)
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = ((v > 0) if rng.random() < 0.5 else (v + 1) / 2)[..., None].astype(np.float32)
    return (c1 * t + c2 * (1 - t)).astype(np.uint8)


def _text_page(rng: np.random.Generator) -> np.ndarray:
    img = np.full((SIZE, SIZE, 3), rng.integers(200, 256, 3), np.uint8)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;"))
    scale = rng.uniform(0.3, 1.2)
    step = int(30 * scale) + 4
    ink = tuple(int(v) for v in rng.integers(0, 90, 3))
    font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
                           cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX]))
    for y in range(step, SIZE, step):
        text = "".join(rng.choice(letters, int(rng.integers(10, 60))))
        cv2.putText(img, text, (int(rng.integers(-20, 20)), y), font, scale, ink, 1, cv2.LINE_AA)
    return img


def _star_field(rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((SIZE, SIZE, 3), np.float32)
    n = int(rng.integers(50, 2000))
    pts = rng.normal(SIZE / 2, rng.uniform(20, 120), (n, 2)) if rng.random() < 0.5 else rng.uniform(0, SIZE, (n, 2))
    for (x, y), b in zip(pts.astype(int), rng.uniform(50, 255, n), strict=True):
        if 0 <= x < SIZE and 0 <= y < SIZE:
            img[y, x] = b * rng.uniform(0.6, 1.0, 3)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 4)) * rng.uniform(2, 8)
    return img.clip(0, 255).astype(np.uint8)


def _blobs(rng: np.random.Generator) -> np.ndarray:
    bg = rng.uniform(120, 255, 3)
    img = np.zeros((SIZE, SIZE, 3), np.float32) + bg
    for _ in range(int(rng.integers(3, 40))):
        c = rng.uniform(0, 255, 3)
        layer = np.zeros((SIZE, SIZE), np.float32)
        cv2.ellipse(layer, (tuple(int(v) for v in rng.integers(0, SIZE, 2)),
                            tuple(int(v) for v in rng.integers(8, 80, 2)), float(rng.uniform(0, 180))), 1.0, -1)
        layer = cv2.GaussianBlur(layer, (0, 0), rng.uniform(1, 6))[..., None]
        img = img * (1 - layer) + c * layer
    return img.clip(0, 255).astype(np.uint8)


PROCEDURAL = (_smooth_noise, _shapes, _colour_wheel, _stripes, _text_page, _star_field, _blobs)


def library_images() -> list[np.ndarray]:
    """Face-free sample images that ship with installed packages (scikit-learn, matplotlib)."""
    out = []
    try:
        from sklearn.datasets import load_sample_images

        out += [np.asarray(im, np.uint8) for im in load_sample_images().images]
    except Exception:  # noqa: S110 - optional sources
        pass
    try:
        import gzip

        import matplotlib

        root = Path(matplotlib.get_data_path()) / "sample_data"
        for name in ("Minduka_Present_Blue_Pack.png", "logo2.png"):
            if (root / name).is_file():
                out.append(load_image(root / name))
        mri = root / "s1045.ima.gz"
        if mri.is_file():
            with gzip.open(mri) as fh:
                a = np.frombuffer(fh.read(), np.uint16).astype(np.float32).reshape(256, 256)
            out.append(np.repeat((a / a.max() * 255).astype(np.uint8)[..., None], 3, 2))
    except Exception:  # noqa: S110
        pass
    return out


def random_patch(img: np.ndarray, rng: np.random.Generator, avoid: list[tuple[float, ...]] | None = None,
                 tries: int = 20) -> np.ndarray | None:
    """A random crop (10–100 % of the short side, aspect 0.6–1.6) resized to SIZE, away from `avoid` boxes."""
    h, w = img.shape[:2]
    for _ in range(tries):
        s = rng.uniform(0.1, 1.0) * min(h, w)
        cw, ch = s * rng.uniform(0.8, 1.25), s * rng.uniform(0.8, 1.25)
        cw, ch = min(cw, w), min(ch, h)
        if cw < 24 or ch < 24:
            continue
        x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        box = (x0, y0, x0 + cw, y0 + ch)
        if avoid and any(min(box[2], b[2]) - max(box[0], b[0]) > -0.3 * (b[2] - b[0])
                         and min(box[3], b[3]) - max(box[1], b[1]) > -0.3 * (b[3] - b[1]) for b in avoid):
            continue  # overlaps a face (or comes within 30 % of its size)
        return whole_image_crop(img[int(y0):int(y0 + ch), int(x0):int(x0 + cw)], SIZE)
    return None


def collect_negatives(realocc_paths: list[str], analyzer: FaceAnalyzer, n_procedural: int, seed: int = 0
                      ) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = [PROCEDURAL[i % len(PROCEDURAL)](rng) for i in range(n_procedural)]
    for img in library_images():
        out += [p for p in (random_patch(img, rng) for _ in range(150)) if p is not None]
    for p in realocc_paths:
        try:
            rgb = load_image(p)
            boxes = [f.box for f in analyzer.detect(rgb)]
        except Exception:
            continue
        if not boxes:  # a face we cannot locate could be anywhere: no background from this photo
            continue
        out += [q for q in (random_patch(rgb, rng, boxes) for _ in range(3)) if q is not None]
    return np.stack(out)


def face_like_negatives(folder: Path, seed: int = 1, views: int = 40) -> list[np.ndarray]:
    """Crops of photos without a human face that a face detector may still take for one (animals): for each of
    `views` seeded sub-crops of each image (40–100 % of its sides, every other one mirrored), the aligned crop of
    every face the predictor's detector proposes on it and inside a padded border, and the whole sub-crop. The
    procedural and library negatives have no such faces: a cat's scored 0.99 on both face networks."""
    rng = np.random.default_rng(seed)
    an = FaceAnalyzer(fast=None)  # the predictor's face path
    out = []
    for p in sorted(q for q in folder.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png")):
        rgb = load_image(p)
        h, w = rgb.shape[:2]
        for k in range(views):
            s = rng.uniform(0.4, 1.0)
            ch, cw = int(h * s), int(w * s)
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            v = np.ascontiguousarray(rgb[y:y + ch, x:x + cw][:, ::-1] if k % 2 else rgb[y:y + ch, x:x + cw])
            for img in (v, pad_border(v)[0]):
                out += [f.aligned(img, SIZE)[0] for f in an.propose(img)]
            out.append(whole_image_crop(v, SIZE))
    return out


SAMPLES = ("random", "first")  # how build_data picks its UTKFace and All-Age-Faces files from each split part


def pick(names: list[str], n: int, sample: str, seed: int = 0) -> list[str]:
    """n of a split part's names: a seeded random sample, or (sample="first", how the shipped guards' crops were
    collected) the first n, which, the names being sorted and led by the age or an ID that follows it, are
    children and young adults (UTKFace 2,500: mean age 13.1; All-Age-Faces 1,500: 14.6)."""
    if sample not in SAMPLES:
        raise ValueError(f"sample must be one of {', '.join(SAMPLES)}, got {sample!r}")
    return names[:n] if sample == "first" else sample_names(names, n, seed)


def build_data(out: Path, shared: Path, n_utk: int, n_aaf: int, n_procedural: int,
               extra_negatives: Path | None = None, sample: str = "random") -> None:
    """Collect every crop the two guards train on into OUT/guards.npz (written atomically); extra_negatives: a
    folder of face-free photos of animals (`face_like_negatives`), added to the negatives; sample: how the UTKFace
    and All-Age-Faces files are picked (`pick`)."""
    import pandas as pd

    t0 = time.perf_counter()
    an = FaceAnalyzer()
    utk_split, aaf_split = Path("splits/utkface_seed0.json"), Path("splits/aaf_seed0.json")
    utk = [str(shared / "utkface" / f) for f in pick(split_part(utk_split, "train"), n_utk, sample)]
    utk_val = [str(shared / "utkface" / f) for f in pick(split_part(utk_split, "val"), 600, sample)]
    aaf_train = [str(shared / "aaf" / f) for f in pick(split_part(aaf_split, "train"), n_aaf, sample)]
    occ = pd.read_csv(shared / "realocc.csv")
    occ = occ[occ.file.map(realocc_half) == "fit"]
    arrays = {}
    arrays["utk"], arrays["utk_lm"] = collect_faces(utk, an, whole=True)
    arrays["utk_val"], arrays["utk_val_lm"] = collect_faces(utk_val, an, whole=False)
    arrays["aaf"], arrays["aaf_lm"] = collect_faces(aaf_train, an, whole=True)
    print(f"faces: utk {len(arrays['utk'])} aaf {len(arrays['aaf'])} ({time.perf_counter() - t0:.0f} s)", flush=True)
    real, kinds = [], []
    for kind in ("mask", "sunglasses"):
        paths = [str(shared / f) for f in occ[occ.occluder == kind].file]
        crops, _ = collect_faces(paths, an, whole=False)
        real.append(crops)
        kinds += [kind] * len(crops)
    arrays["real"], arrays["real_kind"] = np.concatenate(real), np.array(kinds)
    arrays["neg"] = collect_negatives([str(shared / f) for f in occ.file], an, n_procedural)
    if extra_negatives is not None:
        arrays["neg"] = np.concatenate([arrays["neg"], np.stack(face_like_negatives(extra_negatives))])
    print(f"real occluded {len(arrays['real'])}, negatives {len(arrays['neg'])} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "guards.npz", lambda tmp: np.savez(open(tmp, "wb"), **arrays))  # noqa: SIM115


# ---- training --------------------------------------------------------------------------------------------------------


def _view(img: np.ndarray, rng: np.random.Generator, crop: int = CROP, size: int = INPUT) -> np.ndarray:
    """A training view: random crop around `crop` (scale jitter), resized to `size`, random flip and grey."""
    c = min(int(crop * rng.uniform(0.85, 1.1)), SIZE)
    ox, oy = (rng.integers(0, SIZE - c + 1, 2) if c < SIZE else (0, 0))
    v = resize_square(img[oy:oy + c, ox:ox + c], size)
    if rng.random() < 0.5:
        v = v[:, ::-1]
    if rng.random() < 0.15:
        v = np.repeat(cv2.cvtColor(np.ascontiguousarray(v), cv2.COLOR_RGB2GRAY)[..., None], 3, 2)
    return np.ascontiguousarray(v)


def _occluded(img: np.ndarray, lm: np.ndarray, rng: np.random.Generator,
              kinds: tuple[str, ...] = OCCLUSION_TYPES) -> np.ndarray | None:
    try:
        return occlude(img, lm, kinds[rng.integers(len(kinds))], rng).image
    except OcclusionError:
        return None


# Full-width bands over the eyes (brows to the bridge of the nose) and the mouth (nose to chin): larger than the
# synthesizer's eye and mouth blocks. Faces under both were answered 86 % of the time before `faceness` saw them
# (docs/occlusion_report.md); on a non-face image bands alone make no face. The shipped `faceness` was not trained
# with them: the fine-tune that answers every banded face lost real masked faces (same document).
BAND_P = 0.15  # of the faceness positives under an occluder; the same share of its "occluded" negatives
HALVES_P = 0.3  # the same with `halves`: half the draws are then a half face or a large block
BANDS = {"eyes": ([105, 334, 66, 296], [6, 197, 195]), "mouth": ([2, 164], [152, 148, 377])}
FACE_SIDES = ([234, 93], [454, 323])  # FaceMesh points at the face's left and right edges


def _face_sides(lm: np.ndarray) -> tuple[float, float]:
    """The face's left and right edges (pixels) from its FaceMesh landmarks."""
    return float(lm[FACE_SIDES[0], 0].min()), float(lm[FACE_SIDES[1], 0].max())


def _bands(img: np.ndarray, lm: np.ndarray | None, rng: np.random.Generator, halves: bool = False) -> np.ndarray:
    """Solid bands across the face at the eyes, the mouth or both (from the landmarks, each grown or shrunk at
    random); on an image without landmarks, one or two bands at random heights. halves: half the time instead one
    side of the face covered from about the nose's midline outwards, or a block of 30-45 % of the face box
    (`_large_block`)."""
    if halves and rng.random() < 0.5:
        return _large_block(img, lm, rng)
    out, h, w = img.copy(), img.shape[0], img.shape[1]
    colour = _block_colour(rng)
    parts = [("eyes", "mouth"), ("eyes",), ("mouth",)][rng.choice(3, p=[0.6, 0.2, 0.2])]
    for part in parts:
        if lm is None:
            y0 = rng.uniform(0.1, 0.7) * h
            x0, x1, y1 = rng.uniform(0, 0.2) * w, rng.uniform(0.8, 1.0) * w, y0 + rng.uniform(0.1, 0.3) * h
        else:
            top, bottom = BANDS[part]
            x0, x1 = _face_sides(lm)
            y0, y1 = float(lm[top, 1].min()), float(lm[bottom, 1].max())
            gx, gy = rng.uniform(-0.05, 0.3) * (x1 - x0) / 2, rng.uniform(-0.1, 0.25) * (y1 - y0) / 2
            x0, x1, y0, y1 = x0 - gx, x1 + gx, y0 - gy, y1 + gy
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), colour, -1)
    return out


def _block_colour(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(c) for c in (rng.integers(0, 70, 3) if rng.random() < 0.5 else rng.integers(0, 256, 3)))


def _large_block(img: np.ndarray, lm: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """One solid block: 60 % of the time one side of the face, from the nose's midline (shifted by up to a tenth of
    the face's width either way) outwards, brows to chin and beyond; else a rectangle of 30-45 % of the face box
    at a random place inside it. Without landmarks the image's box stands in for the face's."""
    out, h, w = img.copy(), img.shape[0], img.shape[1]
    if lm is None:
        x0, x1, y0, y1, mid = 0.0, float(w), 0.0, float(h), rng.uniform(0.3, 0.7) * w
    else:
        (brows, bridge), chin = BANDS["eyes"], BANDS["mouth"][1]
        x0, x1 = _face_sides(lm)
        y0, y1 = float(lm[brows, 1].min()), float(lm[chin, 1].max())
        y0 -= 0.25 * (y1 - y0)
        mid = float(lm[[1, *bridge], 0].mean())  # the nose's tip and bridge
    fw, fh = x1 - x0, y1 - y0
    if rng.random() < 0.6:
        mid += rng.uniform(-0.1, 0.1) * fw
        a, b = (mid, x1 + 0.1 * fw) if rng.random() < 0.5 else (x0 - 0.1 * fw, mid)
        c, d = y0 - rng.uniform(0, 0.1) * fh, y1 + rng.uniform(0, 0.1) * fh
    else:
        share, aspect = rng.uniform(0.3, 0.45), rng.uniform(0.6, 1.6)
        rw = min(fw, float(np.sqrt(share * fw * fh * aspect)))
        rh = min(fh, share * fw * fh / rw)
        a, c = x0 + rng.uniform(0, max(1e-6, fw - rw)), y0 + rng.uniform(0, max(1e-6, fh - rh))
        b, d = a + rw, c + rh
    cv2.rectangle(out, (int(a), int(c)), (int(b), int(d)), _block_colour(rng), -1)
    return out


SIDE_P = 0.25  # with `sides` (occlusion): share of the synthetic positives with one side of the face covered instead


def _side_cover(img: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One side of the face covered, as a hand, a held object, a doorframe or a person in front covers it: from
    about the nose's midline (± 12 % of the face's width) outwards, brows to chin and beyond, behind a wavy,
    slightly tilted, soft edge, filled with a natural texture (`occlusion.families.TEXTURE_SOURCES`), a shaded skin
    tone or a dark grainy cloth. Never a flat colour with a straight edge: `benchmarks/foreign_occluders.py`'s half
    faces (solid rectangles) stay a style the detector never saw."""
    from ..occlusion.families import TEXTURE_SOURCES, _texture_source

    h, w = img.shape[:2]
    (brows, bridge), chin = BANDS["eyes"], BANDS["mouth"][1]
    x0, x1 = _face_sides(lm)
    y0, y1 = float(lm[brows, 1].min()), float(lm[chin, 1].max())
    y0 -= 0.25 * (y1 - y0)
    fw, fh = x1 - x0, y1 - y0
    mid = float(lm[[1, *bridge], 0].mean()) + rng.uniform(-0.12, 0.12) * fw
    top, bottom = y0 - rng.uniform(0, 0.15) * fh, y1 + rng.uniform(0, 0.3) * fh
    ys = np.linspace(top, bottom, 24)
    t = (ys - top) / max(1e-6, bottom - top)
    edge = (mid + rng.uniform(-0.1, 0.1) * fw * (t - 0.5)
            + rng.uniform(0, 0.06) * fw * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 2 * np.pi)))
    outer = x1 + 0.3 * fw if rng.random() < 0.5 else x0 - 0.3 * fw
    poly = np.concatenate([np.stack([edge, ys], 1), [[outer, bottom], [outer, top]]]).astype(np.int32)
    alpha = np.zeros((h, w), np.float32)
    cv2.fillPoly(alpha, [poly], 1.0)
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(0.5, rng.uniform(0.005, 0.03) * fw))[..., None]
    u = rng.random()
    if u < 0.5:  # a natural texture, at a random scale and place
        src = _texture_source(TEXTURE_SOURCES[rng.integers(len(TEXTURE_SOURCES))])
        s = rng.uniform(0.5, 2.0) * max(h, w) / min(src.shape[:2])
        fill = cv2.resize(src, (max(w, int(src.shape[1] * s)) + 1, max(h, int(src.shape[0] * s)) + 1))
        oy, ox = rng.integers(0, fill.shape[0] - h + 1), rng.integers(0, fill.shape[1] - w + 1)
        fill = fill[oy:oy + h, ox:ox + w]
    else:  # a skin tone (a hand, a cheek in front) or a dark cloth, shaded across the cover, with grain
        base = (rng.uniform([150, 100, 80], [235, 190, 160]) if u < 0.75 else rng.uniform(0, 80, 3)).astype(np.float32)
        shade = 0.75 + 0.35 * np.linspace(0, 1, w, dtype=np.float32)[None, :, None] ** rng.uniform(0.5, 2.0)
        if rng.random() < 0.5:
            shade = shade[:, ::-1]
        fill = base * shade + rng.normal(0, rng.uniform(2, 10), (h, w, 1)).astype(np.float32)
    out = img.astype(np.float32) * (1 - alpha) + np.clip(fill, 0, 255) * alpha
    return out.round().astype(np.uint8)


DATA_DIR = "cache/guards"  # where `data` writes and `fit` reads by default; a card's recipe names any other
OCCLUDER_SETS = {"paper": OCCLUSION_TYPES, "all": ALL_TYPES}  # the occlusion guard's synthetic positives
TASKS = ("faceness", "occlusion")


@dataclass(frozen=True)
class GuardRecipe:
    """What one guard trains on, checked when made: `fit`'s samples and seed, the `fit` CLI's flags, recorded in the
    metrics and, where they differ from the defaults, in the shipped card's recipe (`flags`).

    kinds (occlusion): synthetic positives from the paper's six types ("paper") or every family ("all").
    photo: half of the degraded samples get the photo degradations of scanned prints and small faces instead
    (`PHOTO_P`, at the photo's working resolution), faces and non-faces alike. bands (faceness): BAND_P of the
    occluded faces are under full-width bands instead (`_bands`), and as many occluded negatives get bands too;
    halves (with bands): HALVES_P of them, half of those under a half-face or large block instead.
    sides (occlusion): SIDE_P of the synthetic positives with one side of the face covered (`_side_cover`).
    old_print: this share of every kind of sample (clean, real and synthetic occluded, non-faces) turned into a
    scanned old print (`data.augment.old_print`) before the other degradations: the look is not the label.
    without (occlusion): an occluder family left out of kinds (`occlusion.kinds.kinds_without`).
    real (occlusion): a quarter of the samples are real occluded faces (the realocc fit half); without, those are
    synthetic too, so that the synthetic kinds are the only occluders a model sees (leave-one-family-out,
    `benchmarks/lofo_detector.py`). random_shapes (occlusion): this share of the synthetic positives under a random
    shape (`occlusion.families`: domain randomisation, no family's look) instead. seed: the head's initialisation,
    the sample draws and their order."""

    task: str
    kinds: str = "paper"
    photo: bool = False
    bands: bool = False
    halves: bool = False
    sides: bool = False
    old_print: float = 0.0
    without: str | None = None
    real: bool = True
    random_shapes: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.kinds not in OCCLUDER_SETS:
            raise ConfigError(f"kinds must be one of {', '.join(OCCLUDER_SETS)}, got {self.kinds!r}")
        if (self.without is not None or not self.real) and self.task != "occlusion":
            raise ConfigError("without and real=False apply to the occlusion guard only")
        self.synthetic()  # an unknown family to leave out
        if not 0 <= self.old_print <= 1:
            raise ConfigError(f"old_print must be a share between 0 and 1, got {self.old_print}")
        if not 0 <= self.random_shapes <= 1 or (self.random_shapes and self.task != "occlusion"):
            raise ConfigError(f"random_shapes is a share between 0 and 1 for the occlusion guard, got "
                              f"{self.random_shapes} for {self.task}")

    def synthetic(self) -> tuple[str, ...]:
        """The synthetic occluder kinds that make an occlusion positive."""
        try:
            return OCCLUDER_SETS[self.kinds] if self.without is None else kinds_without(self.without,
                                                                                        OCCLUDER_SETS[self.kinds])
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def flags(self) -> list[str]:
        """The `fit` CLI's flags for every field that differs from its default (the task is positional)."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "task" or value == f.default:
                continue
            if f.name == "real":
                out.append("--no-real")
            elif isinstance(value, bool):
                out.append(f"--{f.name.replace('_', '-')}")
            else:
                out += [f"--{f.name.replace('_', '-')}", str(value)]
        return out

    @classmethod
    def from_metrics(cls, metrics: dict) -> GuardRecipe:
        """The recipe in a run's metrics.json or the parsed `fit` flags (fields an older run lacks: defaults)."""
        return cls(**{f.name: metrics[f.name] for f in fields(cls) if f.name in metrics})


class GuardSamples:
    """Draws (uint8 view, label) training samples for one guard from the collected arrays, as its recipe says."""

    def __init__(self, data: dict[str, np.ndarray], recipe: GuardRecipe) -> None:
        self.d, self.recipe, self.kinds = data, recipe, recipe.synthetic()
        self.band_p = HALVES_P if recipe.halves else BAND_P
        self.faces = [(k, i) for k in ("utk", "aaf") for i in range(len(data[k]))]

    def _face(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        k, i = self.faces[rng.integers(len(self.faces))]
        return self.d[k][i], self.d[f"{k}_lm"][i]

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        r = self.recipe
        u = rng.random()
        if r.task == "faceness":
            if u < 0.4:
                img, label = self.d["neg"][rng.integers(len(self.d["neg"]))], 0.0
                if rng.random() < 0.3:  # a negative under an "occluder" still is no face
                    img = _shapes(rng) if rng.random() < 0.5 else img
                    if r.bands and rng.random() < self.band_p:
                        img = _bands(img, None, rng, r.halves)
            elif u < 0.5:
                img, label = self.d["real"][rng.integers(len(self.d["real"]))], 1.0
            else:
                img, lm = self._face(rng)  # a face stays a face under any occluder family, the newer ones included
                occ = _occluded(img, lm, rng, ALL_TYPES) if rng.random() < 0.6 else None
                if occ is not None and r.bands and rng.random() < self.band_p and np.isfinite(lm[:468]).all():
                    occ = _bands(img, lm, rng, r.halves)
                img, label = (img if occ is None else occ), 1.0
        else:  # occlusion
            if u < 0.5:
                img, lm = self._face(rng)
                label = 0.0
                if rng.random() < 0.3:
                    with contextlib.suppress(OcclusionError):
                        img = add_clear_glasses(img, lm, rng)
            elif u < 0.75 and r.real:
                img, label = self.d["real"][rng.integers(len(self.d["real"]))], 1.0
            else:
                img, lm = self._face(rng)
                if r.sides and rng.random() < SIDE_P and np.isfinite(lm[:468]).all():
                    occ = _side_cover(img, lm, rng)
                elif r.random_shapes > 0 and rng.random() < r.random_shapes:  # no draw at 0: recipes as before
                    occ = _occluded(img, lm, rng, ("random_shape",))
                else:
                    occ = _occluded(img, lm, rng, self.kinds)
                img, label = (occ, 1.0) if occ is not None else (img, 0.0)
        if r.old_print > 0 and rng.random() < r.old_print:  # no draw at 0: earlier recipes stay as they were
            img = old_print_look(img, rng)
        u = rng.random()
        if r.photo and u < 0.25:
            img = photo_degraded(img, rng)
        elif u < 0.5:
            img = degrade(img, rng)
        return _view(img, rng), label


# the photo degradations a guard meets on scanned prints and small faces (`--photo`): grain, pixelation, noise
PHOTO_P = {"scan_grain": 0.4, "lowres": 0.4, "noise": 0.3, "jpeg": 0.4, "blur": 0.15, "grayscale": 0.2, "sepia": 0.1}


def photo_degraded(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw of `PHOTO_P` at the working resolution of a small face in a scanned or low-resolution photo."""
    from ..data.augment import realistic

    return realistic(img, rng, source_scale=0.7, p=PHOTO_P, source_min=0.2)


def fit(recipe: GuardRecipe, data_dir: Path, out: Path, steps: int, batch: int, init: str | None,
        threads: int = 0) -> dict:
    """Train one guard on its recipe's samples for `steps` batches (AdamW, cosine), choose its threshold, write
    OUT/best.pt + metrics.json (the recipe's fields among them)."""
    task, seed = recipe.task, recipe.seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch.set_flush_denormal(True)  # tiny gradients of a confident binary model otherwise crawl on x86
    if threads:
        torch.set_num_threads(threads)
    data = dict(np.load(data_dir / "guards.npz"))
    mcfg = ModelConfig(backbone="efficientnet_lite0", head="binary", pretrained=init is None, dropout=0.2)
    if init:
        from ..models.weights import resolve_model

        model, cfg, _ = resolve_model(init)  # a fresh copy of the init model's config, ours to change
    else:
        model = build_model(mcfg)
        cfg = RunConfig()
        cfg.model = mcfg
    cfg.name, cfg.data.crop_size, cfg.data.input_size = task, CROP, INPUT
    mean, std = model.mean_std
    head = set(map(id, model.head_parameters()))
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if id(p) not in head],
                              "lr": 3e-4 if init is None else 1e-4},
                             {"params": model.head_parameters(), "lr": 1e-3 if init is None else 3e-4}],
                            weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=steps,
                                                pct_start=0.1)
    samples = GuardSamples(data, recipe)
    model.train()
    t0, log = time.perf_counter(), []
    for step in range(steps):
        views, labels = zip(*(samples.draw(rng) for _ in range(batch)), strict=True)
        x = to_input(torch.from_numpy(np.stack(views)), mean, std)
        y = torch.tensor(labels)
        loss = model.head.losses(model(x), y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4), "s": round(time.perf_counter() - t0, 1)})
            print(json.dumps(log[-1]), flush=True)
    model.eval()
    metrics = {**asdict(recipe), "data": str(data_dir), "steps": steps, "batch": batch, "init": init,
               "seconds": round(time.perf_counter() - t0), "log": log}
    metrics.update(choose_threshold(model, data, recipe))
    out.mkdir(parents=True, exist_ok=True)
    ck = {"model": model.state_dict(), "config": config_to_dict(cfg), "epoch": 0, "metrics": metrics}
    atomic_write(out / "best.pt", lambda tmp: torch.save(ck, tmp))
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def choose_threshold(model, data: dict[str, np.ndarray], recipe: GuardRecipe) -> dict:
    """faceness: the threshold keeping 99.5 % of held-out faces, occluded ones included (validation faces, each
    clean and under a seeded occluder of any family), and the share of training negatives it still lets through;
    with photo, also the share of validation faces under seeded photo degradations (`PHOTO_P`) it keeps, reported
    only: pooled into the rule they pulled the threshold to 0.80, where whole photos of a cat pass.
    occlusion: the 99th percentile of clean validation faces (≈ 99 % specificity); with photo, also the
    specificity on the same faces under seeded photo degradations (reported only); with old_print, the
    specificity on them as scanned old prints and the recall on their occluded copies as old prints (reported
    only)."""
    task, photo, old_print = recipe.task, recipe.photo, recipe.old_print > 0
    guard_scores = OcclusionDetector(model, CROP, INPUT, 0.5, task).scores
    rng = np.random.default_rng(123)
    val, lm = data["utk_val"], data["utk_val_lm"]
    clean = guard_scores(val)
    kinds = ALL_TYPES if task == "faceness" else OCCLUSION_TYPES
    occ_imgs = [o for o in (_occluded(v, m, rng, kinds) for v, m in zip(val, lm, strict=True)) if o is not None]
    occ = guard_scores(np.stack(occ_imgs))
    degraded = guard_scores(np.stack([photo_degraded(v, rng) for v in val])) if photo else np.zeros(0, np.float32)
    if task == "faceness":
        thr = float(np.quantile(np.concatenate([clean, occ]), 0.005))
        neg = guard_scores(data["neg"][::4])
        extra = {"val_photo_recall": float((degraded >= thr).mean())} if photo else {}
        return {"threshold": round(thr, 4), "val_clean_recall": float((clean >= thr).mean()),
                "val_occluded_recall": float((occ >= thr).mean()), **extra,
                "train_negatives_accepted": float((neg >= thr).mean()), "n_val": int(len(clean))}
    thr = float(np.quantile(clean, 0.99))
    extra = {"val_photo_specificity": float((degraded < thr).mean())} if photo else {}
    if old_print:
        look = np.random.default_rng(321)
        extra["val_old_print_specificity"] = float((guard_scores(np.stack([old_print_look(v, look) for v in val]))
                                                    < thr).mean())
        extra["val_old_print_recall"] = float((guard_scores(np.stack([old_print_look(v, look) for v in occ_imgs]))
                                               >= thr).mean())
    return {"threshold": round(thr, 4), "val_specificity": float((clean < thr).mean()),
            "val_synthetic_recall": float((occ >= thr).mean()), **extra, "n_val": int(len(clean))}


LICENCE = ("trained on UTKFace (non-commercial research use), All-Age-Faces (research use) and realocc photos "
           "(RWMFD, MaskON, Selfies-with-sunglasses: research/evaluation use): non-commercial research use only")


def ship(run: Path, name: str, out_dir: Path | None = None) -> Path:
    """Export a guard's best.pt as the shipped NAME.safetensors + NAME.json, threshold and metrics in the card."""
    from ..models.checkpoint import model_from_checkpoint
    from ..models.weights import export_weights, weights_dir

    model, cfg = model_from_checkpoint(run / "best.pt")
    metrics = json.loads((run / "metrics.json").read_text())
    card = {"source_checkpoint": str(run / "best.pt"), "threshold": metrics["threshold"], "licence": LICENCE,
            "recipe": " ".join([f"python -m agelens.train.guards fit {metrics['task']}"]
                               + ([f"--data {metrics['data']}"] if metrics.get("data", DATA_DIR) != DATA_DIR else [])
                               + [f"--steps {metrics['steps']} --batch {metrics['batch']} --out {run}"]
                               + ([f"--init {metrics['init']}"] if metrics.get("init") else
                                  ["--init occlusion"] if metrics["task"] == "occlusion" and "init" not in metrics
                                  else [])
                               + GuardRecipe.from_metrics(metrics).flags()),
            "test_metrics": {k: v for k, v in metrics.items() if k != "log"}}
    return export_weights(model, cfg, out_dir or weights_dir(), name, card)


def parser() -> argparse.ArgumentParser:
    """The CLI: `data`, `fit` (a `GuardRecipe`'s fields are its flags) and `ship`."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="collect the crops both guards train on")
    d.add_argument("--out", type=Path, default=Path(DATA_DIR))
    d.add_argument("--shared", type=Path, default=Path("../shared/data"))
    d.add_argument("--n-utk", type=int, default=2500)
    d.add_argument("--n-aaf", type=int, default=1500)
    d.add_argument("--n-procedural", type=int, default=2800)
    d.add_argument("--extra-negatives", type=Path, default=None,
                   help="folder of face-free photos of animals, added to the negatives (see the model card)")
    d.add_argument("--sample", choices=SAMPLES, default="random",
                   help="UTKFace / All-Age-Faces files: a seeded random sample, or the first N by name (the shipped "
                        "guards' crops; young faces only)")
    f = sub.add_parser("fit", help="train one guard")
    f.add_argument("task", choices=TASKS)
    f.add_argument("--data", type=Path, default=Path(DATA_DIR))
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--steps", type=int, default=600)
    f.add_argument("--batch", type=int, default=32)
    f.add_argument("--init", default=None, help="start from this model (shipped name or path); default ImageNet")
    f.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    f.add_argument("--seed", type=int, default=0, help="weights' initialisation of the head, sample draws, order")
    f.add_argument("--kinds", choices=tuple(OCCLUDER_SETS), default="paper",
                   help="occlusion: synthetic positives from the paper's six types or from every family")
    f.add_argument("--photo", action="store_true",
                   help="also the photo degradations of scanned prints and small faces (grain, pixelation, noise)")
    f.add_argument("--bands", action="store_true", help="faceness: also faces under full-width bands (`_bands`)")
    f.add_argument("--halves", action="store_true", help="with --bands: half of those draws a half face or a block "
                   "of 30-45 %% of the face (`_large_block`)")
    f.add_argument("--sides", action="store_true", help="occlusion: also faces with one side covered behind a wavy "
                   "edge (`_side_cover`)")
    f.add_argument("--old-print", type=float, default=0.0, metavar="P",
                   help="this share of samples as scanned old prints (grey/sepia/faded, soft, flat, grainy)")
    f.add_argument("--without", default=None, metavar="FAMILY", choices=tuple(FAMILIES),
                   help="occlusion: leave this occluder family out of --kinds (leave-one-family-out)")
    f.add_argument("--no-real", dest="real", action="store_false",
                   help="occlusion: no real occluded faces; synthetic ones in their place")
    f.add_argument("--random-shapes", type=float, default=0.0, metavar="P",
                   help="occlusion: this share of the synthetic positives under a random shape (no family's look)")
    sh = sub.add_parser("ship", help="export a trained guard into the package's weights/")
    sh.add_argument("run", type=Path)
    sh.add_argument("--name", required=True, choices=("faceness", "faceness_photo", "faceness_bands", "occlusion"))
    return ap


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    if a.cmd == "ship":
        print(f"wrote {ship(a.run, a.name)}")
    elif a.cmd == "data":
        build_data(a.out, a.shared, a.n_utk, a.n_aaf, a.n_procedural, a.extra_negatives, a.sample)
    else:
        recipe = GuardRecipe.from_metrics(vars(a))
        metrics = fit(recipe, a.data, a.out, a.steps, a.batch, a.init, threads=a.threads)
        print(json.dumps({k: v for k, v in metrics.items() if k != "log"}))


if __name__ == "__main__":
    from ..utils import run_tool

    run_tool(main)
