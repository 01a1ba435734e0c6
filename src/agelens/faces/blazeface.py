"""mediapipe's BlazeFace detectors (short and full range) run directly with LiteRT: the models mediapipe ships,
with its pre- and post-processing (letterbox to the model's square input in [-1, 1], SSD anchors, sigmoid scores,
weighted non-maximum suppression) written out in numpy. Same faces as `mp.solutions.face_detection` for 2 ms
instead of 4 ms per image, and predict no longer imports mediapipe's Python graphs (a second at start-up).
`OccludedBlazeFace` runs the short-range model's occlusion-robust copy (ONNX, `train.face_detector`) through the
same post-processing (`decode`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from .mesh import mediapipe_modules
from .native import quiet_native_stderr


@dataclass(frozen=True)
class SsdConfig:
    file: str
    size: int  # square input side
    strides: tuple[int, ...]
    two_per_cell: bool  # interpolated_scale_aspect_ratio 1.0: two anchors per cell and layer


# mediapipe/modules/face_detection/face_detection_{short,full}_range.pbtxt
MODELS = {0: SsdConfig("face_detection_short_range.tflite", 128, (8, 16, 16, 16), True),
          1: SsdConfig("face_detection_full_range_sparse.tflite", 192, (4,), False)}
NMS_IOU = 0.3  # mediapipe's min_suppression_threshold (weighted NMS)
RAW_SCORE_CLIP = 80.0  # mediapipe clips at 100; exp(100) overflows float32, and sigmoid(±80) is already 0 or 1
N_KEYPOINTS = 6  # eyes (image-left first), nose tip, mouth centre, ear tragions


def anchors(cfg: SsdConfig) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1] (fixed anchor size 1), in the order of the model's outputs."""
    out, i = [], 0
    while i < len(cfg.strides):
        j = i
        while j < len(cfg.strides) and cfg.strides[j] == cfg.strides[i]:
            j += 1
        per_cell = (j - i) * (2 if cfg.two_per_cell else 1)
        n = cfg.size // cfg.strides[i]
        ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
        out.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], 1), per_cell, axis=0))
        i = j
    return np.concatenate(out).astype(np.float32)


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The image scaled to fit size×size (aspect kept, centred, zero border), in [-1, 1] float32; and the
    (left, top, right, bottom) border as fractions of size."""
    h, w = rgb.shape[:2]
    s = size / max(h, w)
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    # area averaging when shrinking (a photo to 128 px): closer to mediapipe's own detections than bilinear on 181
    # photos (60 UTKFace, 60 AAF, 60 realocc, the astronaut; box IoU with mediapipe's: mean 0.962 vs 0.958, worst
    # 0.63 vs 0.01)
    img = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    left, top = (size - nw) // 2, (size - nh) // 2
    out = np.full((size, size, 3), -1.0, np.float32)  # zero pixels, as mediapipe's border
    out[top:top + nh, left:left + nw] = img.astype(np.float32) / 127.5 - 1.0
    return out, np.array([left, top, size - nw - left, size - nh - top], np.float32) / size


def weighted_nms(boxes: np.ndarray, points: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU
                 ) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """mediapipe's weighted non-maximum suppression: each cluster (IoU > iou with its best box) becomes one
    detection with the best score and the score-weighted mean box and keypoints. boxes (N, 4) x1, y1, x2, y2."""
    order = np.argsort(-scores)
    boxes, points, scores = boxes[order], points[order], scores[order]
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    left = np.ones(len(scores), bool)
    out = []
    for k in range(len(scores)):
        if not left[k]:
            continue
        x1 = np.maximum(boxes[k, 0], boxes[:, 0])
        y1 = np.maximum(boxes[k, 1], boxes[:, 1])
        x2 = np.minimum(boxes[k, 2], boxes[:, 2])
        y2 = np.minimum(boxes[k, 3], boxes[:, 3])
        inter = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
        union = area[k] + area - inter
        cluster = left & (inter > iou * np.maximum(union, 1e-12))
        cluster[k] = True
        w = scores[cluster] / scores[cluster].sum()
        out.append(((boxes[cluster] * w[:, None]).sum(0), (points[cluster] * w[:, None, None]).sum(0),
                    float(scores[k])))
        left &= ~cluster
    return out


def decode(raw: np.ndarray, logits: np.ndarray, cfg: SsdConfig, pad: np.ndarray, shape: tuple[int, ...],
           min_score: float, anchor_xy: np.ndarray) -> list[tuple[tuple[float, float, float, float], float, np.ndarray]]:
    """The model's raw outputs for one image ((N, 16) regressions, (N,) score logits) as faces: (box x1, y1, x2, y2
    in pixels, score, (6, 2) keypoints in pixels), best first, after mediapipe's weighted NMS; pad: `letterbox`'s
    border, shape: the image's."""
    h, w = shape[:2]
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -RAW_SCORE_CLIP, RAW_SCORE_CLIP)))
    keep = scores >= min_score
    if not keep.any():
        return []
    raw, a, scores = raw[keep] / cfg.size, anchor_xy[keep], scores[keep]
    centre, half = raw[:, :2] + a, raw[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], 1)
    points = raw[:, 4:].reshape(-1, N_KEYPOINTS, 2) + a[:, None]
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    # undo the letterbox: model fractions → image fractions → pixels
    scale = 1.0 - pad[:2] - pad[2:]
    size = np.array([w, h], np.float32)
    out = []
    for box, pts, score in weighted_nms(boxes[valid], points[valid], scores[valid]):
        b = ((box.reshape(2, 2) - pad[:2]) / scale * size).ravel()
        out.append((tuple(float(v) for v in b), score, ((pts - pad[:2]) / scale * size).astype(np.float32)))
    return out


def model_path(model: int) -> str:
    """mediapipe's own .tflite file of a BlazeFace model (0: short range, 1: full range)."""
    return os.path.join(mediapipe_modules(), "face_detection", MODELS[model].file)


class BlazeFace:
    """One BlazeFace model (0: short range, 1: full range); not thread-safe (one per process)."""

    def __init__(self, model: int = 0, min_score: float = 0.5, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.cfg, self.min_score = MODELS[model], min_score
        with quiet_native_stderr():  # LiteRT announces its XNNPACK delegate on stderr
            self.interpreter = Interpreter(model_path=model_path(model), num_threads=threads)
            self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]["index"]
        outs = {o["shape"][-1]: o["index"] for o in self.interpreter.get_output_details()}
        self._boxes, self._scores = outs[4 + 2 * N_KEYPOINTS], outs[1]
        self.anchors = anchors(self.cfg)

    def __call__(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float, np.ndarray]]:
        """(box x1, y1, x2, y2 in pixels, score, (6, 2) keypoints in pixels) per face, best first."""
        x, pad = letterbox(rgb, self.cfg.size)
        self.interpreter.set_tensor(self._in, x[None])
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._boxes)[0]
        logits = self.interpreter.get_tensor(self._scores)[0, :, 0]
        return decode(raw, logits, self.cfg, pad, rgb.shape, self.min_score, self.anchors)


OCCLUDED_MODEL = "face_detector_occluded.onnx"  # the short-range model distilled to see occluded faces


def occluded_model_path() -> str:
    from ..utils import weights_dir

    return str(weights_dir() / OCCLUDED_MODEL)


class OccludedBlazeFace:
    """The short-range detector's occlusion-robust copy (`train.face_detector`: distilled from the original on clean
    photos while it read the same photos under occluders), shipped as ONNX: same input, outputs and post-processing
    as `BlazeFace(0)`."""

    def __init__(self, min_score: float = 0.5, threads: int = 1) -> None:
        from ..utils import cpu_session

        self.session, self._in = cpu_session(occluded_model_path(), threads)
        self.cfg, self.min_score = MODELS[0], min_score
        self.anchors = anchors(self.cfg)

    def __call__(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float, np.ndarray]]:
        x, pad = letterbox(rgb, self.cfg.size)
        raw, logits = self.session.run(None, {self._in: np.ascontiguousarray(x.transpose(2, 0, 1)[None])})
        return decode(raw[0], logits[0, :, 0], self.cfg, pad, rgb.shape, self.min_score, self.anchors)
