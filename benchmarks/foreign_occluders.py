"""Occluders drawn by a synthesizer that is not ours, end to end: each seeded photo of a split part (UTKFace, or
All-Age-Faces with --dataset aaf) under shapes that neither `occlusion.synth` nor `occlusion.families` draws (and no
model trained on), placed from the clean face's FaceMesh on the original image, saved as JPEG q95, then `AgeEstimator.predict` on the file (shipped models,
default settings). Per kind: answered share, MAE of the answered faces (the face nearest the clean face's box),
share flagged occluded, and how the faces were found.

Kinds:
- eye_bar: a black censorship bar across both eyes, 40 % of the eye-to-eye distance high, 30 % wider than the eyes;
- eye_mosaic: the eyes pixelated (blocks of a quarter of the eye-to-eye distance), as privacy tools do;
- left_half / right_half: one half of the face, from the nose's midline outwards, under a solid colour;
- top_half: brows to the tip of the nose across the whole face;
- lower_ellipse: an ellipse from the tip of the nose to below the chin, as wide as the face;
- random_rect: a rectangle of 30-45 % of the face box at a seeded place inside it;
- noise_patch: grey noise over the mouth and the chin;
- both_bands: full-width bands brows to nose bridge and nose to chin.

    python benchmarks/foreign_occluders.py --part val --n 150 --seed 11 --out runs/foreign_val

--dataset aaf takes the photos from All-Age-Faces instead (head-and-shoulder photos of 160 px, where the face is
smaller than in a UTKFace crop; a seeded sample of the part, ages from aaf.csv).

--embed SIDE pastes each occluded photo into a scene SIDE px high (`embedded`), so that the face is a quarter or so
of a wider photo, as in a user's own photos, where the steps that read a face crop as a whole (padded, whole image,
mirror, fill) do not apply; a face counts as answered only when found on the pasted photo.

Writes OUT.json (the table), OUT.md and OUT.rows.jsonl (every face). Run from the repo root.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

import generalise as g  # benchmarks/ is on the path when this file runs as a script
from agelens.data.splits import sample_names, split_part
from agelens.errors import NoFaceError
from agelens.faces.detect import FaceAnalyzer
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json, atomic_write_text
from occlusion_e2e import nearest_box, placed_photos, save_jpeg

KINDS = ("eye_bar", "eye_mosaic", "left_half", "right_half", "top_half", "lower_ellipse", "random_rect",
         "noise_patch", "both_bands")
# FaceMesh indices: eye corners, brows, nose, chin, face sides
EYE_OUT_R, EYE_OUT_L, EYE_IN_R, EYE_IN_L = 33, 263, 133, 362
BROWS, BRIDGE, NOSE_TIP, UNDER_NOSE = [105, 334, 66, 296], [6, 197, 195], 1, [2, 164]
CHIN, SIDES = [152, 148, 377], [234, 454, 93, 323]


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    c = rng.integers(0, 60, 3) if rng.random() < 0.5 else rng.integers(0, 256, 3)
    return tuple(int(v) for v in c)


def draw(rgb: np.ndarray, lm: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The photo with one foreign occluder of `kind`, placed from the clean face's landmarks (pixels, (478, 2))."""
    out = rgb.copy()
    h, w = out.shape[:2]
    iod = float(np.linalg.norm(lm[EYE_OUT_L] - lm[EYE_OUT_R]))
    x0, x1 = float(lm[SIDES, 0].min()), float(lm[SIDES, 0].max())
    y_brow, y_chin = float(lm[BROWS, 1].min()), float(lm[CHIN, 1].max())
    colour = _colour(rng)

    def rect(a, b, c, d, col=colour):
        cv2.rectangle(out, (int(round(a)), int(round(b))), (int(round(c)), int(round(d))), col, -1)

    if kind in ("eye_bar", "eye_mosaic"):
        cy = float(lm[[EYE_OUT_R, EYE_OUT_L, EYE_IN_R, EYE_IN_L], 1].mean())
        half_w, half_h = 0.65 * iod, 0.2 * iod
        cx = float(lm[[EYE_OUT_R, EYE_OUT_L], 0].mean())
        a, b = int(max(0, cx - half_w)), int(max(0, cy - half_h))
        c, d = int(min(w, cx + half_w)), int(min(h, cy + half_h))
        if kind == "eye_bar":
            rect(a, b, c, d, (0, 0, 0))
        elif c > a and d > b:
            block = max(2, int(iod / 4))
            patch = out[b:d, a:c]
            small = cv2.resize(patch, (max(1, (c - a) // block), max(1, (d - b) // block)),
                               interpolation=cv2.INTER_AREA)
            out[b:d, a:c] = cv2.resize(small, (c - a, d - b), interpolation=cv2.INTER_NEAREST)
    elif kind in ("left_half", "right_half"):
        mid = float(lm[[NOSE_TIP, *BRIDGE], 0].mean())
        top, bot = y_brow - 0.3 * iod, y_chin + 0.1 * iod
        # the subject's left is the image's right
        if kind == "left_half":
            rect(mid, top, x1 + 0.1 * iod, bot)
        else:
            rect(x0 - 0.1 * iod, top, mid, bot)
    elif kind == "top_half":
        rect(x0, y_brow, x1, float(lm[NOSE_TIP, 1]))
    elif kind == "lower_ellipse":
        top = float(lm[NOSE_TIP, 1])
        centre = (int(round((x0 + x1) / 2)), int(round((top + y_chin) / 2 + 0.1 * iod)))
        axes = (int(round((x1 - x0) / 2)), int(round((y_chin - top) / 2 + 0.15 * iod)))
        cv2.ellipse(out, centre, axes, 0, 0, 360, colour, -1)
    elif kind == "random_rect":
        fw, fh = x1 - x0, y_chin - y_brow + 0.3 * iod
        share = rng.uniform(0.30, 0.45)
        aspect = rng.uniform(0.6, 1.6)
        rw = min(fw, np.sqrt(share * fw * fh * aspect))
        rh = min(fh, share * fw * fh / rw)
        a = x0 + rng.uniform(0, max(1e-6, fw - rw))
        b = y_brow - 0.3 * iod + rng.uniform(0, max(1e-6, fh - rh))
        rect(a, b, a + rw, b + rh)
    elif kind == "noise_patch":
        a, c = int(max(0, x0)), int(min(w, x1))
        b, d = int(max(0, lm[UNDER_NOSE, 1].min())), int(min(h, y_chin))
        if c > a and d > b:
            grey = rng.integers(0, 256, (d - b, c - a, 1))
            out[b:d, a:c] = np.repeat(grey, 3, axis=2).astype(np.uint8)
    elif kind == "both_bands":
        rect(x0, y_brow, x1, float(lm[BRIDGE, 1].max()))
        rect(x0, float(lm[UNDER_NOSE, 1].min()), x1, y_chin)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return out


def embedded(img: np.ndarray, side: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """`img` pasted at a seeded place into a scene with no face (a seeded part of scikit-image's coffee photo,
    enlarged) `side` px high and 4/3 as wide: the face a share of a wider photo, as in a user's photo rather than a
    face crop. Returns the scene and where the image's top-left corner went."""
    from skimage import data

    h, w = side, int(round(side * 4 / 3))
    big = cv2.resize(data.coffee(), (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
    y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
    scene = np.ascontiguousarray(big[y0:y0 + h, x0:x0 + w])
    py, px = int(rng.integers(0, h - img.shape[0] + 1)), int(rng.integers(0, w - img.shape[1] + 1))
    scene[py:py + img.shape[0], px:px + img.shape[1]] = img
    return scene, px, py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="utkface", choices=("utkface", "aaf"),
                    help="aaf: All-Age-Faces photos (--split and --root are UTKFace's)")
    ap.add_argument("--split", default="splits/utkface_seed0.json")
    ap.add_argument("--root", type=Path, default=Path("../shared/data/utkface"))
    ap.add_argument("--part", default="val")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--out", default="runs/foreign_val")
    ap.add_argument("--embed", type=int, default=0, help="paste each occluded photo into a scene this many px high "
                    "(`embedded`; 0: the photo as it is); answered: a face found on it")
    ap.add_argument("--route", default="auto", choices=("auto", "teacher", "student"),
                    help="which model answers (auto: the occlusion detector routes, as predict does)")
    a = ap.parse_args()
    t0 = time.time()
    est, an = AgeEstimator.from_pretrained(route=a.route), FaceAnalyzer()
    if a.dataset == "aaf":  # a seeded sample of the part, the ages from aaf.csv
        pairs = g.test_files("aaf", a.n, a.seed, a.part)
        photos = placed_photos(an, [f for f, _ in pairs], ages=[age for _, age in pairs])
    else:
        photos = placed_photos(an, [a.root / f for f in sample_names(sorted(split_part(a.split, a.part)), a.n, a.seed)])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "occluded.jpg"
        for i, f, rgb, face, age in photos:
            for k, kind in enumerate(a.kinds):
                img, box = draw(rgb, face.landmarks, kind, np.random.default_rng((a.seed, i, k))), face.box
                if a.embed:
                    img, px, py = embedded(img, a.embed, np.random.default_rng((a.seed, i, k, 1)))
                    box = (box[0] + px, box[1] + py, box[2] + px, box[3] + py)
                save_jpeg(path, img)
                try:
                    preds = est.predict(path)
                except NoFaceError:
                    preds = []
                near = preds[nearest_box([q.box for q in preds], box)] if preds else None
                if near is None or a.embed and not (px <= (near.box[0] + near.box[2]) / 2 <= px + rgb.shape[1]
                                                    and py <= (near.box[1] + near.box[3]) / 2 <= py + rgb.shape[0]):
                    rows.append({"file": f.name, "kind": kind, "age": age, "answered": False})
                    continue
                p = near.to_dict()
                rows.append({"file": f.name, "kind": kind, "age": age, "answered": True, "pred": p["age"],
                             "occluded": p["occluded"], "detection": p["detection"], "model": p["model"],
                             "occlusion_score": p["occlusion_score"], "student_weight": p.get("student_weight")})
    table = {}
    for kind in a.kinds:
        rs = [r for r in rows if r["kind"] == kind]
        ans = [r for r in rs if r["answered"]]
        table[kind] = {"n": len(rs), "answered": round(len(ans) / max(1, len(rs)), 4),
                       "mae": round(float(np.mean([abs(r["pred"] - r["age"]) for r in ans])), 3) if ans else None,
                       "flagged_occluded": round(float(np.mean([r["occluded"] for r in ans])), 4) if ans else None,
                       "detection": dict(Counter(r["detection"] for r in ans))}
    cmd = ("python benchmarks/foreign_occluders.py" + (" --dataset aaf" if a.dataset == "aaf" else "")
           + f" --part {a.part} --n {a.n} --seed {a.seed} --out {a.out}"
           + (f" --kinds {' '.join(a.kinds)}" if list(a.kinds) != list(KINDS) else "")
           + (f" --route {a.route}" if a.route != "auto" else "") + (f" --embed {a.embed}" if a.embed else ""))
    res = {"command": cmd, "backend": est.backend, "table": table, "seconds": round(time.time() - t0)}
    atomic_write_json(Path(f"{a.out}.json"), res)
    # every face, one JSON object per line, for looking into the misses
    atomic_write_text(Path(f"{a.out}.rows.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    lines = ["# Foreign occluders end to end", "", __doc__.split("\n\n")[0].replace("\n", " "), "",
             f"Command: `{cmd}` (backend {est.backend}, {res['seconds']} s)", "",
             "| kind | photos | answered | MAE (answered) | flagged occluded | found by |", "|---|---|---|---|---|---|"]
    for kind, r in table.items():
        mae = "—" if r["mae"] is None else f"{r['mae']:.2f}"
        flag = "—" if r["flagged_occluded"] is None else f"{r['flagged_occluded']:.1%}"
        lines.append(f"| {kind} | {r['n']} | {r['answered']:.1%} | {mae} | {flag} | "
                     f"{', '.join(f'{k} {v}' for k, v in sorted(r['detection'].items()))} |")
    atomic_write_text(Path(f"{a.out}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
