"""Draw faces (boxes and ages) on an image: what `agelens predict --save-annotated` writes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GREEN, ORANGE = (0, 200, 0), (255, 140, 0)  # RGB: clean faces, occluded faces


def draw(image, faces: Sequence, channels: str = "rgb") -> np.ndarray:
    """A copy of `image` with each face's box and age drawn; faces are FacePredictions or their dicts (`to_dict()`,
    JSON records). Occluded faces are drawn in orange. `image` is what predict reads: an array (RGB, or BGR with
    channels="bgr", drawn in that order; grey, RGBA, 16-bit and float ones read as `imageio.array_to_rgb` reads
    them), or a path, encoded bytes, a binary file object or a Pillow image (read upright, drawn in RGB). An image
    over the pixel limit (`imageio.MAX_PIXELS`) is drawn on at the reduced size predict read it at, so the copy is
    smaller than the file (the boxes, in file pixels, are scaled to it)."""
    import os

    import cv2
    from PIL import Image

    from ..imageio import array_to_rgb, decode_whole, read_file, read_pil, read_stream

    if channels not in ("rgb", "bgr"):
        raise ValueError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
    per_px = 1.0  # file pixels per pixel drawn on: a photo over the pixel limit is drawn on a reduced decode
    if isinstance(image, Image.Image):
        image, channels = read_pil(image), "rgb"
    elif isinstance(image, str | os.PathLike | bytes | bytearray | memoryview) or hasattr(image, "read"):
        if isinstance(image, str | os.PathLike):
            data, name = read_file(os.fspath(image)), os.fspath(image)
        else:
            data, name = (read_stream(image) if hasattr(image, "read") else bytes(image)), "<bytes>"
        image, per_px = decode_whole(data, name)  # as predict reads it: boxes are in file pixels
        channels = "rgb"
    img = array_to_rgb(image).copy()  # RGB or BGR order kept: `channels` says which to draw in
    scale = max(1.0, max(img.shape[:2]) / 600)
    thick = max(1, int(2 * scale))
    for f in faces:
        d = f if isinstance(f, dict) else f.to_dict()
        colour = ORANGE if d.get("occluded") else GREEN
        if channels == "bgr":
            colour = colour[::-1]
        x1, y1, x2, y2 = (int(round(v / per_px)) for v in d["box"])
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, thick)
        label = f"{d['age']:.0f}"
        (_, h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, thick)
        # above the box, or inside it under its top edge where the box touches the image's top (a face crop)
        y = y1 - 6 if y1 - 6 - h >= 0 else y1 + h + 6 + thick
        cv2.putText(img, label, (max(0, x1 + (0 if y < y1 else 4)), y), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale,
                    colour, thick)
    return img
