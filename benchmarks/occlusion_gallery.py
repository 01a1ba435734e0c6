"""Render every occluder style on the bundled astronaut photo (public domain, NASA) → docs/occlusion_gallery.png.

    python benchmarks/occlusion_gallery.py [--out docs/occlusion_gallery.png] [--seed 0]
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from agelens.data.cache import largest_face, prepare_face
from agelens.faces.detect import FaceAnalyzer
from agelens.imageio import load_image
from agelens.occlusion.synth import BLOCK_COLOURS, MASK_STYLES, SUNGLASS_STYLES, occlude
from agelens.utils import atomic_write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/occlusion_gallery.png")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tile", type=int, default=192)
    a = ap.parse_args()
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
