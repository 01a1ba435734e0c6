"""Realistic photo degradations: what real photos (scans, old prints, phone shots) do to a face that our training
crops never show. One registry of named, seeded degradations serves two uses:

- training: `realistic(img, rng)` applies a random subset of them (each with its own probability);
- testing: `DEGRADATIONS[name](img, rng)` applies one at a fixed, clearly visible strength (the degraded test).

All take and return uint8 HxWx3 RGB arrays of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Degradation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 255).astype(np.uint8)


def grayscale(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return np.repeat(g[..., None], 3, axis=2)


def sepia(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
    tone = np.array([1.07, 0.95, 0.76], np.float32) * rng.uniform(0.9, 1.05)
    faded = g * tone + rng.uniform(0, 25)  # old prints: lifted blacks
    return _u8(faded)


def colour_cast(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """White balance off: per-channel gains (tungsten, fluorescent, shade)."""
    gains = np.exp(rng.normal(0, 0.12, 3)).astype(np.float32)
    return _u8(img.astype(np.float32) * gains)


def gamma(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = float(np.exp(rng.uniform(-0.45, 0.45)))
    lut = _u8(255.0 * (np.arange(256) / 255.0) ** g)
    return lut[img]


def contrast(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32)
    mu = x.mean()
    return _u8((x - mu) * rng.uniform(0.6, 1.3) + mu * rng.uniform(0.75, 1.25))


def blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = img.shape[0] / 256
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 2.5) * s)


def defocus(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = max(1, int(round(rng.uniform(1.5, 4.0) * img.shape[0] / 256)))
    k = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    cv2.circle(k, (r, r), r, 1.0, -1)
    return cv2.filter2D(img, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT)


def _jpeg_q(img: np.ndarray, q: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(q)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy() if ok else img


def jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _jpeg_q(img, int(rng.integers(15, 70)))


def noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(3, 12)
    if rng.random() < 0.5:  # luminance noise
        n = rng.normal(0, sigma, img.shape[:2])[..., None]
    else:
        n = rng.normal(0, sigma, img.shape)
    return _u8(img.astype(np.float32) + n)


def lowres(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Down then up scaling: a small face in a large photo."""
    h, w = img.shape[:2]
    f = rng.uniform(0.15, 0.5)
    small = cv2.resize(img, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR if rng.random() < 0.7 else cv2.INTER_NEAREST)


def scan_grain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Film/scan grain (blurred noise), dust specks and a slight fade."""
    h, w = img.shape[:2]
    g = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(0.6, 1.5))
    g *= rng.uniform(6, 16) / (g.std() + 1e-6)
    x = img.astype(np.float32) * rng.uniform(0.8, 1.0) + rng.uniform(0, 30) + g[..., None]
    for _ in range(int(rng.integers(0, 12))):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(x, c, int(rng.integers(1, 3)), (float(rng.choice([20, 235])),) * 3, -1)
    return _u8(x)


def old_print(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A scanned old print, every sign at once: grey, sepia-toned or faded colour, soft, low in contrast with lifted
    blacks, and grainy. Drawn one at a time (TRAIN_P) these meet in about 1 training view in 10,000, while together
    they double the error on All-Age-Faces photos (docs/old_print.md)."""
    s = img.shape[0] / 256
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
    look = rng.random()
    if look < 0.4:  # black and white
        x = np.repeat(g, 3, axis=2)
    elif look < 0.75:  # sepia / toned
        x = g * (np.array([1.07, 0.92, 0.70], np.float32) + rng.uniform(-0.04, 0.04, 3).astype(np.float32))
    else:  # faded colour print: desaturated, drifted towards yellow or magenta
        x = g + (img.astype(np.float32) - g) * rng.uniform(0.2, 0.6)
        x = x * np.exp(rng.normal(0, 0.08, 3)).astype(np.float32)
    x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.4, 2.0) * s)
    mu = float(x.mean())
    x = (x - mu) * rng.uniform(0.35, 0.85) + mu + rng.uniform(0, 30)
    grain = cv2.GaussianBlur(rng.normal(0, 1, img.shape[:2]).astype(np.float32), (0, 0), rng.uniform(0.5, 1.2))
    x += (grain * rng.uniform(3, 16) / (grain.std() + 1e-6))[..., None]
    return _u8(x)


def vignette(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2))
    mask = 1 - rng.uniform(0.25, 0.6) * np.clip(r - 0.4, 0, None) ** 2
    return _u8(img.astype(np.float32) * mask[..., None])


def geometry(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild rotation, scale and shift around the alignment (imperfect landmarks on real photos)."""
    s = img.shape[0]
    m = cv2.getRotationMatrix2D((s / 2, s / 2), float(rng.uniform(-10, 10)), float(rng.uniform(0.92, 1.08)))
    m[:, 2] += rng.uniform(-0.04, 0.04, 2) * s
    return cv2.warpAffine(img, m, (img.shape[1], s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


# name → (function, training probability); the order is the order of application in training
DEGRADATIONS: dict[str, Degradation] = {
    "geometry": geometry, "grayscale": grayscale, "sepia": sepia, "colour_cast": colour_cast, "gamma": gamma,
    "contrast": contrast, "vignette": vignette, "lowres": lowres, "blur": blur, "defocus": defocus,
    "noise": noise, "scan_grain": scan_grain, "old_print": old_print, "jpeg": jpeg,
}
TRAIN_P = {"geometry": 0.4, "grayscale": 0.12, "sepia": 0.06, "colour_cast": 0.3, "gamma": 0.3, "contrast": 0.3,
           "vignette": 0.1, "lowres": 0.2, "blur": 0.1, "defocus": 0.08, "noise": 0.15, "scan_grain": 0.06,
           "jpeg": 0.35, "old_print": 0.0}  # old_print: a composite look, off unless a recipe asks (augment_p)
EXCLUSIVE = (("grayscale", "sepia"), ("blur", "defocus"))  # at most one of each pair per image


# pixel-level degradations: what the camera, the scanner and the encoder do at the photo's own resolution
PIXEL_LEVEL = ("blur", "defocus", "noise", "scan_grain", "old_print", "jpeg")
SOURCE_SCALE = (0.35, 1.0)  # working resolution of the pixel-level degradations, as a share of the cached crop


def shrink(img: np.ndarray, f: float) -> np.ndarray:
    """The image at f × its side (at least 16 px), area-averaged: a face at a small photo's working resolution."""
    h, w = img.shape[:2]
    return cv2.resize(img, (max(16, int(w * f)), max(16, int(h * f))), interpolation=cv2.INTER_AREA)


def _working_resolution(img: np.ndarray, rng: np.random.Generator, source_min: float) -> np.ndarray:
    """The image shrunk to a random working resolution, uniform in [source_min, SOURCE_SCALE[1]] × its side (at least
    16 px): where a small face in a photo gets its pixel-level degradations."""
    return shrink(img, rng.uniform(source_min, SOURCE_SCALE[1]))


def realistic(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0,
              source_scale: float = 0.0, p: dict[str, float] | None = None,
              source_min: float = SOURCE_SCALE[0]) -> np.ndarray:
    """Training augmentation: each degradation with its TRAIN_P probability (× strength), in a fixed order.

    source_scale: the probability that the pixel-level ones (PIXEL_LEVEL) run at a lower working resolution
    (uniform in [source_min, 1] × the crop's side) and are scaled back up: a small face in a photo gets its grain,
    noise, blur and JPEG blocks at the photo's pixel size, coarse relative to the face, not at the 256 px template's.
    p: probabilities that replace TRAIN_P's for the degradations it names (before × strength).
    """
    probs = TRAIN_P if not p else {**TRAIN_P, **p}
    picked = {k for k, q in probs.items() if q > 0 and rng.random() < q * strength}  # q = 0 draws nothing
    for a, b in EXCLUSIVE:
        if a in picked and b in picked:
            picked.discard(a if rng.random() < 0.5 else b)
    small = source_scale > 0 and rng.random() < source_scale and bool(picked & set(PIXEL_LEVEL))
    out = np.ascontiguousarray(img)
    h, w = out.shape[:2]
    for name, fn in DEGRADATIONS.items():
        if name not in picked:
            continue
        if small and name in PIXEL_LEVEL:
            out = _working_resolution(out, rng, source_min)
            small = False  # scaled once; the remaining pixel-level ones run at this size
        out = np.ascontiguousarray(fn(out, rng))
    if out.shape[:2] != (h, w):
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
    return out


RESAVE_KINDS = (("jpeg", 0.6), ("half", 0.2), ("shift", 0.2))  # how the second file of resave_pair differs


def resave_pair(img: np.ndarray, rng: np.random.Generator,
                source_min: float = SOURCE_SCALE[0]) -> tuple[np.ndarray, np.ndarray]:
    """Two files of one photo, as a user's copies of it differ (consistency training for stable answers, issue 19):
    the face at one working resolution (uniform in [source_min, 1] × the crop: a small face in a photo), saved as a
    good JPEG (q 85-98), and that file saved again worse: re-encoded at q 50-85 (60 %), scaled × 0.5 and back (20 %)
    or shifted by up to 2 of its pixels (20 %). Both are scaled back to the crop's size."""
    h, w = img.shape[:2]
    a = _jpeg_q(_working_resolution(img, rng, source_min), int(rng.integers(85, 99)))
    kind = rng.choice([k for k, _ in RESAVE_KINDS], p=[q for _, q in RESAVE_KINDS])
    sh, sw = a.shape[:2]
    if kind == "jpeg":
        b = _jpeg_q(a, int(rng.integers(50, 86)))
    elif kind == "half":
        b = cv2.resize(cv2.resize(a, (max(8, sw // 2), max(8, sh // 2)), interpolation=cv2.INTER_AREA), (sw, sh),
                       interpolation=cv2.INTER_LINEAR)
    else:
        m = np.float32([[1, 0, rng.uniform(-2, 2)], [0, 1, rng.uniform(-2, 2)]])
        b = cv2.warpAffine(a, m, (sw, sh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return tuple(np.ascontiguousarray(cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)) for x in (a, b))


# the degraded test: each test face under each of these (geometry is left out: it moves the face off the
# alignment the evaluation protocol measures; the stability benchmark covers shifts end to end)
TEST_DEGRADATIONS = ("grayscale", "sepia", "colour_cast", "gamma", "blur", "defocus", "jpeg", "noise", "lowres",
                     "scan_grain", "vignette")


def degrade_for_test(img: np.ndarray, name: str, seed: int) -> np.ndarray:
    """One named degradation, seeded per image (the same degraded copy for every model)."""
    if name not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; known: {', '.join(DEGRADATIONS)}")
    return DEGRADATIONS[name](np.ascontiguousarray(img), np.random.default_rng(seed))
