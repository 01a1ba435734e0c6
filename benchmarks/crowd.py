"""Crowds in large photos, end to end: the finer tiles (`faces.detect` FINE_MIN_SIDE, FINE_FACE_PX, FINE_MAX_GRID)
and the more-faces pass after the padded step (MORE_FACES_AFTER_PADDED) on and off, in one process, with the shipped
models (`AgeEstimator.predict` on JPEG files).

    python benchmarks/crowd.py --photos 3 --realocc 150 --phone 30 --out docs/crowd

- composites: UTKFace test photos (a face about half of its crop) pasted in a jittered grid on a large canvas (a
  scikit-image photo without a person, enlarged and blurred), each also mirrored left-right, for a few canvas sizes,
  crop sizes and counts (a class or team photo): faces found (a predicted box holds a pasted face's centre), boxes
  that hold none (extra), MAE of the faces found, ms per image;
- whether anything else moves: realocc measure-half photos enlarged --factor times (web or phone sized scenes) and
  --phone All-Age-Faces test photos as 4032 px phone JPEGs (`benchmarks/inference.py --phone`): faces answered, the
  photos whose earlier answers changed, ms per image with the rules on and off taking turns over --rounds.

Writes OUT.json and OUT.md. Run from the repo root.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

import agelens.faces.detect as D
from agelens.errors import NoFaceError
from agelens.inference.predictor import AgeEstimator

FINE = D.FINE_MAX_GRID
# (canvas width, height, crop side px, columns, rows): faces about half the crop side
LAYOUTS = [(4000, 3000, 200, 5, 5), (4000, 3000, 140, 8, 6), (3000, 2000, 120, 6, 4), (2000, 1500, 100, 5, 4)]


def rules(on: bool) -> None:
    D.FINE_MAX_GRID = FINE if on else 0
    D.MORE_FACES_AFTER_PADDED = on


def faces(est: AgeEstimator, path: Path) -> list:
    try:
        return est.predict(path)
    except NoFaceError:
        return []


def background(w: int, h: int) -> np.ndarray:
    from skimage import data

    bg = cv2.resize(data.coffee(), (w, h), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(bg, (0, 0), 6)


def composite(photos: list[np.ndarray], layout: tuple, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """The canvas and each pasted crop's (x0, y0, x1, y1) box."""
    w, h, c, cols, rows = layout
    canvas = background(w, h)
    cw, ch = w / cols, h / rows
    boxes = []
    for k, im in enumerate(photos):
        i, j = divmod(k, cols)
        x = int(j * cw + rng.uniform(0, max(1.0, cw - c)))
        y = int(i * ch + rng.uniform(0, max(1.0, ch - c)))
        canvas[y:y + c, x:x + c] = cv2.resize(im, (c, c), interpolation=cv2.INTER_AREA)
        boxes.append((x, y, x + c, y + c))
    return canvas, boxes


def score(preds: list, boxes: list, ages: list) -> tuple[int, int, list]:
    """Faces found (a pasted crop whose centre a prediction's box holds, each once), extra boxes, errors."""
    found, extra, errors = set(), 0, []
    for p in preds:
        hit = [k for k, b in enumerate(boxes) if b[0] <= (p.box[0] + p.box[2]) / 2 <= b[2]
               and b[1] <= (p.box[1] + p.box[3]) / 2 <= b[3] and k not in found]
        if not hit:
            extra += 1
            continue
        found.add(hit[0])
        errors.append(abs(p.age - ages[hit[0]]))
    return len(found), extra, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    import inference as bench

    ap.add_argument("--photos", type=int, default=3, help="composites per layout (each also mirrored)")
    bench.add_rule_args(ap, "runs/crowd")
    a = ap.parse_args()

    t0 = time.time()
    est = AgeEstimator.from_pretrained()
    photos, ages = bench.utk_test_photos(a, max(cols * rows for *_, cols, rows in LAYOUTS) * a.photos)
    res: dict = {"composites": [], "backend": est.backend}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for layout in LAYOUTS:
            w, h, c, cols, rows = layout
            n = cols * rows
            row = {"layout": f"{w}x{h}, {n} faces of about {c // 2} px", "faces": 0}
            for k in range(a.photos):
                pick = list(range(k * n, (k + 1) * n))
                canvas, boxes = composite([photos[i] for i in pick], layout, np.random.default_rng((a.seed, k, w, n)))
                for mirrored in (False, True):
                    img = canvas[:, ::-1] if mirrored else canvas
                    bx = [(w - b[2], b[1], w - b[0], b[3]) for b in boxes] if mirrored else boxes
                    path = work / f"crowd_{w}_{n}_{k}_{int(mirrored)}.jpg"
                    cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 92])
                    row["faces"] += n
                    for on in (False, True):
                        rules(on)
                        t = time.perf_counter()
                        preds = faces(est, path)
                        ms = (time.perf_counter() - t) * 1000
                        found, extra, errors = score(preds, bx, [ages[i] for i in pick])
                        m = row.setdefault("on" if on else "off", {"found": 0, "extra": 0, "errors": [], "ms": []})
                        m["found"] += found
                        m["extra"] += extra
                        m["errors"] += errors
                        m["ms"].append(round(ms))
                        m.setdefault("found_per_image", []).append(found)
            for m in (row["off"], row["on"]):
                m["mae"] = round(float(np.mean(m.pop("errors"))), 2) if m["found"] else None
                m["ms_median"] = round(float(np.median(m["ms"])))
            res["composites"].append(row)
            print(row, flush=True)
        ups, phone, answers, res["ms_per_image"] = bench.rule_side_sets(a, rules, lambda p: faces(est, p), work)
        bench.side_set_changes(res, {"realocc": ups, "phone": phone}, answers)
    lines = [f"Composites: {a.photos} per layout, each also mirrored left-right; off = the rules before (2 x 2 tiles "
             "only, nothing after the padded step).", "",
             "| layout | faces | found, off | found, on | extra boxes, off / on | MAE found, off / on | "
             "ms per image, off / on (median) |", "|---|---|---|---|---|---|---|"]
    for row in res["composites"]:
        off, on = row["off"], row["on"]
        lines.append(f"| {row['layout']} | {row['faces']} | {off['found']} ({off['found_per_image']}) | "
                     f"{on['found']} ({on['found_per_image']}) | {off['extra']} / {on['extra']} | {off['mae']} / "
                     f"{on['mae']} | {off['ms_median']} / {on['ms_median']} |")
    bench.rule_report(a, res, t0, est, "crowd.py", f"--photos {a.photos}", "Crowds in large photos", __doc__, lines)


if __name__ == "__main__":
    main()
