"""int8 against fp32 on degraded photos end to end: the int8 ranges were measured on clean faces, so does int8 cost
more on grey, grainy, low-resolution or compressed photos?

usage: python benchmarks/int8_degraded.py [--n 250] [--out docs/int8_degraded.json]

`AgeEstimator.predict` with backend onnx (fp32) and onnx-int8 on the same images: --n test photos per dataset
(`generalise.py`'s sample), clean (JPEG q95) and under each of `generalise.py`'s seeded degradations. Per
condition: MAE of each backend over the photos both answer, the paired difference int8 − fp32 with a 95 %
bootstrap interval, and the mean per-face age change.
"""

from __future__ import annotations

import argparse

import numpy as np

import generalise as g  # benchmarks/ is on the path when this file runs as a script
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json

CONDITIONS = ("clean", "grayscale", "sepia", "scan_grain", "lowres", "noise", "jpeg", "blur")


def compare(rows: list[dict], cond: str) -> dict:
    ok = [r for r in rows if r[f"{cond}_fp32"] is not None and r[f"{cond}_int8"] is not None]
    err = {b: np.array([abs(r[f"{cond}_{b}"] - r["age"]) for r in ok]) for b in ("fp32", "int8")}
    d = err["int8"] - err["fp32"]
    return {"n": len(ok), "mae_fp32": round(float(err["fp32"].mean()), 3), "mae_int8": round(float(err["int8"].mean()), 3),
            "paired": [round(x, 3) for x in g.paired_ci(d)],
            "change_mean": round(float(np.mean([abs(r[f"{cond}_int8"] - r[f"{cond}_fp32"]) for r in ok])), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=250, help="test photos per dataset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/int8_degraded.json")
    a = ap.parse_args()
    ests = {"fp32": AgeEstimator.from_pretrained(backend="onnx"),
            "int8": AgeEstimator.from_pretrained(backend="onnx-int8")}
    res = {"n": a.n, "seed": a.seed, "datasets": {}}
    for ds in ("utkface", "aaf"):
        rows = []
        for i, (f, age) in enumerate(g.test_files(ds, a.n, a.seed)):
            rgb = load_image(f)
            imgs = {c: g.encode(rgb, ".jpg", 95) if c == "clean" else g.degraded(rgb, c, i, a.seed) for c in CONDITIONS}
            r = {"age": age}
            for b, est in ests.items():
                for c, im in imgs.items():
                    out = g.one_age(est, im)
                    r[f"{c}_{b}"] = None if out is None else out[0]
            rows.append(r)
        res["datasets"][ds] = {c: compare(rows, c) for c in CONDITIONS}
        for c, v in res["datasets"][ds].items():
            print(ds, c, v, flush=True)
    atomic_write_json(a.out, res)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
