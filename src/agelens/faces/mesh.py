"""468 face landmarks for a face the detector found: mediapipe's `face_landmark` model run directly with LiteRT.

mediapipe's FaceMesh graph (static mode) runs its own face detector first and then the larger attention model
(`face_landmark_with_attention`, whose iris points our template was measured on): 9.6 ms per face on an AMD EPYC
core. Here the detector's face gives the region (mediapipe's own rule: the box × 1.5, square, turned level by the
eye keypoints) and the plain 468-point model reads it: about 4 ms with the crop. It has no iris points, so the
eyes are the centres of their contours, and `CONTOUR_TEMPLATE` (where those five points fall in crops aligned the
iris way, fitted by `benchmarks/fit_contour_template.py`) turns them into keypoints for the usual template, so
every downstream `align_face` call is unchanged.
"""
from __future__ import annotations

import importlib.util
import os

import cv2
import numpy as np

from .align import TEMPLATE_KEYPOINTS, similarity_transform, transform_points, warp
from .native import quiet_native_stderr

N_MESH = 468
INPUT = 192  # the model's input side
ROI_SCALE = 1.5  # mediapipe's face_detection_front_detection_to_roi: box × 1.5, square on the long side
# The face-presence probability below which the landmarks are dropped (the FaceMesh graph then takes over). mediapipe
# drops them below 0.5, but the model is unsure of faces it reads well when a mask or sunglasses cover them (a third
# of realocc's detector faces score under 0.5): at 0.05 the occlusion protocol (docs/occlusion_e2e.md) answers the
# same photos with MAE 5.310 → 5.305 (paper types), 3.397 → 3.311 (clean), the FaceMesh graph runs far less often
# (about 10 ms a face) and the protocol takes 211 s instead of 247 (docs/inference_levers.md).
PRESENCE = 0.05
# Eye contours (mediapipe FACEMESH_RIGHT_EYE / FACEMESH_LEFT_EYE): the subject's right eye is on the image's left.
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398]
NOSE_TIP, MOUTH = 1, [61, 291]
# Where the contour keypoints (eye centres, nose tip, mouth corners) fall in 256 px crops aligned on the iris
# template (align.TEMPLATE_KEYPOINTS): mean over UTKFace and All-Age-Faces train faces, symmetrised.
CONTOUR_TEMPLATE = np.array(
    [[78.9, 76.3], [177.1, 76.3], [128.0, 139.5], [86.5, 177.3], [169.5, 177.3]], dtype=np.float32
)


def contour_keypoints(mesh: np.ndarray) -> np.ndarray:
    """(≥468, 2) landmarks → (5, 2): eye-contour centres (image-left first), nose tip, mouth corners."""
    return np.stack([mesh[RIGHT_EYE].mean(0), mesh[LEFT_EYE].mean(0), mesh[NOSE_TIP], *mesh[MOUTH]]).astype(
        np.float32)


def template_keypoints(mesh: np.ndarray, template: np.ndarray = CONTOUR_TEMPLATE) -> np.ndarray:
    """(5, 2) points that `align_face` maps onto TEMPLATE_KEYPOINTS with the same transform that maps this mesh's
    contour keypoints onto `template`."""
    m = similarity_transform(contour_keypoints(mesh), template)
    inv = cv2.invertAffineTransform(m)
    return transform_points(TEMPLATE_KEYPOINTS, inv)


def mediapipe_modules() -> str:
    """mediapipe's `modules` folder (its .tflite models), found without importing mediapipe (a second, most of it
    matplotlib, which its solutions package imports)."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return os.path.join(list(spec.submodule_search_locations)[0], "modules")


def model_path() -> str:
    return os.path.join(mediapipe_modules(), "face_landmark", "face_landmark.tflite")


def available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return os.path.isfile(model_path())


def roi(box: tuple[float, ...], eyes: np.ndarray) -> np.ndarray:
    """2×3 matrix mapping image pixels into the model's 192 px input: the box's centre, its long side × 1.5,
    rotated so the eye keypoints (image-left eye first) lie level."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = ROI_SCALE * max(box[2] - box[0], box[3] - box[1])
    dx, dy = eyes[1] - eyes[0]
    theta = float(np.arctan2(dy, dx)) if np.isfinite([dx, dy]).all() else 0.0
    c, s = np.cos(theta) * side / INPUT, np.sin(theta) * side / INPUT
    to_image = np.array([[c, -s, cx - (c - s) * INPUT / 2], [s, c, cy - (s + c) * INPUT / 2]], np.float32)
    return cv2.invertAffineTransform(to_image)


class LandmarkModel:
    """The 468-point landmark model on one face; not thread-safe (one per process, as FaceAnalyzer)."""

    def __init__(self, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        with quiet_native_stderr():  # LiteRT announces its XNNPACK delegate on stderr
            self.interpreter = Interpreter(model_path=model_path(), num_threads=threads)
            self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]["index"]
        outs = {tuple(o["shape"]): o["index"] for o in self.interpreter.get_output_details()}
        self._mesh, self._flag = outs[(1, 1, 1, 3 * N_MESH)], outs[(1, 1, 1, 1)]

    def __call__(self, rgb: np.ndarray, box: tuple[float, ...], eyes: np.ndarray) -> tuple[np.ndarray | None, float]:
        """(468, 2) landmarks in image pixels (None when the model says there is no face there) and its
        face-presence probability."""
        m = roi(box, eyes)
        crop = warp(rgb, m, INPUT, cv2.BORDER_CONSTANT)
        self.interpreter.set_tensor(self._in, (crop[None].astype(np.float32) / 255.0))
        self.interpreter.invoke()
        presence = float(1.0 / (1.0 + np.exp(-self.interpreter.get_tensor(self._flag).reshape(-1)[0])))
        if presence < PRESENCE:
            return None, presence
        pts = self.interpreter.get_tensor(self._mesh).reshape(N_MESH, 3)[:, :2]
        return transform_points(pts, cv2.invertAffineTransform(m)), presence
