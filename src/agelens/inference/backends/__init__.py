"""Inference backends: one protocol, two implementations (torch, onnxruntime). The estimator centre-crops each
aligned face once (`data.views.centre_views`, the same views in training and evaluation) and hands the uint8
views to a backend; normalisation, flip-TTA and the head's decoding happen inside it (the torch model's
`predict`, or the same steps fused into the exported ONNX graph by `agelens.export.onnx`)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ...errors import AgelensError

Z90 = 1.645  # interval = age ± z·spread; z = the model card's conformal `interval_z`, else 1.645 (normal model)
# Flip-TTA: "auto" mirrors a face only where an age model's single view is unsure (its spread at least the model
# card's `tta_spread`; a model without it gets both views), "full" always, "none" never. True means "auto", False
# "none".
TTA_MODES = ("auto", "full", "none")


def tta_mode(tta: bool | str) -> str:
    """The TTA_MODES name of a tta / tta_flip argument."""
    if isinstance(tta, bool):
        return "auto" if tta else "none"
    if tta not in TTA_MODES:
        raise AgelensError(f"tta must be one of {', '.join(TTA_MODES)} (or a bool), got {tta!r}")
    return tta


def selective_tta(model) -> bool:
    """Whether a teacher backend can run selective flip-TTA (`AgeEstimator.trunk`): its card gives the cut
    (`tta_spread`) and it has the guard heads `trunk` runs."""
    return bool(getattr(model, "tta_spread", None) and getattr(model, "guard_thresholds", None))


def mirror_unsure(run, views: np.ndarray, cut: float | None) -> tuple[np.ndarray, ...]:
    """`run(views)` (a tuple of per-view arrays, spread second), with the mirrored view averaged in, as full
    flip-TTA does, for the views whose spread is at least `cut` (None: the single views as they are)."""
    res = run(views)
    if cut is None:
        return res
    flip = res[1] >= cut
    if flip.any():
        mirrored = run(np.ascontiguousarray(views[flip][:, :, ::-1]))
        res = tuple(r.copy() for r in res)
        for r, m in zip(res, mirrored, strict=True):
            r[flip] = (r[flip] + m) / 2
    return res


@runtime_checkable
class AgeBackend(Protocol):
    """An age model ready to run: uint8 (N, S, S, 3) centre views → (age, spread) float32 (N,)."""

    name: str
    crop_size: int
    input_size: int
    interval_z: float  # the 90 % interval multiplier calibrated for this model (evaluate.calibrate)

    def run(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class CropClassifier(Protocol):
    """A binary face-crop classifier (the occlusion detector, the face verifier): aligned crops → probability."""

    name: str
    threshold: float

    def scores(self, crops: np.ndarray) -> np.ndarray: ...


__all__ = ["Z90", "AgeBackend", "CropClassifier", "mirror_unsure"]
