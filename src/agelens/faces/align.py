"""Similarity alignment of a face to a fixed 5-point template (eyes, nose tip, mouth corners)."""

from __future__ import annotations

import cv2
import numpy as np

# FaceMesh indices: iris centres (image-left, image-right), nose tip, mouth corners (image-left, image-right).
MESH_KEYPOINTS = [468, 473, 1, 61, 291]
# Template for a 256×256 crop. Measured as the mean FaceMesh keypoints of UTKFace chips (scaled 200→256,
# symmetrised), so aligning a UTKFace chip is close to a pure rescale and wild photos get the same framing.
TEMPLATE_KEYPOINTS = np.array(
    [[77.4, 74.9], [178.6, 74.9], [128.0, 140.3], [84.0, 176.8], [172.0, 176.8]], dtype=np.float32
)
TEMPLATE_SIZE = 256
# Below this scale (output pixels per source pixel) `warp` area-averages the source first. A bilinear warp reads
# 4 source pixels per output pixel whatever the scale, so a face shrunk 4x keeps a sixteenth of its pixels and
# their noise and fine texture alias into the crop. Measured (benchmarks/hires.py): UTKFace test photos enlarged 6x
# as a phone takes them move 0.49 years from their small originals instead of 0.91. At 0.75 the landmark input of
# most UTKFace chips (shrunk 0.7x) changed too, for no gain; at 0.5 no test photo at its own size changes. At most
# 0.5: `warp` reduces by whole factors of at least 2.
AA_SCALE = 0.5


def keypoints_from_mesh(mesh: np.ndarray) -> np.ndarray:
    """(478, 2) FaceMesh → (5, 2) alignment keypoints."""
    return mesh[MESH_KEYPOINTS].astype(np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src → dst, as a 2×3 matrix."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var = (s**2).sum()
    if var < 1e-9:
        raise ValueError("degenerate keypoints")
    a = (s * d).sum() / var  # scale*cos
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / var  # scale*sin
    rot = np.array([[a, -b], [b, a]])
    t = mu_d - rot @ mu_s
    return np.hstack([rot, t[:, None]]).astype(np.float32)


def align_face(rgb: np.ndarray, keypoints: np.ndarray, size: int = TEMPLATE_SIZE,
               template: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Warp the face so its keypoints land on the template; returns (size×size crop, 2×3 matrix)."""
    tpl = (TEMPLATE_KEYPOINTS if template is None else template) * (size / TEMPLATE_SIZE)
    kp = np.asarray(keypoints, np.float32)
    if len(kp) == 4:  # detector keypoints: eyes, nose, mouth centre
        tpl = np.vstack([tpl[:3], tpl[3:].mean(0, keepdims=True)])
    m = similarity_transform(kp, tpl)
    return warp(rgb, m, size, cv2.BORDER_REPLICATE), m


def warp(rgb: np.ndarray, m: np.ndarray, size: int, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """cv2.warpAffine of the size×size output (bilinear), anti-aliased where it shrinks: when the scale s is under
    AA_SCALE, the source region the output reads is first area-averaged by the integer factor k = ⌊1/s⌋ (OpenCV's
    fast path: 1.7 ms for a 1,300 px region, 5 ms at a fractional factor), and the warp reads that at the scale
    s·k ∈ (1 − s, 1], where bilinear sampling loses nothing (a face 1,000 px wide in a phone photo then looks as the
    same face 250 px wide does)."""
    s = float(np.sqrt(abs(np.linalg.det(np.asarray(m, np.float64)[:, :2]))))
    k = int(1 / s) if s > 0 else 1
    if s >= AA_SCALE or k < 2:
        return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)
    m = np.asarray(m, np.float64)
    h, w = rgb.shape[:2]
    inv = cv2.invertAffineTransform(m)
    quad = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) @ inv[:, :2].T + inv[:, 2]
    x0, y0 = (int(v) for v in np.clip(np.floor(quad.min(0)) - 2, 0, [w - 1, h - 1]))
    x1, y1 = (int(v) for v in np.clip(np.ceil(quad.max(0)) + 2, [x0 + 1, y0 + 1], [w, h]))
    rw, rh = -(-(x1 - x0) // k) * k, -(-(y1 - y0) // k) * k  # the region, a multiple of k; past the image: border
    x1, y1 = min(w, x0 + rw), min(h, y0 + rh)
    region = cv2.copyMakeBorder(rgb[y0:y1, x0:x1], 0, y0 + rh - y1, 0, x0 + rw - x1, border)
    small = cv2.resize(region, (rw // k, rh // k), interpolation=cv2.INTER_AREA)
    # a pixel q of `small` is source pixel (q + 0.5)·k − 0.5 + (x0, y0) (cv2.resize's pixel centres)
    to_src = np.array([[k, 0, 0.5 * k - 0.5 + x0], [0, k, 0.5 * k - 0.5 + y0], [0, 0, 1.0]])
    return cv2.warpAffine(small, (m @ to_src).astype(np.float32), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=border)


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, np.float32)
    return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)
