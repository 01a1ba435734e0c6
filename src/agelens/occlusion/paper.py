"""The paper's occluders (sunglasses, face masks/veils, both, colour blocks) and the drawing primitives every
occluder family shares (face frame, anti-aliased polygons, size search, shading, compositing).

Every occluder is drawn in a face frame (origin between the eyes, x along the eye line, y down, unit = distance
between the iris centres), so pose and scale follow the face. Shapes are filled with sub-pixel anti-aliased
polygons. The size is found by bisection so that the covered share of the face oval lands inside the bounds of
paper 1 (eyes 15–20 %, mouth 30–35 %); the achieved fraction is returned with the image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..errors import AgelensError

# FaceMesh indices (canonical 468 + 10 iris points)
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
             149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
IRIS = (468, 473)
MOUTH = (13, 14, 61, 291)
NOSE_TIP, CHIN = 1, 152

BOUNDS = {"eyes": (0.15, 0.20), "mouth": (0.30, 0.35)}  # share of the face-oval area
PARTS = {"sunglasses": ("eyes",), "mask": ("mouth",), "sunglasses+mask": ("eyes", "mouth"), "eye_block": ("eyes",),
         "mouth_block": ("mouth",), "eye+mouth_block": ("eyes", "mouth")}
SS = 4  # sub-pixel bits for cv2.fillPoly (1/16 px)


class OcclusionError(AgelensError):
    """An occluder cannot be placed on this face (no or degenerate landmarks, bounds unreachable)."""


@dataclass
class Occluded:
    image: np.ndarray  # uint8 RGB, same size as the input
    kind: str
    style: str
    fraction: float  # share of the face oval covered by all occluders together
    parts: dict[str, float] = field(default_factory=dict)  # per part ("eyes", "mouth") share of the oval
    alpha: np.ndarray | None = None  # float32 (H, W) coverage in [0, 1]


# ---- geometry ---------------------------------------------------------------------------------------------------


class FaceFrame:
    """Maps face-frame coordinates (unit = inter-iris distance) to image pixels, with optional pose jitter."""

    def __init__(self, lm: np.ndarray, shape: tuple[int, int], rng: np.random.Generator | None = None) -> None:
        lm = np.asarray(lm, np.float64)
        if lm.shape[0] < 478 or not np.isfinite(lm[FACE_OVAL + list(IRIS) + list(MOUTH) + [NOSE_TIP, CHIN]]).all():
            raise OcclusionError("no landmarks for this face (FaceMesh found none), occluder not placed")
        le, re = lm[IRIS[0]], lm[IRIS[1]]
        d = re - le
        self.scale = float(np.hypot(*d))
        if self.scale < 6:
            raise OcclusionError(f"face too small for an occluder (eyes {self.scale:.1f} px apart)")
        ang = np.arctan2(d[1], d[0])
        jit_a, jit_t = (rng.normal(0, np.deg2rad(2.5)), rng.normal(0, 0.02, 2)) if rng is not None else (0.0, np.zeros(2))
        self.ang = ang + jit_a
        c, s = np.cos(self.ang), np.sin(self.ang)
        self.R = np.array([[c, -s], [s, c]]) * self.scale
        self.origin = (le + re) / 2 + self.R @ jit_t
        self.shape = shape
        self.lm = lm
        self.oval_px = lm[FACE_OVAL]
        self.oval_mask = self.fill([self.oval_px], frame=False) >= 0.5
        self.oval_area = float(self.oval_mask.sum())
        if self.oval_area < 200:
            raise OcclusionError(f"face oval too small or outside the image ({self.oval_area:.0f} px)")
        self.pt = {k: self.to_face(lm[i]) for k, i in
                   {"nose": NOSE_TIP, "chin": CHIN, "mouth_u": 13, "mouth_l": 14, "mouth_l_corner": 61,
                    "mouth_r_corner": 291, "bridge": 6, "nose_top": 168}.items()}
        self.oval = self.to_face(self.oval_px)

    def to_px(self, p: np.ndarray) -> np.ndarray:
        return np.asarray(p, np.float64) @ self.R.T + self.origin

    def to_face(self, p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, np.float64) - self.origin) @ np.linalg.inv(self.R).T

    def fill(self, polys: list[np.ndarray], frame: bool = True) -> np.ndarray:
        """Anti-aliased coverage (float32 H×W in [0, 1]) of the union of polygons."""
        canvas = np.zeros(self.shape, np.uint8)
        pts = [np.round((self.to_px(p) if frame else p) * (1 << SS)).astype(np.int32) for p in polys]
        cv2.fillPoly(canvas, pts, 255, lineType=cv2.LINE_AA, shift=SS)
        return canvas.astype(np.float32) / 255.0

    def stroke(self, polys: list[np.ndarray], width: float, closed: bool = True) -> np.ndarray:
        canvas = np.zeros(self.shape, np.uint8)
        pts = [np.round(self.to_px(p) * (1 << SS)).astype(np.int32) for p in polys]
        cv2.polylines(canvas, pts, closed, 255, max(1, int(round(width * self.scale))), lineType=cv2.LINE_AA, shift=SS)
        return canvas.astype(np.float32) / 255.0

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Face-frame (u, v) of every pixel centre."""
        h, w = self.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        inv = np.linalg.inv(self.R)
        dx, dy = xx - self.origin[0], yy - self.origin[1]
        return (inv[0, 0] * dx + inv[0, 1] * dy), (inv[1, 0] * dx + inv[1, 1] * dy)

    def covered(self, alpha: np.ndarray) -> float:
        return float(alpha[self.oval_mask].sum() / self.oval_area)


def _superellipse(cx: float, cy: float, a: float, b: float, n: float = 2.0, m: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, m, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    return np.stack([cx + a * np.sign(c) * np.abs(c) ** (2 / n), cy + b * np.sign(s) * np.abs(s) ** (2 / n)], 1)


def _size_search(render: Callable[[float], np.ndarray], frame: FaceFrame, target: float, lo: float, hi: float,
                 iterations: int, tolerance: float) -> tuple[tuple[np.ndarray, float, float], float, float]:
    """Bisection of the size parameter (coverage grows with it) for a covered share of `target`: the closest
    (coverage, fraction, parameter) seen, and the bracket [lo, hi] it ended with."""
    best = None
    for _ in range(iterations):
        mid = (lo + hi) / 2
        a = render(mid)
        f = frame.covered(a)
        if best is None or abs(f - target) < abs(best[1] - target):
            best = (a, f, mid)
        if abs(f - target) < tolerance:
            break
        lo, hi = (mid, hi) if f < target else (lo, mid)
    return best, lo, hi


def _bisect(render: Callable[[float], np.ndarray], frame: FaceFrame, target: float, lo: float, hi: float,
            bounds: tuple[float, float], what: str) -> tuple[np.ndarray, float, float]:
    """(coverage, fraction, parameter) for the size parameter whose coverage is closest to target (coverage grows
    with the parameter); OcclusionError when the bounds cannot be reached on this face."""
    best, _, _ = _size_search(render, frame, target, lo, hi, 18, 0.002)
    if not bounds[0] <= best[1] <= bounds[1]:
        raise OcclusionError(f"{what} cannot cover {bounds[0]:.0%}–{bounds[1]:.0%} of this face oval "
                             f"(closest {best[1]:.1%})")
    return best


# ---- appearance helpers ------------------------------------------------------------------------------------------


def _composite(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return img * (1 - a) + colour * a


def _luma_shading(img: np.ndarray, strength: float) -> np.ndarray:
    """Scene lighting carried onto an occluder: blurred face luminance relative to its mean, softened."""
    y = cv2.GaussianBlur(img.mean(2).astype(np.float32), (0, 0), max(2.0, img.shape[0] / 40))
    rel = y / max(1.0, float(y.mean()))
    return (1 + strength * (np.clip(rel, 0.4, 1.6) - 1))[..., None]


def _noise(shape: tuple[int, int], rng: np.random.Generator, sigma: float, amp: float) -> np.ndarray:
    n = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), sigma)
    return (1 + amp * n / (n.std() + 1e-6))[..., None]


def _jitter_colour(rgb: tuple[int, int, int], rng: np.random.Generator, amount: float = 12) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.normal(0, amount, 3), 0, 255)


# ---- sunglasses ---------------------------------------------------------------------------------------------------

# name: (lens shape, frame colour family, tint family, extra)
SUNGLASS_STYLES = {
    "round_metal": ("round", "gold", "dark"), "oval_tortoise": ("oval", "tortoise", "brown"),
    "aviator_gold_mirror": ("aviator", "gold", "mirror"), "wayfarer_black": ("wayfarer", "black", "dark"),
    "rectangular_black": ("rect", "black", "grey"), "cat_eye_red": ("cat", "red", "gradient"),
    "hexagon_silver": ("hex", "silver", "green"), "shield_visor": ("shield", "none", "mirror_blue"),
    "sport_wrap": ("wrap", "black", "mirror"), "clubmaster_browline": ("browline", "tortoise", "dark"),
    "oversized_gradient": ("oversize", "black", "gradient"), "round_blue_tint": ("round", "silver", "blue"),
}
FRAMES = {"gold": (190, 150, 60), "black": (18, 18, 20), "tortoise": (92, 52, 28), "red": (150, 25, 30),
          "silver": (185, 185, 190), "none": None}
TINTS = {"dark": ((25, 25, 28), 0.93), "brown": ((70, 45, 25), 0.88), "grey": ((55, 58, 60), 0.9),
         "green": ((40, 60, 35), 0.9), "blue": ((35, 55, 100), 0.85), "gradient": ((30, 28, 32), 0.95),
         "mirror": ((120, 130, 140), 0.95), "mirror_blue": ((60, 110, 170), 0.95), "clear": ((210, 215, 220), 0.08)}


def _lens_polys(shape: str, s: float) -> list[np.ndarray]:
    """Lens outlines in the face frame for a size factor s (eyes at u = ±0.5)."""
    def pair(f):
        left = f(-0.5)
        right = left.copy()
        right[:, 0] = -right[:, 0]
        return [left, right[::-1]]

    a, b = 0.27 * s, 0.21 * s
    if shape == "round":
        return pair(lambda cx: _superellipse(cx, 0.0, a * 0.9, a * 0.9))
    if shape == "oval":
        return pair(lambda cx: _superellipse(cx, 0.0, a, b * 0.85))
    if shape == "oversize":
        return pair(lambda cx: _superellipse(cx - 0.03 * s, 0.03, a * 1.1, b * 1.1, 2.6))
    if shape == "rect":
        return pair(lambda cx: _superellipse(cx, 0.0, a * 1.05, b * 0.8, 5))
    if shape in ("wayfarer", "browline"):
        def trap(cx):
            p = _superellipse(cx, 0.0, a, b * 0.9, 4)
            p[:, 0] = cx + (p[:, 0] - cx) * (1.12 - 0.22 * (p[:, 1] - 0) / (b * 0.9 + 1e-9) * 0.5 - 0.06)
            return p
        return pair(trap)
    if shape == "aviator":
        def tear(cx):
            p = _superellipse(cx, 0.0, a, b, 2.2)
            low = p[:, 1] > 0
            inner = np.sign(-cx) * (p[:, 0] - cx) > 0  # toward the nose
            p[low, 1] *= 1.25
            p[low & inner, 1] *= 0.8
            return p
        return pair(tear)
    if shape == "cat":
        def cat(cx):
            p = _superellipse(cx, 0.0, a, b * 0.85, 2.4)
            outer_top = (np.sign(cx) * (p[:, 0] - cx) > 0) & (p[:, 1] < 0)
            p[outer_top, 1] -= 0.35 * b * (np.abs(p[outer_top, 0] - cx) / a) ** 2
            return p
        return pair(cat)
    if shape == "hex":
        def hexa(cx):
            t = np.linspace(0, 2 * np.pi, 7)[:-1]
            return np.stack([cx + a * np.cos(t), b * 1.05 * np.sin(t)], 1)
        return pair(hexa)
    if shape == "shield":
        w, h = 0.82 * s, 0.23 * s
        p = _superellipse(0.0, 0.01, w, h, 3.2, 96)
        notch = (np.abs(p[:, 0]) < 0.12 * s) & (p[:, 1] > 0)
        p[notch, 1] -= 0.6 * h * (1 - np.abs(p[notch, 0]) / (0.12 * s))
        return [p]
    if shape == "wrap":
        def wrap(cx):
            p = _superellipse(cx + 0.05 * np.sign(cx) * s, -0.01, a * 1.2, b * 0.75, 3)
            return p
        return pair(wrap)
    raise ValueError(f"unknown lens shape {shape}")


def _draw_sunglasses(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str, bounds: tuple[float, float],
                     clear: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    shape, frame_c, tint = SUNGLASS_STYLES[style]
    rim = 0.0 if frame_c == "none" else rng.uniform(0.025, 0.045)
    if clear:  # ordinary prescription glasses: thin frame, nearly transparent lenses (not an occlusion)
        frame_c = frame_c if frame_c != "none" else "black"
        rim, tint = rng.uniform(0.012, 0.03), "clear"
    thick_top = 2.2 if shape == "browline" else 1.0

    def render(s: float) -> np.ndarray:
        lenses = _lens_polys(shape, s)
        a = fr.fill(lenses)
        if rim:
            a = np.maximum(a, fr.stroke(lenses, rim))
        return a

    target = rng.uniform(bounds[0] + 0.006, bounds[1] - 0.006)
    alpha, f, s = _bisect(render, fr, target, 0.4, 3.0, bounds, "sunglasses")
    lenses = _lens_polys(shape, s)
    lens_a = fr.fill(lenses)
    u, v = fr.grid()
    tint_rgb, opacity = TINTS[tint]
    col = np.broadcast_to(_jitter_colour(tint_rgb, rng, 6), img.shape).astype(np.float32).copy()
    if tint == "gradient":
        col *= (0.55 + 0.9 * np.clip((v / (0.3 * s) + 1) / 2, 0, 1))[..., None] ** 1.2
    if tint.startswith("mirror"):  # sky/ground reflection: bright band on top, dark below, plus noise
        col *= (1.4 - 0.9 * np.clip((v / (0.25 * s) + 1) / 2, 0, 1))[..., None]
        col *= _noise(img.shape[:2], rng, fr.scale * 0.06, 0.12)
    out = _composite(img.astype(np.float32), np.clip(col, 0, 255), lens_a * opacity)
    # reflections: a soft diagonal streak and a specular spot on each lens
    k = rng.uniform(0.6, 1.6)
    off = rng.uniform(-0.2, 0.2)
    streak = np.exp(-(((u + k * v) * 0.9 - off) / (0.05 * s)) ** 2) * rng.uniform(0.15, 0.35) * (0.4 if clear else 1)
    out = _composite(out, np.full(3, 255, np.float32), lens_a * streak)
    if rim:
        frame_rgb = _jitter_colour(FRAMES[frame_c], rng, 10)
        rim_a = fr.stroke(lenses, rim)
        if thick_top > 1:
            top = [p[p[:, 1] < 0.02 * s] for p in lenses]
            top = [p[np.argsort(p[:, 0])] for p in top]  # the upper arc as an open polyline, left to right
            rim_a = np.maximum(rim_a, fr.stroke(top, rim * thick_top, closed=False))
        fcol = np.broadcast_to(frame_rgb, img.shape).astype(np.float32)
        if frame_c == "tortoise":
            fcol = fcol * _noise(img.shape[:2], rng, fr.scale * 0.03, 0.35)
        out = _composite(out, fcol, rim_a)
        if shape != "shield":  # bridge and temple arms
            inner = [lenses[0][np.argmax(lenses[0][:, 0])], lenses[1][np.argmin(lenses[1][:, 0])]]
            bridge = np.array([inner[0] + [0, -0.04 * s], [0, -0.08 * s], inner[1] + [0, -0.04 * s]])
            outer_l = lenses[0][np.argmin(lenses[0][:, 0])]
            outer_r = lenses[1][np.argmax(lenses[1][:, 0])]
            ear_l, ear_r = fr.oval[28] + [0.02, -0.05], fr.oval[8] + [-0.02, -0.05]  # points 234 / 454
            arms = fr.stroke([bridge], rim * 0.9, closed=False)
            arms = np.maximum(arms, fr.stroke([np.array([outer_l, ear_l]), np.array([outer_r, ear_r])], rim * 0.8, False))
            out = _composite(out, fcol, arms * 0.95)
    a_total = np.maximum(alpha, lens_a)
    return out, a_total, f


def add_clear_glasses(img: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ordinary see-through glasses (a hard negative for the occlusion detector: the eyes stay visible)."""
    fr = FaceFrame(landmarks, img.shape[:2], rng)
    style = rng.choice([k for k, v in SUNGLASS_STYLES.items() if v[0] not in ("shield", "wrap")])
    out, _, _ = _draw_sunglasses(img.astype(np.float32), fr, rng, str(style), (0.08, 0.20), clear=True)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ---- masks and veils --------------------------------------------------------------------------------------------

# name: (base colour, pattern, shape)
MASK_STYLES = {
    "surgical_blue": ((150, 195, 222), "pleats", "surgical"), "surgical_white": ((236, 238, 240), "pleats", "surgical"),
    "surgical_black": ((35, 36, 40), "pleats", "surgical"), "cloth_black": ((28, 28, 30), "weave", "cloth"),
    "cloth_dots": ((40, 60, 120), "dots", "cloth"), "cloth_stripes": ((170, 40, 45), "stripes", "cloth"),
    "cloth_floral": ((230, 210, 190), "floral", "cloth"), "n95_white": ((240, 240, 235), "seam_valve", "n95"),
    "kn95_grey": ((200, 202, 206), "seam", "kn95"), "niqab_black": ((22, 20, 24), "folds", "niqab"),
    "veil_sheer_navy": ((30, 35, 70), "folds_sheer", "niqab"), "bandana_paisley": ((160, 30, 35), "paisley", "bandana"),
}


def _mask_polys(fr: FaceFrame, shape: str, top: float, rng_shape: dict) -> list[np.ndarray]:
    """Mask outline: the face oval widened below a top edge at height `top` (face frame v), with a nose peak."""
    oval = fr.oval.copy()
    cx = float(fr.pt["nose"][0])
    widen = {"niqab": 1.10, "bandana": 1.10}.get(shape, 1.06)
    oval[:, 0] = cx + (oval[:, 0] - cx) * widen
    chin_v = float(fr.pt["chin"][1])
    low = oval[:, 1] > (chin_v - 0.6)
    oval[low, 1] += {"niqab": 0.35, "bandana": 0.35}.get(shape, 0.08)  # fabric runs under the chin
    u = np.linspace(oval[:, 0].min() - 0.3, oval[:, 0].max() + 0.3, 64)
    peak = {"surgical": 0.10, "cloth": 0.14, "n95": 0.18, "kn95": 0.22, "niqab": 0.03, "bandana": 0.12}[shape]
    width = rng_shape["width"]
    top_edge = np.stack([u, top - peak * np.exp(-((u - cx) / width) ** 2)], 1)
    if shape == "kn95":
        top_edge[:, 1] = top - peak * np.clip(1 - np.abs(u - cx) / (1.5 * width), 0, 1)
    below = np.vstack([top_edge, [[u[-1], top + 8], [u[0], top + 8]]])
    return [oval, below]


def _draw_mask(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, style: str, bounds: tuple[float, float]
               ) -> tuple[np.ndarray, np.ndarray, float]:
    base, pattern, shape = MASK_STYLES[style]
    shp = {"width": rng.uniform(0.25, 0.4)}

    def render(t: float) -> np.ndarray:  # t in [0, 1]: top edge from the chin (0) up to the eyes (1)
        top = float(fr.pt["chin"][1]) * (1 - t)
        oval, below = _mask_polys(fr, shape, top, shp)
        return fr.fill([oval]) * fr.fill([below])

    target = rng.uniform(bounds[0] + 0.006, bounds[1] - 0.006)
    alpha, f, t = _bisect(render, fr, target, 0.0, 1.0, bounds, "mask")
    top = float(fr.pt["chin"][1]) * (1 - t)
    u, v = fr.grid()
    h, w = img.shape[:2]
    col = np.broadcast_to(_jitter_colour(base, rng, 8), img.shape).astype(np.float32).copy()
    cx = float(fr.pt["nose"][0])
    span = max(0.3, float(np.abs(fr.oval[:, 0] - cx).max()))
    # curvature shading: the fabric turns away from the camera toward the cheeks and under the chin
    curve = 1 - 0.28 * np.clip(np.abs(u - cx) / span, 0, 1.3) ** 2
    curve -= 0.12 * np.clip((v - float(fr.pt["chin"][1]) + 0.15) / 0.3, 0, 1)
    col *= curve[..., None]
    px = fr.scale
    if pattern == "pleats":
        for k in range(3):
            vk = top + (k + 1.2) * (float(fr.pt["chin"][1]) - top) / 4.2
            line = np.exp(-((v - vk - 0.03 * np.sin((u - cx) * 3)) / 0.018) ** 2)
            col *= (1 - 0.22 * line)[..., None]
            col *= (1 + 0.10 * np.exp(-((v - vk + 0.035) / 0.02) ** 2))[..., None]
    elif pattern in ("weave", "floral", "paisley", "dots", "stripes"):
        col *= _noise((h, w), rng, max(0.6, px * 0.01), 0.06)
        if pattern == "dots":
            ph = rng.uniform(0, 1, 2)
            d = np.hypot(((u * 6 + ph[0]) % 1) - 0.5, ((v * 6 + ph[1]) % 1) - 0.5)
            col = np.where((d < 0.18)[..., None], _jitter_colour((235, 235, 230), rng, 8), col)
        elif pattern == "stripes":
            band = (((u * np.cos(0.5) + v * np.sin(0.5)) * 5 + rng.uniform()) % 1) < 0.45
            col = np.where(band[..., None], col * 0.35 + 160, col)
        elif pattern in ("floral", "paisley"):
            blobs = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), px * 0.05)
            blobs = blobs / (blobs.std() + 1e-6)
            accent = _jitter_colour((200, 80, 110) if pattern == "floral" else (240, 230, 200), rng, 20)
            col = np.where((blobs > 1.0)[..., None], accent * curve[..., None], col)
    elif pattern.startswith("seam"):
        seam = np.exp(-((u - cx) / 0.012) ** 2)
        col *= (1 - 0.18 * seam)[..., None]
        col *= (1 - 0.15 * np.clip(np.abs(u - cx) / span, 0, 1))[..., None]
        if pattern == "seam_valve" and rng.random() < 0.7:
            side = rng.choice([-1, 1])
            vc = (top + float(fr.pt["chin"][1])) / 2 + 0.05
            ring = np.hypot(u - cx - side * 0.32, v - vc)
            col = np.where((ring < 0.11)[..., None], _jitter_colour((215, 215, 210), rng, 10) * 0.9, col)
            col *= (1 - 0.3 * np.exp(-((ring - 0.11) / 0.01) ** 2))[..., None]
    elif pattern.startswith("folds"):
        folds = np.sin((u - cx) * rng.uniform(9, 14) + 2 * v + rng.uniform(0, 6))
        col *= (1 + 0.12 * folds)[..., None]
    col = np.clip(col * _luma_shading(img, 0.5), 0, 255)
    opacity = 0.93 if pattern == "folds_sheer" else 1.0
    out = _composite(img.astype(np.float32), col, alpha * opacity)
    if shape in ("surgical", "cloth", "n95", "kn95"):  # ear loops / straps
        loop_c = np.full(3, 235.0) if shape != "cloth" else col[int(np.clip(fr.origin[1], 0, h - 1)), w // 2] * 0.9
        left, right = fr.oval[28], fr.oval[8]
        yl = top + 0.08
        loops = fr.stroke([np.array([[left[0] - 0.02, yl], left + [-0.04, -0.02]]),
                           np.array([[right[0] + 0.02, yl], right + [0.04, -0.02]])], 0.018, closed=False)
        out = _composite(out, loop_c.astype(np.float32), loops)
        alpha = np.maximum(alpha, loops)
    return out, alpha, f


# ---- blocks -------------------------------------------------------------------------------------------------------

BLOCK_COLOURS = {"black": (0, 0, 0), "grey": (128, 128, 128), "white": (255, 255, 255), "random": None}


def _draw_block(img: np.ndarray, fr: FaceFrame, rng: np.random.Generator, part: str, colour: str,
                bounds: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, float]:
    if part == "eyes":
        centre, aspect = np.array([0.0, 0.0]), rng.uniform(2.4, 3.4)
    else:
        mouth = (fr.pt["mouth_u"] + fr.pt["mouth_l"]) / 2
        centre, aspect = mouth + [0.0, -0.08], rng.uniform(1.3, 1.8)

    def render(s: float) -> np.ndarray:
        w, h = s * aspect / 2, s / 2
        return fr.fill([np.array([centre + [-w, -h], centre + [w, -h], centre + [w, h], centre + [-w, h]])])

    target = rng.uniform(bounds[0] + 0.006, bounds[1] - 0.006)
    alpha, f, _ = _bisect(render, fr, target, 0.02, 3.0, bounds, f"{part} block")
    rgb = BLOCK_COLOURS[colour]
    col = rng.integers(0, 256, 3).astype(np.float32) if rgb is None else np.asarray(rgb, np.float32)
    return _composite(img.astype(np.float32), col, alpha), alpha, f
