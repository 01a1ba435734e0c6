"""Occluder families beyond the paper's six types: fabric masks, scarves, hands, caps, hair, held objects, eye
patches, face shields, thick-rimmed glasses, natural-texture patches, and combinations of them; and, for training
only, random shapes that look like none of them (`random_shape`, not one of `kinds.FAMILIES`).

Every drawer works in the face frame of `paper.FaceFrame` (origin between the eyes, unit = inter-iris distance) and
returns (image, coverage alpha, fraction of the face oval covered). Real-world sizes are kept where the object has
one (a hand, a phone) and the covered share is reached by sliding it into place; the others are sized by bisection.
`synth.occlude` dispatches here for every kind outside the paper's six.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from .kinds import ALL_TYPES, FAMILIES, OCCLUSION_TYPES
from .paper import (
    BOUNDS,
    SS,
    SUNGLASS_STYLES,
    FaceFrame,
    Occluded,
    _bisect,
    _composite,
    _draw_sunglasses,
    _lens_polys,
    _luma_shading,
    _mask_polys,
    _noise,
    _size_search,
    _superellipse,
)

Drawer = Callable[[np.ndarray, FaceFrame, np.random.Generator, str], tuple[np.ndarray, np.ndarray, float]]

# share of the face oval each family covers (plausible for the real thing)
FAMILY_BOUNDS = {"fabric_mask": (0.28, 0.42), "scarf": (0.30, 0.55), "hand": (0.15, 0.42), "cap": (0.14, 0.38),
                 "hair": (0.10, 0.35), "object": (0.06, 0.38), "eye_patch": (0.03, 0.14),
                 "face_shield": (0.03, 0.45), "thick_glasses": (0.12, 0.20), "texture_patch": (0.10, 0.35)}


# ---- shared helpers -------------------------------------------------------------------------------------------------


def _vary(rgb, rng: np.random.Generator, amount: float = 8) -> np.ndarray:
    """A colour varied mostly in brightness (dark colours keep their hue)."""
    return np.clip(np.asarray(rgb, np.float32) * rng.uniform(0.9, 1.1) + rng.normal(0, amount * 0.35, 3), 0, 255)


def _soft(a: np.ndarray, fr: FaceFrame, sigma: float = 0.008) -> np.ndarray:
    """Soften an alpha edge by a Gaussian of `sigma` face units."""
    return cv2.GaussianBlur(a, (0, 0), max(0.5, sigma * fr.scale))


def _shadow(out: np.ndarray, fr: FaceFrame, alpha: np.ndarray, offset=(0.03, 0.06), blur: float = 0.05,
            strength: float = 0.4) -> np.ndarray:
    """Darken the face under a soft copy of `alpha` shifted by `offset` (face units): the occluder's cast shadow."""
    d = fr.R @ np.asarray(offset, np.float64)
    sh = cv2.warpAffine(alpha, np.float32([[1, 0, d[0]], [0, 1, d[1]]]), alpha.shape[::-1])
    sh = cv2.GaussianBlur(sh, (0, 0), max(0.5, blur * fr.scale))
    return out * (1 - strength * sh * (1 - alpha))[..., None]


def _roundness(alpha: np.ndarray, fr: FaceFrame, depth: float) -> np.ndarray:
    """0 at the silhouette rising to 1 at `depth` face units inside: shading of a rounded body (fingers, cups)."""
    d = cv2.distanceTransform((alpha > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    return np.clip(d / max(1.0, depth * fr.scale), 0, 1) ** 0.6


def _capsule(p0, p1, r0: float, r1: float, m: int = 10) -> np.ndarray:
    """Tapered stadium from p0 (radius r0) to p1 (radius r1)."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    ang = np.arctan2(*(p1 - p0)[::-1])
    t1, t0 = np.linspace(ang - np.pi / 2, ang + np.pi / 2, m), np.linspace(ang + np.pi / 2, ang + 1.5 * np.pi, m)
    return np.vstack([p1 + r1 * np.stack([np.cos(t1), np.sin(t1)], 1), p0 + r0 * np.stack([np.cos(t0), np.sin(t0)], 1)])


def _place(p: np.ndarray, s: float, theta: float, t) -> np.ndarray:
    """Local shape → face frame: scale s, rotate theta, translate t."""
    c, si = np.cos(theta), np.sin(theta)
    return (np.asarray(p) * s) @ np.array([[c, si], [-si, c]]) + np.asarray(t, np.float64)


def _folds(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, n: int, amp: float, freq=(6, 12),
           bend: float = 0.3) -> np.ndarray:
    """Multiplicative fold shading: a few curved soft ridges."""
    f = sum(rng.uniform(0.5, 1) * np.sin(rng.uniform(*freq) * (v + rng.uniform(-bend, bend) * u ** 2
                                                                + rng.uniform(-0.3, 0.3) * u) + rng.uniform(0, 6))
            for _ in range(n))
    return (1 + amp * np.tanh(f))[..., None]


def _skin_colour(img: np.ndarray, fr: FaceFrame) -> np.ndarray:
    """Median colour of the cheeks (used by the hand's 'match' tone)."""
    pts = fr.to_px(np.array([[-0.55, 0.55], [0.55, 0.55], [0.0, 0.35]])).astype(int)
    h, w = img.shape[:2]
    vals = [img[np.clip(y - 2, 0, h - 1):y + 3, np.clip(x - 2, 0, w - 1):x + 3].reshape(-1, 3) for x, y in pts]
    vals = np.vstack([v for v in vals if len(v)]) if any(len(v) for v in vals) else np.full((1, 3), 190.0)
    return np.median(vals, 0).astype(np.float32)


def _union(fr: FaceFrame, polys: list[np.ndarray]) -> np.ndarray:
    """Coverage of the union of possibly overlapping polygons (fillPoly alone would cancel the overlaps)."""
    return np.maximum.reduce([fr.fill([p]) for p in polys])


def _search(render: Callable[[float], np.ndarray], fr: FaceFrame, target: float, lo: float, hi: float,
            bounds: tuple[float, float], what: str) -> tuple[np.ndarray, float, float]:
    """`paper._bisect` with a coarser stop (the families' targets are drawn at random anyway): fewer renders."""
    best, lo, hi = _size_search(render, fr, target, lo, hi, 10, 0.01)
    if not bounds[0] <= best[1] <= bounds[1]:
        return _bisect(render, fr, target, lo, hi, bounds, what)  # finer search; raises if out of reach
    return best


def _target(rng: np.random.Generator, b: tuple[float, float]) -> float:
    return rng.uniform(b[0] + 0.01, b[1] - 0.01)


# ---- fabric -----------------------------------------------------------------------------------------------------------

ACCENTS = [(240, 238, 230), (30, 30, 35), (200, 40, 50), (240, 190, 40), (40, 120, 70), (60, 90, 170), (230, 120, 160)]


def _fabric(fr: FaceFrame, rng: np.random.Generator, base, pattern: str, accent=None) -> np.ndarray:
    """Fabric colour map (H, W, 3) in face-frame coordinates: knit, stripes, dots, floral, logos, plaid, camo, denim,
    paisley, check, plain; plus a fine weave noise."""
    u, v = fr.grid()
    h, w = fr.shape
    px = fr.scale
    base = _vary(base, rng, 10)
    acc = _vary(accent if accent is not None else ACCENTS[rng.integers(len(ACCENTS))], rng, 12)
    col = np.empty((h, w, 3), np.float32)
    col[:] = base
    if pattern == "knit":
        k = rng.uniform(10, 15)
        rib = np.cos(2 * np.pi * u * k)
        stitch = np.cos(2 * np.pi * (v * k * 1.3 + np.abs((u * k) % 1 - 0.5) * 1.6))
        col *= (0.82 + 0.12 * rib + 0.08 * stitch)[..., None]
    elif pattern == "stripes":
        ang = rng.choice([0.0, np.pi / 2, np.pi / 4, -np.pi / 4]) + rng.normal(0, 0.05)
        band = ((u * np.cos(ang) + v * np.sin(ang)) * rng.uniform(3, 7) + rng.uniform()) % 1 < rng.uniform(0.3, 0.55)
        col = np.where(band[..., None], acc, col)
    elif pattern == "dots":
        f, ph = rng.uniform(4, 8), rng.uniform(0, 1, 2)
        d = np.hypot((u * f + ph[0]) % 1 - 0.5, (v * f + ph[1] + 0.5 * np.floor(u * f + ph[0])) % 1 - 0.5)
        col = np.where((d < rng.uniform(0.14, 0.24))[..., None], acc, col)
    elif pattern in ("floral", "paisley", "camo"):
        big = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), px * rng.uniform(0.04, 0.07))
        big /= big.std() + 1e-6
        small = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), px * 0.02)
        small /= small.std() + 1e-6
        if pattern == "camo":
            for thr, c in ((0.5, (70, 80, 50)), (-0.6, (130, 115, 80)), (1.3, (40, 38, 30))):
                col = np.where(((big > thr) if thr > 0 else (big < thr))[..., None], _vary(c, rng, 10), col)
        else:
            col = np.where((big > 1.0)[..., None], acc, col)
            ring = np.abs(big - 1.0) < 0.12
            col = np.where(ring[..., None], _vary((245, 240, 225) if pattern == "paisley" else (40, 110, 60),
                                                            rng, 10), col)
            col = np.where((small > 1.6)[..., None], _vary(ACCENTS[rng.integers(len(ACCENTS))], rng, 10), col)
    elif pattern == "logo":
        for _ in range(rng.integers(7, 13)):
            c, r = rng.uniform([-1.0, 0.4], [1.0, 1.8]), rng.uniform(0.07, 0.16)
            shape = _superellipse(c[0], c[1], r * rng.uniform(0.8, 1.6), r, rng.choice([0.8, 2.0, 4.0]), 40)
            a = fr.fill([shape])
            colour = _vary(ACCENTS[rng.integers(len(ACCENTS))], rng, 10)
            col = _composite(col, colour, a)
            col = _composite(col, base, fr.fill([_superellipse(c[0], c[1], r * 0.45, r * 0.2, 4, 24)]) * 0.9)
    elif pattern in ("plaid", "check"):
        f = rng.uniform(3, 5) if pattern == "plaid" else rng.uniform(7, 10)
        a, b = np.cos(2 * np.pi * u * f) > 0.5, np.cos(2 * np.pi * v * f) > 0.5
        if pattern == "plaid":
            col *= (1 - 0.28 * a - 0.28 * b)[..., None]
            thin = (np.abs(np.cos(2 * np.pi * u * f * 2)) > 0.97) | (np.abs(np.cos(2 * np.pi * v * f * 2)) > 0.97)
            col = np.where(thin[..., None], acc, col)
        else:
            col = np.where((a ^ b)[..., None], acc, col)
    elif pattern == "denim":
        col *= (0.88 + 0.12 * np.cos(2 * np.pi * (u + 0.6 * v) * 38))[..., None]
        col *= _noise((h, w), rng, max(0.5, px * 0.03), 0.12)
    return col * _noise((h, w), rng, max(0.5, px * 0.005), 0.05)


# name: (base colour, pattern, accent or None)
FABRIC_MASK_STYLES = {
    "knit_grey": ((150, 150, 155), "knit", None), "knit_burgundy": ((120, 32, 45), "knit", None),
    "cotton_stripes_navy": ((30, 40, 90), "stripes", (235, 235, 230)),
    "cotton_dots_red": ((180, 30, 40), "dots", (245, 245, 240)), "printed_floral_cream": ((235, 225, 205), "floral", None),
    "printed_floral_black": ((25, 25, 30), "floral", (220, 80, 120)),
    "printed_logos_white": ((238, 238, 238), "logo", None), "printed_logos_black": ((30, 30, 34), "logo", None),
    "denim": ((60, 85, 130), "denim", None), "plaid_green": ((40, 90, 60), "plaid", (230, 200, 60)),
    "camo": ((95, 100, 70), "camo", None), "plain_pink": ((228, 165, 182), "plain", None),
}


def _draw_fabric_mask(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str):
    """A cloth mask over nose, mouth and chin (top edge bisected), patterned fabric, folds, ear loops."""
    base, pattern, accent = FABRIC_MASK_STYLES[style]
    shp = {"width": rng.uniform(0.28, 0.42)}
    chin = float(fr.pt["chin"][1])
    outline = "cloth" if rng.random() < 0.5 else "n95"  # a flatter or a more pointed nose bridge

    def render(t: float) -> np.ndarray:
        oval, below = _mask_polys(fr, outline, chin * (1 - t), shp)
        return fr.fill([oval]) * fr.fill([below])

    alpha, f, t = _search(render, fr, _target(rng, FAMILY_BOUNDS["fabric_mask"]), 0.0, 1.0,
                          FAMILY_BOUNDS["fabric_mask"], "fabric mask")
    top = chin * (1 - t)
    u, v = fr.grid()
    cx = float(fr.pt["nose"][0])
    span = max(0.3, float(np.abs(fr.oval[:, 0] - cx).max()))
    col = _fabric(fr, rng, base, pattern, accent)
    col *= (1 - 0.3 * np.clip(np.abs(u - cx) / span, 0, 1.3) ** 2)[..., None]  # turns away toward the cheeks
    if pattern != "knit":  # horizontal pleats / folds
        col *= _folds(u, (v - top) / max(0.2, chin - top), rng, 2, 0.12, (9, 16), 0.4)
    col *= (1 + 0.15 * np.exp(-((u - cx) / 0.25) ** 2) * np.exp(-((v - top - 0.15) / 0.2) ** 2))[..., None]  # nose
    col = np.clip(col * _luma_shading(img, 0.5), 0, 255)
    alpha = _soft(alpha, fr)
    out = _shadow(img, fr, alpha, (0.0, 0.07), 0.05, 0.45)
    out = _composite(out, col, alpha)
    left, right = fr.oval[28], fr.oval[8]  # ear loops
    loop = [np.array([[e[0] - 0.05 * sd, top + 0.12], [e[0] + 0.05 * sd, (top + 0.12 + e[1]) / 2], e + [0.03 * sd, -0.04]])
            for e, sd in ((left, -1), (right, 1))]  # from the mask's corner, bulging out, to behind the ear
    la = fr.stroke(loop, 0.022, closed=False)
    out = _composite(out, _vary(base, rng) * 0.85, la)
    return out, np.maximum(alpha, la), f


# ---- scarves and bandanas -----------------------------------------------------------------------------------------

# name: (base, pattern, accent, shape)
SCARF_STYLES = {
    "wool_knit_red": ((150, 30, 35), "knit", None, "wrap"), "wool_knit_grey": ((120, 120, 125), "knit", None, "wrap"),
    "wool_knit_cream": ((225, 215, 195), "knit", None, "wrap"), "tartan_red": ((160, 30, 35), "plaid", (30, 60, 40), "wrap"),
    "tartan_navy": ((30, 40, 80), "plaid", (200, 170, 60), "wrap"), "striped_wool": ((40, 40, 45), "stripes", None, "wrap"),
    "shemagh_check": ((235, 232, 225), "check", (30, 30, 30), "wrap"),
    "bandana_paisley_red": ((170, 25, 30), "paisley", (245, 240, 230), "bandana"),
    "bandana_paisley_navy": ((25, 35, 80), "paisley", (245, 240, 230), "bandana"),
    "bandana_black": ((25, 25, 28), "paisley", (230, 230, 230), "bandana"),
    "silk_teal": ((30, 120, 125), "plain", None, "wrap"), "camo_snood": ((95, 100, 70), "camo", None, "wrap"),
}


def _scarf_polys(fr: FaceFrame, top: float, shape: str, geo: dict) -> list[np.ndarray]:
    cx = float(fr.pt["nose"][0])
    half = float(np.abs(fr.oval[:, 0] - cx).max()) + geo["extra"]
    u = np.linspace(cx - half, cx + half, 48)
    edge = top - geo["peak"] * np.exp(-((u - cx) / 0.35) ** 2) + geo["sag"] * ((u - cx) / half) ** 2
    bottom = float(fr.pt["chin"][1]) + 2.5
    if shape == "bandana":  # a triangle hanging to a point below the chin
        return [np.vstack([np.stack([u, edge], 1), [[cx + half * 0.9, top + 1.0], [cx + geo["tip"], bottom],
                                                    [cx - half * 0.9, top + 1.0]]])]
    side = np.linspace(top, bottom, 12)
    bulge = geo["bulge"] * np.sin(np.linspace(0, np.pi, 12))
    right = np.stack([cx + half + bulge, side], 1)
    left = np.stack([cx - half - bulge, side], 1)[::-1]
    return [np.vstack([np.stack([u, edge], 1), right, left])]


def _draw_scarf(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str):
    """A scarf or bandana over the lower face, wider than the face; its top edge (bisected) runs under the eyes."""
    base, pattern, accent, shape = SCARF_STYLES[style]
    geo = {"extra": rng.uniform(0.25, 0.6), "peak": rng.uniform(0.05, 0.15), "sag": rng.uniform(0.0, 0.25),
           "bulge": rng.uniform(0.05, 0.25), "tip": rng.uniform(-0.4, 0.4)}
    chin = float(fr.pt["chin"][1])
    bnd = FAMILY_BOUNDS["scarf"]
    alpha, f, top = _search(lambda t: fr.fill(_scarf_polys(fr, t, shape, geo)), fr, _target(rng, bnd), chin + 0.2,
                            -0.3, bnd, "scarf")
    u, v = fr.grid()
    col = _fabric(fr, rng, base, pattern, accent)
    thick = pattern in ("knit", "plaid", "check", "camo")
    col *= _folds(u * 1.5, v - top, rng, 3, 0.22 if thick else 0.3, (5, 10), 0.6)  # wraps and drapes
    col *= (1 - 0.35 * np.clip((v - top) / 0.12, 0, 1) * np.exp(-((v - top - 0.12) / 0.06) ** 2))[..., None]  # roll
    half = float(np.abs(fr.oval[:, 0]).max()) + geo["extra"]
    col *= (1 - 0.35 * np.clip(np.abs(u) / half, 0, 1) ** 3)[..., None]
    if shape == "wrap" and rng.random() < 0.7:  # a knot / tucked end at one side
        side = rng.choice([-1, 1])
        kc = np.array([side * rng.uniform(0.5, 0.9), chin + rng.uniform(-0.1, 0.3)])
        knot = fr.fill([_superellipse(kc[0], kc[1], 0.22, 0.18, 2.2, 32)])
        tail = fr.fill([np.array([kc + [-0.12, 0.05], kc + [0.12, 0.05], kc + [0.2 * side + 0.1, 1.2],
                                  kc + [0.2 * side - 0.15, 1.25]])])
        ka = np.maximum(knot, tail)
        col = np.where((ka > 0.5)[..., None], col * (0.7 + 0.4 * _roundness(ka, fr, 0.12))[..., None], col)
        col = _shadow(col, fr, ka, (0.0, 0.05), 0.04, 0.45)  # the knot shades the fabric under it
    col = np.clip(col * _luma_shading(img, 0.4), 0, 255)
    alpha = _soft(alpha, fr, 0.01)
    out = _shadow(img, fr, alpha, (0.0, -0.04), 0.06, 0.35)  # the raised fabric shades the face just above it
    return _composite(out, col, alpha), alpha, f


# ---- hands ------------------------------------------------------------------------------------------------------------

SKIN_TONES = {"very_light": (246, 214, 190), "light": (232, 188, 156), "medium": (205, 155, 115),
              "tan": (180, 125, 88), "brown": (135, 85, 56), "dark": (88, 56, 40), "match": None}
HAND_POSES = ("mouth", "eyes", "cheek")
HAND_STYLES = [f"{p}_{t}" for p in HAND_POSES for t in SKIN_TONES]


def _hand_local(rng: np.random.Generator, mirror: bool) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(hand polygons, finger crease polylines, nails) in a local frame: palm centre (-0.5, 0), fingers along +x."""
    spread = rng.uniform(0.0, 0.07)
    ys, rs, ls = (-0.37, -0.125, 0.125, 0.36), (0.105, 0.112, 0.105, 0.09), (0.82, 0.95, 0.88, 0.66)
    ls = np.array(ls) * rng.uniform(0.92, 1.08)
    polys, creases, nails = [], [], []
    for i, (y, r, ln) in enumerate(zip(ys, rs, ls)):
        a = spread * (i - 1.5) + rng.normal(0, 0.02)
        p0, d = np.array([-0.12, y]), np.array([np.cos(a), np.sin(a)])
        polys.append(_capsule(p0, p0 + d * ln, r, r * 0.82))
        n = np.array([-d[1], d[0]])
        creases += [np.array([p0 + d * ln * k - n * r * 0.7, p0 + d * ln * k + n * r * 0.7]) for k in (0.45, 0.72)]
        nails.append(_capsule(p0 + d * (ln - r * 0.9), p0 + d * (ln - r * 0.1), r * 0.55, r * 0.5, 6))
    polys.append(_superellipse(-0.5, 0.0, 0.56, 0.5, 3.0, 40))  # palm
    polys.append(_capsule([-0.72, -0.36], [-0.72 + 0.62 * np.cos(-0.75), -0.36 + 0.62 * np.sin(-0.75)], 0.17, 0.12))
    polys.append(np.array([[-0.8, -0.4], [-1.8, -0.45], [-1.8, 0.45], [-0.8, 0.4]]))  # wrist and forearm
    flip = np.array([1, -1]) if mirror else np.array([1, 1])
    return [p * flip for p in polys], [c * flip for c in creases], [q * flip for q in nails]


def _draw_hand(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str):
    """A hand (back of the hand toward the camera) slid over the mouth, the eyes or a cheek from one side."""
    pose, tone = style.split("_", 1)
    side = float(rng.choice([-1.0, 1.0]))  # the side the hand comes from
    s = rng.uniform(1.15, 1.4)  # a palm is ~1.3 inter-iris distances wide
    mouth = (fr.pt["mouth_u"] + fr.pt["mouth_l"]) / 2
    a = rng.uniform(0.15, 0.55) if pose == "mouth" else rng.uniform(-0.1, 0.3)
    theta = (-a if side > 0 else np.pi + a) if pose != "cheek" else -np.pi / 2 - side * rng.uniform(0.1, 0.4)
    anchor, bnd = {"mouth": (mouth + [-side * 0.1, 0.05], (0.22, 0.42)), "eyes": (np.array([-side * 0.1, -0.05]), (0.22, 0.42)),
                   "cheek": (np.array([side * 0.95, 1.15]), (0.15, 0.32))}[pose]
    polys, creases, nails = _hand_local(rng, mirror=(side > 0) if pose != "cheek" else (side < 0))
    direction = np.array([np.cos(theta), np.sin(theta)])

    def tf(p: np.ndarray, d: float) -> np.ndarray:  # d: 0 = palm off the face, 1 = palm centre on the anchor
        return _place(p - [-0.5, 0.0], s, theta, anchor - direction * s * 2.2 * (1 - d))

    alpha, f, d = _search(lambda d: _union(fr, [tf(p, d) for p in polys]), fr, _target(rng, bnd), 0.0, 1.2, bnd,
                          f"hand over the {pose}")
    skin = _skin_colour(img, fr) if SKIN_TONES[tone] is None else _vary(SKIN_TONES[tone], rng, 3)
    skin = np.clip(skin * rng.uniform(0.92, 1.08), 0, 255)
    col = skin * (0.62 + 0.42 * _roundness(alpha, fr, 0.09))[..., None]
    col = col * _noise(fr.shape, rng, max(0.5, fr.scale * 0.05), 0.03)
    col = col * (1 - 0.15 * _soft(fr.stroke([tf(p, d) for p in creases], 0.008, closed=False), fr))[..., None]
    col = _composite(col, np.clip(col * 1.12 + [18, 8, 10], 0, 255), fr.fill([tf(q, d) for q in nails]) * 0.8)
    col = np.clip(col * _luma_shading(img, 0.4), 0, 255)
    alpha = _soft(alpha, fr, 0.006)
    out = _shadow(img, fr, alpha, (0.05 * side, 0.07), 0.06, 0.5)
    return _composite(out, col, alpha), alpha, f


# ---- caps and hats ----------------------------------------------------------------------------------------------------

# name: (crown colour, kind, pattern)
CAP_STYLES = {
    "baseball_navy": ((30, 40, 75), "baseball", "plain"), "baseball_red": ((170, 30, 35), "baseball", "plain"),
    "baseball_black_logo": ((25, 25, 28), "baseball", "logo"), "baseball_white": ((232, 232, 228), "baseball", "plain"),
    "trucker_khaki": ((180, 160, 120), "baseball", "mesh"), "bucket_khaki": ((175, 155, 110), "bucket", "plain"),
    "bucket_denim": ((70, 95, 140), "bucket", "denim"), "fedora_grey": ((90, 90, 95), "fedora", "plain"),
    "fedora_brown": ((95, 65, 40), "fedora", "plain"), "straw_sunhat": ((215, 185, 120), "fedora", "straw"),
    "beanie_knit_red": ((160, 35, 40), "beanie", "knit"), "beanie_knit_grey": ((110, 110, 115), "beanie", "knit"),
}


def _cap_polys(fr: FaceFrame, kind: str, b: float, geo: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """(crown, brim) outlines for a brim/lower edge at height b (face frame v)."""
    half = float(np.abs(fr.oval[:, 0]).max()) * geo["w"]
    t = np.linspace(np.pi, 2 * np.pi, 40)
    crown = np.vstack([np.stack([half * np.cos(t), b + geo["h"] * np.sin(t) * (1.0 if kind != "fedora" else 0.8)], 1),
                       [[half, b + 0.02], [-half, b + 0.02]]])
    if kind == "beanie":
        return crown, None
    u = np.linspace(-1, 1, 40)
    if kind == "baseball":  # the visor seen from the front: a band bulging down in the middle
        wb, dep = half * 0.92, geo["brim"]
        top, low = b - 0.04 + 0 * u, b + dep * np.sqrt(1 - u ** 2) * 0.9 + 0.03
    elif kind == "bucket":
        wb, dep = half * 1.25, geo["brim"] * 0.9
        top, low = b - 0.12 + 0.1 * np.abs(u), b + dep * (0.8 + 0.2 * u ** 2)
    else:  # fedora / sun hat: a wide flat brim
        wb, dep = half * geo["wide"], geo["brim"] * 0.7
        top, low = b - 0.1 - 0.15 * (1 - u ** 2), b + dep * (1 - u ** 2) ** 0.5 * 0.7 + 0.02
    brim = np.vstack([np.stack([u * wb, top], 1), np.stack([u[::-1] * wb, low[::-1]], 1)])
    return crown, brim


def _draw_cap(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str):
    """A cap or hat whose brim height is bisected; the brim casts a shadow band over the brows and eyes."""
    colour, kind, pattern = CAP_STYLES[style]
    geo = {"w": rng.uniform(1.02, 1.12), "h": rng.uniform(1.0, 1.3), "brim": rng.uniform(0.28, 0.42),
           "wide": rng.uniform(1.6, 2.0)}
    bnd = FAMILY_BOUNDS["cap"]

    def render(b: float) -> np.ndarray:
        return _union(fr, [p for p in _cap_polys(fr, kind, b, geo) if p is not None])

    alpha, f, b = _search(render, fr, _target(rng, bnd), -1.4, 0.2, bnd, "cap")
    crown, brim = _cap_polys(fr, kind, b, geo)
    u, v = fr.grid()
    pat = {"plain": "plain", "logo": "plain", "mesh": "plain", "denim": "denim", "straw": "check", "knit": "knit"}[pattern]
    col = _fabric(fr, rng, colour, pat, tuple(np.clip(np.asarray(colour) * 0.8, 0, 255)))
    half = float(np.abs(fr.oval[:, 0]).max()) * geo["w"]
    col *= (1 - 0.35 * np.clip(np.abs(u) / half, 0, 1) ** 2.5)[..., None]  # the dome turns away at the sides
    col *= (1 + 0.18 * np.exp(-((u + 0.3) / 0.4) ** 2 - ((v - b + 0.6) / 0.35) ** 2))[..., None]  # top-left light
    ca = fr.fill([crown])
    if kind in ("baseball", "bucket", "fedora"):
        col *= (1 - 0.3 * fr.stroke([np.array([[0, b - geo["h"]], [0, b]])], 0.012, False)
                - 0.2 * fr.stroke([np.array([[-0.45, b - 0.9 * geo["h"]], [-0.5, b]]),
                                   np.array([[0.45, b - 0.9 * geo["h"]], [0.5, b]])], 0.01, False))[..., None]  # seams
    if pattern == "logo":
        lc = _vary(ACCENTS[rng.integers(len(ACCENTS))], rng, 10)
        col = _composite(col, lc, fr.fill([_superellipse(0, b - 0.45, 0.3, 0.16, rng.choice([2.0, 4.0]), 32)]))
    if pattern == "mesh":  # trucker: the side panels are mesh
        holes = (np.cos(2 * np.pi * u * 22) * np.cos(2 * np.pi * v * 22) > 0.3) & (np.abs(u) > 0.45)
        col = np.where(holes[..., None], col * 0.55, col)
    if kind == "beanie":  # folded cuff
        cuff = (v > b - 0.35) & (v < b + 0.05)
        col = np.where(cuff[..., None], col * (0.9 + 0.1 * np.cos(2 * np.pi * u * 9))[..., None], col)
        col *= (1 - 0.3 * np.exp(-((v - b + 0.36) / 0.03) ** 2))[..., None]
    if brim is not None:
        ba = fr.fill([brim])
        under = (0.55 + 0.25 * np.clip((v - b) / geo["brim"], 0, 1))  # the brim's underside is in shade
        bcol = col * under[..., None] if kind != "baseball" or rng.random() < 0.6 else (
            np.broadcast_to(_vary((30, 30, 30), rng, 8), col.shape) * under[..., None])
        bcol = bcol * (1 - 0.4 * fr.stroke([brim], 0.012))[..., None]  # stitched edge
        col = np.where((ba > ca)[..., None], bcol, col)
        low_edge = b + (geo["brim"] * 0.9 if kind != "fedora" else geo["brim"] * 0.5)
    else:
        low_edge = b + 0.05
    col = np.clip(col * _luma_shading(img, 0.35), 0, 255)
    alpha = _soft(alpha, fr, 0.006)
    # the brim's shadow: a band over the brows and eyes, fading downward
    depth = rng.uniform(0.45, 0.8) if brim is not None else 0.12
    band = np.clip(1 - (v - low_edge) / depth, 0, 1) * (v > b - 0.2) * (np.abs(u) < half * 1.1)
    band = cv2.GaussianBlur(band.astype(np.float32), (0, 0), max(0.5, 0.05 * fr.scale))
    out = img * (1 - rng.uniform(0.45, 0.7) * band ** 0.7 * (1 - alpha))[..., None]
    return _composite(out, col, alpha), alpha, f


# ---- hair -------------------------------------------------------------------------------------------------------------

HAIR_COLOURS = {"black": (22, 20, 20), "dark_brown": (55, 38, 28), "brown": (105, 72, 45), "auburn": (130, 58, 30),
                "blond": (205, 170, 115), "platinum": (228, 218, 195), "grey": (165, 162, 158), "pink": (215, 95, 150),
                "blue": (55, 95, 185)}
HAIR_CUTS = ("blunt", "swept", "wavy", "curtain")
HAIR_STYLES = [f"{c}_{k}" for c in HAIR_CUTS for k in HAIR_COLOURS]


def _hair_locks(fr: FaceFrame, rng: np.random.Generator, cut: str) -> list[dict]:
    """Locks of hair (a shared sweep, end offset and tone) each made of several strands rooted at the hairline."""
    half = float(np.abs(fr.oval[:, 0]).max()) * 1.05
    side = rng.choice([-1, 1])
    part = side * rng.uniform(0.1, 0.4)
    locks = []
    for u0 in np.sort(rng.uniform(-half, half, int(rng.integers(22, 34)))):
        if cut == "curtain":  # parted, falling to both sides, longer toward the temples
            du, dv = np.sign(u0 - part) * rng.uniform(0.15, 0.45), 0.3 * abs(u0) / half - 0.2
        elif cut == "swept":  # swept to one side, the ends rising toward it
            du, dv = side * rng.uniform(0.35, 0.8), -0.25 * side * u0 / half
        else:
            du, dv = rng.normal(0, 0.06), 0.0
        n = int(rng.integers(14, 26))
        locks.append({"u": u0 + rng.normal(0, 0.06, n), "root": rng.uniform(-1.5, -1.0, n),
                      "du": du + rng.normal(0, 0.04, n),
                      "dv": dv + rng.normal(0, 0.03 if cut == "blunt" else 0.08) - np.abs(rng.normal(0, 0.05, n)),
                      "tone": rng.uniform(0.75, 1.25)})
    return locks


def _draw_hair(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str):
    """A fringe: locks of strands from the hairline down to a length L (bisected), see-through between the locks."""
    cut, colour = style.split("_", 1)
    locks = _hair_locks(fr, rng, cut)
    layers = 4
    wave = rng.uniform(0.03, 0.07) if cut == "wavy" else rng.uniform(0.0, 0.01)
    freq, width = rng.uniform(8, 13), rng.uniform(0.008, 0.013)
    ops = rng.uniform(0.55, 0.9, layers)
    t = np.linspace(0, 1, 12)[None, :, None]

    u0, v0, du, dv, layer = (np.concatenate([lk[k] if k != "layer" else np.full(len(lk["u"]), i % layers)
                                             for i, lk in enumerate(locks)]) for k in ("u", "root", "du", "dv", "layer"))

    def layer_alphas(L: float) -> list[np.ndarray]:
        root, end = np.stack([u0, v0], 1), np.stack([u0 + du, L + dv], 1)
        ctrl = np.stack([u0 + du * 0.15, (v0 + end[:, 1]) / 2 - 0.15], 1)
        p = (1 - t) ** 2 * root[:, None] + 2 * (1 - t) * t * ctrl[:, None] + t ** 2 * end[:, None]  # (N, 12, 2)
        p[..., 0] += wave * np.sin(freq * p[..., 1] + u0[:, None] * 3)
        px = np.round(fr.to_px(p.reshape(-1, 2)).reshape(p.shape) * (1 << SS)).astype(np.int32)
        w = max(1, int(round(width * fr.scale)))
        out = []
        for k in range(layers):
            canvas = np.zeros(fr.shape, np.uint8)
            cv2.polylines(canvas, list(px[layer == k]), False, 255, w, lineType=cv2.LINE_AA, shift=SS)
            out.append(canvas.astype(np.float32) / 255.0)
        return out

    u, v = fr.grid()

    def mass(a: np.ndarray, L: float) -> np.ndarray:  # the upper fringe is dense; only its ends are see-through
        dense = np.clip(cv2.GaussianBlur(a, (0, 0), max(0.7, 0.02 * fr.scale)) * 1.8, 0, 1)
        return (0.92 * dense * np.clip((L - 0.12 - v) / 0.3, 0, 1)).astype(np.float32)

    def render(L: float) -> np.ndarray:
        a = np.zeros(fr.shape, np.float32)
        for op, la in zip(ops, layer_alphas(L)):
            a = 1 - (1 - a) * (1 - op * la)
        return np.maximum(a, mass(a, L))

    alpha, f, L = _search(render, fr, _target(rng, FAMILY_BOUNDS["hair"]), -0.9, 1.0, FAMILY_BOUNDS["hair"], "hair")
    base = _vary(HAIR_COLOURS[colour], rng, 4)
    out = _shadow(img, fr, alpha, (0.0, 0.04), 0.06, 0.3)
    sheen = 1 + 0.45 * np.exp(-((v + 0.75 + rng.uniform(-0.15, 0.15) + 0.1 * np.sin(u * 4)) / 0.1) ** 2)
    streaks = cv2.GaussianBlur(rng.normal(0, 1, fr.shape).astype(np.float32), (0, 0),
                               sigmaX=max(0.5, fr.scale * 0.004), sigmaY=max(1.0, fr.scale * 0.08))
    light = sheen * (0.8 + 0.2 * np.clip((v + 1.3) / 0.5, 0, 1)) * (1 + 0.18 * streaks / (streaks.std() + 1e-6))
    col = (base * (light[..., None] * _luma_shading(img, 0.3))).astype(np.float32)
    las = layer_alphas(L)
    strands = 1 - np.prod([1 - op * la for op, la in zip(ops, las)], 0)
    out = _composite(out, np.clip(col * 0.6 + 5, 0, 255), mass(strands.astype(np.float32), L))
    for k, (op, la) in enumerate(zip(ops, las)):  # back layers darker, each its own tone
        tone = (0.7 + 0.12 * k) * rng.uniform(0.85, 1.15)
        out = _composite(out, np.clip(col * tone + 8, 0, 255), op * la)
    return out, alpha, f


# ---- held objects -----------------------------------------------------------------------------------------------------

OBJECT_STYLES = {"phone_black": ("phone", (20, 20, 24)), "phone_case_red": ("phone", (180, 35, 40)),
                 "phone_case_blue": ("phone", (50, 100, 180)), "phone_white": ("phone", (235, 235, 235)),
                 "mug_white": ("mug", (238, 236, 230)), "mug_blue": ("mug", (45, 80, 150)),
                 "mug_yellow": ("mug", (230, 180, 40)), "paper_cup": ("cup", (245, 242, 235)),
                 "mic_black": ("mic", (30, 30, 32)), "mic_silver": ("mic", (170, 172, 178))}


def _object_polys(kind: str, geo: dict) -> dict[str, list[np.ndarray]]:
    """Named parts of an upright object centred at the origin, in face units."""
    w, h = geo["w"], geo["h"]
    if kind == "phone":
        body = _superellipse(0, 0, w / 2, h / 2, 8, 64)
        return {"body": [body], "screen": [_superellipse(0, 0, w / 2 - 0.035, h / 2 - 0.035, 8, 64)],
                "lens": [_superellipse(-w / 2 + 0.1, -h / 2 + 0.1, 0.04, 0.04, 2, 16)]}
    if kind in ("mug", "cup"):
        taper = 0.0 if kind == "mug" else 0.12
        body = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2 - taper, h / 2], [-w / 2 + taper, h / 2]])
        body = np.vstack([body[:2], _superellipse(0, h / 2, w / 2 - taper, 0.08, 2, 24)[:13], body[3:]])
        parts = {"body": [body], "rim": [_superellipse(0, -h / 2, w / 2, 0.09, 2, 32)]}
        if kind == "mug":
            parts["handle"] = [_superellipse(w / 2 + 0.09, 0.0, 0.17, 0.24, 2, 32)]
            parts["hole"] = [_superellipse(w / 2 + 0.09, 0.0, 0.09, 0.15, 2, 32)]
        else:
            parts["lid"] = [np.array([[-w / 2 - 0.03, -h / 2 - 0.05], [w / 2 + 0.03, -h / 2 - 0.05],
                                      [w / 2 + 0.03, -h / 2 + 0.05], [-w / 2 - 0.03, -h / 2 + 0.05]])]
            parts["sleeve"] = [np.array([[-w / 2 + 0.02, -0.1], [w / 2 - 0.02, -0.1], [w / 2 - 0.08, 0.25],
                                         [-w / 2 + 0.08, 0.25]])]
        return parts
    head = _superellipse(0, -h / 2 + w / 2, w / 2, w / 2 * 1.1, 2, 40)  # microphone: ball head and handle
    handle = np.array([[-0.09, -h / 2 + w * 0.9], [0.09, -h / 2 + w * 0.9], [0.06, h / 2 + 0.8], [-0.06, h / 2 + 0.8]])
    return {"body": [head, handle], "head": [head], "ring": [np.array([[-0.11, -h / 2 + w * 0.95],
                                                                         [0.11, -h / 2 + w * 0.95],
                                                                         [0.1, -h / 2 + w * 1.1], [-0.1, -h / 2 + w * 1.1]])]}


def _draw_object(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str):
    """A phone, mug, cup or microphone of real size, raised from below the chin until the share is reached."""
    kind, colour = OBJECT_STYLES[style]
    geo = {"phone": {"w": rng.uniform(0.95, 1.15), "h": rng.uniform(1.9, 2.3)},
           "mug": {"w": rng.uniform(1.0, 1.2), "h": rng.uniform(1.1, 1.3)},
           "cup": {"w": rng.uniform(0.95, 1.15), "h": rng.uniform(1.5, 1.8)},
           "mic": {"w": rng.uniform(0.5, 0.65), "h": rng.uniform(1.6, 2.0)}}[kind]
    bnd = {"phone": (0.12, 0.38), "mug": (0.12, 0.36), "cup": (0.12, 0.36), "mic": (0.06, 0.2)}[kind]
    parts = _object_polys(kind, geo)
    theta = rng.normal(0, 0.2) if kind != "mic" else rng.normal(0, 0.12)
    ux = rng.uniform(-0.35, 0.35)
    mouth_v = float(fr.pt["mouth_u"][1])

    def tf(p: np.ndarray, y: float) -> np.ndarray:  # y: object centre height; it rises from below
        return _place(p, 1.0, theta, [ux, y])

    hi = float(fr.pt["chin"][1]) + geo["h"] / 2 + 0.6
    lo = mouth_v - 0.15 if kind != "mic" else mouth_v + geo["h"] / 2 - geo["w"] * 0.6
    alpha, f, y = _search(lambda y: _union(fr, [tf(p, y) for p in parts["body"] + parts.get("handle", [])]), fr,
                          _target(rng, bnd), hi, lo, bnd, style)
    P = {k: _union(fr, [tf(p, y) for p in ps]) for k, ps in parts.items()}
    u, v = fr.grid()
    lu = (u - ux) * np.cos(theta) + (v - y) * np.sin(theta)  # across the object
    base = _vary(colour, rng, 8)
    col = np.empty(img.shape, np.float32)
    col[:] = base
    if kind == "phone":
        col *= (0.85 + 0.25 * _roundness(P["body"], fr, 0.05))[..., None]
        screen = np.broadcast_to(_vary((18, 20, 26), rng, 4), img.shape).astype(np.float32)
        if rng.random() < 0.5:  # a lit screen
            screen = screen + _vary((140, 160, 200), rng, 40) * _noise(fr.shape, rng, fr.scale * 0.15, 0.4)
        glare = np.exp(-((lu * 0.9 + (v - y) * 0.5 - rng.uniform(-0.3, 0.3)) / 0.12) ** 2) * 0.3
        screen = screen + 255 * glare[..., None]
        if rng.random() < 0.5:  # back side (case + camera) instead of the screen
            col = _composite(col, np.full(3, 15, np.float32), P["lens"])
        else:
            col = _composite(col, screen, P["screen"])
    elif kind in ("mug", "cup"):
        cyl = 0.7 + 0.45 * np.clip(1 - ((lu + 0.15) / (geo["w"] / 2)) ** 2, 0, 1) ** 0.5
        col *= cyl[..., None]
        if kind == "mug":
            col = _composite(col, col * 0.75, P["handle"] * (1 - P["hole"]) * (1 - P["body"]))
            if rng.random() < 0.5:
                col = _composite(col, _vary(ACCENTS[rng.integers(len(ACCENTS))], rng, 10) * cyl[..., None],
                                 fr.fill([tf(_superellipse(0, 0.05, 0.2, 0.15, 2.0, 32), y)]))
        else:
            col = _composite(col, _vary((120, 80, 45), rng, 10) * cyl[..., None], P["sleeve"])
            col = _composite(col, _vary((250, 250, 250), rng, 5) * cyl[..., None], P["lid"])
        col = _composite(col, col * 0.6, P["rim"] * (P["body"] > 0.5))
    else:
        mesh = 0.75 + 0.25 * (np.cos(2 * np.pi * u * 25) * np.cos(2 * np.pi * v * 25) > 0)
        head = np.broadcast_to(_vary((140, 142, 148), rng, 8), img.shape) * mesh[..., None]
        col = _composite(col, head * (0.6 + 0.5 * _roundness(P["head"], fr, 0.2))[..., None], P["head"])
        col = _composite(col, np.full(3, 60, np.float32), P["ring"])
        col *= (0.7 + 0.4 * np.exp(-(lu / 0.05) ** 2))[..., None]
    col = np.clip(col * _luma_shading(img, 0.3), 0, 255)
    alpha = _soft(np.maximum.reduce([P[k] for k in ("body", "handle") if k in P]), fr, 0.004)
    out = _shadow(img, fr, alpha, (0.06, 0.08), 0.08, 0.45)
    return _composite(out, col, alpha), alpha, f


# ---- eye patches --------------------------------------------------------------------------------------------------

EYE_PATCH_STYLES = {"pirate_black": ((20, 20, 22), "leather"), "leather_brown": ((90, 55, 30), "leather"),
                    "cloth_black": ((35, 35, 38), "cloth"), "cotton_white": ((238, 238, 232), "cloth"),
                    "medical_beige": ((225, 200, 170), "adhesive"), "kids_blue": ((60, 110, 200), "cloth")}


def _draw_eye_patch(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str):
    """An eye patch over one eye (size bisected) with a strap over the forehead and to the ear."""
    colour, material = EYE_PATCH_STYLES[style]
    side = rng.choice([-1.0, 1.0])
    c = np.array([side * 0.5, 0.0]) + rng.normal(0, 0.02, 2)
    n = 2.2 if material != "adhesive" else 2.0

    def patch(sz: float) -> np.ndarray:
        p = _superellipse(c[0], c[1], 0.36 * sz, 0.28 * sz, n, 48)
        low = p[:, 1] > c[1]
        p[low, 1] += 0.12 * sz * (1 - np.abs(p[low, 0] - c[0]) / (0.36 * sz))  # rounded-triangle: deeper below
        return p

    head_w = float(np.abs(fr.oval[:, 0]).max()) + 0.3
    strap = [np.array([c + [-side * 0.3, -0.15], [-side * 0.4, -0.8], [-side * head_w, -1.2]]),
             np.array([c + [side * 0.32, -0.02], [side * head_w, -0.25]])] if material != "adhesive" else []
    sa = fr.stroke(strap, 0.035, closed=False) if strap else np.zeros(fr.shape, np.float32)
    bnd = FAMILY_BOUNDS["eye_patch"]
    alpha, f, sz = _search(lambda sz: np.maximum(fr.fill([patch(sz)]), sa), fr, _target(rng, (0.05, 0.11)), 0.5, 1.6,
                           bnd, "eye patch")
    pa = fr.fill([patch(sz)])
    base = _vary(colour, rng, 6)
    col = np.empty(img.shape, np.float32)
    col[:] = base
    col *= (0.75 + 0.35 * _roundness(pa, fr, 0.12))[..., None]
    u, v = fr.grid()
    if material == "leather":  # sheen
        col += 90 * np.exp(-(((u - c[0] + 0.08) / 0.1) ** 2 + ((v - c[1] + 0.08) / 0.07) ** 2))[..., None]
    else:
        col *= _noise(fr.shape, rng, max(0.5, fr.scale * 0.006), 0.08)
    if material == "adhesive":  # padded centre with a border
        col *= (1 - 0.12 * fr.stroke([_superellipse(c[0], c[1], 0.26 * sz, 0.2 * sz, 2, 40)], 0.015))[..., None]
    col = np.where((sa > pa)[..., None], _vary((25, 25, 25) if colour[0] < 200 else (60, 60, 60), rng, 5)
                   * 1.0, col)
    col = np.clip(col * _luma_shading(img, 0.35), 0, 255)
    alpha = _soft(alpha, fr, 0.004)
    out = _shadow(img, fr, alpha, (0.02, 0.05), 0.04, 0.4)
    return _composite(out, col, alpha), alpha, f


# ---- face shields ---------------------------------------------------------------------------------------------------

FACE_SHIELD_STYLES = {"clear_white_band": ((225, 235, 240), 0.07, (235, 235, 235)),
                      "clear_blue_band": ((220, 235, 245), 0.08, (50, 100, 190)),
                      "blue_tint_black_band": ((150, 190, 230), 0.16, (25, 25, 28)),
                      "green_tint_white_band": ((170, 215, 185), 0.14, (240, 240, 240)),
                      "smoke_black_band": ((90, 95, 100), 0.22, (30, 30, 30)),
                      "amber_grey_band": ((230, 190, 110), 0.15, (120, 120, 125))}


def _draw_face_shield(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str):
    """A clear plastic shield over the whole face: light tint, glare streaks, rim, headband (share = opacity)."""
    tint, opacity, band_c = FACE_SHIELD_STYLES[style]
    half = float(np.abs(fr.oval[:, 0]).max()) + rng.uniform(0.2, 0.4)
    top, bottom = float(fr.oval[:, 1].min()) + rng.uniform(0.0, 0.1), float(fr.pt["chin"][1]) + rng.uniform(0.2, 0.5)
    sh = _superellipse(0, (top + bottom) / 2, half, (bottom - top) / 2, 3.5, 96)
    sh[:, 1] = np.maximum(sh[:, 1], top)
    sa = fr.fill([sh])
    u, v = fr.grid()
    glare = np.zeros(fr.shape, np.float32)
    for _ in range(rng.integers(1, 4)):  # curved vertical glare streaks
        x0, k, w = rng.uniform(-0.8 * half, 0.8 * half), rng.uniform(-0.15, 0.15), rng.uniform(0.03, 0.12)
        glare += (rng.uniform(0.2, 0.5) * np.exp(-((u - x0 - k * (v - top) ** 2) / w) ** 2)).astype(np.float32)
    glare *= sa * np.clip(1 - (v - top) / (bottom - top) * rng.uniform(0.2, 0.9), 0, 1)
    rim = fr.stroke([sh], rng.uniform(0.012, 0.025)) * rng.uniform(0.45, 0.8)
    band = fr.fill([np.array([[-half * 0.95, top - 0.28], [half * 0.95, top - 0.28], [half * 0.95, top + 0.04],
                              [-half * 0.95, top + 0.04]])])
    t = _vary(tint, rng, 6)
    out = _composite(img, t, sa * opacity)
    out = out * (1 + 0.05 * sa * np.clip(1 - np.abs(u) / half, 0, 1))[..., None]  # a faint lens-like brightening
    out = _composite(out, np.full(3, 255, np.float32), np.clip(glare, 0, 0.7))
    out = _composite(out, t * 0.7, rim)
    bcol = _vary(band_c, rng, 8) * _noise(fr.shape, rng, max(0.5, fr.scale * 0.01), 0.08)
    bcol = bcol * (0.75 + 0.3 * np.clip((v - top + 0.28) / 0.3, 0, 1))[..., None]
    out = _composite(out, np.clip(bcol, 0, 255), band)
    alpha = np.maximum.reduce([sa * opacity, np.clip(glare, 0, 0.7), rim, band])
    return out, alpha, fr.covered(alpha)


# ---- thick-rimmed glasses -------------------------------------------------------------------------------------------

THICK_GLASSES_STYLES = {"wayfarer_black_clear": ("wayfarer", (18, 18, 20), "clear"),
                        "round_tortoise_clear": ("round", (92, 52, 28), "clear"),
                        "rect_black_blue": ("rect", (22, 22, 25), "blue"),
                        "browline_tortoise_clear": ("browline", (92, 52, 28), "clear"),
                        "cat_red_rose": ("cat", (160, 25, 35), "rose"), "oversize_white_clear": ("oversize", (235, 235, 230), "clear"),
                        "hex_navy_yellow": ("hex", (25, 35, 80), "yellow"), "oval_green_grey": ("oval", (35, 90, 55), "grey"),
                        "rect_clear_crystal": ("rect", (200, 205, 210), "clear")}
LIGHT_TINTS = {"clear": ((215, 220, 225), 0.06), "blue": ((120, 160, 220), 0.18), "rose": ((230, 140, 150), 0.18),
               "yellow": ((235, 210, 90), 0.2), "grey": ((90, 95, 100), 0.3)}


def _draw_thick_glasses(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str):
    """Bold-rimmed see-through glasses (lens size bisected like sunglasses); share = frame + tint opacity."""
    shape, frame_c, tint = THICK_GLASSES_STYLES[style]
    rim = rng.uniform(0.055, 0.085)

    def render(s: float) -> np.ndarray:
        lenses = _lens_polys(shape, s)
        return np.maximum(fr.fill(lenses), fr.stroke(lenses, rim))

    bnd = FAMILY_BOUNDS["thick_glasses"]
    _, _, s = _search(render, fr, _target(rng, bnd), 0.4, 3.0, bnd, "thick glasses")
    lenses = _lens_polys(shape, s)
    la, ra = fr.fill(lenses), fr.stroke(lenses, rim)
    inner = [lenses[0][np.argmax(lenses[0][:, 0])], lenses[1][np.argmin(lenses[1][:, 0])]]
    bridge = fr.stroke([np.array([inner[0] + [0, -0.05 * s], [0, -0.09 * s], inner[1] + [0, -0.05 * s]])],
                       rim * 0.8, closed=False)
    outer = [lenses[0][np.argmin(lenses[0][:, 0])], lenses[1][np.argmax(lenses[1][:, 0])]]
    arms = fr.stroke([np.array([outer[0], fr.oval[28] + [0.02, -0.05]]), np.array([outer[1], fr.oval[8] + [-0.02, -0.05]])],
                     rim * 0.7, closed=False)
    fa = np.maximum.reduce([ra, bridge, arms])
    tcol, op = LIGHT_TINTS[tint]
    u, v = fr.grid()
    out = _shadow(img, fr, fa, (0.02, 0.07), 0.04, 0.35)
    out = _composite(out, _vary(tcol, rng, 6), la * op)
    k, off = rng.uniform(0.5, 1.5), rng.uniform(-0.3, 0.3)
    out = _composite(out, np.full(3, 255, np.float32), la * np.exp(-(((u + k * v) - off) / 0.06) ** 2) * 0.25)
    fcol = np.empty(img.shape, np.float32)
    fcol[:] = _vary(frame_c, rng, 8)
    if frame_c == (92, 52, 28):
        fcol *= _noise(fr.shape, rng, fr.scale * 0.03, 0.35)
    fcol *= (0.8 + 0.35 * np.exp(-((v + 0.18 * s) / 0.06) ** 2))[..., None]  # a highlight along the top bar
    translucent = style.endswith("crystal")
    out = _composite(out, np.clip(fcol, 0, 255), fa * (0.75 if translucent else 1.0))
    alpha = np.maximum(fa * (0.75 if translucent else 1.0), la * op)
    return out, alpha, fr.covered(alpha)


# ---- natural-texture patches ------------------------------------------------------------------------------------------

TEXTURE_SOURCES = ("china", "flower", "present", "logo", "wood", "marble", "foliage", "brick")


@cache
def _texture_source(name: str) -> np.ndarray:
    """RGB float32 texture: a sample image shipped with scikit-learn / matplotlib, or a procedural one."""
    if name in ("china", "flower"):  # sklearn.datasets.load_sample_images(), read without importing scikit-learn
        spec = importlib.util.find_spec("sklearn")
        path = Path(spec.submodule_search_locations[0]) / "datasets" / "images" / f"{name}.jpg"
        im = cv2.imread(str(path))
        if im is None:
            from sklearn.datasets import load_sample_images

            return load_sample_images().images[0 if name == "china" else 1].astype(np.float32)
        return cv2.cvtColor(im, cv2.COLOR_BGR2RGB).astype(np.float32)
    if name in ("present", "logo"):
        import matplotlib

        f = "Minduka_Present_Blue_Pack.png" if name == "present" else "logo2.png"
        im = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / f), cv2.IMREAD_UNCHANGED)
        rgb, a = cv2.cvtColor(im[..., :3], cv2.COLOR_BGR2RGB).astype(np.float32), im[..., 3:].astype(np.float32) / 255
        return rgb * a + 245 * (1 - a)
    r = np.random.default_rng(TEXTURE_SOURCES.index(name))
    n = 256
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    noise = cv2.GaussianBlur(r.normal(0, 1, (n, n)).astype(np.float32), (0, 0), 6)
    noise /= noise.std()
    if name == "wood":
        g = np.sin((xx / 9 + 2.5 * noise) * 1.0) * 0.5 + 0.5
        return np.stack([140 + 60 * g, 90 + 45 * g, 50 + 25 * g], -1)
    if name == "marble":
        g = np.abs(np.sin((xx + yy) / 25 + 3 * noise)) ** 0.3
        return np.stack([200 + 45 * g] * 2 + [205 + 40 * g], -1)
    if name == "foliage":
        fine = cv2.GaussianBlur(r.normal(0, 1, (n, n)).astype(np.float32), (0, 0), 2.5)
        g = np.clip(0.5 + 0.25 * fine / fine.std() + 0.15 * noise, 0, 1)
        return np.stack([40 + 80 * g, 70 + 120 * g, 30 + 50 * g], -1)
    brick = ((yy % 32) < 3) | (((xx + 32 * ((yy // 32) % 2)) % 64) < 3)
    g = 0.85 + 0.1 * noise
    return np.where(brick[..., None], 200.0, np.stack([160 * g, 70 * g, 50 * g], -1)).astype(np.float32)


def _draw_texture_patch(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str):
    """An irregular soft-edged blob of a natural texture (random crop, rotation, scale) over a random face region."""
    src = _texture_source(style)
    c = rng.uniform([-0.6, -0.5], [0.6, 1.3])
    k = np.arange(2, 6)
    amp, ph = rng.uniform(0, 0.18, len(k)) / k ** 0.5, rng.uniform(0, 2 * np.pi, len(k))
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    r = 1 + (amp[:, None] * np.cos(k[:, None] * t + ph[:, None])).sum(0)
    aspect = rng.uniform(0.6, 1.5)
    blob = np.stack([np.cos(t) * r * aspect ** 0.5, np.sin(t) * r / aspect ** 0.5], 1)
    bnd = FAMILY_BOUNDS["texture_patch"]
    alpha, f, s = _search(lambda s: fr.fill([c + blob * s]), fr, _target(rng, bnd), 0.05, 1.6, bnd, "texture patch")
    h, w = fr.shape
    # map the source onto the patch: random crop, rotation and scale in the face frame
    side = 2.2 * s * fr.scale
    sh, sw = src.shape[:2]
    crop = min(sh, sw) * rng.uniform(0.35, 0.9)
    ang, cc = rng.uniform(0, 360), np.array([rng.uniform(crop / 2, sw - crop / 2), rng.uniform(crop / 2, sh - crop / 2)])
    M = cv2.getRotationMatrix2D(tuple(cc), ang, side / crop)
    centre = fr.to_px(c)
    M[:, 2] += centre - cc
    tex = cv2.warpAffine(src, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    tex = np.clip(tex * _luma_shading(img, 0.25), 0, 255)
    alpha = _soft(alpha, fr, rng.uniform(0.005, 0.02))
    out = _shadow(img, fr, alpha, (0.03, 0.05), 0.05, rng.uniform(0.15, 0.35))
    return _composite(out, tex, alpha), alpha, f


# ---- random shapes (domain randomisation) ----------------------------------------------------------------------------

RANDOM_SHAPES = ("polygon", "ellipse", "blob", "band", "strokes")
RANDOM_FILLS = ("solid", "gradient", "noise", "stripes", "checks", "translucent")
RANDOM_STYLES = [f"{s}_{f}" for s in RANDOM_SHAPES for f in RANDOM_FILLS]
RANDOM_BOUNDS = (0.06, 0.50)


def _random_outline(shape: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Polygons of a random shape around the origin, within about a unit of it (a band reaches 1.6) before scaling."""
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, s], [-s, c]])
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    if shape == "polygon":
        k = int(rng.integers(3, 9))  # star-shaped around its centre: never a sliver
        a = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(-0.4, 0.4, k) * np.pi / k
        r = rng.uniform(0.5, 1.0, len(a))
        return [np.stack([np.cos(a) * r * rng.uniform(0.6, 1.4), np.sin(a) * r], 1) @ rot]
    if shape == "ellipse":
        a = rng.uniform(0.3, 1.0)
        return [np.stack([np.cos(t), a * np.sin(t)], 1) @ rot]
    if shape == "blob":
        return [(np.stack([np.cos(t), np.sin(t)], 1) * rng.uniform(0.3, 0.7) + rng.uniform(-0.6, 0.6, 2)) @ rot
                for _ in range(rng.integers(2, 6))]
    if shape == "band":
        hw = rng.uniform(0.12, 0.35)
        return [np.array([[-1.6, -hw], [1.6, -hw], [1.6, hw], [-1.6, hw]]) @ rot]
    # strokes: a few thick tapered lines, like strands, fingers, straps or frames
    out = []
    for _ in range(rng.integers(2, 7)):
        p0, p1 = rng.uniform(-1, 1, 2), rng.uniform(-1, 1, 2)
        out.append(_capsule(p0, p1, rng.uniform(0.06, 0.2), rng.uniform(0.06, 0.2)) @ rot)
    return out


def _random_fill(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, fill: str) -> np.ndarray:
    """An H×W×3 float32 surface: one or two random colours laid out by the fill's pattern."""
    h, w = fr.shape

    def colour():
        if rng.random() < 0.25:  # skin-like, dark or light: hardest to tell from the face itself
            return _vary(_skin_colour(img, fr) * rng.uniform(0.6, 1.3), rng, 10)
        hsv = np.uint8([[[rng.integers(0, 180), rng.integers(0, 256), rng.integers(20, 256)]]])
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)

    a, b = colour(), colour()
    ang = rng.uniform(0, np.pi)
    if fill in ("gradient", "stripes", "checks"):  # laid out along a direction in the face frame
        u, v = fr.grid()
        d = (np.cos(ang) * u + np.sin(ang) * v).astype(np.float32)
    if fill == "gradient":
        g = np.clip((d - d.min()) / max(1e-6, float(np.ptp(d))) * rng.uniform(1, 3) - rng.uniform(0, 1), 0, 1)
    elif fill == "noise":
        n = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(0.02, 0.3) * fr.scale)
        g = np.clip(0.5 + 0.35 * n / (n.std() + 1e-6), 0, 1)
    elif fill == "stripes":
        g = (np.sin(d * rng.uniform(4, 20) + rng.uniform(0, 6)) > rng.uniform(-0.5, 0.5)).astype(np.float32)
    elif fill == "checks":
        k = rng.uniform(3, 12)
        e = (-np.sin(ang) * u + np.cos(ang) * v).astype(np.float32)
        g = ((np.floor(d * k) + np.floor(e * k)) % 2).astype(np.float32)
    else:  # solid, translucent
        g = np.zeros((h, w), np.float32)
    surf = a * (1 - g[..., None]) + b * g[..., None]
    surf = surf * _noise((h, w), rng, max(0.5, 0.01 * fr.scale), rng.uniform(0, 0.06))
    return np.clip(surf * _luma_shading(img, rng.uniform(0, 0.5)), 0, 255)


def _draw_random_shape(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str):
    """A shape no real occluder has, filled with random colours and patterns (style = shape_fill), over a random
    face region: domain randomisation for training, so that a model learns 'something covers this part of the face'
    rather than what our other families look like. Not one of kinds.FAMILIES (the leave-one-family-out families):
    `occlude(..., "random_shape", ...)` draws it."""
    shape, fill = style.split("_", 1)
    polys = _random_outline(shape, rng)
    c = rng.uniform([-0.7, -0.5], [0.7, 1.4])
    bnd = RANDOM_BOUNDS
    alpha, f, s = _search(lambda s: _union(fr, [c + p * s for p in polys]), fr, _target(rng, bnd), 0.05, 4.0, bnd,
                          "random shape")
    surf = _random_fill(img, fr, rng, fill)
    alpha = _soft(alpha, fr, rng.uniform(0.003, 0.04))
    if fill == "translucent":
        alpha = alpha * rng.uniform(0.35, 0.8)
    out = _shadow(img, fr, alpha, rng.uniform([-0.05, 0.0], [0.05, 0.08]), 0.05, rng.uniform(0, 0.4))
    return _composite(out, surf, alpha), alpha, fr.covered(alpha)


# ---- registry ---------------------------------------------------------------------------------------------------------


def register_occluder(name: str, styles: list[str] | tuple[str, ...]) -> Callable[[Drawer], Drawer]:
    """Register a drawer under `name` in `registry.OCCLUDERS` with its style names: `occlude`, `agelens occlude
    --mix NAME=1`, `occlusion.mix` and `evaluate --occlusion-mix` then draw it, alone or combined ('NAME+cap').
    A drawer takes (image float32 RGB, FaceFrame, rng, style) and returns (image, coverage alpha, covered share of
    the face oval); `docs/extending.md`."""
    from ..errors import ConfigError

    styles = list(styles)
    if not name or any(c in name for c in "+,= \t") or name in OCCLUSION_TYPES:
        raise ConfigError(f"occluder name {name!r} is not usable: it must be non-empty, without '+' (which joins a "
                          "combination), ',' or '=' (which `--mix TYPE=P,...` reads) or spaces, and not one of the "
                          f"paper's types {', '.join(OCCLUSION_TYPES)}")
    if not styles or not all(isinstance(st, str) and st and "+" not in st for st in styles):
        raise ConfigError(f"occluder {name!r} needs a list of style names (non-empty strings without '+'), "
                          f"got {styles!r}")

    return _registered(name, styles)


_STYLES: dict[str, list[str]] = {}


def _registered(name: str, styles: list[str]) -> Callable[[Drawer], Drawer]:
    from ..registry import OCCLUDERS

    def deco(fn: Drawer) -> Drawer:
        OCCLUDERS.register(name)(fn)
        _STYLES[name] = styles
        return fn

    return deco


def _sunglasses(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str):
    return _draw_sunglasses(img, fr, rng, style, BOUNDS["eyes"])


for _name, _draw, _styles in (
        ("fabric_mask", _draw_fabric_mask, FABRIC_MASK_STYLES), ("scarf", _draw_scarf, SCARF_STYLES),
        ("hand", _draw_hand, HAND_STYLES), ("cap", _draw_cap, CAP_STYLES), ("hair", _draw_hair, HAIR_STYLES),
        ("object", _draw_object, OBJECT_STYLES), ("eye_patch", _draw_eye_patch, EYE_PATCH_STYLES),
        ("face_shield", _draw_face_shield, FACE_SHIELD_STYLES),
        ("thick_glasses", _draw_thick_glasses, THICK_GLASSES_STYLES),
        ("texture_patch", _draw_texture_patch, TEXTURE_SOURCES), ("sunglasses", _sunglasses, SUNGLASS_STYLES),
        ("random_shape", _draw_random_shape, RANDOM_STYLES)):
    _registered(_name, list(_styles))(_draw)  # sunglasses too: it combines with the families
del _name, _draw, _styles


def unknown_kind(*kinds: str) -> ValueError:
    """The error for occlusion types no one draws: names every type there is."""
    note = ""
    if any("+" in k and n in OCCLUSION_TYPES and n != "sunglasses" for k in kinds for n in k.split("+")):
        note = " (of the paper's types only sunglasses combines with the families)"
    what = f"type {kinds[0]!r}" if len(kinds) == 1 else f"types {list(kinds)}"
    return ValueError(f"unknown occlusion {what}{note}; choose from {', '.join(occluder_kinds())} or a combination "
                      "of different families such as cap+sunglasses (your own: docs/extending.md)")


def occluder_kinds() -> tuple[str, ...]:
    """Every occlusion type: the built-in ones (`kinds.ALL_TYPES`), then the other registered ones (the
    training-only `random_shape`, plugins)."""
    from ..registry import OCCLUDERS

    return ALL_TYPES + tuple(n for n in OCCLUDERS.names() if n not in ALL_TYPES)


def _components(kind: str) -> list[tuple[Drawer, list[str]]]:
    """The registered drawers (and styles) of a family kind's components; plugins (AGELENS_PLUGINS) are imported
    where a name is missing. ValueError naming every type for a kind no one draws."""
    from ..registry import OCCLUDERS

    names = kind.split("+")
    if kind in OCCLUSION_TYPES or len(set(names)) < len(names) or len(names) > 2:
        raise unknown_kind(kind)  # the paper's types are drawn by synth.occlude; a combination is of two families
    if not all(OCCLUDERS.has(n) for n in names):
        raise unknown_kind(kind)
    return [(OCCLUDERS.get(n), _STYLES[n]) for n in names]


def is_kind(kind: str) -> bool:
    """Whether `kind` names an occlusion type: one of the paper's six, a registered family or a combination 'a+b'
    of two different ones."""
    if kind in OCCLUSION_TYPES:
        return True
    try:
        _components(kind)
    except ValueError:
        return False
    return True


def _component_styles(name: str, styles: list[str], combined: bool) -> list[str]:
    if combined and name == "hand":  # with sunglasses or a mask the hand is over the mouth or on the cheek
        return [s for s in styles if not s.startswith("eyes")]
    return styles


def family_styles(kind: str) -> list[str]:
    """Styles of a family kind; a combination's are 'styleA+styleB'."""
    names, parts = kind.split("+"), _components(kind)
    combined = len(names) > 1
    return ["+".join(p) for p in itertools.product(*(_component_styles(n, st, combined)
                                                     for n, (_, st) in zip(names, parts, strict=True)))]


def _checked(name: str, shape: tuple[int, ...], drawn) -> tuple[np.ndarray, np.ndarray, float]:
    """A drawer's (image, alpha, covered share) as it returned them, or a ConfigError naming the occluder where
    they are not arrays of the image's shape with finite values."""
    from ..errors import ConfigError

    try:
        out, alpha, covered = drawn
        ok = (np.shape(out) == shape and np.shape(alpha) == shape[:2] and np.isfinite(out).all()
              and np.isfinite(alpha).all() and np.isfinite(float(covered)))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"occluder {name!r} must return (image, alpha, covered share): an image of the input's "
                          f"shape {shape}, an alpha of shape {shape[:2]} and a number, all finite")
    return out, alpha, float(covered)


def draw_family(img: np.ndarray, landmarks: np.ndarray, kind: str, rng: np.random.Generator, style: str | None,
                jitter: bool = True) -> Occluded:
    """Draw one occluder of a family kind (or a combination 'a+b'); called by `synth.occlude`."""
    names, parts = kind.split("+"), _components(kind)
    picks = [_component_styles(n, st, len(names) > 1) for n, (_, st) in zip(names, parts, strict=True)]
    if style is None:
        style = "+".join(p[rng.integers(len(p))] for p in picks)
    elif len(style.split("+")) != len(names) or any(s not in p for s, p in zip(style.split("+"), picks, strict=False)):
        raise ValueError(f"unknown style {style!r} for {kind}; its styles: {', '.join(family_styles(kind)[:12])}...")
    fr = FaceFrame(landmarks, img.shape[:2], rng if jitter else None)
    out, covered, alphas = img.astype(np.float32), {}, []
    order = sorted(range(len(names)), key=lambda i: names[i] != "sunglasses")  # glasses under hands, scarves, hair
    for i in order:
        out, a, covered[names[i]] = _checked(names[i], out.shape, parts[i][0](out, fr, rng, style.split("+")[i]))
        alphas.append(a)
    alpha = np.maximum.reduce(alphas)
    if img.ndim == 3 and np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]):
        out = np.repeat(out.mean(2, keepdims=True), 3, 2)  # a greyscale photo gets a greyscale occluder
    return Occluded(np.clip(out + 0.5, 0, 255).astype(np.uint8), kind, style, round(fr.covered(alpha), 4),
                    {k: round(v, 4) for k, v in covered.items()}, alpha)


assert set(_STYLES) >= {n for k in FAMILIES if k != "paper" for kind in FAMILIES[k] for n in kind.split("+")}
