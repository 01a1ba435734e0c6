"""Does denoising grainy photos before `predict` undo the age that grain adds? End to end on test photos of both
datasets (`generalise.py`'s seeded sample and degradations): each photo, clean (JPEG q95) and under a few
degradations, and re-encoded JPEG q75 (the stability pair), answered by the shipped pipeline as it is and after
OpenCV's non-local means (`fastNlMeansDenoisingColored`, filter strength h) for each h in --hs. The noise sigma is
Immerkaer's estimate (1996) on the grey photo, at its own size and at half size (blurred grain reads as noise only
there); the gate (denoise only when the larger of the two > T) is evaluated afterwards for every T in --gates, on the
same answers.

    python benchmarks/denoise_probe.py --n 200 --hs 4 8 --gates 0 3 4 5 6 --out runs/denoise_probe.json   # 7.4 min
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json
from generalise import degraded, encode, largest_prediction, test_files, variant

CONDITIONS = ("clean", "scan_grain", "noise", "jpeg", "lowres", "grayscale", "blur")


def noise_sigma(rgb: np.ndarray) -> float:
    """Immerkaer's fast noise estimate (std of additive white noise) on the grey image."""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    r = np.abs(cv2.filter2D(g, -1, k)[1:-1, 1:-1])
    return float(np.sqrt(np.pi / 2) * r.mean() / 6.0)


def nlm(rgb: np.ndarray, h: float) -> np.ndarray:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    out = cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 7, 21)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def age(est: AgeEstimator, rgb: np.ndarray) -> float | None:
    p = largest_prediction(est, rgb)
    return None if p is None else float(p.age)


def gated(variants: list[str], gates: list[float]) -> list[tuple[str, float]]:
    """(variant, gate) pairs: the photo as it is once, each denoise at every gate (0: always)."""
    return [("none", 0.0)] + [(v, t) for v in variants[1:] for t in gates]


def pick(cell: dict, v: str, t: float) -> str:
    """The answer a gate takes for one photo: the denoised one where its noise estimate is above the gate."""
    return v if cell["sigma"] > t else "none"


def label(v: str, t: float) -> str:
    return v if t == 0 else f"{v}>{t}"


def summarise(rows: list[dict], variants: list[str], gates: list[float]) -> dict:
    """Per condition: MAE, mean signed error and answered count for each (variant, gate), the denoised share, and
    the noise estimate's spread; then the mean JPEG q95 -> q75 age change for each (variant, gate)."""
    summ = {}
    for c in CONDITIONS:
        sig = np.array([r[c]["sigma"] for r in rows])
        summ[c] = {"sigma_p10_50_90": [round(float(x), 2) for x in np.percentile(sig, [10, 50, 90])]}
        for v, t in gated(variants, gates):
            got = [(r[c][pick(r[c], v, t)], r["age"]) for r in rows]
            err = [p - y for p, y in got if p is not None]
            summ[c][label(v, t)] = {"mae": round(float(np.mean(np.abs(err))), 3),
                                    "signed": round(float(np.mean(err)), 3), "answered": len(err)}
            if v != "none":
                summ[c][label(v, t)]["denoised"] = round(float(np.mean([pick(r[c], v, t) != "none" for r in rows])), 3)
    summ["jpeg_q75_change"] = {}
    for v, t in gated(variants, gates):
        pairs = [(r["clean"][pick(r["clean"], v, t)], r["jpeg_q75"][pick(r["jpeg_q75"], v, t)]) for r in rows]
        summ["jpeg_q75_change"][label(v, t)] = round(float(np.mean([abs(p - q) for p, q in pairs
                                                                     if None not in (p, q)])), 3)
    return summ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hs", type=float, nargs="+", default=[4.0, 8.0])
    ap.add_argument("--gates", type=float, nargs="+", default=[0, 2, 3, 4, 5, 6, 8])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    est = AgeEstimator.from_pretrained()
    variants = ["none"] + [f"h{h:g}" for h in a.hs]
    res: dict = {"command": "python benchmarks/denoise_probe.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(a).items()), "datasets": {}}
    t0 = time.time()
    for ds in ("aaf", "utkface"):
        files = test_files(ds, a.n, a.seed)
        rows = []
        for i, (f, true) in enumerate(files):
            rgb = load_image(f)
            ref = encode(rgb, ".jpg", 95)
            imgs = {"clean": ref, "jpeg_q75": variant(ref, "jpeg_q75")}
            imgs.update({c: degraded(rgb, c, i, a.seed) for c in CONDITIONS[1:]})
            row = {"file": f.name, "age": true}
            for c, im in imgs.items():
                h, w = im.shape[:2]
                s = max(noise_sigma(im), noise_sigma(cv2.resize(im, (w // 2, h // 2), interpolation=cv2.INTER_AREA)))
                row[c] = {"sigma": round(s, 3), "none": age(est, im)}
                for hh in a.hs:
                    row[c][f"h{hh:g}"] = age(est, nlm(im, hh))
            rows.append(row)
            if (i + 1) % 50 == 0:
                print(f"{ds} {i + 1}/{len(files)} {time.time() - t0:.0f}s", flush=True)
        summ = summarise(rows, variants, a.gates)
        res["datasets"][ds] = {"summary": summ, "rows": rows}
        atomic_write_json(a.out, res)
    res["seconds"] = round(time.time() - t0)
    atomic_write_json(a.out, res)
    for ds, d in res["datasets"].items():
        print(ds)
        for c, s in d["summary"].items():
            print(" ", c, s)


if __name__ == "__main__":
    main()
