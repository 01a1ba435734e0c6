"""Synthetic occlusion (sunglasses, masks/veils, blocks) placed from landmarks, and the occlusion detector."""

from .synth import (
           BOUNDS,
           OCCLUSION_TYPES,
           PAPER_MIX,
           Occluded,
           OcclusionError,
           OcclusionMix,
           occlude,
           styles_for,
)

__all__ = ["BOUNDS", "OCCLUSION_TYPES", "PAPER_MIX", "Occluded", "OcclusionError", "OcclusionMix", "occlude",
           "styles_for"]
