"""agelens: occlusion-robust, fairness-aware facial age estimation."""

from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: `import agelens` stays cheap (no torch, no mediapipe)
    if name in ("AgeEstimator", "FacePrediction"):
        from .inference import predictor

        return getattr(predictor, name)
    if name == "draw":
        from .inference.draw import draw

        return draw
    if name in ("AgelensError", "ImageError", "NoFaceError"):
        from . import errors

        return getattr(errors, name)
    if name == "predict_many":
        from .inference import predict_many

        return predict_many
    raise AttributeError(name)


__all__ = ["AgeEstimator", "AgelensError", "FacePrediction", "ImageError", "NoFaceError", "__version__", "draw",
           "predict_many"]
