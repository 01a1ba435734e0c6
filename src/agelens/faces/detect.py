"""Face detection (mediapipe short- and full-range) and 478-point FaceMesh landmarks, in image pixels."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from .align import keypoints_from_mesh

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence the C++ (absl/TFLite) start-up chatter mediapipe writes straight to file descriptor 2."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


@dataclass
class Face:
    """A face in image pixel coordinates."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    keypoints: np.ndarray  # (5, 2) from the mesh, or (4, 2) eyes/nose/mouth from the detector
    landmarks: np.ndarray | None = None  # (478, 2) FaceMesh, None when the mesh failed


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


class FaceAnalyzer:
    """Wraps mediapipe; one instance per process (mediapipe graphs are not thread-safe)."""

    def __init__(self, min_confidence: float = 0.5, mesh_confidence: float = 0.3) -> None:
        self.min_confidence = min_confidence
        self.mesh_confidence = mesh_confidence
        self._mesh = None
        self._mesh_quiet = True
        self._det: dict[int, object] = {}

    def _mp(self):  # noqa: ANN202 - mediapipe has no stubs
        import mediapipe as mp

        return mp.solutions

    def mesh(self, rgb: np.ndarray) -> np.ndarray | None:
        """478 landmarks (x, y) in pixels for the most prominent face, or None."""
        if self._mesh is None:
            with _quiet_native_stderr():
                self._mesh = self._mp().face_mesh.FaceMesh(
                    static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                    min_detection_confidence=self.mesh_confidence)
        if self._mesh_quiet:  # the mesh graph logs a projection warning on its first face, once
            with _quiet_native_stderr():
                res = self._mesh.process(np.ascontiguousarray(rgb))
            self._mesh_quiet = not res.multi_face_landmarks
        else:
            res = self._mesh.process(np.ascontiguousarray(rgb))
        if not res.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        return np.array([[p.x * w, p.y * h] for p in res.multi_face_landmarks[0].landmark], np.float32)

    def _detect(self, rgb: np.ndarray, model: int) -> list[Face]:
        if model not in self._det:
            with _quiet_native_stderr():
                self._det[model] = self._mp().face_detection.FaceDetection(
                    model_selection=model, min_detection_confidence=self.min_confidence)
                self._det[model].process(np.zeros((64, 64, 3), np.uint8))
        res = self._det[model].process(np.ascontiguousarray(rgb))
        h, w = rgb.shape[:2]
        faces = []
        for d in res.detections or []:
            bb = d.location_data.relative_bounding_box
            box = (max(0.0, bb.xmin * w), max(0.0, bb.ymin * h),
                   min(float(w), (bb.xmin + bb.width) * w), min(float(h), (bb.ymin + bb.height) * h))
            if box[2] - box[0] < 4 or box[3] - box[1] < 4:
                continue
            kp = np.array([[k.x * w, k.y * h] for k in d.location_data.relative_keypoints[:4]], np.float32)
            faces.append(Face(box, float(d.score[0]), kp))
        return faces

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces from both detector ranges, merged by IoU (largest score wins)."""
        cands = sorted(self._detect(rgb, 0) + self._detect(rgb, 1), key=lambda f: -f.score)
        kept: list[Face] = []
        for f in cands:
            if all(_iou(f.box, k.box) < 0.4 for k in kept):
                kept.append(f)
        return kept

    def _mesh_in_box(self, rgb: np.ndarray, box: tuple[float, ...]) -> np.ndarray | None:
        h, w = rgb.shape[:2]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = 2.0 * max(box[2] - box[0], box[3] - box[1])
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        s = int(round(side))
        pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
        img = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT) if pad else rgb
        crop = img[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s]
        scale = 1.0
        if s > 512:  # the mesh runs at 192 px internally; keep the crop small
            scale = 512 / s
            crop = cv2.resize(crop, (512, 512), interpolation=cv2.INTER_AREA)
        lm = self.mesh(crop)
        if lm is None:
            return None
        lm = lm / scale + np.array([x0, y0], np.float32)
        # the mesh must describe this face, not a neighbour inside the enlarged crop
        c = lm[[1]].mean(0)
        if not (box[0] - 0.25 * (box[2] - box[0]) <= c[0] <= box[2] + 0.25 * (box[2] - box[0])):
            return None
        return lm

    def find_faces(self, rgb: np.ndarray) -> list[Face]:
        """Detect every face and attach landmarks; falls back to the mesh alone for tight crops."""
        faces = self.detect(rgb)
        for f in faces:
            lm = self._mesh_in_box(rgb, f.box)
            if lm is not None:
                f.landmarks = lm
                f.keypoints = keypoints_from_mesh(lm)
        if not faces:
            lm = self.mesh(rgb)
            if lm is not None:
                h, w = rgb.shape[:2]
                x1, y1 = lm.min(0)
                x2, y2 = lm.max(0)
                box = (max(0.0, float(x1)), max(0.0, float(y1)), min(float(w), float(x2)), min(float(h), float(y2)))
                faces = [Face(box, 1.0, keypoints_from_mesh(lm), lm)]
        return faces

    def close(self) -> None:
        for obj in [self._mesh, *self._det.values()]:
            if obj is not None:
                obj.close()
        self._mesh, self._det = None, {}
