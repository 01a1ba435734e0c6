"""Image decoding with clear errors: EXIF orientation honoured, any mode → RGB uint8, pixel-count guard."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, ImageTooLargeError

MAX_PIXELS = 60_000_000  # decompression-bomb guard (e.g. 20000×20000 is refused)


def _to_rgb(im: Image.Image) -> np.ndarray:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        a = (255 * (a - a.min()) / max(1.0, a.max() - a.min())).astype(np.uint8)
        im = Image.fromarray(a, "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array (first frame of animations)."""
    return decode_image_bytes(data, MAX_PIXELS, name)


def decode_image_bytes(data: bytes, max_pixels: int = MAX_PIXELS, name: str = "<bytes>") -> np.ndarray:
    """Decode in memory to RGB uint8 (EXIF orientation honoured). The header's dimensions are checked against
    max_pixels before any pixel is decoded: ImageTooLargeError when over it, ImageError for anything unusable."""
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageTooLargeError(f"{name}: image is {w}x{h}, over the {max_pixels:,}-pixel limit")
                if w < 2 or h < 2:
                    raise ImageError(f"{name}: image is {w}x{h}, too small to hold a face")
                im.seek(0)
                im.load()
                return _to_rgb(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"{name}: image dimensions exceed the pixel limit (decompression-bomb guard)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{name}: cannot decode image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file to RGB uint8, raising ImageError naming the file and the problem."""
    p = Path(path)
    if p.is_dir():
        raise ImageError(f"{p}: is a directory, not an image")
    if not p.exists():
        raise ImageError(f"{p}: file not found")
    try:
        data = p.read_bytes()
    except PermissionError:
        raise ImageError(f"{p}: permission denied") from None
    except OSError as e:
        raise ImageError(f"{p}: cannot read ({e.strerror})") from None
    return decode_image(data, str(p))
