"""Images without a human face, on a wider sample than `occlusion_e2e.py`'s 92: scikit-image's sample photos (the
same list, people left out) whole and in --crops seeded crops each (30-80 % of each side), for each seed, written
as PNG files and answered by `AgeEstimator.predict` (shipped models, default settings). Reports the share answered
"no face found" per seed and in all, and each image that got an age with the step that found the face.

    python benchmarks/no_face.py --crops 12 --seeds 1 2 3 --out docs/no_face.json     # about 2 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import agelens.faces.detect as detect  # noqa: E402
from agelens import AgeEstimator  # noqa: E402
from agelens.utils import atomic_write_json  # noqa: E402
from occlusion_e2e import no_face_rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crops", type=int, default=12, help="seeded crops per sample image and seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", default="docs/no_face.json")
    ap.add_argument("--tile-grids", type=int, nargs="+", default=None,
                    help="the tile step's grids instead of faces.detect.TILE_GRIDS (to measure another set)")
    a = ap.parse_args()
    if a.tile_grids:
        detect.TILE_GRIDS = tuple(a.tile_grids)
    t0 = time.perf_counter()
    est = AgeEstimator.from_pretrained(backend=a.backend)
    per_seed, answered, n = {}, [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for k, seed in enumerate(a.seeds):
            r = no_face_rows(est, Path(tmp), a.crops, seed)
            first = k == 0  # the whole images are the same for every seed: counted with the first only
            seen = r["n"] if first else r["n"] - r["n"] // (a.crops + 1)
            wrong = [x for x in r["answered"] if first or not x["image"].endswith("/whole")]
            per_seed[str(seed)] = {"images": seen, "no_face_found": round(1 - len(wrong) / max(1, seen), 4)}
            answered += [{**x, "seed": seed} for x in wrong]
            n += seen
    out = {"command": "python benchmarks/no_face.py " + " ".join(sys.argv[1:]), "backend": est.backend,
           "tile_grids": list(detect.TILE_GRIDS),
           "images": n, "no_face_found": round(1 - len(answered) / max(1, n), 4), "per_seed": per_seed,
           "answered": answered, "seconds": round(time.perf_counter() - t0)}
    atomic_write_json(a.out, out)
    print({k: out[k] for k in ("images", "no_face_found", "per_seed", "seconds")})
    for x in answered:
        print(x)


if __name__ == "__main__":
    main()
