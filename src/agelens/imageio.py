"""Image decoding with clear errors: EXIF orientation honoured, any mode → RGB uint8, pixel-count guard."""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from .errors import AgelensError, ImageError, ImageTooLargeError

MAX_PIXELS = 60_000_000  # decompression-bomb guard (e.g. 20000×20000 is refused)
# A JPEG decoded reduced (`decode_reduced`) is checked at its reduced size, but libjpeg holds a progressive JPEG's
# coefficients at full size (about 2 bytes a pixel): its header may say at most this many pixels (200 MP phones pass)
MAX_JPEG_PIXELS = 210_000_000
MAX_FILE_BYTES = 1 << 30  # an image file larger than 1 GiB is refused before it is read (60 MP of 16-bit RGB: 360 MB)
# predict's faces need no more than this long side: a larger JPEG is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's
# DCT scaling, anti-aliased) while its long side stays at least this (a 12 MP phone photo: 4032 → 2016 px, decoded
# in a quarter of the time), and face boxes are scaled back (`decode_reduced`; docs/inference_levers.md)
FACE_MIN_SIDE = 1536
JPEG_SOI = b"\xff\xd8\xff"  # a JPEG file's first bytes (start of image, then a marker)
JPEG_EOI = b"\xff\xd9"  # a JPEG file's last two bytes (end of image)
# A JPEG cut short (an interrupted copy or download) is read when at most this share of its rows is missing (a file
# that lacks only its end marker, or its last few bytes); one missing more is refused, naming how much is missing
TRUNCATED_ROWS_OK = 0.02
# ISO-BMFF brands of HEIC/HEIF stills (an iPhone's photos): read through pillow-heif, the `heif` extra
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")


def is_heif(data: bytes) -> bool:
    """Whether the bytes are a HEIF container (an ftyp box whose major brand is a HEIF one)."""
    return len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS


def _heif_opener(name: str) -> None:
    """Registers pillow-heif's Pillow plugin (once), or ImageError naming the extra that reads HEIC photos."""
    try:
        import pillow_heif
    except ImportError:
        raise ImageError(f"{name}: a HEIC/HEIF photo; reading it needs pillow-heif: pip install 'agelens[heif]'") from None
    pillow_heif.register_heif_opener()


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """A Pillow image as RGB uint8, upright by its EXIF orientation: 16-bit and integer images stretched to 8 bits,
    float images (mode F) read as 0-1 where they lie in it (else stretched), transparency composited on white."""
    with contextlib.suppress(Exception):  # EXIF so broken Pillow cannot read its orientation: the pixels as stored
        im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        gray = np.empty(a.shape, np.uint8)
        unit = im.mode == "F" and lo >= 0.0 and hi <= 1.0  # a float image of 0-1 values, else stretched
        span = max(1e-12 if im.mode == "F" else 1.0, hi - lo)
        for r in range(0, len(a), 512):  # in bands of rows: a small 16-bit PNG of many pixels takes no float copy
            band = a[r:r + 512].astype(np.float64)
            # (x − lo) · 255 / span, in that order: the top level lands on 255 exactly, then truncates to it
            gray[r:r + 512] = np.round(band * 255) if unit else (band - lo) * 255 / span
        im = Image.fromarray(gray, "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def array_to_rgb(a: np.ndarray, channels: str = "rgb") -> np.ndarray:
    """An image array as RGB uint8 (H, W, 3), as `pil_to_rgb` reads the same pixels from a file: grey (H, W) or
    (H, W, 1) repeated, RGBA (BGRA with channels="bgr") composited on white, BGR reversed with channels="bgr"; uint8
    as it is, 16-bit by its high byte, floats in 0-1 (matplotlib's) scaled to 0-255, other numbers in 0-255 rounded.
    AgelensError names any other shape or range."""
    if channels not in ("rgb", "bgr"):
        raise AgelensError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or a.ndim == 3 and a.shape[2] in (3, 4)) or a.dtype.kind not in "uif" or a.dtype == np.uint64:
        raise AgelensError(f"expected an image array (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey, got shape {a.shape} "
                           f"dtype {a.dtype}")
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype != np.uint8:
        lo, hi = (float(np.nanmin(a)), float(np.nanmax(a))) if a.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise AgelensError(f"image array of {a.dtype} holds infinite values")
        if a.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        elif lo < 0 or hi > 255:
            raise AgelensError(f"expected pixel values in 0-255 (or floats in 0-1), got {a.dtype} from {lo:g} to {hi:g}")
        a = np.round(np.nan_to_num(a)).astype(np.uint8)
    if a.ndim == 2:
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if channels == "bgr":
        a = a[..., [2, 1, 0, 3][:a.shape[2]]]
    if a.shape[2] == 4:
        alpha = a[..., 3:].astype(np.float32) / 255.0
        a = np.round(a[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(a)


def _cannot_decode(name: str, e: Exception) -> ImageError:
    """"NAME: cannot decode image (the decoder's first line)"."""
    return ImageError(f"{name}: cannot decode image ({str(e).splitlines()[0] if str(e) else type(e).__name__})")


def read_pil(im: Image.Image) -> np.ndarray:
    """`pil_to_rgb` of a Pillow image a caller opened (its pixels are read here): ImageError where they cannot be."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data": the pixels are read all the same
            return pil_to_rgb(im)
    except MemoryError:
        raise
    except Exception as e:  # OSError, ValueError... and what a broken file makes a plugin raise (struct.error)
        raise _cannot_decode(getattr(im, "filename", "") or "<Pillow image>", e) from None


def _open(src, jpeg: bool) -> Image.Image:
    """The image's header read (no pixels decoded) from a path or a file object. jpeg: opened by Pillow's JPEG plugin
    itself: `Image.open` would apply Pillow's own decompression-bomb check to the header's size (a warning from 89 MP,
    an error from 179 MP), which would refuse a 108 or 200 MP phone photo that decodes at 1/8 of its size in under
    4 MP; `decode_reduced` checks the size it will decode instead."""
    return JpegImagePlugin.JpegImageFile(src) if jpeg else Image.open(src, formats=photo_formats())


# Raster photo formats Pillow may open (HEIF once pillow-heif registers it). Not EPS, which Pillow reads by running
# Ghostscript where it is installed, nor the scientific and stub formats a photo never comes in.
PHOTO_FORMATS = ("JPEG", "PNG", "BMP", "DIB", "GIF", "WEBP", "AVIF", "TIFF", "HEIF", "PPM", "JPEG2000", "TGA", "ICO",
                 "PSD", "SGI", "PCX", "QOI")


def photo_formats() -> list[str]:
    """The PHOTO_FORMATS this Pillow can open."""
    Image.init()
    return [f for f in PHOTO_FORMATS if f in Image.OPEN]


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array (first frame of animations)."""
    return decode_image_bytes(data, MAX_PIXELS, name)


def decode_image_bytes(data: bytes, max_pixels: int = MAX_PIXELS, name: str = "<bytes>") -> np.ndarray:
    """Decode in memory to RGB uint8 (EXIF orientation honoured). The header's dimensions are checked against
    max_pixels before any pixel is decoded: ImageTooLargeError when over it, ImageError for anything unusable."""
    return decode_reduced(data, None, max_pixels, name)[0]


def decode_reduced(data: bytes, min_side: int | None = FACE_MIN_SIDE, max_pixels: int = MAX_PIXELS,
                   name: str = "<bytes>") -> tuple[np.ndarray, float]:
    """(RGB uint8, scale): as `decode_image_bytes`, but a JPEG whose long side is at least twice min_side is decoded
    at the smallest of 1/2, 1/4, 1/8 of its size that keeps the long side at least min_side. scale = original long
    side / decoded long side (1.0 when decoded whole): multiply coordinates on the array by it to get the file's.
    max_pixels bounds the pixels decoded, checked before decoding: a 200 MP phone JPEG decoded at 1/8 passes, a
    200 MP PNG does not."""
    if not data:
        raise ImageError(f"{name}: empty file")
    if is_heif(data):
        _heif_opener(name)
    try:
        return _decode_reduced(data, min_side, max_pixels, name)
    except ImageError as e:
        # a JPEG cut short: decoded again with its end marker put back, and read where only a sliver is missing
        if not (data[:3] == JPEG_SOI and "truncated" in str(e) and data[-2:] != JPEG_EOI):
            raise
        try:
            rgb, scale = _decode_reduced(data + JPEG_EOI, min_side, max_pixels, name)
        except ImageError:
            raise e from None
        missing = _missing_rows(rgb)
        if missing > TRUNCATED_ROWS_OK * len(rgb):
            raise ImageError(f"{name}: the file is cut short (truncated): the last {missing} of its {len(rgb)} rows "
                             f"({missing / len(rgb):.0%}) are missing") from None
        return rgb, scale


def _missing_rows(rgb: np.ndarray) -> int:
    """How many rows at the bottom are one flat colour (what the decoder leaves where a cut JPEG's data ends)."""
    flat = (rgb == rgb[:, :1]).all((1, 2))
    return len(rgb) - int(np.flatnonzero(~flat).max()) - 1 if (~flat).any() else len(rgb)


def _pixels_said(e: Exception) -> str:
    """ "of N pixels" from Pillow's decompression-bomb message, which names the image's size, or ""."""
    m = re.search(r"Image size \((\d+) pixels\)", str(e))
    return f" of {int(m.group(1)):,} pixels" if m else ""


def _decode_reduced(data: bytes, min_side: int | None, max_pixels: int, name: str) -> tuple[np.ndarray, float]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # Pillow's "Corrupt EXIF data" and kin: the pixels are read
            with _open(io.BytesIO(data), jpeg=bool(min_side) and data[:3] == JPEG_SOI) as im:
                w, h = im.size
                if w * h > max(max_pixels, MAX_JPEG_PIXELS):
                    raise ImageTooLargeError(f"{name}: image is {w}x{h} ({w * h:,} pixels), over the "
                                             f"{max(max_pixels, MAX_JPEG_PIXELS):,}-pixel limit of any file")
                if min_side and im.format in ("JPEG", "MPO") and max(w, h) >= 2 * min_side:  # MPO: cameras' JPEGs
                    f = min_side / max(w, h)  # libjpeg picks the smallest scale whose result is at least this
                    im.draft(im.mode, (max(1, int(w * f + 0.999)), max(1, int(h * f + 0.999))))
                dw, dh = im.size  # what will be decoded: the header's size, or the reduced one after draft()
                if dw * dh > max_pixels:
                    at = f", {dw}x{dh} decoded at 1/{round(w / dw)}" if (dw, dh) != (w, h) else ""
                    raise ImageTooLargeError(f"{name}: image is {w}x{h}{at}, over the {max_pixels:,}-pixel limit")
                if w < 2 or h < 2:
                    raise ImageError(f"{name}: image is {w}x{h}, too small to hold a face")
                im.seek(0)
                im.load()
                return pil_to_rgb(im), max(w, h) / max(im.size)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"{name}: image{_pixels_said(e)} (from its header), over the {max_pixels:,}-pixel "
                                 "limit (decompression-bomb guard)") from None
    except MemoryError:
        raise
    except Exception as e:  # OSError, ValueError... and what a broken file makes a plugin raise (struct.error,
        raise _cannot_decode(name, e) from None  # TypeError, NotImplementedError): the file's fault, not ours


def file_box(box, scale: float) -> list[float]:
    """A box on a reduced decode (`decode_reduced`'s scale) in the file's own pixels, to 0.1 px."""
    return [round(float(v) * scale, 1) for v in box]


def image_size(path: str | Path) -> tuple[int, int]:
    """The image file's (width, height) as stored, from its header (no pixels decoded; a JPEG of any size)."""
    with open(path, "rb") as fh:
        head = fh.read(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _open(path, jpeg=head == JPEG_SOI) as im:
            return im.size


def read_stream(f) -> bytes:
    """The bytes of an open binary file object (an upload's stream, io.BytesIO): TypeError for a text-mode one,
    ImageError where it gives none (empty, or already read to its end)."""
    data = f.read()
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"the file object gave {type(data).__name__}, not bytes: open the image in binary mode")
    if not data:
        raise ImageError("the file object gave no bytes: empty, or already read to its end (seek(0) to read it again)")
    return bytes(data)


def decode_whole(data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, float]:
    """(RGB uint8, scale): the image whole, or where whole it would be over MAX_PIXELS decoded reduced as predict
    reads it (`decode_reduced` to FACE_MIN_SIDE; scale = the file's pixels per array pixel): what a result is drawn
    on (a 108 MP phone JPEG is drawn on at its reduced size rather than refused)."""
    try:
        return decode_reduced(data, None, MAX_PIXELS, name)
    except ImageTooLargeError:
        return decode_reduced(data, FACE_MIN_SIDE, MAX_PIXELS, name)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file to RGB uint8, raising ImageError naming the file and the problem."""
    return decode_image(read_file(path), str(path))


def load_reduced(path: str | Path, min_side: int | None = FACE_MIN_SIDE) -> tuple[np.ndarray, float]:
    """`load_image` with `decode_reduced`'s reduced decoding of large JPEGs: (RGB uint8, scale)."""
    return decode_reduced(read_file(path), min_side, MAX_PIXELS, str(path))


def read_file(path: str | Path) -> bytes:
    """The file's bytes, or ImageError naming the file and the problem."""
    if not str(path):
        raise ImageError("an empty path: no file named")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(path)):
        raise ImageError(f"{path}: a URL; agelens reads files and does not download (fetch it first, e.g. "
                         "`curl -s URL | agelens predict -`)")
    p = Path(path)
    if p.is_dir():
        from .data.adapters import IMAGE_EXTS

        if not os.access(p, os.R_OK | os.X_OK):
            raise ImageError(f"{p}: permission denied (a folder this user cannot read)")
        if not any(q.suffix.lower() in IMAGE_EXTS for q in p.rglob("*")):
            raise ImageError(f"{p}: is a directory with no image files in it (looked for {', '.join(sorted(IMAGE_EXTS))})")
        raise ImageError(f"{p}: is a directory, not an image (`agelens predict` and predict_many read folders)")
    if not p.exists():
        if p.is_symlink():
            target = os.readlink(p)
            if os.path.lexists(os.path.join(os.path.dirname(p), target)):
                raise ImageError(f"{p}: a link to {target}, a loop of links that never reaches a file")
            raise ImageError(f"{p}: a link to {target}, which is not there")
        if any(c in str(p) for c in "*?["):
            raise ImageError(f"{p}: no file matches this pattern")
        raise ImageError(f"{p}: file not found")
    try:
        st = p.stat()  # what a link leads to
        # a device (/dev/zero never ends), a pipe (blocks forever), a socket: refused, but for the pipe the shell
        # hands over for `agelens predict <(curl -s URL)`, read (at most MAX_FILE_BYTES + 1 bytes, below)
        handed = stat.S_ISFIFO(st.st_mode) and str(p).startswith(("/dev/fd/", "/proc/self/fd/"))
        if not (stat.S_ISREG(st.st_mode) or handed):
            via = " behind a link" if p.is_symlink() else ""
            raise ImageError(f"{p}: not a regular file (a device, pipe or socket{via})")
        if st.st_size > MAX_FILE_BYTES:
            raise ImageTooLargeError(f"{p}: the file is {st.st_size / 2**20:,.0f} MiB, over the "
                                     f"{MAX_FILE_BYTES // 2**20:,} MiB an image may take")
        with open(p, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)  # bounded: a file that grew since stat() is not read without end
    except PermissionError:
        raise ImageError(f"{p}: permission denied") from None
    except OSError as e:
        raise ImageError(f"{p}: cannot read ({e.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ImageTooLargeError(f"{p}: the file is over the {MAX_FILE_BYTES // 2**20:,} MiB an image may take")
    return data
