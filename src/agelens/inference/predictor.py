"""AgeEstimator: image → faces (detect, align) → age model; detector kept apart so users can pass their own crops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image as PILImage

from ..data.views import centre_views
from ..errors import AgelensError
from ..faces.detect import FaceAnalyzer
from ..faces.realign import SINGLE_VIEW, realigned
from ..imageio import array_to_rgb, decode_reduced, load_reduced, read_pil, read_stream
from ..utils import int8_flavor
from .backends import (  # noqa: F401 (TTA_MODES: public)
    TTA_MODES,
    Z90,
    AgeBackend,
    CropClassifier,
    mirror_unsure,
    selective_tta,
    tta_mode,
)
from .backends.torch import TorchModel
from .finding import (
    MEMO_SIZE,
    CropMemo,
    TrunkGuard,
    check_rgb,
    face_source,
    find_and_align,
    in_file_pixels,
)

if TYPE_CHECKING:  # torch stays optional at inference: the ONNX backend runs without it
    from ..models.model import AgeModel
    from ..numerics import Numerics


# The student reads each face at these views, (scale, degrees) about the centre of its realigned crop, each with its
# mirror where that view is unsure (the card's `tta_spread`), and answers their mean (ages and spreads): one view's
# age moves 1.2 years on average between such views of the same occluded face, so the mean is steadier. Chosen on
# two samples of 100 UTKFace validation photos under 11 occluder kinds, found and realigned as predict does (student
# alone, change against one view, paired bootstrap 95 %): paper types −0.119 [−0.202, −0.042] and −0.155 [−0.225,
# −0.082] (benchmarks/student_views.py); scale and rotation views (5) gained 0.03 more for two more passes. Test
# photos: paper types 6.515 → 6.446; +38 % predict time where the student answers nearly every face
# (docs/inference_levers.md). tta="none" reads SINGLE_VIEW alone; tta="full" reads every view mirrored.
STUDENT_VIEWS = ((1.0, 0.0), (1.04, 0.0), (1 / 1.04, 0.0))
# Two passes instead of about 4.5: FAST_STUDENT_VIEWS with `AgeEstimator.student_mirror` = True (the view plain and
# mirrored). Tied on UTKFace (validation all kinds −0.034 [−0.126, +0.054], test +0.000 [−0.083, +0.088]) but worse
# on All-Age-Faces validation (+0.087 [+0.008, +0.171]: the zoomed-out view reads older, and the student already
# over-estimates those faces), 21 % faster on real masked photos (benchmarks/student_passes.py,
# docs/inference_levers.md): an option for speed, not the default.
FAST_STUDENT_VIEWS = ((1 / 1.04, 0.0),)
# The views are read for faces whose student weight (`soft_weight`) is at least this; a face blended below it
# (mostly clean faces the occlusion detector is unsure of: 12 % of clean UTKFace test faces when the band began at
# 0.1, about 2 % since its ramp from 0.3) takes one view, its share of the answer being small.
VIEWS_FROM = 0.5


def _from_extra(key: str, doc: str) -> property:
    """A read-only attribute for `extra[key]` (None where it is not set)."""
    return property(lambda self: self.extra.get(key), doc=doc)


@dataclass
class FacePrediction:
    """One face: box [x1, y1, x2, y2] in the image's pixels, age and its spread (years), the `interval` (90 % unless
    calibrated otherwise), the detector's score, the model that gave most of the answer (teacher or student),
    whether landmarks were found; `extra` holds how it was found (`detection`), the occlusion verdict (`occluded`,
    `occlusion_score`, `student_weight`), the backend and the timing. `to_dict()`: one flat JSON-ready dict."""

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

    # the fields the CLI prints, kept in `extra`, read as attributes too (not dataclass fields: no annotation)
    occluded = _from_extra("occluded", "The occlusion detector's verdict (None without a detector).")
    occlusion_score = _from_extra("occlusion_score", "The occlusion detector's score, 0-1 (None without a detector).")
    student_weight = _from_extra("student_weight", "The student's share of the answer (0: the teacher alone, 1: "
                                 "the student alone).")
    detection = _from_extra("detection", "How the face was found: detector, padded, mesh or whole-image (a crop "
                            "read as it is, detect=False).")

    def __eq__(self, other) -> bool:  # the same answer, whatever each took to compute (extra["timing"])
        if not isinstance(other, FacePrediction):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        a.pop("timing", None), b.pop("timing", None)
        return a == b


ROUTES = ("auto", "teacher", "student")
# Soft routing: across this band of occlusion scores the student's weight rises linearly from 0 to 1 (teacher and
# student blended); below it the teacher answers alone, above it the student. Measured end to end against the hard
# threshold in docs/occlusion_e2e.md. The band began at 0.1 with the weight equal to the score; since 2026-12-02 it
# is a ramp from 0.3 (runs/ probe on 300 validation and 300 test photos per dataset under clean, grey, scan grain,
# low resolution, JPEG and blur, docs/inference_levers.md): the student runs for 2 % of clean test photos instead
# of 9-10 %, the answer no longer jumps where a score crosses the band's foot, and the test MAE moved +0.001
# [−0.018, +0.019] (UTKFace) and −0.015 [−0.050, +0.021] (All-Age-Faces) over those six conditions; on
# docs/degraded_routing.md's 250 photos per dataset +0.015 / +0.027 clean, +0.023 / +0.020 degraded.
SOFT_BAND = (0.3, 0.9)


def soft_weight(score: np.ndarray, occluded: np.ndarray, band: tuple[float, float] = SOFT_BAND) -> np.ndarray:
    """The student's weight per face: 0 up to the band's foot (SOFT_BAND unless given), rising linearly to 1 at its
    top, 1 above it. NaN scores (no detector) fall back to the hard verdict."""
    s = np.asarray(score, np.float32)
    lo, hi = band
    w = np.clip((s - lo) / (hi - lo), 0.0, 1.0)
    return np.where(np.isfinite(s), w, np.asarray(occluded, np.float32)).astype(np.float32)


BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8")


def choose_backend(custom: bool = False, device: str = "cpu", flags: set[str] | None = None) -> tuple[str, str]:
    """The fastest inference backend this machine supports at the shipped accuracy, and why. Measured end to end by
    benchmarks/inference.py (docs/inference_benchmark.md, AMD EPYC, 2 cores): onnxruntime fp32 about 2x torch fp32
    channels_last at the same MAE. int8 (`onnx-int8`, quantised from the ranges shipped with the weights, the first
    block kept in fp32) keeps the overall MAE (`benchmarks/int8_e2e.py`, test photos through whole processes): on
    a CPU with VNNI or AMX (8-bit weights) 1.43x faster than fp32, MAE within 0.01 on 1,000 UTKFace and 800
    All-Age-Faces photos, ages moving 0.25-0.29 years per face; on AVX2 alone (7-bit weights, 8-bit in the
    depthwise convolutions) 1.24-1.28x side by side in benchmarks/inference.py, MAE +0.001 / +0.048 on 1,000
    UTKFace / 800 All-Age-Faces photos, ages moving 0.44-0.47 years per face. The student stays fp32 on both
    (`utils.INT8_FLAVORS`). So auto takes int8 there;
    `onnx` keeps fp32, and other CPUs (int8 not measured) stay on fp32. flags: the CPU's (default: /proc/cpuinfo)."""
    if device != "cpu":
        return "torch", f"device {device}: torch"
    if custom:
        return "torch", "models other than the shipped ones run on torch (export them for ONNX)"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch", "onnxruntime not installed"
    flavor = int8_flavor(flags)
    if flavor == "int8":
        return "onnx-int8", ("onnxruntime installed and this CPU has VNNI or AMX: int8 graphs, about 1.4x the fp32 "
                             "speed at the same overall MAE (--backend onnx for fp32; docs/inference_levers.md)")
    if flavor == "int8w7":
        return "onnx-int8", ("onnxruntime installed and this CPU has AVX2 without VNNI: int8 graphs with 7-bit "
                             "weights (8-bit in depthwise convolutions), about 1.25x the fp32 speed, overall MAE within "
                             "0.05 (--backend onnx for fp32; docs/inference_levers.md)")
    return "onnx", "onnxruntime installed: fp32 graph with preprocessing and TTA fused (no AVX2, VNNI or AMX for int8)"


def check_device(device: str, backend: str = "auto") -> None:
    """AgelensError where `device` cannot run here: not a torch device, a GPU this machine lacks, or a GPU asked of
    the ONNX backends (they run on the CPU)."""
    if not isinstance(device, str):
        raise AgelensError(f"device must be a string such as 'cpu', 'cuda' or 'cuda:1', got {device!r}")
    if device == "cpu":
        return
    if backend.startswith("onnx"):
        raise AgelensError(f"backend {backend} runs on the CPU: for device={device!r} use backend='torch' or 'auto'")
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        raise AgelensError(f"device {device!r} is not a torch device (cpu, cuda, cuda:N, mps): {e}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise AgelensError(f"device {device!r}: torch sees no CUDA GPU here (torch.cuda.is_available() is False)")
    if kind == "cuda" and (torch.device(device).index or 0) >= torch.cuda.device_count():
        raise AgelensError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise AgelensError(f"device {device!r}: torch sees no Apple GPU (MPS) here")


def as_rgb(image, channels: str = "rgb") -> tuple[np.ndarray, float]:
    """(RGB uint8 array, scale) of an image `AgeEstimator.predict` is given: a path or encoded bytes (a large JPEG
    decoded at the size the faces need, `imageio.FACE_MIN_SIDE`: scale = the file's pixels per array pixel), a
    Pillow image, or an array (RGB, or BGR with channels="bgr"; grey, RGBA, 16-bit and float ones as
    `imageio.array_to_rgb` reads them). ImageError / AgelensError name what is wrong."""
    if channels not in ("rgb", "bgr"):
        raise AgelensError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
    if isinstance(image, str | Path):
        rgb, scale = load_reduced(image)
    elif isinstance(image, bytes | bytearray | memoryview):
        rgb, scale = decode_reduced(bytes(image))
    elif hasattr(image, "read"):  # an open file, io.BytesIO, an upload's stream
        rgb, scale = decode_reduced(read_stream(image))
    elif isinstance(image, PILImage.Image):
        rgb, scale = read_pil(image), 1.0  # Pillow's images are RGB (or convert to it): channels is for arrays
    elif image is None or isinstance(image, int | float | complex | bool | dict | set):
        raise TypeError(f"cannot read an image from {type(image).__name__}: give a path, encoded bytes, a binary "
                        "file object, a Pillow image or an image array")
    elif isinstance(image, list | tuple) and image and isinstance(image[0], str | Path | bytes | np.ndarray
                                                                   | PILImage.Image):
        raise TypeError(f"predict reads one image, not a {type(image).__name__} of them: predict_many reads several")
    else:
        rgb, scale = array_to_rgb(image, channels), 1.0
    return check_rgb(rgb), scale


def _takes_turns(method):
    """The estimator's method, run under its lock: threads sharing one estimator take turns (mediapipe's graphs
    and LiteRT's interpreters answer one call at a time; before, only predict and predict_many took the lock)."""
    import functools

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


class AgeEstimator:
    """Load once, call `predict(image)` many times.

    Routing (paper 1, Fig. 2): the occlusion detector scores every face; with route="auto" clean faces go to the
    teacher, occluded ones to the student, and faces scored between (`SOFT_BAND`) get the two ages blended by the
    score (`soft_weight`); "teacher"/"student" force one model. Every answer names its model.
    Threads may share one estimator: their calls (predict, predict_many, faces_of, analyse_faces, analyse_crops,
    trunk) take turns (build one per thread to run them at once).
    The models are AgeBackends (inference.backends: torch or onnxruntime), the detector and the face verifier
    CropClassifiers; build one with `from_pretrained`, `from_onnx` or, for torch models in memory, `from_model`.
    """

    def __init__(self, teacher: AgeBackend, student: AgeBackend | None = None, detector: CropClassifier | None = None,
                 route: str = "auto", cache_size: int = 256, device: str = "cpu", backend: str = "torch-fp32",
                 verifier: CropClassifier | None = None, tta_spread: float | None = None,
                 photo_verifier: CropClassifier | None = None, bands_verifier: CropClassifier | None = None) -> None:
        self.teacher, self.student, self.detector = teacher, student, detector
        self.route = route  # checked (`route`'s setter), as any later change is
        self.verifier = verifier  # face verifier (`faceness`): checks every face find_faces proposes
        self.crop_size, self.input_size, self.cache_size = teacher.crop_size, teacher.input_size, cache_size
        self.name, self.device = teacher.name, device
        self.tta_flip = getattr(teacher, "tta_flip", True)
        # selective flip-TTA for a single-view teacher with guard heads: `trunk` adds the mirrored view only for
        # crops whose single-view spread is at least this (None: the teacher's own views)
        self.tta_spread = tta_spread if tta_spread and not self.tta_flip else None
        # the same for a single-view student whose card gives the cut (the loaders clear it outside tta="auto")
        self.student_tta_spread = (getattr(student, "tta_spread", None) or None
                                   if student is not None and not getattr(student, "tta_flip", True) else None)
        self.min_age, self.max_age = float(getattr(teacher, "min_age", 0.0)), float(getattr(teacher, "max_age", 100.0))
        self.backend = backend
        self._analyzer: FaceAnalyzer | None = None
        self.upright = True  # faces read as turned are looked for again on the image turned upright
        self.realign = True  # the student reads its crops realigned (faces.realign) where that network is shipped
        self.student_views = STUDENT_VIEWS  # the student's answer: the mean over these views of each face
        # True: a single-view student with a selective cut (tta="auto") reads each of `student_views` mirrored as
        # well, not only where unsure (with FAST_STUDENT_VIEWS); the faces blended in under VIEWS_FROM keep the cut
        self.student_mirror = False
        self._memo = CropMemo()  # crop → teacher (age, spread, guards) for a teacher with guards
        guards = getattr(teacher, "guard_thresholds", None)
        if guards:  # the teacher's own heads screen every crop; the separate networks (if any) see the unsure ones
            cascade = getattr(teacher, "guard_cascade", None) or {}
            self.detector = TrunkGuard(self, 0, "occlusion", guards["occlusion"], detector,
                                       skip_below=(cascade.get("occlusion") or {}).get("skip_below"))
            self.verifier = TrunkGuard(self, 1, "face", guards["face"], verifier,
                                       skip_above=(cascade.get("face") or {}).get("skip_above"),
                                       photo=photo_verifier if verifier is not None else None,
                                       bands=bands_verifier if verifier is not None else None,
                                       tile_head=(cascade.get("face") or {}).get("tile_head"))
        # predict / predict_many hold it: the face path's interpreters (LiteRT, mediapipe) and the memo of teacher
        # passes are not thread-safe, so threads sharing one estimator take turns (one estimator per thread runs
        # them at once)
        self._lock = threading.RLock()
        self.onnx_dir: Path | None = None  # the export an ONNX-backed estimator runs
        # (classmethod, keyword arguments) that rebuild this estimator in another process (from_pretrained and
        # from_onnx set it); None: built from objects in memory, so the batch engine's workers only detect
        self.spec: tuple[str, dict] | None = None

    def __reduce__(self):
        """Pickled (for another process: multiprocessing, joblib) as the recipe that built it (`spec`) and its
        `settings()`, rebuilt there: its model sessions and locks do not travel."""
        if self.spec is None:
            raise AgelensError("an estimator built from models in memory (from_model, the constructor) cannot be "
                               "pickled: build it in each process (from_pretrained or from_onnx)")
        from .stream import built

        return built, (type(self), self.spec, self.settings())

    # what a caller may change on a built estimator; worker processes and Ray actors rebuilt from `spec` take them on
    SETTINGS = ("route", "upright", "realign", "student_views", "student_mirror")

    def settings(self) -> dict:
        """This estimator's `SETTINGS` as they are now (`apply_settings` gives them to a rebuilt copy)."""
        return {k: getattr(self, k) for k in self.SETTINGS}

    def apply_settings(self, settings: dict) -> None:
        for k, v in settings.items():
            if k not in self.SETTINGS:
                raise AgelensError(f"not an estimator setting: {k!r} (one of {', '.join(self.SETTINGS)})")
            setattr(self, k, v)

    @property
    def route(self) -> str:
        """auto (the occlusion detector routes each face), teacher or student: refused when set to anything else,
        or to student without a student model."""
        return self._route

    @route.setter
    def route(self, value: str) -> None:
        if value not in ROUTES:
            raise AgelensError(f"route must be one of {', '.join(ROUTES)}, got {value!r}")
        if value == "student" and self.student is None:
            raise AgelensError("route=student needs a student model (none shipped or given)")
        self._route = value

    @classmethod
    def from_model(cls, model: AgeModel, crop_size: int, input_size: int, name: str = "teacher",
                   student: AgeBackend | None = None, detector: CropClassifier | None = None, route: str = "auto",
                   cache_size: int = 256, device: str = "cpu", tta_flip: bool = True, numerics: Numerics | None = None,
                   verifier: CropClassifier | None = None, interval_z: float = Z90) -> AgeEstimator:
        """An estimator around a torch AgeModel already in memory (tests, benchmarks, a model being trained)."""
        from ..numerics import Numerics

        numerics = numerics or Numerics(device, "fp32", True, "inference default: fp32 + channels_last")
        teacher = TorchModel(model, crop_size, input_size, name, interval_z, tta_flip, numerics)
        if isinstance(student, TorchModel):  # one device, numerics and TTA setting for both models
            student = replace(student, tta_flip=tta_flip, numerics=numerics, tta_spread=None)
        est = cls(teacher, student, detector, route, cache_size, device, f"torch-{numerics.dtype}", verifier)
        if not tta_flip:
            est.student_views = SINGLE_VIEW
        return est

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, device: str = "cpu", tta_flip: bool | str = True,
                        route: str = "auto", student: str | None = None, detector: str | None = None,
                        backend: str = "auto", onnx_dir: str | Path | None = None, log=None,
                        threads: int | None = None) -> AgeEstimator:
        """Teacher (default: shipped), plus the shipped (or given) student and occlusion detector when present.

        backend: torch (fp32 + channels_last), torch-bf16, onnx (fp32), onnx-int8, or auto = the fastest this
        machine supports (`choose_backend`; the ONNX ones only for the shipped models or an onnx_dir). threads: the
        models' CPU threads (default: all cores; the batch engine's worker processes use one each). tta_flip: a
        `tta_mode` (True = "auto": the mirrored view only where a model's first view is unsure)."""
        tta_flip = tta_mode(tta_flip)
        est = cls._from_pretrained(name_or_path, device, tta_flip, route, student, detector, backend, onnx_dir, log,
                                   threads)
        # how to build this estimator again in a worker process (inference.stream); resolved names, not "auto"
        est.spec = ("from_pretrained", {
            "name_or_path": name_or_path, "device": device, "tta_flip": tta_flip, "route": route, "student": student,
            "detector": detector, "backend": est.backend.replace("-fp32", ""),
            "onnx_dir": str(est.onnx_dir) if est.onnx_dir is not None else None})
        return est

    @classmethod
    def _from_pretrained(cls, name_or_path, device, tta_flip, route, student, detector, backend, onnx_dir, log,
                         threads) -> AgeEstimator:
        if route not in ROUTES:  # before any model loads (an ONNX failure must not hide it)
            raise AgelensError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
        check_device(device, backend)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise AgelensError(f"threads must be a whole number of 1 or more (None: all cores), got {threads!r}")
        auto = backend == "auto"
        # models other than the shipped ones: a shipped name is the shipped model unless a path of that name exists
        # (resolve_model reads the path first: a run folder ./teacher is the user's)
        given = [n for n, shipped_name in ((name_or_path, "teacher"), (student, "student"), (detector, "occlusion"))
                 if n is not None and (n != shipped_name or Path(n).exists())]
        if onnx_dir is not None and given:  # before: the export's models ran, and these were silently not used
            raise AgelensError(f"onnx_dir runs the models of that export: {', '.join(map(str, given))} cannot run "
                               "from it; export them with `agelens export onnx --teacher/--student/--detector ... "
                               "--output DIR`, or use backend='torch'")
        # a model other than the shipped ones: torch runs it (naming a shipped one, e.g. "teacher", is the default)
        custom = bool(given) and onnx_dir is None
        if auto:
            backend, why = choose_backend(custom=custom, device=device)
            if log:
                log(f"backend: {backend} ({why})")
        if backend not in BACKENDS:
            raise AgelensError(f"backend must be one of auto, {', '.join(BACKENDS)}, got {backend!r}")
        if backend.startswith("onnx"):
            if custom:
                raise AgelensError("the ONNX backend runs the shipped models or an export: give onnx_dir "
                                   "(`agelens export onnx --output DIR`), or use backend=torch for other models")
            try:
                return cls.from_onnx(onnx_dir, "int8" if backend == "onnx-int8" else "fp32", route, log=log,
                                     threads=threads, tta=tta_flip)
            except Exception as e:  # auto only: an export that cannot be made or read must not stop a prediction
                if not auto or onnx_dir is not None:
                    raise
                why = f"{type(e).__name__}: {e}"
            if backend == "onnx-int8":  # the int8 copies failed: the fp32 graphs, where they are, before torch
                try:
                    est = cls.from_onnx(None, "fp32", route, log=log, threads=threads, tta=tta_flip)
                    if log:
                        log(f"backend: onnx (the int8 copies could not be used: {why})")
                    return est
                except Exception as e:
                    why = f"{type(e).__name__}: {e}"
            backend = "torch"
            if log:
                log(f"backend: torch (the ONNX export could not be used: {why})")
        from ..models.weights import shipped_models
        from ..numerics import Numerics
        from ..occlusion.detector import OcclusionDetector

        if threads:
            import torch

            torch.set_num_threads(threads)
        numerics = Numerics(device, "bf16" if backend == "torch-bf16" else "fp32", True, f"{backend} requested")
        teacher = TorchModel.load(name_or_path, tta_flip != "none", numerics)
        selective = tta_flip == "auto" and selective_tta(teacher)
        if selective:  # single views; `trunk` mirrors the unsure faces
            teacher = replace(teacher, tta_flip=False)
        shipped = shipped_models()
        stu_name = student or ("student" if "student" in shipped else None)
        stu = TorchModel.load(stu_name, tta_flip != "none", numerics) if stu_name else None
        if stu is not None:  # a student whose card gives a cut runs single views in "auto", mirroring unsure faces
            stu = replace(stu, tta_flip=False) if tta_flip == "auto" and stu.tta_spread else replace(stu, tta_spread=None)
        det_name = detector or ("occlusion" if "occlusion" in shipped else None)
        det = OcclusionDetector.from_pretrained(det_name, device, task="occlusion") if det_name else None
        ver = OcclusionDetector.from_pretrained("faceness", device) if "faceness" in shipped else None
        photo = OcclusionDetector.from_pretrained("faceness_photo", device) if "faceness_photo" in shipped else None
        bands = OcclusionDetector.from_pretrained("faceness_bands", device) if "faceness_bands" in shipped else None
        est = cls(teacher, stu, det, route, 256, device, f"torch-{numerics.dtype}", ver,
                  teacher.tta_spread if selective else None, photo, bands)
        if detector:  # a detector asked for by name decides every face (no screening by the teacher's head)
            est.detector = det
        if tta_flip == "none":
            est.student_views = SINGLE_VIEW
        return est

    @classmethod
    def from_onnx(cls, onnx_dir: str | Path | None = None, precision: str = "fp32", route: str = "auto",
                  cache_size: int = 256, log=None, threads: int | None = None, tta: bool | str = True
                  ) -> AgeEstimator:
        """onnxruntime backend (no torch needed when onnx_dir holds an export): teacher, student and detector
        from `agelens export onnx --output DIR`; without onnx_dir the shipped weights' export (made once).
        precision: fp32, or int8 (the int8 graphs made for this CPU, `utils.int8_flavor`). threads: onnxruntime's
        intra-op threads per model (default: all cores); tta: a `tta_mode` ("none": the age models' single-view
        graphs, half the work; "auto": the teacher's single view, mirrored where unsure)."""
        from ..export.shipped import ensure_export
        from .backends.onnx import load_onnx_models

        if precision not in ("fp32", "int8"):
            raise AgelensError(f"ONNX precision must be fp32 or int8, got {precision!r}")
        tta = tta_mode(tta)
        flavor = (int8_flavor() or "int8") if precision == "int8" else None  # this CPU's int8 graphs
        d = ensure_export(onnx_dir, log, int8=flavor or False)
        from ..faces import animal

        if onnx_dir is not None:
            if d not in animal.EXPORT_DIRS and (d / f"{animal.FORMAT}.onnx").is_file():
                animal.EXPORT_DIRS.insert(0, d)  # its own cat / non-face check (a torch-free machine has no other)
                animal.shipped.cache_clear()
        else:  # the cat / non-face check predict asks for on its first photo: made now where missing, and said
            animal.ensure_export(log)
        models = load_onnx_models(d, flavor or precision, threads, tta)
        t = models["teacher"]
        if precision == "int8" and t.precision != "int8" and log is not None:
            log(f"note: {d} holds no {flavor} graphs for this CPU (an export made with --int8 none, or for another "
                "CPU's int8 flavour): its fp32 graphs run")
        est = cls(t, models.get("student"), models.get("occlusion"), route, cache_size, "cpu", f"onnx-{t.precision}",
                  models.get("faceness"), t.tta_spread,  # the loader leaves a cut only where "auto" uses it
                  models.get("faceness_photo"), models.get("faceness_bands"))
        est.onnx_dir = d
        if tta == "none":
            est.student_views = SINGLE_VIEW
        est.spec = ("from_onnx", {"onnx_dir": str(d), "precision": precision, "route": route, "cache_size": cache_size,
                                  "tta": tta})
        return est

    @property
    def analyzer(self) -> FaceAnalyzer:
        if self._analyzer is None:
            self._analyzer = FaceAnalyzer(fast=None)  # the LiteRT face path where ai-edge-litert is installed
        return self._analyzer

    MEMO_SIZE = MEMO_SIZE  # crops whose teacher pass is kept (the faces of the last few images)

    @_takes_turns
    def trunk(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The teacher's (age, spread, guard probabilities (N, 2)) for aligned crops, from one pass per distinct
        crop: the face verifier, the occlusion flag and the age of the same crop share it. Needs a teacher with
        guard heads."""
        t = self.teacher

        def run(miss: np.ndarray) -> list:
            res = mirror_unsure(t.run_guards, centre_views(miss, t.crop_size, t.input_size), self.tta_spread)
            return list(zip(*res, strict=True))

        rows = self._memo.rows(np.asarray(crops), run, self.MEMO_SIZE)
        if not rows:
            return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 2), np.float32)
        return (np.array([r[0] for r in rows], np.float32), np.array([r[1] for r in rows], np.float32),
                np.stack([r[2] for r in rows]).astype(np.float32))

    def _student_ages(self, crops: np.ndarray, sel: np.ndarray, w: np.ndarray, sources: list | None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The student's (ages, spreads) of the `sel` crops: the mean of `student_views` where its weight w is at
        least VIEWS_FROM, one view where it is blended in below that."""
        idx = np.flatnonzero(sel)
        ages, spreads = np.zeros((2, len(idx)), np.float32)
        many = w[idx] >= VIEWS_FROM
        for group, views, mirror in ((many, self.student_views, self.student_mirror), (~many, SINGLE_VIEW, False)):
            if group.any():
                src = None if sources is None else [sources[i] for i in idx[group]]
                ages[group], spreads[group] = self._ages(self.student, crops[idx[group]], sources=src,
                                                         view_set=views, mirror_all=mirror)
        return ages, spreads

    def _ages(self, expert: AgeBackend, crops: np.ndarray, embed: bool = False, sources: list | None = None,
              view_set=None, mirror_all: bool | None = None) -> tuple[np.ndarray, ...]:
        """(ages, spreads) of one model, plus its embeddings with embed=True (torch models only). sources: per crop
        its `faces.realign.CropSource` or None, for the student's realignment; view_set: the student's (scale,
        degrees) views (default `student_views`), whose mean it answers; mirror_all: a student that mirrors where
        unsure (tta="auto") mirrors every view (default: `student_mirror` at `student_views`, as predict reads the
        faces it answers; no at other view sets)."""
        if expert is self.teacher and not embed and getattr(expert, "guard_thresholds", None):
            return self.trunk(crops)[:2]
        k = 1
        if expert is self.student and not embed:
            if mirror_all is None:
                mirror_all = self.student_mirror and (view_set is None or tuple(view_set) == tuple(self.student_views))
            view_set = self.student_views if view_set is None else view_set
            k = len(view_set)
            crops = realigned(crops, sources, view_set, self.realign)
        views = centre_views(crops, expert.crop_size, expert.input_size)
        if not embed:
            cut = self.student_tta_spread if expert is self.student else None
            ages, spreads = mirror_unsure(expert.run, views, 0.0 if mirror_all and cut is not None else cut)
            if k > 1:  # the mean of each face's views (`student_views`)
                ages, spreads = ages.reshape(-1, k).mean(1), spreads.reshape(-1, k).mean(1)
            return ages, spreads
        if not hasattr(expert, "embed"):
            raise AgelensError("embeddings (KNN refinement, --save-embeddings) need the torch backend")
        return expert.embed(views)

    def analyse_faces(self, faces: list, **kwargs) -> dict[str, np.ndarray]:
        """`analyse_crops` of `faces_of` faces: their crops, with their sources for the student's realignment."""
        return self.analyse_crops(np.stack([f[2] for f in faces]), sources=[face_source(f) for f in faces],
                                  **kwargs)

    @_takes_turns
    def analyse_crops(self, crops: np.ndarray, embeddings: bool = False, all_faces: bool = True,
                      sources: list | None = None) -> dict[str, np.ndarray]:
        """Aligned cache_size crops (N, S, S, 3) uint8 → age, spread, occlusion_score (NaN without a detector),
        occluded, student_weight and model (the name of the model with the larger weight), routed as configured:
        with route="auto", a face the detector is sure about goes to one model, an uncertain one (score inside
        SOFT_BAND) gets the two models' ages blended by a weight that follows its score (`soft_weight`).
        embeddings=True adds "embedding": the teacher's embedding of every face (from the same pass for the faces
        the teacher answers; all_faces=False leaves the rows of the student's faces zero instead of running the
        teacher on them). sources: per crop the image it was warped from (`faces.realign.CropSource`) or None,
        which the student's realignment resamples from."""
        n = len(crops)
        out = {"age": np.zeros(n, np.float32), "spread": np.zeros(n, np.float32),
               "occlusion_score": np.full(n, np.nan, np.float32), "occluded": np.zeros(n, bool),
               "model": np.array([self.teacher.name] * n, dtype=object)}
        if n == 0:
            return out
        if self.detector is not None:
            out["occlusion_score"] = self.detector.scores(crops)
            out["occluded"] = out["occlusion_score"] >= self.detector.threshold
        w = np.zeros(n, np.float32)  # the student's weight per face: 0 teacher, 1 student, between: a blend
        if self.route == "student":
            w[:] = 1.0
        elif self.route == "auto" and self.student is not None:
            if self.detector is not None:
                w = soft_weight(out["occlusion_score"], out["occluded"])
            else:
                w = out["occluded"].astype(np.float32)
        to_student, to_teacher = w > 0, w < 1
        ages, spreads = np.zeros((2, n), np.float32), np.zeros((2, n), np.float32)
        parts = []  # (faces, teacher embeddings of them) when embeddings are asked for
        for k, (expert, sel) in enumerate(((self.teacher, to_teacher), (self.student, to_student))):
            if sel.any():
                want = embeddings and expert is self.teacher
                if expert is self.student:
                    res = self._student_ages(crops, sel, w, sources)
                else:
                    res = self._ages(expert, crops[sel], want)
                ages[k, sel], spreads[k, sel] = res[:2]
                if want:
                    parts.append((sel, res[2]))
        out["age"] = (1 - w) * ages[0] + w * ages[1]
        out["spread"] = (1 - w) * spreads[0] + w * spreads[1]
        out["interval_z"] = self.interval_z(w)
        out["student_weight"] = w
        if self.student is not None:
            out["model"][w >= 0.5] = self.student.name
        if embeddings:
            if all_faces and (~to_teacher).any():  # the teacher did not see these faces yet
                parts.append((~to_teacher, self._ages(self.teacher, crops[~to_teacher], True)[2]))
            dim = parts[0][1].shape[1] if parts else self.teacher.model.backbone.info.out_channels
            out["embedding"] = np.zeros((n, dim), np.float32)
            for sel, emb in parts:
                out["embedding"][sel] = emb
        return out

    @_takes_turns
    def faces_of(self, rgb: np.ndarray, detect: bool = True) -> list[tuple]:
        """(box, score, aligned crop, landmarks_found, detection, source) per face (`find_and_align`); raises
        NoFaceError when there is none."""
        return find_and_align(rgb, self.analyzer, self.cache_size, detect, self.verifier, upright=self.upright)

    def interval_z(self, student_weight: np.ndarray) -> np.ndarray:
        """Each face's interval multiplier: the models' calibrated `interval_z`, blended as their ages."""
        zs = [getattr(e, "interval_z", Z90) for e in (self.teacher, self.student)]  # None (no student) → Z90
        return (1 - student_weight) * zs[0] + student_weight * zs[1]

    def intervals(self, ages: np.ndarray, spreads: np.ndarray, student_weight: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Each face's 90 % interval (low, high): age ± the blended `interval_z` × spread, within the age range."""
        z = self.interval_z(np.asarray(student_weight, np.float32))
        return np.maximum(self.min_age, ages - z * spreads), np.minimum(self.max_age, ages + z * spreads)

    def adapt_arrays(self, ages: np.ndarray, spreads: np.ndarray, student_weight: np.ndarray,
                     occlusion_score: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        """A job's (ages, spreads, summary), adapted to the job's own age mix
        (`inference.prior.adapt_ages`, against the teacher's training mix, its card's `age_prior`). Only the faces
        the teacher answers alone and the occlusion detector scores under prior.CLEAN_BELOW (every teacher face
        without a detector) take part: an occluded face's answer leans by its occluder, not by the job's mix (a
        job of half-covered faces read that lean as a mix and lost 0.3-0.4 years), so occluded and unsure faces
        keep their answers. Unchanged under prior.MIN_FACES such faces, without `age_prior`, or where the job's
        mix is like the training mix (within prior.KL_FROM)."""
        from .prior import CLEAN_BELOW, adapt_ages

        a = np.asarray(ages, np.float32).copy()
        s = np.asarray(spreads, np.float32).copy()
        w = np.asarray(student_weight, np.float32)
        score = np.full(len(a), np.nan) if occlusion_score is None else np.asarray(occlusion_score, np.float64)
        sel = (w == 0) & ~(score >= CLEAN_BELOW)  # NaN: no detector
        na, ns, info = adapt_ages(a[sel] - self.min_age, s[sel], getattr(self.teacher, "age_prior", None))
        a[sel], s[sel] = na + self.min_age, ns
        info["left_as_answered"] = int((~sel).sum())  # occluded or unsure faces
        return a, s, info

    def adapt(self, records: list[dict]) -> dict:
        """In place: the faces of a job's records ({"file", "faces", "error"}, as `predict_many` yields them)
        adapted to the job's own age mix: ages, spreads and intervals (`inference.prior`). Returns the summary
        (`adapt_arrays`; faces it leaves as they are keep their records untouched)."""
        faces = [f for r in records for f in (r.get("faces") or [])]
        if not faces:
            return {"applied": False, "faces": 0, "left_as_answered": 0, "reason": "no face in the records"}
        w = np.array([f.get("student_weight") if f.get("student_weight") is not None
                      else float(self.student is not None and f.get("model") == self.student.name)
                      for f in faces], np.float32)
        score = np.array([np.nan if f.get("occlusion_score") is None else f["occlusion_score"] for f in faces])
        a0 = np.array([f["age"] for f in faces], np.float32)
        s0 = np.array([f["spread"] for f in faces], np.float32)
        a, s, info = self.adapt_arrays(a0, s0, w, score)
        lo, hi = self.intervals(a, s, w)
        for k in np.flatnonzero((a != a0) | (s != s0)):
            f = faces[k]
            f["age"], f["spread"] = round(float(a[k]), 2), round(float(s[k]), 2)
            f["interval"] = [round(float(lo[k]), 1), round(float(hi[k]), 1)]
        return info

    def predictions(self, faces: list, r: dict[str, np.ndarray], timing: dict) -> list[FacePrediction]:
        """FacePredictions from `faces_of` output and the matching `analyse_crops` result, the largest face first
        (the photo's main face at [0]; equal sizes keep the order they were found in)."""
        preds = []
        for k, (box, score, _, found, how, *_) in enumerate(faces):
            a, s = float(r["age"][k]), float(r["spread"][k])
            z = float(r["interval_z"][k])
            occ_score = float(r["occlusion_score"][k])
            preds.append(FacePrediction(
                box, round(a, 2), round(s, 2),
                [round(max(self.min_age, a - z * s), 1), round(min(self.max_age, a + z * s), 1)],
                round(score, 3), str(r["model"][k]), found,
                {"detection": how,
                 "occluded": bool(r["occluded"][k]) if self.detector is not None else None,
                 "occlusion_score": round(occ_score, 4) if np.isfinite(occ_score) else None,
                 "student_weight": round(float(r["student_weight"][k]), 4) if "student_weight" in r else None,
                 "backend": self.backend,
                 "timing": timing}))
        return sorted(preds, key=lambda p: -(p.box[2] - p.box[0]) * (p.box[3] - p.box[1]))

    def predict(self, image: str | Path | np.ndarray | bytes, detect: bool = True, channels: str = "rgb"
                ) -> list[FacePrediction]:
        """Every face in an image with its age estimate and occlusion verdict. image: a path, encoded image bytes
        (a file's contents), a Pillow image (turned upright by its EXIF orientation, as a file is), or a uint8
        HxWx3 array: RGB, or BGR with channels="bgr" as OpenCV reads it (grey, RGBA, 16-bit and float arrays as
        `imageio.array_to_rgb` reads them). A JPEG of 3,072 px or more given as a path or bytes is decoded
        reduced (`imageio.decode_reduced`), an array or Pillow image is read whole: the two can differ by up to
        about a year. Boxes are in the pixels of the image as displayed (a file's EXIF orientation applied).
        Raises NoFaceError where the image holds no face (`agelens.NoFaceError`; predict_many and the service
        answer such an image with no faces), ImageError where it cannot be read."""
        rgb, scale = as_rgb(image, channels)
        with self._lock:
            t0 = time.perf_counter()
            faces = in_file_pixels(self.faces_of(rgb, detect), scale)
            t1 = time.perf_counter()
            r = self.analyse_faces(faces)
            t2 = time.perf_counter()
            return self.predictions(faces, r, {"detect_ms": round(1000 * (t1 - t0), 1),
                                               "model_ms": round(1000 * (t2 - t1), 1)})

    def predict_many(self, source, *, detect: bool = True, workers: int = 0, batch_size: int = 32,
                     skip=()) -> Iterator[dict]:
        """{"file", "faces", "error"} for every image under `source` (a file, folder or glob, or a list or iterator
        of them; files whose record `file` is in `skip` are left out), as `agelens predict -f jsonl` writes them,
        streamed in input order, the faces of consecutive files batched through the models; `faces` are
        `FacePrediction.to_dict()` records. workers > 0 runs that many processes, each the whole pipeline (a script
        then needs Python's `if __name__ == "__main__":` guard). `est.adapt(records)` adapts a finished job to its
        own age mix, as `agelens predict` does; `agelens.predict_many` adds the Ray engine. An iterator is read
        `inputs.WINDOW` items at a time (`inputs.job_windows`), so an endless one streams."""
        from .inputs import job_windows

        yield from self._records(job_windows(source, skip), detect, workers, batch_size)

    def _records(self, windows, detect: bool, workers: int, batch_size: int) -> Iterator[dict]:
        """The records of each window's files (`predict_stream`; a window whose files were all skipped is empty),
        the estimator held while a record is made, not while the caller has it: both predict_many read this."""
        from ..parallel import start_workers_early
        from .stream import predict_stream

        for files in windows:
            if not files:
                continue
            if workers:
                start_workers_early()  # nothing where the server runs already
            it = predict_stream(self, files, detect, workers, batch_size)
            while True:
                with self._lock:
                    nxt = next(it, None)
                if nxt is None:
                    break
                yield nxt[0]
