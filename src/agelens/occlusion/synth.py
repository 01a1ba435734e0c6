"""Synthetic occluders placed from FaceMesh landmarks: `occlude` draws any kind (the paper's six from
occlusion/paper.py, the newer families from occlusion/families.py) and `OcclusionMix` picks which to draw."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .families import draw_family, family_styles, is_kind, occluder_kinds, unknown_kind  # noqa: F401
from .kinds import ALL_TYPES, FAMILIES, OCCLUSION_TYPES, PAPER_MIX  # noqa: F401  (re-exported)
from .paper import (  # noqa: F401  (re-exported: the occluder vocabulary callers and tests use)
    BLOCK_COLOURS,
    BOUNDS,
    CHIN,
    FACE_OVAL,
    IRIS,
    MASK_STYLES,
    MOUTH,
    NOSE_TIP,
    PARTS,
    SUNGLASS_STYLES,
    FaceFrame,
    Occluded,
    OcclusionError,
    _draw_block,
    _draw_mask,
    _draw_sunglasses,
    add_clear_glasses,
)

# ---- public API ---------------------------------------------------------------------------------------------------


def styles_for(kind: str) -> list[str]:
    """The style names of an occlusion type (a combination's are 'styleA+styleB')."""
    if kind not in OCCLUSION_TYPES:
        return family_styles(kind)
    if kind == "sunglasses":
        return list(SUNGLASS_STYLES)
    if kind == "mask":
        return list(MASK_STYLES)
    if kind == "sunglasses+mask":
        return [f"{a}+{b}" for a in SUNGLASS_STYLES for b in MASK_STYLES]
    if kind in ("eye_block", "mouth_block", "eye+mouth_block"):
        return list(BLOCK_COLOURS)
    raise unknown_kind(kind)


def occlude(img: np.ndarray, landmarks: np.ndarray, kind: str, rng: np.random.Generator, style: str | None = None,
            jitter: bool = True) -> Occluded:
    """Draw one occlusion of `kind` (any of `occluder_kinds()`, or a combination 'a+b' of registered families) on
    an RGB uint8 image whose FaceMesh landmarks (478, 2) are in its pixels; kinds outside the paper's six are drawn
    by the drawers registered in `registry.OCCLUDERS` (occlusion/families.py and plugins)."""
    if kind not in OCCLUSION_TYPES:
        return draw_family(img, landmarks, kind, rng, style, jitter)
    styles = styles_for(kind)
    if style is None:
        style = styles[rng.integers(len(styles))] if kind != "sunglasses+mask" else (
            f"{rng.choice(list(SUNGLASS_STYLES))}+{rng.choice(list(MASK_STYLES))}")
    elif style not in styles:
        raise ValueError(f"unknown style {style!r} for {kind}")
    fr = FaceFrame(landmarks, img.shape[:2], rng if jitter else None)
    out, parts, alphas = img.astype(np.float32), {}, []
    if kind in ("sunglasses", "sunglasses+mask"):
        out, a, parts["eyes"] = _draw_sunglasses(out, fr, rng, style.split("+")[0], BOUNDS["eyes"])
        alphas.append(a)
    if kind in ("mask", "sunglasses+mask"):
        out, a, parts["mouth"] = _draw_mask(out, fr, rng, style.split("+")[-1], BOUNDS["mouth"])
        alphas.append(a)
    if kind in ("eye_block", "eye+mouth_block"):
        out, a, parts["eyes"] = _draw_block(out, fr, rng, "eyes", style, BOUNDS["eyes"])
        alphas.append(a)
    if kind in ("mouth_block", "eye+mouth_block"):
        out, a, parts["mouth"] = _draw_block(out, fr, rng, "mouth", style, BOUNDS["mouth"])
        alphas.append(a)
    alpha = np.maximum.reduce(alphas)
    return Occluded(np.clip(out + 0.5, 0, 255).astype(np.uint8), kind, style, round(fr.covered(alpha), 4),
                    {k: round(v, 4) for k, v in parts.items()}, alpha)


@dataclass
class OcclusionMix:
    """Which occlusion to draw: per-type probabilities (default Table 7) and the share of images left clean."""

    mix: dict[str, float] = field(default_factory=lambda: dict(PAPER_MIX))
    clean_fraction: float = 0.0
    clear_glasses: float = 0.0  # share of the clean draws given see-through glasses (detector hard negatives)

    def __post_init__(self) -> None:
        bad = [k for k in self.mix if not is_kind(k)]
        if bad:
            raise unknown_kind(*bad)
        if any(p < 0 for p in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError("occlusion mix needs non-negative probabilities with a positive sum")
        if not 0 <= self.clean_fraction <= 1:
            raise ValueError(f"clean_fraction must be in [0, 1], got {self.clean_fraction}")
        if not 0 <= self.clear_glasses <= 1:
            raise ValueError(f"clear_glasses must be in [0, 1], got {self.clear_glasses}")
        self.types = list(self.mix)
        p = np.array([self.mix[k] for k in self.types], np.float64)
        self.p = p / p.sum()

    def sample(self, rng: np.random.Generator) -> str | None:
        if rng.random() < self.clean_fraction:
            return None
        return self.types[rng.choice(len(self.types), p=self.p)]
