"""onnxruntime backend: runs exported graphs (`agelens export onnx`) with numpy + onnxruntime only, no torch.

Exported graphs hold preprocessing, flip-TTA and the head's decoding (see `agelens.export.onnx`), so a model is
"uint8 centre views in, age and spread out". The shipped models' export is made once, on first use, by
`agelens.export.shipped.ensure_export`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ...data.views import centre_views
from ...errors import AgelensError, CheckpointError
from ...utils import INT8_FLAVORS, SHIPPED, role_fits


def _env_threads() -> int | None:
    """OMP_NUM_THREADS where set to a positive number (torch honours it; onnxruntime does not read it)."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n > 0 else None


class OnnxModel:
    """One exported model: an AgeBackend (age models: run, interval_z) or a CropClassifier (binary: scores)."""

    def __init__(self, path: str | Path, threads: int | None = None, batch_size: int = 32, spin: bool = False,
                 meta: dict | None = None) -> None:
        """meta: the graph's metadata when known (the export's manifest.json): the session is then made on first
        use, so a model a job never needs (the student on clean photos) costs no start-up."""
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise AgelensError("the ONNX backend needs onnxruntime: pip install onnxruntime") from e
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"ONNX model not found: {path}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or _env_threads() or max(1, len(os.sched_getaffinity(0)))
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no memory arena: it keeps the largest batch's buffers for the session's life (three crowd photos of 23-46
        # faces: peak 1198 -> 1083 MB; time the same, benchmarks/ab_predict.py: UTKFace +1.2 %, realocc -0.5 %,
        # same answers). The small classifiers' sessions (utils.cpu_session) keep theirs: without, 781 MB but
        # realocc +8.7 %.
        so.enable_cpu_mem_arena = False
        if not spin:  # idle threads sleep at once instead of spinning, so mediapipe's detection and mesh, which run
            # between model calls, keep both cores: predict on single images 20.5-21.8 img/s without spinning vs
            # 12-17.6 with it (80 UTKFace test images, shipped models, no verifier, 2 AMD EPYC cores)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path, self._options, self._session = path, so, None
        if meta is None:
            meta = {k: json.loads(v) for k, v in self.session.get_modelmeta().custom_metadata_map.items()}
        missing = {"name", "kind", "crop_size", "input_size", "min_age", "max_age"} - set(meta)
        if missing:
            raise CheckpointError(f"{path} is not an agelens export (metadata lacks {sorted(missing)})")
        self.meta, self.batch_size = meta, batch_size
        self.name, self.kind = str(meta["name"]), str(meta["kind"])
        self.crop_size, self.input_size = int(meta["crop_size"]), int(meta["input_size"])
        self.min_age, self.max_age = float(meta["min_age"]), float(meta["max_age"])
        self.threshold = float(meta["threshold"]) if meta.get("threshold") is not None else 0.5
        self.interval_z = float(meta.get("interval_z") or 1.645)  # calibrated interval multiplier (age models)
        self.precision = "int8" if ".int8" in path.name else "fp32"  # <graph>.int8.onnx, <graph>.int8w7.onnx
        self.tta_flip = bool(meta.get("tta", True))  # flip-TTA inside the graph (not in <role>.notta.onnx)
        # guard heads in the graph (models.model.GUARDS): {"occlusion": t, "face": t}, else None
        self.guard_thresholds = meta.get("guard_thresholds") or None
        self.guard_cascade = meta.get("guard_cascade") or None  # where the heads skip the separate guards
        self.tta_spread = meta.get("tta_spread")  # selective flip-TTA (card): see AgeEstimator.trunk
        self.age_prior = meta.get("age_prior")  # the training age mix (card): see inference.prior

    @property
    def session(self):
        """The onnxruntime session, made on first use."""
        if self._session is None:
            import onnxruntime as ort

            try:
                self._session = ort.InferenceSession(str(self.path), self._options, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own exception types for corrupt files
                raise CheckpointError(f"cannot load ONNX model {self.path}: {e}") from e
        return self._session

    def _batched(self, names: list[str], views: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs `names` for uint8 centre views, run in batches of batch_size, as float32 arrays."""
        outs = [self.session.run(names, {"image": np.ascontiguousarray(views[i:i + self.batch_size])})
                for i in range(0, len(views), self.batch_size)]
        return [np.concatenate([o[k] for o in outs]).astype(np.float32) if outs else np.zeros(0, np.float32)
                for k in range(len(names))]

    def run(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, S, S, 3) centre views → (age, spread) float32 (N,)."""
        age, spread = self._batched(["age", "spread"], views)
        return age, spread

    def run_guards(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 centre views → (age, spread, guard probabilities (N, 2): occlusion, face) from one pass."""
        age, spread, occ, face = self._batched(["age", "spread", "occlusion", "face"], views)
        return age, spread, np.stack([occ, face], 1)

    def views(self, crops: np.ndarray) -> np.ndarray:
        return centre_views(crops, self.crop_size, self.input_size)

    def scores(self, crops: np.ndarray) -> np.ndarray:
        """Occlusion detector interface: aligned crops → probability."""
        if len(crops) == 0:
            return np.zeros(0, np.float32)
        return self.run(self.views(crops))[0]


def load_onnx_models(onnx_dir: str | Path, precision: str = "fp32", threads: int | None = None,
                     tta: bool | str = True) -> dict[str, OnnxModel]:
    """role → OnnxModel for the roles present; precision "int8" or "int8w7" (an int8 flavour,
    `utils.INT8_FLAVORS`) takes that copy of a graph where exported (<role>.int8.onnx,
    <role>.notta.int8w7.onnx, ...; int8w7 takes the int8 copies of an export made before it existed), else its
    fp32 graph (the student under int8w7, `utils.INT8_FLAVORS`); tta (a
    `tta_mode`): "none" runs the age models' single-view <role>.notta[.int8].onnx, "auto" an age model's
    single-view graph when its card says where the mirror pays (`tta_spread`; the teacher also needs its guard
    heads): the estimator then mirrors only the unsure faces (`mirror_unsure`); threads: intra-op threads of each age
    model (default: all cores). Sessions are made on first use where the export's manifest.json gives a graph's
    metadata (the student and the face network answer few faces: a job of clean photos never builds them)."""
    from . import selective_tta, tta_mode

    d, mode = Path(onnx_dir), tta_mode(tta)
    if precision not in ("fp32", "int8", "int8w7"):
        raise CheckpointError(f"ONNX precision must be fp32, int8 or int8w7, got {precision!r}")
    try:
        manifest = json.loads((d / "manifest.json").read_text())["models"]
    except (OSError, ValueError, KeyError):  # an export without a readable manifest: metadata from each graph
        manifest = {}
    out = {}
    for role in SHIPPED:
        q = precision  # an export made before the 7-bit flavour existed: its 8-bit copies
        if q == "int8w7" and not (manifest.get(role) or {}).get("int8w7_tried"):
            q = "int8"
        if q != "fp32" and role in INT8_FLAVORS[q][1]:  # a role this flavour keeps in fp32
            q = "fp32"
        p8, p32, p1 = d / f"{role}.{q}.onnx", d / f"{role}.onnx", d / f"{role}.notta.onnx"
        p18 = d / f"{role}.notta.{q}.onnx"
        listed = manifest.get(role)  # an export's manifest names its int8 copies: a file it does not name is stale
        if listed is not None and q != "fp32":
            p8 = p8 if listed.get(q) == p8.name else d / "-"
            p18 = p18 if listed.get(f"{q}_single_view") == p18.name else d / "-"
        p = p8 if q != "fp32" and p8.is_file() else p32
        meta = manifest.get(role) if p != p8 else None
        if role in ("teacher", "student") and p32.is_file():
            if mode == "none" and not p1.is_file():
                raise CheckpointError(f"{d} has no single-view {p1.name} for --no-tta; re-export it with "
                                      "`agelens export onnx --output DIR`")
            card = manifest.get(role) or {}  # the fp32 graph's metadata: the int8 copies share it
            pays = card.get("tta_spread") and (role == "student" or selective_tta(SimpleNamespace(**card)))
            if q != "fp32" and p18.is_file() and (mode == "none" or (mode == "auto" and pays)):
                p, meta = p18, {**card, "tta": False} if card else None  # int8 single views
            elif mode == "none" or (mode == "auto" and p == p32 and p1.is_file() and pays):
                p, meta = p1, {**meta, "tta": False} if meta else None
        if p.is_file():  # the face verifier runs inside face finding, one crop at a time: one thread
            model = OnnxModel(p, threads=1 if role.startswith("faceness") else threads,
                              meta=meta if role != "teacher" else None)
            if mode != "auto" or model.tta_flip:
                model.tta_spread = None  # the mirror is chosen per face only in "auto", on single views
            if not role_fits(role, model.kind, model.meta.get("task")):  # an export made before "task": None
                raise CheckpointError(f"{p} is not a {role} model (it is {model.name!r}, a"
                                      f"{'n age model' if model.kind == 'age' else ' binary crop classifier'}"
                                      f"{'' if model.kind == 'age' else ' of ' + str(model.meta.get('task'))})")
            out[role] = model
    if "teacher" not in out:
        raise CheckpointError(f"{d} has no teacher.onnx")
    return out
