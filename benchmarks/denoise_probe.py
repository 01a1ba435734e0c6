"""Does denoising grainy photos before `predict` undo the age that grain adds? End to end on test photos of both
datasets (`generalise.py`'s seeded sample and degradations): each photo, clean (JPEG q95) and under a few
degradations, and re-encoded JPEG q75 (the stability pair), answered by the shipped pipeline as it is and after
OpenCV's non-local means (`fastNlMeansDenoisingColored`, filter strength h) for each h in --hs. The noise sigma is Immerkaer's estimate
(1996) on the grey photo, at its own size and at half size (blurred grain reads as noise only there); the gate
(denoise only when the larger of the two > T) is evaluated afterwards for every T in --gates, on the same answers.

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
        summ = {}
        for c in CONDITIONS:
            sig = np.array([r[c]["sigma"] for r in rows])
            summ[c] = {"sigma_p10_50_90": [round(float(x), 2) for x in np.percentile(sig, [10, 50, 90])]}
            for v in variants[1:]:
                for t in a.gates:
                    key = v if t == 0 else f"{v}>{t}"
                    errs, signed, used = [], [], 0
                    for r in rows:
                        pick = v if r[c]["sigma"] > t else "none"
                        used += pick != "none"
                        if r[c][pick] is not None:
                            errs.append(abs(r[c][pick] - r["age"]))
                            signed.append(r[c][pick] - r["age"])
                    summ[c][key] = {"mae": round(float(np.mean(errs)), 3), "signed": round(float(np.mean(signed)), 3),
                                    "denoised": round(used / len(rows), 3), "answered": len(errs)}
            e = [abs(r[c]["none"] - r["age"]) for r in rows if r[c]["none"] is not None]
            s_ = [r[c]["none"] - r["age"] for r in rows if r[c]["none"] is not None]
            summ[c]["none"] = {"mae": round(float(np.mean(e)), 3), "signed": round(float(np.mean(s_)), 3),
                               "answered": len(e)}
        stab = {}
        for v in variants:
            for t in ([0] if v == "none" else a.gates):
                key = v if t == 0 else f"{v}>{t}"
                ch = []
                for r in rows:
                    p = [r[c][v if r[c]["sigma"] > t else "none"] for c in ("clean", "jpeg_q75")]
                    if None not in p:
                        ch.append(abs(p[0] - p[1]))
                stab[key] = round(float(np.mean(ch)), 3)
        summ["jpeg_q75_change"] = stab
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
