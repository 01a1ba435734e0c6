"""One person in a large photo, end to end: the tiles before the whole-image step in images 640 px or longer
(`faces.detect` WHOLE_AFTER_TILES_MIN_SIDE), the finest grid where no step found a face (LONE_TILES) and the tiles
beside faces the ImageNet check turned away (VETOED_TILES) on and off, in one process, with the shipped models
(`AgeEstimator.predict` on JPEG files).

    python benchmarks/lone_face.py --faces 12 --realocc 150 --phone 30 --out docs/lone_face

- composites: one UTKFace test photo (a face about half of its crop) pasted at a seeded spot on a scikit-image photo
  without a person (coffee, grass, chelsea the cat, rocket; enlarged and lightly blurred) at 1000, 2000 and 4000 px
  wide (4:3), the face 2, 3, 5 or 8 % of the width: the face found (a predicted box holds the pasted crop's centre),
  boxes that hold none (extra), the steps that answered, MAE of the faces found, ms per image;
- whether anything else moves: realocc measure-half photos enlarged --factor times and --phone All-Age-Faces test
  photos as 4032 px phone JPEGs (`benchmarks/inference.py --phone`): faces answered, photos whose answers changed, ms
  per image with the rules on and off taking turns over --rounds.

Writes OUT.json and OUT.md. Run from the repo root.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

import agelens.faces.detect as D
from agelens.errors import NoFaceError
from agelens.inference.predictor import AgeEstimator

RULES = {"WHOLE_AFTER_TILES_MIN_SIDE": D.WHOLE_AFTER_TILES_MIN_SIDE, "LONE_TILES": D.LONE_TILES,
         "VETOED_TILES": D.VETOED_TILES}
BACKGROUNDS = ("coffee", "grass", "chelsea", "rocket")
WIDTHS = (1000, 2000, 4000)
SHARES = (0.02, 0.03, 0.05, 0.08)


def rules(on: bool) -> None:
    D.WHOLE_AFTER_TILES_MIN_SIDE = RULES["WHOLE_AFTER_TILES_MIN_SIDE"] if on else 10**9
    D.LONE_TILES = RULES["LONE_TILES"] and on
    D.VETOED_TILES = RULES["VETOED_TILES"] and on


def faces(est: AgeEstimator, path: Path) -> list:
    try:
        return est.predict(path)
    except NoFaceError:
        return []


def background(name: str, w: int, h: int) -> np.ndarray:
    from skimage import data

    im = getattr(data, name)()
    im = np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3]
    return cv2.GaussianBlur(cv2.resize(im, (w, h), interpolation=cv2.INTER_CUBIC), (0, 0), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    import inference as bench

    ap.add_argument("--faces", type=int, default=12, help="UTKFace test photos, each pasted once per cell")
    bench.add_rule_args(ap, "runs/lone_face")
    a = ap.parse_args()

    t0 = time.time()
    est = AgeEstimator.from_pretrained()
    photos, ages = bench.utk_test_photos(a, a.faces)
    res: dict = {"cells": [], "backend": est.backend}
    totals: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for bg_name in BACKGROUNDS:
            for w in WIDTHS:
                h = w * 3 // 4
                bg = background(bg_name, w, h)
                rng = np.random.default_rng((a.seed, w))
                for share in SHARES:
                    c = int(round(2 * share * w))  # the crop; its face about half of it
                    cell = {"background": bg_name, "width": w, "share": share, "face_px": c // 2}
                    for k, im in enumerate(photos):
                        canvas = bg.copy()
                        x = int(rng.uniform(0.05, 0.95) * (w - c))
                        y = int(rng.uniform(0.05, 0.95) * (h - c))
                        inter = cv2.INTER_AREA if c < im.shape[0] else cv2.INTER_CUBIC
                        canvas[y:y + c, x:x + c] = cv2.resize(im, (c, c), interpolation=inter)
                        path = work / f"lone_{bg_name}_{w}_{share}_{k}.jpg"
                        cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
                        for on in (False, True):
                            rules(on)
                            t = time.perf_counter()
                            preds = faces(est, path)
                            ms = (time.perf_counter() - t) * 1000
                            m = cell.setdefault("on" if on else "off",
                                                {"found": 0, "extra": 0, "errors": [], "ms": [], "steps": Counter()})
                            hit = False
                            for p in preds:
                                inside = (x <= (p.box[0] + p.box[2]) / 2 <= x + c
                                          and y <= (p.box[1] + p.box[3]) / 2 <= y + c)
                                if inside and not hit:
                                    hit = True
                                    m["found"] += 1
                                    m["errors"].append(abs(p.age - ages[k]))
                                    m["steps"][p.detection] += 1
                                else:
                                    m["extra"] += 1
                                    m["steps"][f"{p.detection} (no face)"] += 1
                            m["ms"].append(round(ms))
                    for side in ("off", "on"):
                        m = cell[side]
                        m["mae"] = round(float(np.mean(m.pop("errors"))), 2) if m["found"] else None
                        m["ms_median"] = round(float(np.median(m.pop("ms"))))
                        m["steps"] = dict(m["steps"])
                        t = totals.setdefault(f"{share}", {"faces": 0, "off": [0, 0], "on": [0, 0]})
                        t[side][0] += m["found"]
                        t[side][1] += m["extra"]
                    totals[f"{share}"]["faces"] += len(photos)
                    res["cells"].append(cell)
                    print(cell, flush=True)
        res["totals"] = totals
        ups, phone, answers, res["ms_per_image"] = bench.rule_side_sets(a, rules, lambda p: faces(est, p), work)
        bench.side_set_changes(res, {"realocc": ups, "phone": phone}, answers)
    rules(True)
    lines = [f"{a.faces} faces per cell; off = the search before (the whole-image step before the tiles, no finest "
             "grid where nothing was found, no tiles after a veto). Both sides check each mesh against its box and "
             "answer each face once.",
             "", "| face share of the width | faces | found, off | found, on | extra boxes, off / on |",
             "|---|---|---|---|---|"]
    for share, t in totals.items():
        lines.append(f"| {share} | {t['faces']} | {t['off'][0]} | {t['on'][0]} | {t['off'][1]} / {t['on'][1]} |")
    lines += ["", "| background | width | face px | found, off / on | extra, off / on | MAE found, off / on | "
              "ms per image, off / on (median) | steps, on |", "|---|---|---|---|---|---|---|---|"]
    for cell in res["cells"]:
        off, on = cell["off"], cell["on"]
        steps = ", ".join(f"{k} {v}" for k, v in sorted(on["steps"].items()))
        lines.append(f"| {cell['background']} | {cell['width']} | {cell['face_px']} | {off['found']} / {on['found']} | "
                     f"{off['extra']} / {on['extra']} | {off['mae']} / {on['mae']} | {off['ms_median']} / "
                     f"{on['ms_median']} | {steps} |")
    bench.rule_report(a, res, t0, est, "lone_face.py", f"--faces {a.faces}", "One person in a large photo", __doc__,
                      lines)


if __name__ == "__main__":
    main()
