"""Views of aligned face crops (numpy + OpenCV only, no torch: the ONNX predictor uses them too)."""

from __future__ import annotations

import cv2
import numpy as np


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size:
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=interp)


def centre_crop(img: np.ndarray, crop: int, size: int) -> np.ndarray:
    """The evaluation view of an aligned face: centre crop×crop, resized to size×size."""
    o = (img.shape[0] - crop) // 2
    return resize_square(img[o:o + crop, o:o + crop], size)


def centre_views(crops, crop: int, size: int) -> np.ndarray:
    """centre_crop of each aligned face, stacked: (N, size, size, 3)."""
    return np.stack([centre_crop(c, crop, size) for c in crops])
