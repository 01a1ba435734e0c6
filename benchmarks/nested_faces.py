"""Faces do not nest (`faces.detect.NESTED_*`): end to end, the same photos answered with the rule off, as shipped and
under other settings of its constants, in one process, the settings taking turns on every photo.

Under two occluders the detector often misses the face and fires on a part of it (the nose, one lens), which the
face networks pass; the rule reads the padded copy where a detector face scores under NESTED_BELOW and lets a wider face
found there that holds it replace it. Measured here:

- UTKFace photos of a split part (seeded sample), clean and under the paper's six occluder types (every photo) and
  the newer families' kinds (the first --n-new photos), drawn on the photo from the clean face's FaceMesh, saved as
  JPEG q95, then `AgeEstimator.predict` (shipped models, default settings); the face nearest the clean face's box is
  scored. Per condition and setting: answered share, MAE, and the paired change against the rule off (95 %
  bootstrap over photos).
- All-Age-Faces photos of the same part, clean: MAE, answers changed.
- realocc photos (real masks and sunglasses) of one half: answered, flagged occluded, largest faces changed.
- Images without a human face (scikit-image sample photos and seeded crops, as `occlusion_e2e.py`): answered.
- How often the rule reads the padded copy, and the seconds each setting spent.

    python benchmarks/nested_faces.py --part val --n 150 --n-new 50 --settings shipped BELOW=0.8 --out runs/nested_val
    python benchmarks/nested_faces.py --part val --degraded 300 --settings MORE_SURE=1 shipped --out runs/nested_deg
    python benchmarks/nested_faces.py --part test --settings FALLBACK_WIDER=0 shipped --against FALLBACK_WIDER=0

Paired changes and answers changed are measured against the rule off unless --against names another setting.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from agelens.data.splits import sample_names, split_part
from agelens.errors import NoFaceError
from agelens.faces import detect
from agelens.faces.detect import FaceAnalyzer
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.occlusion.synth import OCCLUSION_TYPES, OcclusionError, occlude
from agelens.utils import atomic_write_json, atomic_write_text
from generalise import degraded, test_files
from occlusion_e2e import NEW_KINDS, nearest_box, placed_photos, sample_images, save_jpeg

DEGRADED = ("scan_grain", "lowres")  # --degraded: where the detector fires on half a face that fills a crop

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def paired_ci(a: np.ndarray, b: np.ndarray, seed: int = 0, n: int = 2000) -> tuple[float, float, float]:
    """Mean of b − a and its 95 % bootstrap interval (pairs resampled)."""
    d = np.asarray(b, float) - np.asarray(a, float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


class Counting:
    """Counts the padded copies `FaceAnalyzer._unnested` reads (one per call with a face under NESTED_BELOW)."""

    def __init__(self) -> None:
        self.n = 0
        orig = FaceAnalyzer._unnested

        def unnested(analyzer, rgb, faces, *rest):
            self.n += any(f.score < detect.NESTED_BELOW for f in faces)
            return orig(analyzer, rgb, faces, *rest)

        FaceAnalyzer._unnested = unnested


def apply(setting: str, shipped: dict) -> None:
    """Sets faces.detect's NESTED_* constants: the shipped values, then those the setting names ("off": the rule
    off, NESTED_BELOW = 0, since no detector score is under 0)."""
    for k, v in shipped.items():
        setattr(detect, k, v)
    if setting == "off":
        detect.NESTED_BELOW = 0.0
        return
    if setting == "shipped":
        return
    for part in filter(None, setting.split(",")):
        k, v = part.split("=")
        name = f"NESTED_{k.strip().upper()}"
        if name not in shipped:
            raise SystemExit(f"unknown setting {k!r}: one of {', '.join(n[7:] for n in shipped)}")
        setattr(detect, name, float(v))


def answers(est: AgeEstimator, path: Path, settings: list[str], ref_box, seconds: dict, reads: dict,
            counter: Counting) -> dict:
    """{setting: (age, occluded, detection) of the face nearest ref_box (the largest without one), or None}."""
    out = {}
    shift = answers.calls % len(settings)  # the settings take turns going first
    answers.calls += 1
    for setting in settings[shift:] + settings[:shift]:
        apply(setting, SHIPPED)
        forget(est)
        before = counter.n
        t0 = time.perf_counter()
        try:
            preds = est.predict(path)
        except NoFaceError:
            preds = []
        seconds[setting] += time.perf_counter() - t0
        reads[setting] += counter.n - before
        if not preds:
            out[setting] = None
            continue
        if ref_box is None:
            p = max(preds, key=lambda q: (q.box[2] - q.box[0]) * (q.box[3] - q.box[1]))
        else:
            p = preds[nearest_box([q.box for q in preds], ref_box)]
        d = p.to_dict()
        out[setting] = (float(d["age"]), bool(d["occluded"]), d["detection"])
    return out


answers.calls = 0
SHIPPED = {k: v for k, v in vars(detect).items() if k.startswith("NESTED_")}


def forget(est: AgeEstimator) -> None:
    """Empties the estimator's per-crop memos, so no setting is timed on answers another one computed."""
    from agelens.inference.finding import CropMemo

    for obj in (est, *vars(est).values()):
        for v in vars(obj).values() if hasattr(obj, "__dict__") else ():
            if isinstance(v, CropMemo):
                v.clear()


def summary(rows: list[dict], settings: list[str], ages: np.ndarray | None, off: str = "off") -> dict:
    """Per setting: answered, answers changed and (with ages) MAE and the paired change against the setting `off`."""
    res = {}
    for setting in settings:
        got = [r[setting] for r in rows]
        answered = np.array([g is not None for g in got])
        r = {"n": len(rows), "answered": round(float(answered.mean()), 4) if rows else None,
             "changed": int(sum(1 for x in rows if x[setting] != x[off]))}
        if ages is not None and rows:
            both = answered & np.array([x[off] is not None for x in rows])
            err = np.array([abs(g[0] - a) if g is not None else np.nan for g, a in zip(got, ages, strict=True)])
            r["mae"] = round(float(np.nanmean(err)), 3) if answered.any() else None
            if setting != off and both.any():
                base = np.array([abs(x[off][0] - a) for x, a, ok in zip(rows, ages, both, strict=True) if ok])
                new = err[both]
                m, lo, hi = paired_ci(base, new)
                r["paired_change"] = [round(m, 3), round(lo, 3), round(hi, 3)]
        else:
            flagged = [g[1] for g in got if g is not None]
            r["flagged"] = round(float(np.mean(flagged)), 4) if flagged else None
        res[str(setting)] = r
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="val")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--n-new", type=int, default=50)
    ap.add_argument("--aaf", type=int, default=200)
    ap.add_argument("--realocc", type=int, default=300)
    ap.add_argument("--realocc-half", default="fit", choices=("fit", "measure"))
    ap.add_argument("--crops", type=int, default=3, help="seeded crops per non-face image")
    ap.add_argument("--settings", nargs="+", default=["BELOW=0.6", "shipped", "BELOW=0.8"],
                    help='compared with the rule off: "shipped" (faces.detect as it is) or NESTED_* values, e.g. '
                         '"BELOW=0.8,CENTRED=0.35,FILLS=0.4"')
    ap.add_argument("--seed", type=int, default=7, help="photo sample, occluders and non-face crops")
    ap.add_argument("--degraded", type=int, default=0, help="photos per dataset under scan grain and low resolution")
    ap.add_argument("--against", default="off", help="the setting that answers changed and paired changes are "
                    "measured against (off: the rule off)")
    ap.add_argument("--out", default="runs/nested_val")
    a = ap.parse_args()
    t_start = time.time()
    settings = ["off", *a.settings]
    if a.against not in settings:
        raise SystemExit(f"--against {a.against!r} is none of the settings: {', '.join(settings)}")
    counter = Counting()
    est, placer = AgeEstimator.from_pretrained(), FaceAnalyzer()
    seconds = {c: 0.0 for c in settings}
    reads = {c: 0 for c in settings}
    res: dict = {"command": (f"python benchmarks/nested_faces.py --part {a.part} --n {a.n} --n-new {a.n_new} --aaf {a.aaf} "
                             f"--realocc {a.realocc} --realocc-half {a.realocc_half} --crops {a.crops} --settings "
                             f"{' '.join(settings[1:])} --against {a.against} --seed {a.seed} --degraded {a.degraded} --out {a.out}"),
                 "backend": est.backend, "shipped": SHIPPED}
    conds = ("clean",) + OCCLUSION_TYPES + NEW_KINDS
    rows: dict[str, list] = {c: [] for c in conds}
    ages: dict[str, list] = {c: [] for c in conds}
    utk = SHARED / "utkface"
    files = [utk / f for f in sample_names(sorted(split_part("splits/utkface_seed0.json", a.part)), a.n, a.seed)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        for i, _f, rgb, face, age in placed_photos(placer, files):
            for k, cond in enumerate(conds):
                if cond in NEW_KINDS and i >= a.n_new:
                    continue
                try:
                    img = rgb if cond == "clean" else occlude(rgb, face.landmarks, cond,
                                                               np.random.default_rng((a.seed, i, k))).image
                except OcclusionError:
                    continue
                save_jpeg(path, img)
                rows[cond].append(answers(est, path, settings, face.box, seconds, reads, counter))
                ages[cond].append(age)
        res["utkface"] = {c: summary(rows[c], settings, np.array(ages[c]), a.against) for c in conds}
        for name, kinds in (("paper types", OCCLUSION_TYPES), ("newer kinds", NEW_KINDS)):
            rr = [r for c in kinds for r in rows[c]]
            res["utkface"][name] = summary(rr, settings, np.concatenate([np.array(ages[c]) for c in kinds]),
                                           a.against)
        print(json.dumps({k: res["utkface"][k] for k in ("clean", "sunglasses+mask", "paper types", "newer kinds")}),
              flush=True)
        res["degraded"] = {}
        for ds in ("utkface", "aaf") if a.degraded else ():
            photos = test_files(ds, a.degraded, a.seed, part=a.part)
            for cond in DEGRADED:
                dr = []
                for i, (f, _age) in enumerate(photos):
                    save_jpeg(path, degraded(load_image(f), cond, i, a.seed))
                    dr.append(answers(est, path, settings, None, seconds, reads, counter))
                res["degraded"][f"{ds} {cond}"] = summary(dr, settings, np.array([x for _, x in photos]), a.against)
            print(json.dumps({k: v for k, v in res["degraded"].items() if k.startswith(ds)}), flush=True)

        import pandas as pd

        from agelens.train.guards import realocc_half

        test = set(split_part("splits/aaf_seed0.json", a.part))
        d = pd.read_csv(SHARED / "aaf.csv")
        d = d[d.file.isin(test)].sort_values("file")
        d = d.iloc[np.sort(np.random.default_rng(a.seed).choice(len(d), min(a.aaf, len(d)), replace=False))]
        aaf_rows = [answers(est, SHARED / "aaf" / f, settings, None, seconds, reads, counter) for f in d.file]
        res["aaf_clean"] = summary(aaf_rows, settings, d.age.to_numpy(float), a.against)
        r = pd.read_csv(SHARED / "realocc.csv")
        r = r[r.file.map(realocc_half) == a.realocc_half].sort_values("file")
        r = r.iloc[np.sort(np.random.default_rng(a.seed).choice(len(r), min(a.realocc, len(r)), replace=False))]
        res["realocc"] = summary([answers(est, SHARED / f, settings, None, seconds, reads, counter) for f in r.file],
                                 settings, None, a.against)
        nf = []
        rng = np.random.default_rng(a.seed)  # the images and crops of occlusion_e2e.py's no-face rows at this seed
        for _name, img in sample_images():
            h, w = img.shape[:2]
            views = [img]
            for _ in range(a.crops):
                s = rng.uniform(0.3, 0.8)
                ch, cw = int(h * s), int(w * s)
                y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                views.append(img[y:y + ch, x:x + cw])
            for v in views:
                png = Path(tmp) / "image.png"
                cv2.imwrite(str(png), cv2.cvtColor(np.ascontiguousarray(v), cv2.COLOR_RGB2BGR))
                nf.append(answers(est, png, settings, None, seconds, reads, counter))
        res["no_face"] = {str(c): {"n": len(nf), "answered": int(sum(x[c] is not None for x in nf))} for c in settings}
    apply("shipped", SHIPPED)
    res["padded_reads"] = {str(c): reads[c] for c in settings}
    res["seconds"] = {str(c): round(seconds[c], 1) for c in settings}
    res["wall_seconds"] = round(time.time() - t_start)
    atomic_write_json(Path(f"{a.out}.json"), res)
    lines = ["# Faces do not nest: end to end, the rule off and under each setting", "",
             __doc__.split("\n\n")[0].replace("\n", " "), "", f"Command: `{res['command']}` (backend {est.backend}, "
             f"{res['wall_seconds']} s)", "",
             f"Paired changes and answers changed against: {a.against}.", "",
             "| condition | photos | " + " | ".join(f"{c}: answered, MAE (paired change)" if c != a.against
                                                    else f"{c}: answered, MAE" for c in settings) + " |",
             "|---|---|" + "---|" * len(settings)]

    def cell(r: dict) -> str:
        if not r["n"]:
            return "—"
        s = f"{r['answered']:.1%}, {r.get('mae')}"
        if "paired_change" in r:
            m, lo, hi = r["paired_change"]
            s += f" ({m:+.3f} [{lo:+.3f}, {hi:+.3f}])"
        return s

    for cond, r in list(res["utkface"].items()) + [("All-Age-Faces clean", res["aaf_clean"])] + list(res["degraded"].items()):
        lines.append(f"| {cond} | {r['off']['n']} | " + " | ".join(cell(r[str(c)]) for c in settings) + " |")
    lines += ["", "| set | " + " | ".join(settings) + " |",
              "|---|" + "---|" * len(settings),
              "| realocc: answered / flagged / largest face changed | " + " | ".join(
                  f"{res['realocc'][str(c)]['answered']:.1%} / {res['realocc'][str(c)]['flagged']:.1%} / "
                  f"{res['realocc'][str(c)]['changed']}" for c in settings) + " |",
              "| images without a face: answered | " + " | ".join(
                  f"{res['no_face'][str(c)]['answered']} of {res['no_face'][str(c)]['n']}" for c in settings) + " |",
              "| padded copies read by the rule | " + " | ".join(str(reads[c]) for c in settings) + " |",
              "| seconds in predict | " + " | ".join(f"{seconds[c]:.1f}" for c in settings) + " |"]
    atomic_write_text(Path(f"{a.out}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
