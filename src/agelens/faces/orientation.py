"""Which way up is a detected face? A photo turned sideways or upside down (a scan placed the wrong way, a file
whose EXIF orientation was stripped) still has its faces found, but with the detector's keypoints read as if the
face were upright: the aligned crop comes out upside down or mis-scaled and the age is wrong (the astronaut turned
90°, 180° and 270° read 38.2, 24.7 and 29.4 against 34.8 upright). This module reads the quarter turn from the
detector box's square crop: a small CNN (`agelens.train.orientation` trains it on detector crops of turned photos
and occluded faces, and exports it to ONNX with the uint8 → float scaling inside), run with onnxruntime.
`inference.finding.find_and_align` uses it to decide when to look again on the image turned each way."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

SIZE = 64  # side of the crop the classifier reads
# A face turned k quarter turns (np.rot90(upright, k)) is class k. find_and_align looks again, on the image turned
# each other way, where its largest face reads upright with a probability under LOOK_AGAIN (real masked faces read
# unsure more often than turned faces read upright: the look costs three detector passes), and a turn wins where
# its largest face reads upright with at least CONFIDENT, MARGIN more than on the image as it is.
LOOK_AGAIN, CONFIDENT, MARGIN = 0.2, 0.9, 0.3


def as_input(crop: np.ndarray) -> np.ndarray:
    """A face crop (H, W, 3) uint8 RGB at the classifier's SIZE."""
    if crop.shape[:2] == (SIZE, SIZE):
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def box_crop(rgb: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
    """The SIZE px square crop of the image around a detector box (side = the box's long side, centred on it; the
    part outside the image is black)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1], 8.0)
    scale = SIZE / side
    m = np.array([[scale, 0, SIZE / 2 - cx * scale], [0, scale, SIZE / 2 - cy * scale]], np.float32)
    flags = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(rgb, m, (SIZE, SIZE), flags=flags, borderMode=cv2.BORDER_CONSTANT)


class OrientationModel:
    """The exported classifier: `probs(crops)` → (N, 4) probabilities of 0, 1, 2, 3 quarter turns."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        from ..utils import cpu_session

        self.session, self._in = cpu_session(path, threads)

    def probs(self, crops: list[np.ndarray] | np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, 4), np.float32)
        x = np.stack([as_input(c) for c in crops]).astype(np.uint8)
        return self.session.run(None, {self._in: x})[0]

    def turns(self, rgb: np.ndarray, boxes: list[tuple[float, ...]]) -> np.ndarray:
        """(N, 4) probabilities for the faces in these boxes of the image."""
        return self.probs([box_crop(rgb, b) for b in boxes])


def weights_path() -> Path:
    from ..utils import weights_dir

    return weights_dir() / "orientation.onnx"


@lru_cache(maxsize=1)
def shipped() -> OrientationModel | None:
    """The shipped classifier, or None where the package has none (the turn check is then skipped)."""
    p = weights_path()
    return OrientationModel(p) if p.is_file() else None


def card() -> dict:
    p = weights_path().with_suffix(".json")
    return json.loads(p.read_text()) if p.is_file() else {}


def turned_back(box: tuple[float, ...], k: int, shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """A box found on np.rot90(image, k) in the coordinates of `image` (of shape `shape`)."""
    h, w = shape[:2]
    x1, y1, x2, y2 = box
    k %= 4
    if k == 0:
        return (x1, y1, x2, y2)
    if k == 1:  # rot90 once (counter-clockwise): the turned image is (w, h); a point (x', y') there is (w-1-y', x')
        return (w - y2, x1, w - y1, x2)
    if k == 2:
        return (w - x2, h - y2, w - x1, h - y1)
    return (y1, h - x2, y2, h - x1)  # k == 3
