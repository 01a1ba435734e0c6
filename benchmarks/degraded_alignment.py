"""Where does a degraded photo's extra error come from: its own alignment, or the teacher reading degraded pixels?
Each test photo (saved JPEG q95) is degraded as `generalise.py` degrades it (low resolution, JPEG, blur, on the
original photo; and x0.5 and back), then read twice by the teacher alone (torch fp32, flip-TTA):

- pipeline: found and aligned on the degraded photo, as `predict` does;
- clean alignment: the degraded photo warped with the clean photo's alignment, so only the pixels differ.

    python benchmarks/degraded_alignment.py --n 120 --out docs/degraded_alignment.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agelens.faces.align import align_face, warp
from agelens.imageio import load_image
from agelens.utils import atomic_write_json
from generalise import degraded, encode, test_files, variant
from stability_source import teacher_reader

CONDITIONS = ("lowres", "half", "jpeg", "blur")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="teacher")
    ap.add_argument("--n", type=int, default=120, help="test photos per dataset (generalise.py's seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the summary JSON here")
    a = ap.parse_args()
    age, face = teacher_reader(a.model)

    res: dict = {"command": f"python benchmarks/degraded_alignment.py --model {a.model} --n {a.n} --seed {a.seed}"}
    for ds in ("aaf", "utkface"):
        rows: dict[str, list] = {k: [] for k in ("clean",) + CONDITIONS}
        for i, (f, y) in enumerate(test_files(ds, a.n, a.seed)):
            ref = encode(load_image(f), ".jpg", 95)
            fr = face(ref)
            if fr is None:
                continue
            crop, m = align_face(ref, fr.keypoints, 256)
            rows["clean"].append((y, age(crop), age(crop)))
            for k in CONDITIONS:
                img = variant(ref, "scale_0.5") if k == "half" else degraded(ref, k, i, a.seed)
                fl = face(img)
                if fl is None:
                    continue
                own = align_face(img, fl.keypoints, 256)[0]
                fixed = warp(img, m, 256)
                rows[k].append((y, age(own), age(fixed)))
        res[ds] = {}
        for k, r in rows.items():
            r = np.array(r)
            res[ds][k] = {"n": len(r), "pipeline": round(float(np.abs(r[:, 1] - r[:, 0]).mean()), 3),
                          "clean_alignment": round(float(np.abs(r[:, 2] - r[:, 0]).mean()), 3)}
        print(ds, json.dumps(res[ds]), flush=True)
    if a.out:
        atomic_write_json(Path(a.out), res)


if __name__ == "__main__":
    main()
