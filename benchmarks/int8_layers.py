"""Which Conv nodes carry int8's error: the shipped teacher's single-view graph quantised from the shipped ranges with
the first k Conv nodes (and the last) left in fp32, against its fp32 graph (Cache protocol).

usage: python benchmarks/int8_layers.py [--n 1200] [--first 1 3 4 6] [--out docs/int8_layers.json]

Faces: --n cached validation faces, half UTKFace, half All-Age-Faces (`int8_ranges.faces`, seed 1: not the
calibration faces, seed 0). Per k: mean and p95 |age int8 − age fp32|, the mean signed shift where fp32 says 10-20,
and ms per face on one thread in batches of 8 (the batch engine's chunk). `export.onnx.INT8_FP32_FIRST` is the
shipped choice.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from agelens.export.onnx import INT8_FP32_FIRST, quantize_int8
from agelens.export.shipped import ensure_export
from agelens.utils import atomic_write_json, cpu_model, weights_dir
from int8_ranges import faces  # benchmarks/ is on the path when this file runs as a script


def ages_and_ms(path: Path, views: np.ndarray, reps: int) -> tuple[np.ndarray, float]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ages = np.concatenate([s.run(["age"], {"image": views[i:i + 8]})[0] for i in range(0, len(views), 8)])
    x = views[:8]
    s.run(["age"], {"image": x})
    t = time.perf_counter()
    for _ in range(reps):
        s.run(["age"], {"image": x})
    return ages, (time.perf_counter() - t) / reps / len(x) * 1000


def change_stats(ages: np.ndarray, ref: np.ndarray, teen: np.ndarray, ms: float) -> dict:
    """Mean, p95 and mean signed age change of an int8 graph against fp32 (`ref`), the mean shift on the `teen`
    faces, and its ms per face."""
    d = ages - ref
    return {"mean_change": round(float(np.abs(d).mean()), 3),
            "p95_change": round(float(np.percentile(np.abs(d), 95)), 3), "mean_signed": round(float(d.mean()), 3),
            "teen_shift": round(float(d[teen].mean()), 3), "ms_per_face": round(ms, 2)}


def recipe_rows(views: np.ndarray, reps: int, recipes: dict, label: str) -> tuple[dict, list[dict]]:
    """The shipped teacher's single-view graph quantised from the shipped ranges once per recipe (`quantize_int8`
    keyword arguments, keyed by the value each row records under `label`), each against the fp32 graph on `views`:
    ({faces, teen_faces, fp32_ms_per_face}, one `change_stats` row per recipe)."""
    fp32 = ensure_export() / "teacher.notta.onnx"
    ranges = weights_dir() / "teacher.notta.int8-ranges.json"
    ref, ms_ref = ages_and_ms(fp32, views, reps)
    teen = (ref >= 10) & (ref < 20)
    print(f"fp32: {ms_ref:.2f} ms per face", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (key, kw) in enumerate(recipes.items()):
            q = Path(tmp) / f"r{k}.int8.onnx"
            quantize_int8(fp32, q, None, ranges, **kw)
            ages, ms = ages_and_ms(q, views, reps)
            rows.append({label: key, **change_stats(ages, ref, teen, ms)})
            print(rows[-1], flush=True)
    return {"faces": len(views), "teen_faces": int(teen.sum()), "fp32_ms_per_face": round(ms_ref, 2)}, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1200)
    ap.add_argument("--first", type=int, nargs="+", default=[1, 3, 4, 6])
    ap.add_argument("--reps", type=int, default=150)
    ap.add_argument("--out", default="docs/int8_layers.json")
    a = ap.parse_args()
    views = faces(("utkface", "aaf"), 0.0, a.n, 224, 160, 1)
    stats, rows = recipe_rows(views, a.reps, {k: {"fp32_first": k} for k in a.first}, "fp32_first")
    atomic_write_json(a.out, {"cpu": cpu_model(), **stats, "shipped": INT8_FP32_FIRST, "rows": rows})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
