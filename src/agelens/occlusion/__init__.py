"""Synthetic occlusion (sunglasses, masks/veils, blocks) placed from landmarks, and the occlusion detector.
The synthesizer is loaded on first use of one of its names (the inference path never needs it)."""

from __future__ import annotations

from .kinds import ALL_TYPES, FAMILIES, OCCLUSION_TYPES, PAPER_MIX

_SYNTH = ("BOUNDS", "Occluded", "OcclusionError", "OcclusionMix", "occlude", "styles_for")


def __getattr__(name: str):
    if name in _SYNTH:
        from . import synth

        return getattr(synth, name)
    raise AttributeError(name)


__all__ = ["ALL_TYPES", "BOUNDS", "FAMILIES", "OCCLUSION_TYPES", "PAPER_MIX", "Occluded", "OcclusionError",
           "OcclusionMix", "occlude", "styles_for"]
