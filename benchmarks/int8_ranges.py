"""Calibrate the int8 activation ranges that ship beside the weights (`src/agelens/weights/<graph>.int8-ranges.json`).

usage: python benchmarks/int8_ranges.py [--n 320] [--seed 0] [--weights src/agelens/weights] [--roles ROLE ...]

Each graph is calibrated on the faces it answers in use: the teacher on clean validation faces (UTKFace), the
student on occluded ones (UTKFace + All-Age-Faces validation faces, half with one of the paper's six occluders, half
with any family), the occlusion detector on an even clean/occluded mix. Needs the prepared caches
(`agelens prepare -c configs/teacher_160.yaml`). Writes the ranges and each card's `int8_ranges` (the weights'
SHA-256, so the export uses them only with these weights); the next ONNX export quantises from them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from agelens.data.cache import FaceCache
from agelens.data.views import centre_views
from agelens.export.onnx import STATIC_INT8, export_model, quantize_int8
from agelens.occlusion import ALL_TYPES, OCCLUSION_TYPES, occlude
from agelens.utils import atomic_write_json, sha256_file

CALIBRATION = {"teacher": (("utkface",), 0.0), "student": (("utkface", "aaf"), 1.0), "occlusion": (("utkface", "aaf"), 0.5)}


def faces(datasets: tuple[str, ...], occluded: float, n: int, crop: int, size: int, seed: int) -> np.ndarray:
    """n validation faces split evenly over `datasets`, a share `occluded` of them occluded (seeded), as views."""
    rng = np.random.default_rng(seed)
    out = []
    for ds in datasets:
        cache = FaceCache(f"cache/{ds}/val")
        for i in np.sort(rng.choice(len(cache), n // len(datasets), replace=False)):
            img = np.asarray(cache.images[i])
            if rng.random() < occluded:
                kinds = OCCLUSION_TYPES if rng.random() < 0.5 else ALL_TYPES
                img = occlude(img.copy(), np.asarray(cache.landmarks[i])[:, :2], str(rng.choice(kinds)), rng).image
            out.append(img)
    return centre_views(out, crop, size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=320, help="calibration faces per model (a multiple of 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", type=Path, default=Path("src/agelens/weights"))
    ap.add_argument("--roles", nargs="+", default=list(CALIBRATION), choices=list(CALIBRATION),
                    help="the graphs to calibrate (default: all; a retrained model alone: its role)")
    a = ap.parse_args()
    for role in a.roles:
        datasets, occluded = CALIBRATION[role]
        card_p = a.weights / f"{role}.json"
        card = json.loads(card_p.read_text())
        files = []
        with tempfile.TemporaryDirectory() as tmp:
            graphs = {role: export_model(role, Path(tmp) / f"{role}.onnx")}
            if graphs[role]["kind"] == "age" and graphs[role]["tta"]:
                graphs[f"{role}.notta"] = export_model(role, Path(tmp) / f"{role}.notta.onnx", tta=False)
            meta = graphs[role]
            views = faces(datasets, occluded, a.n, meta["crop_size"], meta["input_size"], a.seed)
            for stem in graphs:
                ranges = a.weights / f"{stem}.int8-ranges.json"
                quantize_int8(Path(tmp) / f"{stem}.onnx", Path(tmp) / f"{stem}.int8.onnx", views, ranges)
                ranges.chmod(0o644)
                files.append(ranges.name)
                print(f"{role}: {ranges}", flush=True)
        card["int8_ranges"] = {
            "weights_sha256": sha256_file(a.weights / f"{role}.safetensors"), "files": files,
            "calibration": f"{a.n} validation faces of {' + '.join(datasets)}, {occluded:.0%} occluded (seed {a.seed})",
            "recipe": "python benchmarks/int8_ranges.py", "quantisation": STATIC_INT8}
        atomic_write_json(card_p, card)


if __name__ == "__main__":
    main()
