"""The AVX2 int8 flavour's weights: 7-bit everywhere against 7-bit in dense Conv and 8-bit in depthwise Conv (the
shipped "int8w7" recipe since 2026-12-07), and 8-bit everywhere, each against the fp32 graph (E2E-aligned crops).

usage: python benchmarks/int8_w7_depthwise.py [--n 300] [--seed 1] [--out docs/int8_w7_depthwise.json]

Faces: --n validation photos of each dataset (`generalise.test_files`, seeded), found and aligned as `predict`
does (`faces.prepare.prepare_face`), read as the teacher's single-view graph reads them (centre 224 of 256 at its
input size). Per recipe: mean, p95 and mean signed |age int8 - age fp32|, the mean shift where fp32 says 10-20, and
ms per face on one thread in batches of 8. Why 8-bit weights are safe in depthwise Conv on AVX2 without VNNI:
`export.onnx._depthwise_weights_from`.
"""

from __future__ import annotations

import argparse

import numpy as np

from agelens.data.views import centre_views
from agelens.errors import AgelensError
from agelens.faces.detect import FaceAnalyzer
from agelens.faces.prepare import prepare_face
from agelens.imageio import load_image
from agelens.utils import atomic_write_json, cpu_flags, cpu_model
from generalise import SPLITS, test_files  # benchmarks/ on the path when run as a script
from int8_layers import recipe_rows


def aligned_views(n: int, seed: int, crop: int = 224, size: int = 160) -> np.ndarray:
    """n validation photos per dataset (`generalise.test_files`), aligned as `predict` aligns them, as the teacher's
    uint8 views."""
    analyzer, crops = FaceAnalyzer(), []
    try:
        for ds in SPLITS:
            for path, _ in test_files(ds, n, seed, part="val"):
                try:
                    crops.append(prepare_face(load_image(str(path)), analyzer, 256, aligned=False)[0])
                except AgelensError:  # no face found: that photo is left out
                    continue
    finally:
        analyzer.close()
    return centre_views(crops, crop, size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="validation photos per dataset")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--out", default="docs/int8_w7_depthwise.json")
    a = ap.parse_args()
    views = aligned_views(a.n, a.seed)
    recipes = {"8-bit weights everywhere (VNNI's int8; saturates on AVX2 alone)": {},
               "7-bit weights everywhere (int8w7 before)": {"reduce_range": True, "depthwise_8bit": False},
               "7-bit dense, 8-bit depthwise (int8w7 now)": {"reduce_range": True}}
    stats, rows = recipe_rows(views, a.reps, recipes, "recipe")
    res = {"cpu": cpu_model(), "avx2_without_vnni": "avx2" in cpu_flags() and "avx512_vnni" not in cpu_flags(),
           **stats, "rows": rows}
    atomic_write_json(a.out, res)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
