"""Old-print looks on cached validation faces (Cache protocol): teachers compared face by face.

`benchmarks/old_print.py` runs the looks end to end, where a teacher without its guard heads and shipped bands
answers other faces than the shipped one; this isolates the age model. Every cached face of a validation part
(aligned crop, centre view at the model's input size, one view, fp32) under each look of `old_print.old_print`
(clean; light = blur 0.6, contrast x0.7, grain 6; moderate; heavy), seeded per face. Per look: each model's MAE,
and for each pair A>B the paired change B - A with a 95 % bootstrap interval, and its mean over ages 0-12.

    python benchmarks/old_print_cached.py --models shipped=teacher print=runs/teacher_print \\
        --pairs shipped>print --out docs/old_print_training.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from agelens.data.cache import FaceCache
from agelens.utils import atomic_write_json
from degradation_shift import (  # benchmarks/ is on the path when this file runs as a script
    ages_of,
    load_models,
)
from generalise import paired_ci
from old_print import LOOKS, old_print

CACHED_LOOKS = {"clean": None, "light": (0.6, 0.7, 6.0), "moderate": LOOKS["moderate"], "heavy": LOOKS["heavy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["shipped=teacher"], help="LABEL=MODEL ...")
    ap.add_argument("--pairs", nargs="*", default=[], help="A>B ...: the paired change B - A")
    ap.add_argument("--datasets", nargs="+", default=["utkface", "aaf"])
    ap.add_argument("--part", default="val")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    models = load_models(a.models)
    pairs = [p.split(">") for p in a.pairs]
    if unknown := sorted({x for p in pairs for x in p} - set(models)) or [p for p in a.pairs if p.count(">") != 1]:
        ap.error(f"--pairs: each A>B must name two of the --models labels; not understood: {unknown}")
    rows = {}
    for ds in a.datasets:
        cache = FaceCache(f"cache/{ds}/{a.part}")
        truth = np.asarray(cache.ages, np.float32)
        kids = truth <= 12
        clean = [np.asarray(cache.images[i]) for i in range(len(cache))]
        for name, look in CACHED_LOOKS.items():
            imgs = clean if look is None else [old_print(im, *look, seed=j) for j, im in enumerate(clean)]
            err = {k: np.abs(ages_of(m, imgs, c, s) - truth) for k, (m, c, s) in models.items()}
            row: dict = {k: round(float(e.mean()), 3) for k, e in err.items()}
            for x, y in pairs:
                row[f"{y}-{x}"] = [round(v, 3) for v in paired_ci(err[y] - err[x])]
                row[f"{y}-{x} ages 0-12"] = round(float((err[y] - err[x])[kids].mean()), 3)
            rows[f"{ds} {name}"] = {"n": len(truth), **row}
            print(ds, name, row, flush=True)
    if a.out:
        atomic_write_json(a.out, {"command": "python benchmarks/old_print_cached.py --models " + " ".join(a.models)
                                  + (" --pairs " + " ".join(a.pairs) if a.pairs else ""),
                                  "protocol": f"Cache: every cached {a.part} face, centre view, one view, fp32",
                                  "looks": {k: v for k, v in CACHED_LOOKS.items() if v}, "rows": rows})


if __name__ == "__main__":
    main()
