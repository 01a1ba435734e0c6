"""All-Age-Faces test photos that the shipped guards saw as training faces vs the rest, end to end: answered share
and occlusion flag. The guard crops (`python -m agelens.train.guards data`) once took their All-Age-Faces faces
from the dataset's own `aaf_split` column, whose first 1,500 "train" rows include 143 faces of this project's test
part (`splits/aaf_seed0.json`); this measures what that leak does to the reported specificity.

    python benchmarks/guard_leak.py --out docs/guard_leak.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from agelens.data.splits import split_part
from agelens.errors import NoFaceError
from agelens.faces.prepare import largest_face
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--n-seen", type=int, default=1500, help="rows of the old source the guards took")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    aaf = pd.read_csv(a.shared / "aaf.csv")
    seen = set(aaf[aaf.aaf_split == "train"].file[:a.n_seen])
    est = AgeEstimator.from_pretrained()
    rows: dict[str, list] = {"seen by the guards": [], "not seen": []}
    for f in split_part(Path("splits/aaf_seed0.json"), "test"):
        key = "seen by the guards" if f in seen else "not seen"
        try:
            faces = est.predict(load_image(a.shared / "aaf" / f))
        except NoFaceError:
            rows[key].append((0.0, 0.0, np.nan))
            continue
        k = largest_face(faces)
        rows[key].append((1.0, float(k.extra["occluded"]), k.extra["occlusion_score"]))
    res = {"command": "python benchmarks/guard_leak.py" + (f" --out {a.out}" if a.out else "")}
    for key, v in rows.items():
        v = np.array(v, np.float64)
        res[key] = {"n": len(v), "answered": round(float(v[:, 0].mean()), 4),
                    "flagged_occluded": round(float(v[:, 1].mean()), 4),
                    "median_occlusion_score": round(float(np.nanmedian(v[:, 2])), 4)}
    print(json.dumps(res, indent=1))
    if a.out:
        atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
