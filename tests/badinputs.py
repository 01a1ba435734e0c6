"""A corpus of awkward and broken inputs, generated on the fly (no stored binaries).

`make_corpus(dir, face_rgb)` writes every entry and returns {name: (path, expectation)} where expectation is
"ok" (a readable image holding the face: it must be answered) or a fragment of the error message that the
entry points must give for it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

OK = "ok"


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def make_corpus(d: Path, face_rgb: np.ndarray) -> dict[str, tuple[Path, str]]:
    d.mkdir(parents=True, exist_ok=True)
    face = Image.fromarray(face_rgb)
    out: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, expect: str) -> None:
        p = d / name
        p.write_bytes(data)
        out[name] = (p, expect)

    good = _jpeg(face)
    put("good.jpg", good, OK)
    put("truncated.jpg", good[: len(good) // 3], "cut short (truncated)")
    rgba = face.convert("RGBA")
    rgba.putalpha(Image.new("L", face.size, 200))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    put("alpha.png", buf.getvalue(), OK)
    buf = io.BytesIO()
    face.convert("P", palette=Image.Palette.ADAPTIVE).save(buf, "PNG")
    put("palette.png", buf.getvalue(), OK)
    buf = io.BytesIO()
    gray16 = (np.asarray(face.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(buf, "PNG")  # mode I;16
    put("gray16.png", buf.getvalue(), OK)
    put("cmyk.jpg", _jpeg(face.convert("CMYK")), OK)
    put("gray.jpg", _jpeg(face.convert("L")), OK)
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (128, 128, 128)).save(buf, "PNG")
    put("one_pixel.png", buf.getvalue(), "too small")
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")  # ~50 KB on disk, 400 Mpx decoded
    put("bomb_20000x20000.png", buf.getvalue(), "pixel limit")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer rotates 90° clockwise
    put("exif_rotated.jpg", _jpeg(face.transpose(Image.Transpose.ROTATE_90), exif=exif), OK)
    frames = [face, face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated.gif", buf.getvalue(), OK)
    buf = io.BytesIO()
    face.save(buf, "WEBP", quality=90)
    put("face.webp", buf.getvalue(), OK)
    put("empty.jpg", b"", "empty file")
    put("random_bytes.jpg", np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "not a recognised image format")
    (d / "folder.jpg").mkdir(exist_ok=True)
    out["folder.jpg"] = (d / "folder.jpg", "is a directory")
    name = os.fsdecode(b"caf\xe9_\xff.jpg")  # not valid UTF-8: surrogate-escaped by Python
    try:
        (d / name).write_bytes(good)
        out["non_utf8_name"] = (d / name, OK)
    except (OSError, UnicodeError):  # file systems that refuse such names
        pass
    if os.geteuid() != 0:  # root reads anything: the permission entry only means something for other users
        p = d / "unreadable.jpg"
        p.write_bytes(good)
        p.chmod(0)
        out["unreadable.jpg"] = (p, "permission denied")
    out["missing.jpg"] = (d / "missing.jpg", "file not found")
    return out
