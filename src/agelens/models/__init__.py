"""Backbones with per-stage feature taps, ordinal heads, and the AgeModel that joins them."""

from . import backbones, heads  # noqa: F401  (registers builders)
from .model import AgeModel, build_model

__all__ = ["AgeModel", "build_model"]
