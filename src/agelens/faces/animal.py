"""Is a detected "face" a human one? Two vetoes from one ImageNet classifier (EfficientNet-Lite0 with its ImageNet
head, the pip weights the age models start from), reading the detector box with context (CONTEXT × its side, 224 px,
as ImageNet images are framed):

- **Cats.** The face detector and both face networks take the face of a cat (scikit-image's chelsea, a lion, a
  cheetah) for a human one (0.99+), and a veto head fitted on their features could not tell cats from small blurred
  human faces (docs/occlusion_report.md). The classifier's probability summed over the 13 cat classes: at most
  0.136 on 9,978 human faces `predict` answers, 0.93-0.97 on the cat crops that got an age
  (`benchmarks/cat_check.py`). Dogs are not vetoed: real masked faces read as hounds with up to 0.95.
- **Things that look like nothing a person looks like** (galaxies, rockets, cells, coins). Human faces, masked,
  degraded or not, put their ImageNet probability on a set of classes (neck brace, sunglasses, ski mask, gown, ...);
  the shipped people table (`weights/people_classes.json`, `agelens.train.people`) lists the classes that carry
  most of that mass on faces of the fit data, and the mass below which a face is no person's (a low quantile of
  the human faces' mass). It is fitted on human faces only: no non-face image is used.

The check costs one 224 px pass (about 11-18 ms on one core), so `inference.finding.without_non_faces` asks it only
about faces a fallback step found and faces the detector was unsure of: for the cat veto, faces of MIN_SIDE px or
more scored under CHECK_BELOW whose occlusion score reaches OCCLUDED (every cat crop's did, 0.79-1.0; cats scored
0.53-0.65, animals at most 0.83); for the people veto, faces scored under PEOPLE_BELOW (the non-face faces measured
scored 0.50-0.80, most under 0.7, while 72 % of UTKFace test crops score under 0.85 and 16 % under 0.7) that the
face verifier is not sure of (under FACE_SURE, from scores it has already computed). The
classifier is exported to ONNX once, on first use (needs torch), into the cache folder beside the shipped models'
export."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

SIZE = 224  # the classifier's input side (its ImageNet resolution: at 160 px and below the margin shrinks)
CONTEXT = 2.2  # the square read around a detector box, in box sides
FELIDS = tuple(range(281, 294))  # ImageNet: tabby ... Egyptian cat, cougar, lynx, leopard, ..., lion, tiger, cheetah
VETO = 0.3  # a face whose cat probability reaches this is no human face (human faces: at most 0.136; a
# borderline cat crop read 0.33-0.75 as the input size changed from 160 to 208 px, docs/occlusion_report.md)
CHECK_BELOW = 0.85  # the cat veto: detector faces scored at or above this are not asked about (every animal
# photo's were lower)
OCCLUDED = 0.5  # nor faces whose occlusion score is under this (clean faces)
MIN_SIDE = 40  # nor faces smaller than this (px): crowds of masked faces, too small for the classifier to see a cat
PEOPLE_BELOW = 0.7  # the people veto: detector faces scored at or above this are not asked about
# a face the mirror step built from half an image (`FaceAnalyzer._mirrored`) is always asked, at this people mass or
# the table's threshold if higher: 1,547 of 1,548 such faces of validation half-face photos put 0.85 or more on the
# people classes (lowest 0.847), moon crops that mirror into a face 0.80-0.92 (13 faces on 4,600 non-face views of
# seeds 1-6 and 16-25: 6 left instead of 13; runs/ probe of 2026-12-03)
MIRROR_PEOPLE = 0.85
# A face small in its image (its short side under SMALL_SIDE of the image's) that the detector scored under
# SMALL_BELOW is always asked the people veto, at SMALL_PEOPLE or the table's threshold if higher, however sure the
# face networks are: the faces found on crops of rockets, star fields, coins and cells are such faces (people mass
# 0.74-0.96, most under 0.85), while UTKFace and All-Age-Faces portraits almost never are (0.3-1 % of their faces;
# a crowd's real masked faces are: 44 %). SMALL_PEOPLE lies between the 0.5 % and 1 % quantiles (0.807, 0.829) of
# the people mass of the 322 such real faces of a selection set (realocc's fit half, validation photos clean,
# degraded and occluded): there, scikit-image views of seeds 1-6 still answered fall 73 -> 40 images, 3 of those
# real faces are turned away, no photo is left without a face (benchmarks/small_face_gate.py,
# docs/small_face_gate.json; measured end to end in docs/occlusion_report.md).
SMALL_SIDE, SMALL_BELOW, SMALL_PEOPLE = 0.35, 0.8, 0.82
FACE_SURE = 0.999  # nor faces the face verifier (the teacher's head, then the cascade) scores at or above this:
# 92 % of the UTKFace test faces under PEOPLE_BELOW, while 40 of the 45 non-face faces the veto turned away scored less
FORMAT = "imagenet-v1"  # the exported graph's name (uint8 NHWC in, the 1000 ImageNet probabilities out): bump
# when the graph changes
PEOPLE = "people_classes.json"  # the people table in the weights folder


def context_crop(rgb: np.ndarray, box: tuple[float, ...] | list[float]) -> np.ndarray:
    """The SIZE px square of the image around a box (side CONTEXT × the box's long side, centred on it; the part
    outside the image is mid-grey, zero after the weights' normalisation)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = CONTEXT * max(x1 - x0, y1 - y0, 8.0)
    s = SIZE / side
    m = np.array([[s, 0, SIZE / 2 - (x0 + x1) / 2 * s], [0, s, SIZE / 2 - (y0 + y1) / 2 * s]], np.float32)
    if s < 0.5:  # a large face: average the pixels first, as faces.align.warp does, instead of sampling 4 of them
        k = int(1 / s)
        small = cv2.resize(rgb, (max(1, rgb.shape[1] // k), max(1, rgb.shape[0] // k)), interpolation=cv2.INTER_AREA)
        m[0, 0] *= rgb.shape[1] / small.shape[1]
        m[1, 1] *= rgb.shape[0] / small.shape[0]
        rgb = small
    return cv2.warpAffine(rgb, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(127, 127, 127))


def small_and_unsure(box: tuple[float, ...] | list[float], score: float, shape: tuple[int, ...]) -> bool:
    """Whether a face is asked the people veto at SMALL_PEOPLE: its short side under SMALL_SIDE of the image's short
    side and its score under SMALL_BELOW."""
    return min(box[2] - box[0], box[3] - box[1]) < SMALL_SIDE * min(shape[:2]) and score < SMALL_BELOW


def people_asked(score: float, how: str) -> bool:
    """Whether the people veto is asked about a face, from how it was found and its detector score (before the
    verifier gate, `FACE_SURE`): a fallback step's face, or a detector score under PEOPLE_BELOW."""
    return how != "detector" or score < PEOPLE_BELOW


@dataclass(frozen=True)
class PeopleTable:
    """The ImageNet classes human faces put their probability on, and the summed probability below which a face is
    no person's (`agelens.train.people`)."""

    classes: np.ndarray
    threshold: float

    def mass(self, probs: np.ndarray) -> np.ndarray:
        """(N,) the probability each row of (N, 1000) puts on the table's classes."""
        return probs[:, self.classes].sum(1)


@lru_cache(maxsize=1)
def people_table() -> PeopleTable | None:
    """The shipped people table, or None where the weights folder has none (then only cats are vetoed)."""
    from ..errors import CheckpointError
    from ..utils import weights_dir

    p = weights_dir() / PEOPLE
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
        classes = np.asarray(d["classes"], np.int64)
        if classes.ndim != 1 or len(classes) == 0 or classes.min() < 0 or classes.max() >= 1000:
            raise ValueError("classes must be ImageNet class indices 0-999")
        return PeopleTable(classes, float(d["threshold"]))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{p} is not a people table ({e})") from None


class ImageNetCheck:
    """The exported classifier: `probs(crops)` → (N, 1000) ImageNet probabilities of SIZE px context crops;
    `vetoes(rgb, boxes)` → which boxes hold a cat or something no person looks like."""

    def __init__(self, path: str | Path, threads: int = 1, people: PeopleTable | None = None) -> None:
        from ..utils import cpu_session

        self.session, self._in = cpu_session(path, threads)
        self.people = people

    def probs(self, crops: list[np.ndarray] | np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, 1000), np.float32)
        return self.session.run(None, {self._in: np.ascontiguousarray(np.stack(crops), dtype=np.uint8)})[0]

    def scores(self, rgb: np.ndarray, boxes: list) -> tuple[np.ndarray, np.ndarray]:
        """(cat probability, people mass (NaN without a table)) per box of the image."""
        p = self.probs([context_crop(rgb, b) for b in boxes])
        people = self.people.mass(p) if self.people is not None else np.full(len(p), np.nan, np.float32)
        return cat_probability(p), people

    def vetoes(self, rgb: np.ndarray, boxes: list, people: np.ndarray | None = None,
               mirrored: np.ndarray | None = None, small: np.ndarray | None = None) -> np.ndarray:
        """(N,) bool: which of these boxes of the image are no human face: a cat, or, where `people` (default: every
        box) says the people veto applies, too little people mass (at least MIRROR_PEOPLE where `mirrored`,
        SMALL_PEOPLE where `small`)."""
        cat, mass = self.scores(rgb, boxes)
        little = np.zeros(len(cat), bool)
        if self.people is not None:
            bar = np.full(len(cat), self.people.threshold, np.float64)
            if small is not None:
                bar[np.asarray(small, bool)] = max(self.people.threshold, SMALL_PEOPLE)
            if mirrored is not None:
                bar[np.asarray(mirrored, bool)] = max(self.people.threshold, MIRROR_PEOPLE)
            little = mass < bar
        return (cat >= VETO) | (little & (True if people is None else np.asarray(people, bool)))


def cat_probability(probs: np.ndarray) -> np.ndarray:
    """(N,) the probability each row of (N, 1000) ImageNet probabilities puts on the cat classes (FELIDS)."""
    return probs[:, list(FELIDS)].sum(1)


EXPORT_DIRS: list[Path] = []  # folders of `agelens export onnx` an estimator runs (`from_onnx`): their check first


def export_path() -> Path:
    """FORMAT.onnx in the export folder an estimator runs (`EXPORT_DIRS`, where it has one: `agelens export onnx`
    writes it there, for machines without torch), else $AGELENS_ONNX_DIR/FORMAT.onnx, else in the cache
    (`export.shipped.cached_file`; the ImageNet weights come from a pinned pip package, not from the shipped
    weights, so the file is not keyed by them)."""
    from ..export.shipped import cached_file

    for d in EXPORT_DIRS:
        if (d / f"{FORMAT}.onnx").is_file():
            return d / f"{FORMAT}.onnx"
    env = os.environ.get("AGELENS_ONNX_DIR")
    return Path(env) / f"{FORMAT}.onnx" if env else cached_file(f"{FORMAT}.onnx")


def export(path: str | Path) -> Path:
    """Write the classifier as ONNX (uint8 NHWC in, the 1000 ImageNet probabilities out), atomically. Needs torch
    and timm."""
    import torch
    from torch import nn

    from ..export.onnx import OPSET, fuse_pads, static_same_padding
    from ..models.backbones import efficientnet_lite_imagenet
    from ..utils import atomic_write

    net = efficientnet_lite_imagenet(0).float().eval()
    static_same_padding(net, SIZE)

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = (image.permute(0, 3, 1, 2).float() / 255.0 - 0.498) / 0.502  # the weights' normalisation
            return torch.softmax(self.net(x), 1)

    def write(tmp: str) -> None:
        import onnx

        dummy = torch.zeros(2, SIZE, SIZE, 3, dtype=torch.uint8)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # harmless (export/onnx.py)
            torch.onnx.export(Graph().eval(), (dummy,), tmp, input_names=["image"], output_names=["probs"],
                              dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)
        m = onnx.load(tmp)
        fuse_pads(m, {"image": dummy.numpy()})
        onnx.checker.check_model(m)
        onnx.save(m, tmp)

    atomic_write(path, write)
    return Path(path)


def ensure_export(log=None) -> Path | None:
    """The exported check, made first where it is missing (said through `log` where one is given); None where it
    cannot be made (no torch for the export, no ImageNet weights, a cache folder that cannot be written), with a
    warning: faces are then not checked for cats. The batch engine calls it before starting its workers, so they do
    not each export it; an estimator on the shipped ONNX export makes it as it loads (`AgeEstimator.from_onnx`)."""
    from ..errors import CheckpointError

    p = export_path()
    if not p.is_file():
        try:
            export(p)
            if log:
                log(f"cat / non-face check: {p} ({p.stat().st_size / 1e6:.1f} MB)")
        except (ImportError, CheckpointError, OSError) as e:
            warnings.warn(f"faces are not checked for cats and non-faces: the check cannot be exported to {p} "
                          f"({type(e).__name__}: {e})", RuntimeWarning, stacklevel=2)
            return None
    return p


@lru_cache(maxsize=1)
def shipped() -> ImageNetCheck | None:
    """The check with the shipped people table, exported on first use; None where it cannot be made: faces are
    then not checked."""
    p = ensure_export()
    return ImageNetCheck(p, people=people_table()) if p is not None else None
