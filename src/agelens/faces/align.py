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
    crop = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return crop, m


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, np.float32)
    return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)
