"""Generalisation end to end (issue 19): each model through the whole `predict` pipeline (detection, alignment,
occlusion detector, routing) on image files of the test parts of UTKFace and All-Age-Faces (never trained on):

- clean: answered share, MAE, 90 % interval coverage (per age bin);
- degraded: each test photo under each realistic degradation (`agelens.data.augment.TEST_DEGRADATIONS`, applied
  to the ORIGINAL photo, seeded per file), MAE and its ratio to clean;
- occluded: one paper occluder per photo drawn on the original (placed from its FaceMesh), MAE and coverage;
- stability: the photo saved as JPEG q95 (the reference), then re-encoded q75, saved as PNG, scaled x0.5 and back,
  shifted by 2 px: mean and p99 absolute age change and the share that moves more than 5 years.

`--max-age A` samples only photos of people aged A or less, and the report adds the mean signed error per age band
(BANDS) under every condition: who is read too old. With `--max-age 19` it stands in for scanned photos of mostly
children (issue 19's hidden second dataset: ages 0-69, scanned prints, children over-estimated by 3.8-4.6 years).

    python benchmarks/generalise.py --models old=/tmp/old/teacher.safetensors new=teacher --n 200 \
        --out docs/generalise

A model is a shipped name, a .safetensors file or a run folder; it replaces the teacher, the shipped student and
detectors stay. Every model runs on torch fp32 (the same numbers as ONNX within 0.01 years, docs/inference_benchmark.md).
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from agelens.data.augment import TEST_DEGRADATIONS, degrade_for_test
from agelens.data.splits import split_part
from agelens.errors import NoFaceError
from agelens.evaluate.metrics import AGE_BINS, age_bin
from agelens.faces.detect import FaceAnalyzer
from agelens.faces.prepare import largest_face
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.occlusion.synth import OCCLUSION_TYPES, OcclusionError, occlude
from agelens.utils import atomic_write_json, atomic_write_text

SPLITS = {"utkface": ("splits/utkface_seed0.json", "../shared/data/utkface"),
          "aaf": ("splits/aaf_seed0.json", "../shared/data/aaf")}
STABILITY = ("jpeg_q75", "png", "scale_0.5", "shift_2px")


BANDS = ((0, 2), (3, 6), (7, 12), (13, 19), (20, 39), (40, 59), (60, 200))  # signed error per band (--max-age)


def test_files(dataset: str, n: int, seed: int, part: str = "test", max_age: float | None = None
               ) -> list[tuple[Path, float]]:
    """A seeded sample of a part (default: the test part) of a saved split, with the true ages (those of max_age or
    less only, when given)."""
    import pandas as pd

    split_p, root = SPLITS[dataset]
    names = split_part(split_p, part)
    if dataset == "aaf":
        ages = dict(pd.read_csv(Path(root).parent / "aaf.csv")[["file", "age"]].itertuples(index=False))
        rows = [(Path(root) / f, float(ages[f])) for f in names]
    else:
        rows = [(Path(root) / f, float(f.split("_")[0])) for f in names]
    if max_age is not None:
        rows = [r for r in rows if r[1] <= max_age]
    idx = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i] for i in sorted(idx)]


def encode(rgb: np.ndarray, ext: str, quality: int = 95) -> np.ndarray:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"cannot encode {ext}")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def variant(ref: np.ndarray, kind: str) -> np.ndarray:
    h, w = ref.shape[:2]
    if kind == "jpeg_q75":
        return encode(ref, ".jpg", 75)
    if kind == "png":
        return encode(ref, ".png")
    if kind == "scale_0.5":
        small = cv2.resize(ref, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "shift_2px":
        m = np.float32([[1, 0, 2], [0, 1, 2]])
        return cv2.warpAffine(ref, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    raise ValueError(kind)


def degraded(rgb: np.ndarray, name: str, i: int, seed: int) -> np.ndarray:
    """Test photo number i under one of TEST_DEGRADATIONS, seeded as every benchmark that compares with these rows."""
    return degrade_for_test(rgb, name, seed * 100_003 + i * 101 + TEST_DEGRADATIONS.index(name))


def largest_prediction(est: AgeEstimator, rgb: np.ndarray):
    """The FacePrediction of the largest face `predict` finds, None when it finds none."""
    try:
        return largest_face(est.predict(rgb))
    except NoFaceError:
        return None


def one_age(est: AgeEstimator, rgb: np.ndarray) -> tuple[float, list[float]] | None:
    """(age, interval) of the largest face `predict` finds, None when it finds none."""
    p = largest_prediction(est, rgb)
    return None if p is None else (p.age, p.interval)


def summary(rows: list, ages: list[float]) -> dict:
    ok = [(r, a) for r, a in zip(rows, ages, strict=True) if r is not None]
    out = {"n": len(rows), "answered": round(len(ok) / max(1, len(rows)), 4)}
    if ok:
        err = np.array([abs(r[0] - a) for r, a in ok])
        hit = np.array([r[1][0] <= a <= r[1][1] for r, a in ok])
        bins = np.array([age_bin(a) for _, a in ok])
        out.update(mae=round(float(err.mean()), 3), coverage=round(float(hit.mean()), 4),
                   coverage_per_bin={b: round(float(hit[bins == b].mean()), 3) for b, _, _ in AGE_BINS
                                     if (bins == b).any()},
                   mean_error=round(float(np.mean([r[0] - a for r, a in ok])), 3))
        signed, true = np.array([r[0] - a for r, a in ok]), np.array([a for _, a in ok])
        out["signed_per_band"] = {f"{lo}-{hi}": [int(m.sum()), round(float(signed[m].mean()), 2)]
                                  for lo, hi in BANDS if (m := (true >= lo) & (true <= hi)).any()}
    return out


def occluded_photo(an: FaceAnalyzer, rgb: np.ndarray, i: int, seed: int) -> np.ndarray | None:
    """Test photo number i with one of the paper's occluders (type i mod 6, seeded) placed from the clean photo's
    FaceMesh, saved as JPEG q95; None where no face with landmarks is found or the occluder cannot be placed."""
    faces = [x for x in an.find_faces(rgb) if x.landmarks is not None]
    if not faces:
        return None
    try:
        img = occlude(rgb, largest_face(faces).landmarks, OCCLUSION_TYPES[i % len(OCCLUSION_TYPES)],
                      np.random.default_rng((seed, i))).image
    except OcclusionError:
        return None
    return encode(img, ".jpg")


def run_model(est: AgeEstimator, an: FaceAnalyzer, files: list[tuple[Path, float]], seed: int) -> dict:
    conds = ("clean",) + TEST_DEGRADATIONS + ("occluded",)
    rows: dict[str, list] = {c: [] for c in conds}
    stab: dict[str, list] = {k: [] for k in STABILITY}
    ages = [a for _, a in files]
    for i, (f, _) in enumerate(files):
        rgb = load_image(f)
        ref = encode(rgb, ".jpg", 95)
        clean = one_age(est, ref)
        rows["clean"].append(clean)
        for name in TEST_DEGRADATIONS:
            rows[name].append(one_age(est, degraded(rgb, name, i, seed)))
        occ = occluded_photo(an, rgb, i, seed)
        rows["occluded"].append(None if occ is None else one_age(est, occ))
        for k in STABILITY:
            v = one_age(est, variant(ref, k))
            if clean is not None and v is not None:
                stab[k].append(abs(v[0] - clean[0]))
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(files)}", flush=True)
    out = {c: summary(rows[c], ages) for c in conds}
    deg = [out[c]["mae"] for c in TEST_DEGRADATIONS if "mae" in out[c]]
    out["degraded_mean"] = {"mae": round(float(np.mean(deg)), 3),
                            "ratio_to_clean": round(float(np.mean(deg)) / out["clean"]["mae"], 3)}
    out["stability"] = {k: {"n": len(v), "mean_change": round(float(np.mean(v)), 3),
                            "p99_change": round(float(np.percentile(v, 99)), 3),
                            "share_over_5": round(float(np.mean(np.array(v) > 5)), 4)} for k, v in stab.items() if v}
    return out


def markdown(res: dict, args) -> str:
    lines = [f"# Generalisation end to end ({time.strftime('%Y-%m-%d')})", "",
             f"`python benchmarks/generalise.py --models {' '.join(args.models)} --n {args.n} --seed {args.seed}"
             + (f" --datasets {' '.join(args.datasets)}" if args.datasets != ["utkface", "aaf"] else "")
             + (f" --max-age {args.max_age:g}" if args.max_age is not None else "")
             + f" --out {args.out}`", "",
             "Every figure is `AgeEstimator.predict` on image files (detection, alignment, occlusion detector, "
             "routing), largest face per photo; test parts of the saved splits (never trained on). MAE per "
             "condition over the answered photos; where a condition leaves photos \"no face found\", the answered "
             "share follows in brackets.", ""]
    conds = ["clean", *TEST_DEGRADATIONS, "occluded"]
    for ds in res["datasets"]:
        lines += [f"## {ds}", "", "| model | " + " | ".join(conds) + " | degraded mean (× clean) |",
                  "|---|" + "---|" * (len(conds) + 1)]
        for m, r in res["results"].items():
            d = r[ds]
            cells = [(f"{d[c]['mae']:.2f}" if "mae" in d[c] else "—")
                     + (f" ({100 * d[c]['answered']:.1f} %)" if d[c].get("answered", 1.0) < 1 else "") for c in conds]
            lines.append(f"| {m} | " + " | ".join(cells)
                         + f" | {d['degraded_mean']['mae']:.2f} ({d['degraded_mean']['ratio_to_clean']:.2f}×) |")
        lines += ["", "Answered share, 90 % interval coverage (clean / occluded), stability (mean / p99 age change, "
                  "share > 5 years):", "", "| model | answered clean | coverage clean | coverage occluded | "
                  + " | ".join(STABILITY) + " |", "|---|---|---|---|" + "---|" * len(STABILITY)]
        for m, r in res["results"].items():
            d = r[ds]
            st = [f"{d['stability'][k]['mean_change']:.2f} / {d['stability'][k]['p99_change']:.2f} / "
                  f"{100 * d['stability'][k]['share_over_5']:.1f} %" if k in d["stability"] else "—" for k in STABILITY]
            lines.append(f"| {m} | {100 * d['clean']['answered']:.1f} % | {d['clean'].get('coverage', 0):.3f} | "
                         f"{d['occluded'].get('coverage', 0):.3f} | " + " | ".join(st) + " |")
        if args.max_age is not None:
            bands = [f"{lo}-{hi}" for lo, hi in BANDS if lo <= args.max_age]
            lines += ["", "Mean signed error per age band (photos in the band), each condition:", "",
                      "| model | condition | " + " | ".join(bands) + " |", "|---|---|" + "---|" * len(bands)]
            for m, r in res["results"].items():
                for c in conds:
                    sb = r[ds][c].get("signed_per_band", {})
                    lines.append(f"| {m} | {c} | " + " | ".join(
                        f"{sb[b][1]:+.2f} ({sb[b][0]})" if b in sb else "—" for b in bands) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["shipped=teacher"], help="LABEL=MODEL ...")
    ap.add_argument("--datasets", nargs="+", default=["utkface", "aaf"], choices=sorted(SPLITS))
    ap.add_argument("--n", type=int, default=200, help="test photos per dataset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-age", type=float, default=None, help="only photos of people this old or younger")
    ap.add_argument("--out", default="docs/generalise")
    args = ap.parse_args()
    an = FaceAnalyzer()
    res = {"datasets": args.datasets, "n": args.n, "seed": args.seed, "results": {}}
    for spec in args.models:
        label, _, model = spec.partition("=")
        est = AgeEstimator.from_pretrained(None if model == "teacher" else model, backend="torch")
        res["results"][label] = {}
        for ds in args.datasets:
            t0 = time.time()
            print(f"{label} on {ds}", flush=True)
            res["results"][label][ds] = r = run_model(est, an, test_files(ds, args.n, args.seed, max_age=args.max_age),
                                                                args.seed)
            print(f"{label} {ds}: clean {r['clean']} degraded {r['degraded_mean']} ({time.time() - t0:.0f} s)",
                  flush=True)
    write_report(args.out, res, markdown(res, args))


def paired_ci(d: np.ndarray, boots: int = 1000) -> list[float]:
    """Mean of paired differences d and its 95 % bootstrap interval (resample k drawn with seed k)."""
    bs = [np.random.default_rng(k).choice(d, len(d)).mean() for k in range(boots)]
    return [float(np.mean(d)), float(np.percentile(bs, 2.5)), float(np.percentile(bs, 97.5))]


def write_report(out: str | Path, res: dict, md: str) -> None:
    """OUT.json (the figures) and OUT.md (the tables), each written atomically."""
    out = Path(out)
    atomic_write_json(out.with_suffix(".json"), res)
    atomic_write_text(out.with_suffix(".md"), md)
    print(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()
