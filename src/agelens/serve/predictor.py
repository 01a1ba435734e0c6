"""AgeEstimator: image → faces (detect, align) → age model; detector kept apart so users can pass their own crops."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.cache import prepare_face
from ..data.dataset import centre_crop
from ..errors import AgelensError, NoFaceError
from ..faces.detect import FaceAnalyzer
from ..imageio import load_image
from ..models.model import AgeModel
from ..train.batch import to_input
from ..train.numerics import Numerics

Z90 = 1.645  # interval = age ± 1.645·spread (≈ 90 % under a normal error model)


@dataclass
class FacePrediction:
    box: list[float]
    age: float
    spread: float
    interval: list[float]
    detection_score: float
    model: str
    landmarks_found: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


class AgeEstimator:
    """Load once, call `predict(image)` many times."""

    def __init__(self, model: AgeModel, crop_size: int, input_size: int, cache_size: int = 256, name: str = "teacher",
                 device: str = "cpu", tta_flip: bool = True, numerics: Numerics | None = None) -> None:
        self.model = model.eval().to(device)
        self.crop_size, self.input_size, self.cache_size = crop_size, input_size, cache_size
        self.name, self.device, self.tta_flip = name, device, tta_flip
        self.numerics = numerics or Numerics(device, "fp32", True, "inference default: fp32 + channels_last")
        if self.numerics.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._analyzer: FaceAnalyzer | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, device: str = "cpu", tta_flip: bool = True) -> AgeEstimator:
        from ..models.weights import resolve_model

        model, cfg, card = resolve_model(name_or_path)
        return cls(model, cfg.data.crop_size, cfg.data.input_size, cfg.data.cache_size, str(card.get("name", "teacher")),
                   device, tta_flip)

    @property
    def analyzer(self) -> FaceAnalyzer:
        if self._analyzer is None:
            self._analyzer = FaceAnalyzer()
        return self._analyzer

    @torch.no_grad()
    def estimate_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Aligned cache_size crops (N, S, S, 3) uint8 → (ages, spreads)."""
        if len(crops) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        views = torch.from_numpy(np.stack([centre_crop(c, self.crop_size, self.input_size) for c in crops]))
        x = to_input(views, *self.model.mean_std, self.device, self.numerics.channels_last)
        with self.numerics.autocast():
            age, spread, _ = self.model.predict(x, self.tta_flip)
        return age.cpu().numpy(), spread.cpu().numpy()

    def faces_of(self, rgb: np.ndarray, detect: bool = True) -> list[tuple[list[float], float, np.ndarray, bool]]:
        """(box, score, aligned crop, landmarks_found) for each face; raises NoFaceError when there is none."""
        h, w = rgb.shape[:2]
        if not detect:
            crop, lm = prepare_face(rgb, self.analyzer, self.cache_size, aligned=True)
            return [([0.0, 0.0, float(w), float(h)], 1.0, crop, not np.isnan(lm).any())]
        faces = self.analyzer.find_faces(rgb)
        if not faces:
            raise NoFaceError("no face found")
        out = []
        for f in faces:
            crop, lm = prepare_face(rgb, self.analyzer, self.cache_size, aligned=False, face=f)
            out.append(([round(float(v), 1) for v in f.box], f.score, crop, not np.isnan(lm).any()))
        return out

    def predict(self, image: str | Path | np.ndarray, detect: bool = True) -> list[FacePrediction]:
        """Every face in an image (path or RGB uint8 array) with its age estimate."""
        rgb = load_image(image) if isinstance(image, str | Path) else np.asarray(image)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise AgelensError(f"expected an RGB uint8 image (H, W, 3), got shape {rgb.shape} dtype {rgb.dtype}")
        t0 = time.perf_counter()
        faces = self.faces_of(rgb, detect)
        t1 = time.perf_counter()
        ages, spreads = self.estimate_crops(np.stack([f[2] for f in faces]))
        t2 = time.perf_counter()
        timing = {"detect_ms": round(1000 * (t1 - t0), 1), "model_ms": round(1000 * (t2 - t1), 1)}
        lo_age, hi_age = self.model.head.min_age, self.model.head.max_age
        return [FacePrediction(box, round(float(a), 2), round(float(s), 2),
                               [round(max(lo_age, float(a - Z90 * s)), 1), round(min(hi_age, float(a + Z90 * s)), 1)],
                               round(score, 3), self.name,
                               found, {"timing": timing})
                for (box, score, _, found), a, s in zip(faces, ages, spreads)]
