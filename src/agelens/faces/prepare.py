"""One face → the aligned crop every model reads (256 px template) and its FaceMesh landmarks in crop pixels."""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import NoFaceError
from .align import align_face, keypoints_from_mesh, transform_points
from .detect import Face, FaceAnalyzer

N_LANDMARKS = 478


def largest_face(faces: list, box=lambda f: f.box):
    """The face with the largest box (detector Faces and FacePredictions alike; `box` reads it from anything else,
    e.g. `find_and_align`'s tuples)."""
    def area(f) -> float:
        x1, y1, x2, y2 = box(f)
        return (x2 - x1) * (y2 - y1)

    return max(faces, key=area)


def prepare_face(rgb: np.ndarray, analyzer: FaceAnalyzer, size: int, aligned: bool,
                 face: Face | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One face → (size×size×3 aligned crop, (478, 2) landmarks in crop pixels, NaN where unknown).

    aligned=True: the image is already a face crop; landmarks are measured, the crop is re-aligned to the
    template when they are found and simply resized when not. aligned=False: the given (or largest detected)
    face is aligned; NoFaceError when there is none.
    """
    nan = np.full((N_LANDMARKS, 2), np.nan, np.float32)
    if aligned:
        lm = analyzer.mesh(rgb)
        if lm is None:
            h, w = rgb.shape[:2]
            return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if h > size else cv2.INTER_LINEAR), nan
        crop, m = align_face(rgb, keypoints_from_mesh(lm), size)
        return crop, transform_points(lm, m)
    if face is None:
        faces = analyzer.find_faces(rgb)
        if not faces:
            raise NoFaceError("no face found")
        face = largest_face(faces)
    crop, m = face.aligned(rgb, size)
    return crop, (transform_points(face.landmarks, m) if face.landmarks is not None else nan)
