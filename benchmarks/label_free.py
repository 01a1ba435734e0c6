"""Three label-free levers at inference, measured end to end on test photos of both datasets (`generalise.py`'s
seeded sample, degradations and stability variants); none is shipped (docs/results.md, "Three label-free levers").

- `second-opinion`: the faces the teacher answers also read by the student (one plain view of the same crop, fp32),
  its age weighted in at each V of --weights: age + (1 - w) * V * (student - teacher), w the face's student weight.
  One predict per image records both models, so every weight is scored on the same faces. MAE per condition,
  degraded mean, stability changes, paired clean change at V = 0.3.
- `toned`: photos whose colours lie on one line (second / first principal variance of the RGB pixels under
  TONED_BELOW: sepia and tinted prints) read as grey instead. Scored on the synthetic sepia condition and on the
  real toned photos of both datasets' validation and test parts (and on the near-colourless band above them).
- `adabn`: the teacher's batch-norm statistics re-estimated on a job's own faces (AdaBN, Li et al. 2016), mixed with
  the trained ones at each ALPHA of --alphas, per dataset and condition (300 faces found as predict finds them; the
  torch teacher, flip-TTA).

    python benchmarks/label_free.py second-opinion --n 250 --out docs/label_free_second_opinion.json   # 3.5 min
    python benchmarks/label_free.py toned --n 150 --out docs/label_free_toned.json                     # 4 min
    python benchmarks/label_free.py adabn --n 300 --out docs/label_free_adabn.json                     # 12 min
"""

from __future__ import annotations

import argparse
import copy
import time

import cv2
import numpy as np

from agelens.data.augment import TEST_DEGRADATIONS
from agelens.data.views import centre_views
from agelens.errors import NoFaceError
from agelens.faces.detect import FaceAnalyzer
from agelens.faces.prepare import largest_face
from agelens.imageio import load_image
from agelens.inference.predictor import AgeEstimator
from agelens.utils import atomic_write_json
from generalise import STABILITY, degraded, encode, occluded_photo, one_age, paired_ci, test_files, variant

DATASETS = ("utkface", "aaf")
TONED_BELOW = 1e-3  # second / first principal variance of a photo's RGB pixels: toned prints sit under it


# --- second opinion -----------------------------------------------------------------------------------------------

class SecondOpinion(AgeEstimator):
    """The shipped estimator that also records, per face, the teacher's age and the student's plain single view of
    the same crop (NaN where the student answers alone)."""

    def analyse_crops(self, crops, **kwargs):
        r = super().analyse_crops(crops, **kwargs)
        r["T"], r["P"] = np.full((2, len(crops)), np.nan, np.float32)
        sel = r["student_weight"] < 1
        if sel.any():
            r["T"][sel] = self._ages(self.teacher, crops[sel])[0]  # the memoised trunk pass: no second read
            s = self.student
            r["P"][sel] = s.run(centre_views(crops[sel], s.crop_size, s.input_size))[0]
        return r

    def predictions(self, faces, r, timing):
        out = super().predictions(faces, r, timing)
        for k, p in enumerate(out):
            p.extra.update(T=float(r["T"][k]), P=float(r["P"][k]), w=float(r["student_weight"][k]))
        return out


def opinion_row(est: AgeEstimator, rgb: np.ndarray) -> list[float] | None:
    try:
        p = largest_face(est.predict(rgb))
    except NoFaceError:
        return None
    return [p.age, p.extra["T"], p.extra["P"], p.extra["w"]]


def blended(row: list[float], v: float) -> float:
    age, t, s, w = row
    return age if w >= 1 or not np.isfinite(t) else age + (1 - w) * v * (s - t)


def second_opinion(args) -> dict:
    est = SecondOpinion.from_pretrained()
    an = FaceAnalyzer()
    out = {"backend": est.backend, "weights": args.weights, "datasets": {}}
    for ds in DATASETS:
        rows, t0 = [], time.time()
        for i, (f, age) in enumerate(test_files(ds, args.n, args.seed)):
            rgb = load_image(f)
            ref = encode(rgb, ".jpg", 95)
            row = {"age": age, "clean": opinion_row(est, ref)}
            for name in TEST_DEGRADATIONS:
                row[name] = opinion_row(est, degraded(rgb, name, i, args.seed))
            occ = occluded_photo(an, rgb, i, args.seed)  # one paper occluder, as generalise.py draws it
            if occ is not None:
                row["occluded"] = opinion_row(est, occ)
            for k in STABILITY:
                row[k] = opinion_row(est, variant(ref, k))
            rows.append(row)
        out["datasets"][ds] = score_opinions(rows, args.weights)
        print(ds, f"{time.time() - t0:.0f} s", out["datasets"][ds]["mae"]["clean"], flush=True)
    return out


def score_opinions(rows: list[dict], weights: list[float]) -> dict:
    def mae(c: str, v: float) -> float:
        return float(np.mean([abs(blended(r[c], v) - r["age"]) for r in rows if r.get(c)]))

    conds = ("clean", *TEST_DEGRADATIONS, "occluded")
    res = {"n": len(rows), "mae": {c: [round(mae(c, v), 3) for v in weights] for c in conds}}
    deg = [np.mean([mae(c, v) for c in TEST_DEGRADATIONS]) for v in weights]
    res["degraded_mean"] = [[round(float(d), 3), round(float(d) / mae("clean", v), 3)] for d, v in zip(deg, weights)]
    res["stability"] = {}
    for k in STABILITY:
        ch = [np.array([abs(blended(r[k], v) - blended(r["clean"], v)) for r in rows if r.get(k) and r.get("clean")])
              for v in weights]
        res["stability"][k] = [[round(float(c.mean()), 3), round(float((c > 5).mean()), 4)] for c in ch]
    d = np.array([abs(blended(r["clean"], 0.3) - r["age"]) - abs(r["clean"][0] - r["age"]) for r in rows
                  if r.get("clean")])
    res["clean_paired_v0.3"] = [round(x, 3) for x in paired_ci(d)]
    return res


# --- toned prints read grey -----------------------------------------------------------------------------------------

def tone_ratio(rgb: np.ndarray) -> float:
    """Second / first principal variance of the RGB pixels: about 0 for grey and toned photos (colours on a line)."""
    ev = np.linalg.eigvalsh(np.cov(rgb.reshape(-1, 3).astype(np.float32).T))
    return float(ev[1] / max(ev[2], 1e-6))


def grey(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def toned(args) -> dict:
    est = AgeEstimator.from_pretrained()
    out = {"backend": est.backend, "toned_below": TONED_BELOW, "synthetic_sepia": {}, "real": {}}
    for ds in DATASETS:  # the synthetic sepia condition of the degraded test
        err, ratios = {"as is": [], "grey": [], "grey photo": []}, []
        for i, (f, age) in enumerate(test_files(ds, args.n, args.seed)):
            rgb = load_image(f)
            sep = degraded(rgb, "sepia", i, args.seed)
            ratios.append(tone_ratio(encode(sep, ".jpg", 95)))
            for k, img in (("as is", sep), ("grey", grey(sep)), ("grey photo", degraded(rgb, "grayscale", i, args.seed))):
                a = one_age(est, img)
                err[k].append(abs(a[0] - age) if a else np.nan)
        out["synthetic_sepia"][ds] = {k: round(float(np.nanmean(v)), 3) for k, v in err.items()}
        out["synthetic_sepia"][ds]["detected_after_jpeg_q95"] = round(float(np.mean(np.array(ratios) < TONED_BELOW)), 3)
        print(ds, out["synthetic_sepia"][ds], flush=True)
    rows = []  # real toned photos: every validation and test photo of both datasets with colours nearly on a line
    for ds in DATASETS:
        for part in ("val", "test"):
            for f, age in test_files(ds, 10**6, args.seed, part=part):
                rgb = load_image(f)
                r = tone_ratio(rgb)
                if 1e-5 <= r < 3 * TONED_BELOW:  # under 1e-5: already grey
                    a, b = one_age(est, rgb), one_age(est, grey(rgb))
                    if a and b:
                        rows.append((r, abs(a[0] - age), abs(b[0] - age)))
    rows = np.array(rows)
    for name, lo, hi in (("toned", 1e-5, TONED_BELOW), ("near colourless", TONED_BELOW, 3 * TONED_BELOW)):
        m = (rows[:, 0] >= lo) & (rows[:, 0] < hi)
        out["real"][name] = {"n": int(m.sum()), "mae_as_is": round(float(rows[m, 1].mean()), 3),
                             "mae_grey": round(float(rows[m, 2].mean()), 3),
                             "paired": [round(x, 3) for x in paired_ci(rows[m, 2] - rows[m, 1])]}
    print(out["real"], flush=True)
    return out


# --- batch-norm statistics of the job -------------------------------------------------------------------------------

def adabn(args) -> dict:
    import torch

    from agelens.models.inputs import to_input

    torch.set_num_threads(2)
    est = AgeEstimator.from_pretrained(backend="torch")
    tm = est.teacher

    def inputs(crops):
        v = centre_views(crops, tm.crop_size, tm.input_size)
        return to_input(torch.from_numpy(np.ascontiguousarray(v)), *tm.model.mean_std, "cpu", True)

    def ages(model, crops):
        with torch.no_grad():
            return np.concatenate([model.predict(inputs(crops[i:i + 64]), True)[0].float().numpy()
                                   for i in range(0, len(crops), 64)])

    def adapted(crops, alpha):
        m = copy.deepcopy(tm.model)
        bns = [b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
        old = [(b.running_mean.clone(), b.running_var.clone()) for b in bns]
        for b in bns:
            b.reset_running_stats()
            b.momentum = None  # a plain average over the job's batches
            b.train()
        with torch.no_grad():
            for i in range(0, len(crops), 64):
                x = inputs(crops[i:i + 64])
                m(x)
                m(torch.flip(x, dims=[3]))
        for b, (mu, var) in zip(bns, old, strict=True):
            b.running_mean.mul_(alpha).add_((1 - alpha) * mu)
            b.running_var.mul_(alpha).add_((1 - alpha) * var)
        return m.eval()

    out = {"alphas": args.alphas, "rows": []}
    for ds in DATASETS:
        files = test_files(ds, args.n, args.seed)
        for c in args.conditions:
            crops, true = [], []
            for i, (f, age) in enumerate(files):
                rgb = load_image(f)
                try:
                    faces = est.faces_of(encode(rgb, ".jpg", 95) if c == "clean" else degraded(rgb, c, i, args.seed))
                except NoFaceError:
                    continue
                crops.append(largest_face(faces, box=lambda x: x[0])[2])
                true.append(age)
            x, y = np.stack(crops), np.array(true, np.float32)
            row = {"dataset": ds, "condition": c, "n": len(y), "mae": round(float(np.abs(ages(tm.model, x) - y).mean()), 3),
                   "adapted": [round(float(np.abs(ages(adapted(x, a), x) - y).mean()), 3) for a in args.alphas]}
            out["rows"].append(row)
            print(row, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("probe", choices=("second-opinion", "toned", "adabn"))
    ap.add_argument("--n", type=int, default=250, help="test photos per dataset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.2, 0.3, 0.4], help="second-opinion: V")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="adabn: share of the job")
    ap.add_argument("--conditions", nargs="+", default=["clean", "scan_grain", "lowres", "sepia", "grayscale"],
                    help="adabn: conditions")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t0 = time.time()
    res = {"second-opinion": second_opinion, "toned": toned, "adabn": adabn}[args.probe](args)
    res.update(probe=args.probe, n=args.n, seed=args.seed, seconds=round(time.time() - t0))
    atomic_write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
