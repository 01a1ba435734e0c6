"""Draw faces (boxes and ages) on an image: what `agelens predict --save-annotated` writes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GREEN, ORANGE = (0, 200, 0), (255, 140, 0)  # RGB: clean faces, occluded faces


def draw(image, faces: Sequence, channels: str = "rgb") -> np.ndarray:
    """A copy of `image` (HxWx3 uint8, RGB or with channels="bgr" BGR; or a path or Pillow image, read upright as
    predict reads it, and drawn in RGB) with each face's box and age drawn; faces are FacePredictions or their dicts
    (`to_dict()`, JSON records). Occluded faces are drawn in orange."""
    import os

    import cv2
    from PIL import Image

    if channels not in ("rgb", "bgr"):
        raise ValueError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
    per_px = 1.0  # file pixels per pixel drawn on: a photo over the pixel limit is drawn on a reduced decode
    if isinstance(image, Image.Image):
        from ..imageio import read_pil

        image, channels = read_pil(image), "rgb"
    elif isinstance(image, str | os.PathLike):
        from ..errors import ImageTooLargeError
        from ..imageio import FACE_MIN_SIDE, load_image, load_reduced

        try:
            image = load_image(os.fspath(image))
        except ImageTooLargeError:  # as predict reads it (`inference.stream.decode_file`): boxes are in file pixels
            image, per_px = load_reduced(os.fspath(image), FACE_MIN_SIDE)
        channels = "rgb"
    img = np.asarray(image)
    if img.dtype != np.uint8:  # a float image of 0-1 values (matplotlib's) is scaled, not cast to black
        lo, hi = (float(img.min()), float(img.max())) if img.size else (0.0, 0.0)
        if img.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
            img = np.round(img * 255.0)
        elif img.dtype.kind not in "iuf" or lo < 0 or hi > 255:
            raise ValueError(f"expected uint8 pixel values (or floats in 0-1), got {img.dtype} from {lo} to {hi}")
        img = img.astype(np.uint8)
    img = np.ascontiguousarray(img).copy()
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    scale = max(1.0, max(img.shape[:2]) / 600)
    thick = max(1, int(2 * scale))
    for f in faces:
        d = f if isinstance(f, dict) else f.to_dict()
        colour = ORANGE if d.get("occluded") else GREEN
        if channels == "bgr":
            colour = colour[::-1]
        x1, y1, x2, y2 = (int(round(v / per_px)) for v in d["box"])
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, thick)
        cv2.putText(img, f"{d['age']:.0f}", (x1, max(12, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, colour,
                    thick)
    return img
