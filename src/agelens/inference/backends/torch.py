"""torch backend: an AgeModel with the crop it expects, run on the device and numerics chosen at load time."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import Z90


@dataclass
class TorchModel:
    """AgeBackend over a torch AgeModel (fp32 + channels_last by default; bf16 autocast with torch-bf16)."""

    model: object  # agelens.models.AgeModel (torch stays an optional import for the ONNX path)
    crop_size: int
    input_size: int
    name: str
    interval_z: float = Z90
    tta_flip: bool = True
    numerics: object = field(default=None)  # agelens.numerics.Numerics; None: fp32 + channels_last on CPU
    guard_thresholds: dict | None = None  # the model's guard heads' thresholds (card), when it has them
    guard_cascade: dict | None = None  # where the heads are sure enough to skip the separate guards (card)
    tta_spread: float | None = None  # selective flip-TTA: the single view's spread from which the mirror pays (card)
    age_prior: list | None = None  # the training age mix (card `age_prior`): see inference.prior

    def __post_init__(self) -> None:
        import torch

        from ...numerics import Numerics

        if self.numerics is None:
            self.numerics = Numerics("cpu", "fp32", True, "inference default: fp32 + channels_last")
        self.model.eval().to(self.numerics.device)
        if self.numerics.channels_last:
            self.model.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, name_or_path: str | None, tta_flip: bool = True, numerics=None) -> TorchModel:
        """A shipped name, .safetensors, .pt or run folder, with its card's crop, name and interval_z."""
        from ...models.weights import resolve_model

        model, cfg, card = resolve_model(name_or_path)
        if cfg.model.head == "binary":  # an occlusion detector or face verifier would answer its probability as an age
            from ...errors import CheckpointError

            raise CheckpointError(f"{name_or_path} is a binary classifier (an occlusion detector or face verifier, "
                                  "head 'binary'), not an age model: give it as the occlusion detector (`agelens evaluate "
                                  "--detector`, `AgeEstimator.from_pretrained(detector=...)`)")
        has = getattr(model, "guards", None) is not None
        return cls(model, cfg.data.crop_size, cfg.data.input_size, str(card.get("name", name_or_path or "teacher")),
                   float(card.get("interval_z") or Z90), tta_flip, numerics,
                   card.get("guard_thresholds") if has else None, card.get("guard_cascade") if has else None,
                   card.get("tta_spread"), card.get("age_prior"))

    @property
    def min_age(self) -> float:
        return float(self.model.head.min_age)

    @property
    def max_age(self) -> float:
        return float(self.model.head.max_age)

    def _outputs(self, views: np.ndarray, method: str) -> tuple[np.ndarray, ...]:
        """`self.model.<method>(x, tta_flip)` on uint8 centre views, as float32 numpy arrays."""
        import torch

        from ...models.inputs import to_input

        x = to_input(torch.from_numpy(np.ascontiguousarray(views)), *self.model.mean_std, self.numerics.device,
                     self.numerics.channels_last)
        with torch.no_grad(), self.numerics.autocast():
            out = getattr(self.model, method)(x, self.tta_flip)
        return tuple(t.float().cpu().numpy() for t in out)

    def embed(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(age, spread, embedding) of uint8 centre views."""
        return self._outputs(views, "predict")

    def run(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.embed(views)[:2]

    def run_guards(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(age, spread, guard probabilities (N, 2): occlusion, face) of uint8 centre views, from one pass."""
        return self._outputs(views, "predict_guards")
