"""Realignment of an occluded face crop before the student reads it.

Predict aligns a face from its landmarks, and a mask, sunglasses or a hand moves them: FaceMesh guesses the hidden
points, so the crop the student reads is shifted, scaled or turned against the clean-face alignment it was trained
on (on UTKFace validation photos under the paper's six occluders the student reads the crops as found at MAE
6.97, the same occluded photos aligned by the clean face's landmarks at 6.38: docs/realign_val.md). A small CNN
reads the crop at SIZE px and says where the alignment template's five keypoints are in it; the similarity that
takes them to the template is applied to the crop (`realign`): three readings, each of the crop as corrected so
far. Where the crop's source is known (`CropSource`: the image it was warped from), every reading and the final
crop are warped from a frame of that image around the crop, so a corrected crop holds the face's real surroundings
instead of the crop's replicated edges. `agelens.train.realign` trains it on cached clean-aligned crops, occluded
and degraded, under random similarity jitter, and exports it to ONNX (uint8 in, scaling inside).
`inference.predictor.AgeEstimator` applies it to the crops the student reads (`AgeEstimator.realign`); the
teacher, the guards and the occlusion verdict read the crop as found."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..data.views import resize_square
from .align import TEMPLATE_KEYPOINTS, TEMPLATE_SIZE, similarity_transform, warp

SIZE = 64  # side of the crop the network reads
# read, correct, read the corrected crop again, twice: on validation photos (docs/realign_val.md) the third reading
# still paid a little (student MAE over occluded faces 7.345 with two readings, 7.310 with three). A bicubic final
# warp gave 7.288 but cost 3 ms a face, a fifth of predict's time on masked photos; the paper types read the same.
ITERATIONS = 3
FLIP = [1, 0, 2, 4, 3]  # the template's keypoints mirrored left-right (eyes and mouth corners swap)
SINGLE_VIEW = ((1.0, 0.0),)  # `moved`'s views: the corrected crop alone
# The realignment resamples a face from the crop with this share of its side of the face's surroundings on every
# side (`CropSource.framed_source`), in this process and in any other alike. On 270 UTKFace validation photos under
# 11 occluder kinds (2,790 faces) the student read the realigned crops at 6.791 warped within the crop (its edges
# replicated), 6.672 from this frame, 6.657 from the whole photo (benchmarks/realign_context.py).
CONTEXT = 0.25


@dataclass(eq=False)
class CropSource:
    """Where an aligned crop came from: `image` and the 2×3 similarity `matrix` from its pixels to the crop's (size
    px square), so a corrected crop can be warped from the face's real surroundings (`resample`) instead of the
    crop's replicated edges. framed: the image is already the crop with CONTEXT of its surroundings on every side
    (`framed_source`), which is what a pickled source (to a worker process or Ray) carries, not the whole image."""

    image: np.ndarray
    matrix: np.ndarray
    size: int
    framed: bool = False

    def framed_source(self) -> CropSource:
        """This source cut down to the crop and CONTEXT of its surroundings (made once)."""
        if self.framed:
            return self
        if "_framed" not in self.__dict__:
            d = int(round(CONTEXT * self.size))
            shift = np.array([[1, 0, d], [0, 1, d]], np.float32)
            self.__dict__["_framed"] = CropSource(warp(self.image, compose(shift, self.matrix), self.size + 2 * d),
                                                  np.array([[1, 0, -d], [0, 1, -d]], np.float32), self.size, True)
        return self.__dict__["_framed"]

    def resample(self, correction: np.ndarray) -> np.ndarray:
        """The crop as `correction` (2×3, crop pixels → corrected crop pixels) moves it, warped from the frame."""
        f = self.framed_source()
        return warp(f.image, compose(correction, f.matrix), self.size)

    def __reduce__(self):
        f = self.framed_source()
        return CropSource, (f.image, f.matrix, f.size, True)


def centred_similarity(scale: float, degrees: float, shift=(0.0, 0.0), side: float = TEMPLATE_SIZE) -> np.ndarray:
    """The 2×3 similarity that scales and turns a side px crop about its centre, then shifts it by `shift` px."""
    r = np.radians(degrees)
    a = scale * np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    c = np.array([side / 2, side / 2])
    return np.hstack([a, (c - a @ c + np.asarray(shift, float))[:, None]]).astype(np.float32)


def mirrored_points(points: np.ndarray) -> np.ndarray:
    """Template keypoints (N, 5, 2) as fractions of the side → the same points of the crops mirrored left-right
    (the pairs swapped, x reflected)."""
    q = points[:, FLIP].copy()
    q[..., 0] = 1.0 - q[..., 0]
    return q


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 2×3 affine a ∘ b (b first)."""
    return (np.vstack([a, [0, 0, 1]]) @ np.vstack([b, [0, 0, 1]]))[:2].astype(np.float32)


class RealignModel:
    """The exported network: `points(crops)` → (N, 5, 2) template keypoints in each crop, as fractions of its side."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        from ..utils import cpu_session

        self.session, self._in = cpu_session(path, threads)

    def points(self, crops: list[np.ndarray] | np.ndarray, mirror: bool = True) -> np.ndarray:
        """mirror: the mean of the reading of each crop and of its mirror image (mirrored back), in one pass. On
        real masked photos re-encoded JPEG q95 → q75 the student's age then moves 2.77 years on average against
        3.17 with single readings (2.54 without realignment); validation MAE is the same (docs/realign_val.md)."""
        if len(crops) == 0:
            return np.zeros((0, 5, 2), np.float32)
        x = np.stack([resize_square(c, SIZE) for c in crops]).astype(np.uint8)
        n = len(x)
        if mirror:
            x = np.concatenate([x, np.ascontiguousarray(x[:, :, ::-1])])
        p = self.session.run(None, {self._in: x})[0].reshape(-1, 5, 2)
        if not mirror:
            return p
        return (p[:n] + mirrored_points(p[n:])) / 2

    def corrections(self, crops: np.ndarray, iterations: int = ITERATIONS, sources: list | None = None
                    ) -> np.ndarray:
        """(N, 2, 3) similarities from each crop's pixels to its realigned crop's pixels (the same side). sources:
        per crop its CropSource or None; the readings after the first see crops warped from it."""
        n, side = len(crops), crops.shape[1]
        tpl = TEMPLATE_KEYPOINTS * (side / TEMPLATE_SIZE)
        ms = np.tile(np.eye(2, 3, dtype=np.float32), (n, 1, 1))
        for it in range(iterations):
            cur = crops if it == 0 else moved(crops, ms, sources)
            pts = self.points(cur) * side
            ms = np.stack([compose(similarity_transform(p, tpl), m) for p, m in zip(pts, ms, strict=True)])
        return ms

    def realign(self, crops: np.ndarray, iterations: int = ITERATIONS, sources: list | None = None) -> np.ndarray:
        """The crops (N, S, S, 3) uint8, each warped once by its correction (bilinear): from its source where
        `sources` gives one, else from the crop itself (edges replicated)."""
        if len(crops) == 0:
            return crops
        return moved(crops, self.corrections(crops, iterations, sources), sources)


def moved(crops: np.ndarray, corrections: np.ndarray, sources: list | None = None, views=SINGLE_VIEW
          ) -> np.ndarray:
    """Each crop warped by its correction, then at each view (scale, degrees about the centre), each warped once:
    from its CropSource (of the crops' side) where there is one, else from the crop. (N × len(views), S, S, 3), the
    views of a crop together."""
    side = crops.shape[1]
    at = [centred_similarity(scale, degrees, side=side) for scale, degrees in views]
    srcs = sources if sources is not None else [None] * len(crops)
    return np.stack([s.resample(compose(v, m)) if s is not None else warp(c, compose(v, m), side)
                     for c, m, s in zip(crops, corrections, srcs, strict=True) for v in at])


def realigned(crops: np.ndarray, sources: list | None = None, views=SINGLE_VIEW, correct: bool = True
              ) -> np.ndarray:
    """The crops as the student reads them: corrected by the shipped realignment network (with correct=True and
    where it is shipped), then at each view (scale, degrees about the centre), each warped once, from its source
    where `sources` gives one: (N × len(views), S, S, 3), the views of a face together. Unchanged with one plain view
    and no correction."""
    n = len(crops)
    model = shipped() if correct else None
    if n == 0 or (model is None and tuple(views) == SINGLE_VIEW):
        return crops
    ms = (model.corrections(crops, sources=sources) if model is not None
          else np.tile(np.eye(2, 3, dtype=np.float32), (n, 1, 1)))
    return moved(crops, ms, sources, views)


def weights_path() -> Path:
    from ..utils import weights_dir

    return weights_dir() / "realign.onnx"


@lru_cache(maxsize=1)
def shipped() -> RealignModel | None:
    """The shipped network, or None where the package has none (the student then reads the crop as found)."""
    p = weights_path()
    return RealignModel(p) if p.is_file() else None
