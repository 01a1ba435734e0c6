"""Is a detected "face" a cat's? The face detector and both face networks take the face of a cat (scikit-image's
chelsea, a lion, a cheetah) for a human one: the teacher's and the face network's scores on cat crops are as high as
on people (0.99+), and a veto head fitted on their features could not tell cats from small blurred human faces
(docs/occlusion_report.md). A classifier that has seen thousands of cats can: EfficientNet-Lite0 with its ImageNet
classifier (the pip weights the age models start from). It reads the detector box with context (CONTEXT × its
side, 224 px, as ImageNet images are framed) and sums its probabilities over the 13 cat classes (domestic and big
cats). On 9,978 human faces `predict` answers (UTKFace and All-Age-Faces val and test, every realocc photo) that
sum is at most 0.136; on the cat crops that got an age it is 0.93-0.97 (`benchmarks/cat_check.py`). Dogs and other
animals are not vetoed: real masked faces read as hounds with up to 0.95.

The check costs one 224 px pass (about 11 ms on one core), so `inference.predictor.find_and_align` asks it only
about faces of MIN_SIDE px or more whose occlusion score reaches OCCLUDED (every cat crop's did, 0.79-1.0) and
that the detector was not sure of (CHECK_BELOW; cats 0.53-0.65, animals at most 0.83). The classifier is exported
to ONNX once, on first use (needs torch), into the cache folder beside the shipped models' export."""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

SIZE = 224  # the classifier's input side (its ImageNet resolution: at 160 px and below the margin shrinks)
CONTEXT = 2.2  # the square read around a detector box, in box sides
FELIDS = tuple(range(281, 294))  # ImageNet: tabby ... Egyptian cat, cougar, lynx, leopard, ..., lion, tiger, cheetah
VETO = 0.3  # a face whose cat probability reaches this is no human face (human faces: at most 0.136; a
# borderline cat crop read 0.33-0.75 as the input size changed from 160 to 208 px, docs/occlusion_report.md)
CHECK_BELOW = 0.85  # detector faces scored at or above this are not asked about (every animal photo's were lower)
OCCLUDED = 0.5  # nor faces whose occlusion score is under this (clean faces)
MIN_SIDE = 40  # nor faces smaller than this (px): crowds of masked faces, too small for the classifier to see a cat
FORMAT = "felid-v1"  # the exported graph's name: bump when the graph changes


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


class FelidCheck:
    """The exported classifier: `probs(crops)` → (N,) probability that each SIZE px context crop shows a cat."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        from ..utils import cpu_session

        self.session, self._in = cpu_session(path, threads)

    def probs(self, crops: list[np.ndarray] | np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros(0, np.float32)
        return self.session.run(None, {self._in: np.ascontiguousarray(np.stack(crops), dtype=np.uint8)})[0]

    def cats(self, rgb: np.ndarray, boxes: list) -> np.ndarray:
        """(N,) bool: which of these boxes of the image hold a cat (probability ≥ VETO)."""
        return self.probs([context_crop(rgb, b) for b in boxes]) >= VETO


def export_path() -> Path:
    """$AGELENS_ONNX_DIR/felid-v1.onnx, else ~/.cache/agelens/onnx/felid-v1.onnx (the ImageNet weights come from a
    pinned pip package, not from the shipped weights, so the file is not keyed by them)."""
    from ..export.shipped import onnx_cache_root

    env = os.environ.get("AGELENS_ONNX_DIR")
    return (Path(env) if env else onnx_cache_root()) / f"{FORMAT}.onnx"


def export(path: str | Path) -> Path:
    """Write the classifier as ONNX (uint8 NHWC in, cat probability out), atomically. Needs torch and timm."""
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
            self.register_buffer("idx", torch.tensor(FELIDS))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = (image.permute(0, 3, 1, 2).float() / 255.0 - 0.498) / 0.502  # the weights' normalisation
            return torch.softmax(self.net(x), 1).index_select(1, self.idx).sum(1)

    def write(tmp: str) -> None:
        import onnx

        dummy = torch.zeros(2, SIZE, SIZE, 3, dtype=torch.uint8)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # harmless (export/onnx.py)
            torch.onnx.export(Graph().eval(), (dummy,), tmp, input_names=["image"], output_names=["cat"],
                              dynamic_axes={"image": {0: "batch"}, "cat": {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)
        m = onnx.load(tmp)
        fuse_pads(m, {"image": dummy.numpy()})
        onnx.checker.check_model(m)
        onnx.save(m, tmp)

    atomic_write(path, write)
    return Path(path)


def ensure_export() -> Path | None:
    """The exported check, made first where it is missing; None where it cannot be made (no torch for the export,
    no ImageNet weights, a cache folder that cannot be written), with a warning: faces are then not checked for
    cats. The batch engine calls it before starting its workers, so they do not each export it."""
    from ..errors import CheckpointError

    p = export_path()
    if not p.is_file():
        try:
            export(p)
        except (ImportError, CheckpointError, OSError) as e:
            warnings.warn(f"faces are not checked for cats: the check cannot be exported to {p} "
                          f"({type(e).__name__}: {e})", RuntimeWarning, stacklevel=2)
            return None
    return p


@lru_cache(maxsize=1)
def shipped() -> FelidCheck | None:
    """The check, exported on first use; None where it cannot be made: faces are then not checked for cats."""
    p = ensure_export()
    return FelidCheck(p) if p is not None else None
