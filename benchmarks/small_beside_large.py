"""Small faces beside a large one, end to end: the large-image more-faces rule (`faces.detect`, BESIDE_LARGE_MIN_SIDE,
MORE_FACES_LARGE_BELOW) on and off, in one process, with the shipped models (`AgeEstimator.predict` on JPEG files).

    python benchmarks/small_beside_large.py --pairs 30 --realocc 150 --phone 30 --out docs/small_beside_large

- composites: a UTKFace test photo enlarged to 0.48 of the width on a WIDTH x 0.75 WIDTH wall (its own corner,
  enlarged; each of --widths) and another one beside it, its face SHARE of the long side (a child by an adult close
  to the camera): how often each face is found (a face found: a predicted box holds its centre);
- realocc measure-half photos enlarged --factor times with cubic interpolation (scene photos at a phone's or a web
  picture's size): faces answered, the faces the rule adds (a contact sheet, OUT.png, to look at), and whether every
  earlier answer stayed the same;
- the cost: seconds per image with the rule on and off, the two taking turns over --rounds, on the enlarged realocc
  photos, on --phone All-Age-Faces test photos as 4032 px phone JPEGs (`benchmarks/inference.py --phone`) and on
  --portraits of them as 480 px scanned prints (`benchmarks/inference.py --portraits`; faces answered on and off).

"Off" is the rule before it (the tiles read only where the smallest face is under MORE_FACES_BELOW of the long side);
"on" reads them in images --on-side px long or longer (the shipped BESIDE_LARGE_MIN_SIDE unless given).
Writes OUT.json, OUT.md and OUT.png. Run from the repo root.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

import agelens.faces.detect as D
from agelens.data.splits import sample_names, split_part
from agelens.errors import NoFaceError
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json, atomic_write_text

SHIPPED_SIDE = D.BESIDE_LARGE_MIN_SIDE
DEFAULT_SHARES = [0.03, 0.04, 0.05, 0.06, 0.08, 0.12]


def rule(on: bool, side: int = SHIPPED_SIDE) -> None:
    """The rule on (in images `side` px long or longer) or off."""
    D.BESIDE_LARGE_MIN_SIDE = side if on else 10**9


def faces(est: AgeEstimator, path: Path) -> list:
    try:
        return est.predict(path)
    except NoFaceError:
        return []


def holds(preds: list, x: float, y: float) -> bool:
    return any(p.box[0] <= x <= p.box[2] and p.box[1] <= y <= p.box[3] for p in preds)


def composite(big: np.ndarray, small: np.ndarray, share: float, width: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """The width x 0.75 width canvas, the large face's centre and the small face's centre (a UTKFace crop's face is
    about half its width, so the small crop is 2 * share of the long side; the large crop 0.48 of the width)."""
    W, H = width, int(round(0.75 * width))
    big_side = int(round(0.48 * width))
    canvas = cv2.resize(big[:20, :20], (W, H), interpolation=cv2.INTER_LINEAR)
    y0 = (H - big_side) // 2
    canvas[y0:y0 + big_side, 60:60 + big_side] = cv2.resize(big, (big_side, big_side), interpolation=cv2.INTER_CUBIC)
    s = max(8, int(round(2 * share * W)))
    x = int(rng.integers(60 + big_side + 20, W - s))
    y = int(rng.integers(40, H - s - 40))
    canvas[y:y + s, x:x + s] = cv2.resize(small, (s, s), interpolation=cv2.INTER_AREA)
    return canvas, (60 + big_side / 2, y0 + big_side / 2), (x + s / 2, y + s / 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from inference import add_rule_args, ms_table, rule_side_sets

    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--shares", type=float, nargs="+", default=DEFAULT_SHARES)
    ap.add_argument("--widths", type=int, nargs="+", default=[1000], help="composite photos' widths, px")
    ap.add_argument("--portraits", type=int, default=0, help="AAF test photos as 480 px scanned prints, timed")
    ap.add_argument("--on-side", type=int, default=SHIPPED_SIDE,
                    help="BESIDE_LARGE_MIN_SIDE for the rule on (default: the shipped size)")
    add_rule_args(ap, "runs/small_beside_large")
    a = ap.parse_args()

    def switch(on: bool) -> None:
        rule(on, a.on_side)

    t0 = time.time()
    est = AgeEstimator.from_pretrained()
    names = sample_names(sorted(split_part(a.split, "test")), 2 * a.pairs, a.seed)
    photos = [cv2.cvtColor(cv2.imread(str(a.root / n)), cv2.COLOR_BGR2RGB) for n in names]
    res: dict = {"composites": {}, "backend": est.backend}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "c.jpg"
        for width, share in ((w, s) for w in a.widths for s in a.shares):
            rng = np.random.default_rng((a.seed, int(share * 1000)))
            made = [composite(photos[2 * i], photos[2 * i + 1], share, width, rng) for i in range(a.pairs)]
            row = {}
            for on in (False, True):
                switch(on)
                small = big = 0
                for canvas, cb, cs in made:
                    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
                    preds = faces(est, path)
                    big += holds(preds, *cb)
                    small += holds(preds, *cs)
                row["on" if on else "off"] = {"small_found": small, "large_found": big, "n": a.pairs}
            res["composites"].setdefault(str(width), {})[str(share)] = row
            print(width, share, row, flush=True)
        ups, phone, answers, res["ms_per_image"] = rule_side_sets(a, switch, lambda p: faces(est, p), work)
        if a.portraits:
            from inference import portrait_sample, rule_rounds

            prints = portrait_sample(a.shared, a.portraits, a.seed, work)[0]
            timing, got = rule_rounds({"portraits": prints}, switch, lambda p: faces(est, p), a.rounds)
            res["ms_per_image"]["portraits"] = {m: {"runs": v, "median": round(float(np.median(v)), 1)}
                                                for m, v in timing["portraits"].items()}
            res["portraits"] = {"photos": len(prints), **{f"faces_{m}": sum(len(v) for v in got[("portraits", on)]
                                                                           .values()) for m, on in (("off", False),
                                                                                                   ("on", True))}}
        added, changed, sheet = 0, 0, []
        before, after = answers[("realocc", False)], answers[("realocc", True)]
        for p in ups:
            old = [q.box for q in before[p]]
            new = [q for q in after[p] if q.box not in old]
            changed += sorted(round(q.age, 3) for q in before[p]) != sorted(
                round(q.age, 3) for q in after[p] if q.box in old)
            added += len(new)
            if new:
                im = cv2.imread(str(p))
                for q in new:
                    x0, y0, x1, y1 = (int(v) for v in q.box)
                    crop = im[max(0, y0):y1, max(0, x0):x1]
                    if crop.size:
                        sheet.append(cv2.resize(crop, (96, 96)))
        res["realocc"] = {"photos": len(ups), "factor": a.factor,
                          "faces_off": sum(len(v) for v in before.values()),
                          "faces_on": sum(len(v) for v in after.values()), "added": added,
                          "photos_with_earlier_answers_changed": changed}
        if phone:
            res["phone"] = {"photos": len(phone), "faces_off": sum(len(v) for v in answers[("phone", False)].values()),
                            "faces_on": sum(len(v) for v in answers[("phone", True)].values())}
    cmd = (f"python benchmarks/small_beside_large.py --pairs {a.pairs} --realocc {a.realocc} --factor {a.factor} "
           f"--phone {a.phone} --portraits {a.portraits} --rounds {a.rounds} --seed {a.seed} --out {a.out} "
           f"--on-side {a.on_side} "
           f"--widths {' '.join(map(str, a.widths))}"
           + (f" --shares {' '.join(map(str, a.shares))}" if a.shares != DEFAULT_SHARES else ""))
    res["command"], res["seconds"] = cmd, round(time.time() - t0)
    if sheet:
        sheet += [np.zeros_like(sheet[0])] * (-len(sheet) % 10)
        cv2.imwrite(f"{a.out}.png", np.vstack([np.hstack(sheet[j:j + 10]) for j in range(0, len(sheet), 10)]))
    atomic_write_json(Path(f"{a.out}.json"), res)
    lines = ["# Small faces beside a large one", "", __doc__.split("\n\n")[0].replace("\n", " "), "",
             f"Command: `{cmd}` (backend {est.backend}, {res['seconds']} s)", "",
             f"Composites ({a.pairs} per row, the large face's crop 0.48 of the width on a photo of that width, "
             "three quarters as high):", "",
             "| photo width | small face, share of the long side (px) | small found, off | small found, on | "
             "large found, off | large found, on |", "|---|---|---|---|---|---|"]
    for width, rows in res["composites"].items():
        for share, row in rows.items():
            lines.append(f"| {width} | {share} ({float(share) * int(width):.0f}) | "
                         f"{row['off']['small_found']}/{a.pairs} | {row['on']['small_found']}/{a.pairs} | "
                         f"{row['off']['large_found']}/{a.pairs} | {row['on']['large_found']}/{a.pairs} |")
    r = res["realocc"]
    lines += ["", f"realocc measure half enlarged {a.factor} times: {r['photos']} photos, faces answered "
              f"{r['faces_off']} off, {r['faces_on']} on ({r['added']} added: `{Path(a.out).name}.png`); photos "
              f"whose earlier answers changed: {r['photos_with_earlier_answers_changed']}."]
    if phone:
        lines += [f"Phone photos: {res['phone']['photos']}, faces answered {res['phone']['faces_off']} off, "
                  f"{res['phone']['faces_on']} on."]
    if a.portraits:
        lines += [f"Portraits (480 px scanned prints): {a.portraits}, faces answered {res['portraits']['faces_off']} "
                  f"off, {res['portraits']['faces_on']} on" + (" (the rule reaches them only from "
                  f"{a.on_side} px: the two sides read alike)." if a.on_side > 480 else ".")]
    lines += ms_table(res["ms_per_image"])
    atomic_write_text(Path(f"{a.out}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
