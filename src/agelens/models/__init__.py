"""Backbones with per-stage feature taps, ordinal heads, and the AgeModel that joins them."""

from __future__ import annotations

from . import backbones, heads  # noqa: F401  (registers builders)
from .model import AgeModel, build_model


def check_config(cfg):
    """The run config (already validated by config.load_config), with its backbone and head names checked against
    the registries: a ConfigError listing the valid names, before any data is prepared."""
    from ..registry import BACKBONES, HEADS

    BACKBONES.get(cfg.model.backbone)
    HEADS.get(cfg.model.head)
    return cfg


__all__ = ["AgeModel", "build_model", "check_config"]
