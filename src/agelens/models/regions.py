"""Face-region attention: FaceMesh landmarks → soft region masks → features·(1 + Σ_r w_r·mask_r).

Regions (forehead, eyes, brows, nose, mouth, jawline, cheeks) are convex hulls (or, for the jawline, a thick
polyline) of FaceMesh-478 points, each the union of the left and right part so a horizontal flip maps the mask
of a face to the mask of its mirror image. Masks are rasterised with 4× supersampling at REGION_RES² in the
coordinates of the network input (after crop/flip) and area-pooled to the feature map by the model. Faces without
landmarks, and inference without landmarks, use the mean landmarks (assets/mean_landmarks_256.npy).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REGION_RES = 32  # mask side length handed from the dataset to the model
REGIONS: dict[str, dict] = {
    # hulls: lists of FaceMesh indices (one convex hull each), scale: growth about each hull's centroid
    "forehead": {"hulls": [[21, 54, 103, 67, 109, 10, 338, 297, 332, 284, 251, 70, 63, 105, 66, 107, 336, 296, 334,
                            293, 300]], "scale": 1.0},
    "eyes": {"hulls": [[33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246],
                       [362, 382, 381, 380, 374, 373, 390, 249, 263, 466, 388, 387, 386, 385, 384, 398]], "scale": 1.5},
    "brows": {"hulls": [[70, 63, 105, 66, 107, 55, 65, 52, 53, 46], [336, 296, 334, 293, 300, 276, 283, 282, 295, 285]],
              "scale": 1.2},
    "nose": {"hulls": [[168, 6, 197, 195, 5, 4, 1, 2, 98, 327, 129, 358, 64, 294, 48, 278, 102, 331, 49, 279]],
             "scale": 1.0},
    "mouth": {"hulls": [[61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]],
              "scale": 1.25},
    "jawline": {"line": [234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361,
                         323, 454], "width": 0.07},
    "cheeks": {"hulls": [[116, 117, 118, 119, 100, 142, 203, 206, 216, 207, 187, 123],
                         [345, 346, 347, 348, 329, 371, 423, 426, 436, 427, 411, 352]], "scale": 1.0},
}
REGION_NAMES = tuple(REGIONS)
MEAN_LANDMARK_SIZE = 256  # the mean landmarks are in pixels of a 256×256 aligned crop


@lru_cache(maxsize=1)
def mean_landmarks() -> np.ndarray:
    """(478, 2) mean FaceMesh landmarks of aligned 256×256 crops."""
    with resources.as_file(resources.files("agelens") / "assets" / "mean_landmarks_256.npy") as p:
        return np.load(p).astype(np.float32)


def landmarks_or_mean(lm: np.ndarray, size: int) -> np.ndarray:
    """The landmarks of a size×size crop, or the mean landmarks scaled to it when any is missing (NaN)."""
    lm = np.asarray(lm, np.float32)
    if lm.shape != (478, 2) or not np.isfinite(lm).all():
        return mean_landmarks() * (size / MEAN_LANDMARK_SIZE)
    return lm


def view_landmarks(lm: np.ndarray, size: int, x0: float, y0: float, crop: float, flip: bool) -> np.ndarray:
    """Landmarks in pixels of a size×size crop → normalised [0, 1] coordinates of the view cropped at (x0, y0)
    with side `crop` (then resized), mirrored when flip. Missing landmarks → mean landmarks."""
    p = (landmarks_or_mean(lm, size) - np.array([x0, y0], np.float32)) / float(crop)
    if flip:
        p[:, 0] = 1.0 - p[:, 0]
    return p


def centre_view_landmarks(lm: np.ndarray, size: int, crop: int) -> np.ndarray:
    """view_landmarks for the evaluation centre crop (crop×crop from the middle of size×size)."""
    o = (size - min(crop, size)) // 2
    return view_landmarks(lm, size, o, o, min(crop, size), False)


def region_masks(lm_view: np.ndarray, res: int = REGION_RES, ss: int = 4) -> np.ndarray:
    """(478, 2) normalised view landmarks → (len(REGIONS), res, res) float32 coverage in [0, 1]."""
    big = res * ss
    pts = np.asarray(lm_view, np.float64) * big
    out = np.zeros((len(REGIONS), res, res), np.float32)
    shift = 4  # sub-pixel bits for cv2
    for k, spec in enumerate(REGIONS.values()):
        canvas = np.zeros((big, big), np.uint8)
        if "line" in spec:
            line = np.round(pts[spec["line"]] * (1 << shift)).astype(np.int32)
            face_w = np.linalg.norm(pts[454] - pts[234])
            cv2.polylines(canvas, [line], False, 255, max(1, int(round(spec["width"] * face_w))), cv2.LINE_8, shift)
        else:
            for idx in spec["hulls"]:
                q = pts[idx]
                c = q.mean(0)
                q = c + (q - c) * spec["scale"]
                hull = cv2.convexHull(np.round(q * (1 << shift)).astype(np.int32))
                cv2.fillConvexPoly(canvas, hull, 255, cv2.LINE_8, shift)
        # box average of the ss×ss sub-pixels (INTER_AREA at an integer factor; 10× faster than reshape-mean)
        out[k] = cv2.resize(canvas.astype(np.float32), (res, res), interpolation=cv2.INTER_AREA) / 255.0
    return out


def prior_masks(crop_frac: float, res: int = REGION_RES) -> np.ndarray:
    """Masks of the mean face under the evaluation centre crop (crop = crop_frac of the cached image)."""
    s = MEAN_LANDMARK_SIZE
    return region_masks(centre_view_landmarks(mean_landmarks(), s, int(round(crop_frac * s))), res)


class RegionAttention(nn.Module):
    """features·(1 + Σ_r w_r·mask_r), w = 0 at initialisation (identity); masks area-pooled to the feature map.

    `prior` (a buffer saved with the weights) holds the mean-face masks used when a batch comes without masks."""

    def __init__(self, crop_frac: float = 224 / 256, res: int = REGION_RES) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(len(REGIONS)))
        self.register_buffer("prior", torch.from_numpy(prior_masks(crop_frac, res)))

    def set_prior(self, crop_frac: float) -> None:
        """Recompute the fallback masks for another evaluation crop (crop_size / cache_size)."""
        self.prior.copy_(torch.from_numpy(prior_masks(crop_frac, self.prior.shape[-1])))

    def attention(self, masks: torch.Tensor | None, batch: int, size: tuple[int, int]) -> torch.Tensor:
        """(B, 1, H, W) multiplicative map for (B, R, res, res) masks (None → the prior)."""
        m = self.prior.expand(batch, -1, -1, -1) if masks is None else masks
        m = F.adaptive_avg_pool2d(m.to(self.weight.device, torch.float32), size)
        return 1.0 + torch.einsum("brhw,r->bhw", m, self.weight.float()).unsqueeze(1)

    def forward(self, feats: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attention(masks, feats.shape[0], tuple(feats.shape[-2:]))
        return feats * a.to(feats.dtype)
