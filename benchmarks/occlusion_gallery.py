"""Render every occluder style on the bundled astronaut photo (public domain, NASA) → docs/occlusion_gallery.png,
or with --families every real-world occluder family (2–4 styles each, on the astronaut and a few UTKFace faces)
→ docs/occlusion_families.png.

    python benchmarks/occlusion_gallery.py [--out docs/occlusion_gallery.png] [--seed 0]
    python benchmarks/occlusion_gallery.py --families [--utkface ../shared/data/utkface]
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from agelens.faces.detect import FaceAnalyzer
from agelens.faces.prepare import largest_face, prepare_face
from agelens.imageio import load_image
from agelens.occlusion.synth import BLOCK_COLOURS, FAMILIES, MASK_STYLES, SUNGLASS_STYLES, occlude, styles_for
from agelens.utils import atomic_write

UTK_FACES = ("28_1_0_", "45_0_1_", "9_0_2_", "67_1_3_", "35_0_4_")  # age_gender_race prefixes: a spread of faces


def _faces(an: FaceAnalyzer, utkface: Path, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, landmarks) for the astronaut crop and the first UTKFace chip of each prefix that FaceMesh reads."""
    rgb = load_image(str(resources.files("agelens") / "assets" / "astronaut.jpg"))
    faces = [prepare_face(rgb, an, size, aligned=False, face=largest_face(an.find_faces(rgb)))]
    for pre in UTK_FACES if utkface.is_dir() else ():
        for f in sorted(utkface.glob(f"{pre}*.jpg"))[:5]:
            img = cv2.resize(load_image(str(f)), (size, size), interpolation=cv2.INTER_CUBIC)
            lm = an.mesh(img)
            if lm is not None:
                faces.append((img, lm))
                break
    return faces


def _tile(img: np.ndarray, lines: list[str], size: int) -> np.ndarray:
    t = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    t = cv2.copyMakeBorder(t, 0, 4 + 13 * len(lines), 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    for i, line in enumerate(lines):
        cv2.putText(t, line[:int(size / 5.6)], (3, size + 13 + 13 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return t


def families(a: argparse.Namespace) -> None:
    """One row per family kind: the clean face, then `--per-kind` styles spread over the kind's list and the faces."""
    faces = _faces(FaceAnalyzer(), Path(a.utkface), 256)
    rng = np.random.default_rng(a.seed)
    rows = []
    kinds = [k for fam, ks in FAMILIES.items() if fam != "paper" for k in ks]
    for r, kind in enumerate(kinds):
        styles = styles_for(kind)
        tiles = []
        for i in range(a.per_kind):
            img, lm = faces[(r + i) % len(faces)]
            style = styles[(i * len(styles)) // a.per_kind + (i * 7 + r) % max(1, len(styles) // a.per_kind)]
            o = occlude(img, lm, kind, rng, style=style)
            tiles.append(_tile(o.image, [f"{kind} {o.fraction:.0%}", *style.split("+"), ""][:3], a.tile))
        rows.append(np.hstack(tiles))
    half = (len(rows) + 1) // 2
    if len(rows) % 2:
        rows.append(np.full_like(rows[0], 255))
    grid = np.hstack([np.vstack(rows[:half]), np.full((half * rows[0].shape[0], 8, 3), 255, np.uint8),
                      np.vstack(rows[half:])])
    ok, buf = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    atomic_write(a.out, lambda tmp: Path(tmp).write_bytes(buf.tobytes()))
    print(f"wrote {a.out}: {len(kinds)} kinds × {a.per_kind} styles on {len(faces)} faces")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=None, help="default docs/occlusion_gallery.png (docs/occlusion_families.png)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tile", type=int, default=None, help="tile size (default 192; 144 with --families)")
    ap.add_argument("--families", action="store_true", help="render the real-world occluder families instead")
    ap.add_argument("--per-kind", type=int, default=3, help="with --families: styles per kind")
    ap.add_argument("--utkface", default="../shared/data/utkface", help="with --families: UTKFace folder (optional)")
    a = ap.parse_args()
    if a.families:
        a.out, a.tile = a.out or "docs/occlusion_families.png", a.tile or 144
        return families(a)
    a.out, a.tile = a.out or "docs/occlusion_gallery.png", a.tile or 192
    rgb = load_image(str(resources.files("agelens") / "assets" / "astronaut.jpg"))
    an = FaceAnalyzer()
    crop, lm = prepare_face(rgb, an, 256, aligned=False, face=largest_face(an.find_faces(rgb)))
    rng = np.random.default_rng(a.seed)
    jobs = [("sunglasses", s) for s in SUNGLASS_STYLES] + [("mask", s) for s in MASK_STYLES]
    jobs += [("sunglasses+mask", f"{g}+{m}") for g, m in zip(list(SUNGLASS_STYLES)[::3], list(MASK_STYLES)[1::3])]
    jobs += [(k, c) for k in ("eye_block", "mouth_block", "eye+mouth_block") for c in BLOCK_COLOURS]
    tiles = []
    for kind, style in [("clean", "")] + jobs:
        img = crop if kind == "clean" else occlude(crop, lm, kind, rng, style=style).image
        t = cv2.resize(img, (a.tile, a.tile), interpolation=cv2.INTER_AREA)
        t = cv2.copyMakeBorder(t, 0, 18, 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        label = kind if kind == "clean" else f"{kind}: {style}"
        cv2.putText(t, label[:34], (3, a.tile + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(t)
    cols = 8
    while len(tiles) % cols:
        tiles.append(np.full_like(tiles[0], 255))
    grid = np.vstack([np.hstack(tiles[r:r + cols]) for r in range(0, len(tiles), cols)])
    ok, buf = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    atomic_write(a.out, lambda tmp: Path(tmp).write_bytes(buf.tobytes()))
    print(f"wrote {a.out}: {len(jobs)} occluded styles + the clean face")


if __name__ == "__main__":
    main()
