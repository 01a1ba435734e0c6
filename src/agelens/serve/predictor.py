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


ROUTES = ("auto", "teacher", "student")


@dataclass
class Expert:
    """An age model with the crop it expects."""

    model: AgeModel
    crop_size: int
    input_size: int
    name: str


def _load_expert(name_or_path: str) -> Expert:
    from ..models.weights import resolve_model

    model, cfg, card = resolve_model(name_or_path)
    return Expert(model.eval(), cfg.data.crop_size, cfg.data.input_size, str(card.get("name", name_or_path)))


class AgeEstimator:
    """Load once, call `predict(image)` many times.

    Routing (paper 1, Fig. 2): the occlusion detector scores every face; with route="auto" occluded faces go to
    the student and clean ones to the teacher; "teacher"/"student" force one model. Every answer names its model.
    """

    def __init__(self, model: AgeModel, crop_size: int, input_size: int, cache_size: int = 256, name: str = "teacher",
                 device: str = "cpu", tta_flip: bool = True, numerics: Numerics | None = None,
                 student: Expert | None = None, detector=None, route: str = "auto") -> None:
        if route not in ROUTES:
            raise AgelensError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
        if route == "student" and student is None:
            raise AgelensError("route=student needs a student model (none shipped or given)")
        self.model = model.eval().to(device)
        self.crop_size, self.input_size, self.cache_size = crop_size, input_size, cache_size
        self.name, self.device, self.tta_flip = name, device, tta_flip
        self.numerics = numerics or Numerics(device, "fp32", True, "inference default: fp32 + channels_last")
        self.teacher = Expert(self.model, crop_size, input_size, name)
        self.student, self.detector, self.route = student, detector, route
        for e in [self.teacher] + ([student] if student else []):
            e.model.eval().to(device)
            if self.numerics.channels_last:
                e.model.to(memory_format=torch.channels_last)
        self._analyzer: FaceAnalyzer | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, device: str = "cpu", tta_flip: bool = True,
                        route: str = "auto", student: str | None = None, detector: str | None = None) -> AgeEstimator:
        """Teacher (default: shipped), plus the shipped (or given) student and occlusion detector when present."""
        from ..models.weights import resolve_model, shipped_models
        from ..occlusion.detector import OcclusionDetector

        model, cfg, card = resolve_model(name_or_path)
        shipped = shipped_models()
        stu = _load_expert(student) if student else (_load_expert("student") if "student" in shipped else None)
        det = (OcclusionDetector.from_pretrained(detector) if detector
               else OcclusionDetector.from_pretrained("occlusion") if "occlusion" in shipped else None)
        return cls(model, cfg.data.crop_size, cfg.data.input_size, cfg.data.cache_size, str(card.get("name", "teacher")),
                   device, tta_flip, student=stu, detector=det, route=route)

    @property
    def analyzer(self) -> FaceAnalyzer:
        if self._analyzer is None:
            self._analyzer = FaceAnalyzer()
        return self._analyzer

    @torch.no_grad()
    def _ages(self, expert: Expert, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        views = torch.from_numpy(np.stack([centre_crop(c, expert.crop_size, expert.input_size) for c in crops]))
        x = to_input(views, *expert.model.mean_std, self.device, self.numerics.channels_last)
        with self.numerics.autocast():
            age, spread, _ = expert.model.predict(x, self.tta_flip)
        return age.float().cpu().numpy(), spread.float().cpu().numpy()

    def analyse_crops(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """Aligned cache_size crops (N, S, S, 3) uint8 → age, spread, occlusion_score (NaN without a detector),
        occluded and model (name per face), routed as configured."""
        n = len(crops)
        out = {"age": np.zeros(n, np.float32), "spread": np.zeros(n, np.float32),
               "occlusion_score": np.full(n, np.nan, np.float32), "occluded": np.zeros(n, bool),
               "model": np.array([self.teacher.name] * n, dtype=object)}
        if n == 0:
            return out
        if self.detector is not None:
            out["occlusion_score"] = self.detector.scores(crops)
            out["occluded"] = out["occlusion_score"] >= self.detector.threshold
        if self.route == "student":
            to_student = np.ones(n, bool)
        elif self.route == "auto" and self.student is not None:
            to_student = out["occluded"].copy()
        else:
            to_student = np.zeros(n, bool)
        for expert, sel in ((self.teacher, ~to_student), (self.student, to_student)):
            if sel.any():
                out["age"][sel], out["spread"][sel] = self._ages(expert, crops[sel])
                out["model"][sel] = expert.name
        return out

    def estimate_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Aligned cache_size crops (N, S, S, 3) uint8 → (ages, spreads), routed."""
        r = self.analyse_crops(crops)
        return r["age"], r["spread"]

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
        """Every face in an image (path or RGB uint8 array) with its age estimate and occlusion verdict."""
        rgb = load_image(image) if isinstance(image, str | Path) else np.asarray(image)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise AgelensError(f"expected an RGB uint8 image (H, W, 3), got shape {rgb.shape} dtype {rgb.dtype}")
        t0 = time.perf_counter()
        faces = self.faces_of(rgb, detect)
        t1 = time.perf_counter()
        r = self.analyse_crops(np.stack([f[2] for f in faces]))
        t2 = time.perf_counter()
        timing = {"detect_ms": round(1000 * (t1 - t0), 1), "model_ms": round(1000 * (t2 - t1), 1)}
        lo_age, hi_age = self.model.head.min_age, self.model.head.max_age
        preds = []
        for k, (box, score, _, found) in enumerate(faces):
            a, s = float(r["age"][k]), float(r["spread"][k])
            occ_score = float(r["occlusion_score"][k])
            preds.append(FacePrediction(
                box, round(a, 2), round(s, 2), [round(max(lo_age, a - Z90 * s), 1), round(min(hi_age, a + Z90 * s), 1)],
                round(score, 3), str(r["model"][k]), found,
                {"occluded": bool(r["occluded"][k]) if self.detector is not None else None,
                 "occlusion_score": round(occ_score, 4) if np.isfinite(occ_score) else None, "timing": timing}))
        return preds
