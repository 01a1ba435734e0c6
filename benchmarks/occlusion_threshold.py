"""The occlusion detector's threshold from clean validation photos end to end.

`python -m agelens.train.guards fit occlusion` sets the threshold at the 99th percentile of 600 UTKFace validation
crops. Through the whole pipeline (detection, alignment, the teacher's head and the separate network in cascade)
other photos score differently: the detector fine-tuned on photo degradations flagged 3.6 % of clean
All-Age-Faces test photos at its fit threshold. This script runs `AgeEstimator.predict` with the shipped weights on
seeded clean validation photos of both datasets (JPEG q95, largest face) and reports the percentiles of the
occlusion score; `--write-card` stores the QUANTILE one as the shipped card's threshold (the next ONNX export
carries it).

    python benchmarks/occlusion_threshold.py --n 300 --seed 7 --out runs/occlusion_threshold.json --write-card

--degraded pools each photo under every test degradation (`data.augment.TEST_DEGRADATIONS`, generalise.py's seeds)
with the clean ones: the flag then keeps 99 % specificity on the photos users send, scans and small faces included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import generalise as g  # benchmarks/ is on the path when this file runs as a script
from agelens.data.augment import TEST_DEGRADATIONS
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json, weights_dir

QUANTILE = 0.99  # ≈ 99 % specificity on clean validation photos, as the fit's rule on crops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="validation photos per dataset")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--write-card", action="store_true", help="store the threshold in weights/occlusion.json")
    ap.add_argument("--degraded", action="store_true",
                    help="pool each photo under every test degradation too (the photos users send are often degraded)")
    a = ap.parse_args()
    conds = ("clean", *(TEST_DEGRADATIONS if a.degraded else ()))
    est = AgeEstimator.from_pretrained()
    scores: dict[str, list[float]] = {}
    by_cond: dict[str, list[float]] = {}
    for ds in ("utkface", "aaf"):
        s = []
        for i, (f, _) in enumerate(g.test_files(ds, a.n, a.seed, part="val")):
            rgb = load_image(f)
            for c in conds:
                img = rgb if c == "clean" else g.degraded(rgb, c, i, a.seed)
                p = g.largest_prediction(est, g.encode(img, ".jpg", 95))
                if p is not None and p.extra.get("occlusion_score") is not None:
                    s.append(float(p.extra["occlusion_score"]))
                    by_cond.setdefault(c, []).append(s[-1])
        scores[ds] = s
        print(ds, len(s), "quantiles 0.95 / 0.98 / 0.99:", np.quantile(s, [0.95, 0.98, 0.99]).round(4), flush=True)
    pooled = np.concatenate([np.asarray(v) for v in scores.values()])
    thr = round(float(np.quantile(pooled, QUANTILE)), 4)
    res = {"command": " ".join(["python benchmarks/occlusion_threshold.py", *sys.argv[1:]]), "quantile": QUANTILE,
           "threshold": thr, "n": {k: len(v) for k, v in scores.items()},
           "specificity_at_threshold": {k: round(float((np.asarray(v) < thr).mean()), 4) for k, v in scores.items()},
           "specificity_per_condition": {k: round(float((np.asarray(v) < thr).mean()), 4) for k, v in by_cond.items()}}
    print(json.dumps(res))
    if a.out:
        atomic_write_json(a.out, {**res, "scores": scores})
    if a.write_card:
        card_p = weights_dir() / "occlusion.json"
        card = json.loads(card_p.read_text())
        fit_thr = (card.get("test_metrics") or {}).get("threshold", card["threshold"])  # the fit's own rule
        card["threshold_rule"] = {"threshold": thr, "fit_threshold": fit_thr, "command": res["command"],
                                  "rule": f"the {QUANTILE:.0%} quantile of the occlusion score of clean validation "
                                          "photos end to end (both datasets, largest face)"
                                          + (", each also under every test degradation" if a.degraded else "")}
        card["threshold"] = thr
        atomic_write_json(card_p, card)
        print(f"wrote {card_p}")


if __name__ == "__main__":
    main()
