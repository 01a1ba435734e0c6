"""Does realigning the student's crops (`faces.realign`) make its answers less stable? Seeded realocc photos (real
masks and sunglasses, the "measure" half) re-encoded JPEG q95 and q75; for the largest face that the student
answers under both, how far its age moves, with realignment on and off (`AgeEstimator.realign`).

    python benchmarks/realign_stability.py --n 150 --out docs/realign_stability.json
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from agelens.errors import NoFaceError
from agelens.faces.prepare import largest_face
from agelens.inference.predictor import AgeEstimator
from agelens.train.guards import realocc_files
from agelens.utils import atomic_write_json


def reencoded(img: Image.Image, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/realign_stability.json"))
    a = ap.parse_args()
    files = [a.shared / f for f in realocc_files(a.shared, "measure")]
    files = [files[i] for i in sorted(np.random.default_rng(a.seed).choice(len(files), a.n, replace=False))]
    est = AgeEstimator.from_pretrained(backend="auto")
    moved: dict[str, list[float]] = {"realigned": [], "as found": []}
    for f in files:
        img = Image.open(f).convert("RGB")
        hi, lo = reencoded(img, 95), reencoded(img, 75)
        for name, flag in (("realigned", True), ("as found", False)):
            est.realign = flag
            try:
                p, q = largest_face(est.predict(hi)), largest_face(est.predict(lo))
            except NoFaceError:
                continue
            if p.model == "student" and q.model == "student":
                moved[name].append(abs(p.age - q.age))
    out = {"command": f"python benchmarks/realign_stability.py --n {a.n} --seed {a.seed} --out {a.out}",
           "photos": len(files)}
    for name, d in moved.items():
        d = np.array(d)
        out[name] = {"faces": len(d), "mean_change": round(float(d.mean()), 3),
                     "p99_change": round(float(np.percentile(d, 99)), 2), "over_5_years": round(float((d > 5).mean()), 4)}
        print(name, out[name])
    atomic_write_json(a.out, out)


if __name__ == "__main__":
    main()
