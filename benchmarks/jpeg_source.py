"""Where a re-saved photo's age change comes from, and whether re-encoding every input first would remove it.

1. The bundled astronaut, end to end and with one alignment held fixed (the PNG's): the image saved as JPEG at
   several qualities; the aligned crop itself saved as JPEG; the crop shifted by 1-2 px. Shows whether the change
   comes from the JPEG blocks of the photo (enlarged with a small face), from the crop's pixels, or from alignment.
2. "Quality normalisation": each input re-encoded as JPEG at quality QN before `predict`, for each QN in --qn (none
   = as shipped), on validation photos of both datasets (`generalise.py`'s sample): clean MAE and the stability
   benchmark's changes (the photo saved q95, then re-encoded q75, scaled x0.5 and back, shifted 2 px).

    python benchmarks/jpeg_source.py --part val --n 200 --seed 1 --qn none 75 80 70 --out docs/jpeg_source.json
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from agelens import AgeEstimator
from agelens.faces.align import warp
from agelens.imageio import load_image
from agelens.utils import atomic_write_json
from generalise import encode, largest_prediction, test_files, variant


def pil_jpeg(img: np.ndarray, q: int) -> np.ndarray:
    """The image saved as JPEG at quality q by Pillow (as a user's tool saves it) and read back."""
    b = io.BytesIO()
    Image.fromarray(img).save(b, "JPEG", quality=q)
    return np.array(Image.open(b).convert("RGB"))


def astronaut(est: AgeEstimator) -> dict:
    import skimage.data as skd

    a = skd.astronaut()
    faces = est.faces_of(a)
    crop, src = faces[0][2], faces[0][5]

    def age(crops: list[np.ndarray]) -> float:
        return round(float(est._ages(est.teacher, np.stack(crops))[0][0]), 1)

    return {
        "end_to_end": {"png": round(est.predict(a)[0].age, 1),
                       **{f"q{q}": round(est.predict(pil_jpeg(a, q))[0].age, 1) for q in (95, 90, 75, 60)}},
        "png_alignment_image_jpeg": {f"q{q}": age([warp(pil_jpeg(a, q), src.matrix, crop.shape[0])])
                                     for q in (100, 95, 90, 75, 60)},
        "crop_jpeg": {"png": age([crop]), **{f"q{q}": age([pil_jpeg(crop, q)]) for q in (95, 75, 50)}},
        "crop_shift_px": {str(s): age([np.roll(crop, s, axis=1)]) for s in (-2, -1, 0, 1, 2)},
    }


def normalisation(est: AgeEstimator, part: str, n: int, seed: int, qns: list[int | None]) -> dict:
    def age(rgb: np.ndarray, qn: int | None) -> float:
        p = largest_prediction(est, rgb if qn is None else encode(rgb, ".jpg", qn))
        return np.nan if p is None else p.age

    res = {}
    for ds in ("utkface", "aaf"):
        rows = {str(q): [] for q in qns}
        for f, true in test_files(ds, n, seed, part=part):
            rgb = load_image(f)
            ref = encode(rgb, ".jpg", 95)
            vs = [variant(ref, k) for k in ("jpeg_q75", "scale_0.5", "shift_2px")]
            for q in qns:
                rows[str(q)].append([true, age(rgb, q), age(ref, q)] + [age(v, q) for v in vs])
        out = {}
        for q, r in rows.items():
            r = np.array(r, float)
            out[q] = {"mae": round(float(np.nanmean(np.abs(r[:, 1] - r[:, 0]))), 3),
                      **{k: round(float(np.nanmean(np.abs(r[:, 3 + i] - r[:, 2]))), 3)
                         for i, k in enumerate(("change_q75", "change_scale", "change_shift"))}}
            print(ds, q, out[q], flush=True)
        res[ds] = out
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="val")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--qn", nargs="+", default=["none", "75", "80", "70"])
    ap.add_argument("--out", default="docs/jpeg_source.json")
    a = ap.parse_args()
    t0 = time.time()
    est = AgeEstimator.from_pretrained()
    res = {"command": f"python benchmarks/jpeg_source.py --part {a.part} --n {a.n} --seed {a.seed} --qn "
                      f"{' '.join(a.qn)} --out {a.out}", "backend": est.backend, "astronaut": astronaut(est)}
    print(res["astronaut"], flush=True)
    res["normalisation"] = normalisation(est, a.part, a.n, a.seed, [None if q == "none" else int(q) for q in a.qn])
    res["seconds"] = round(time.time() - t0)
    atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
