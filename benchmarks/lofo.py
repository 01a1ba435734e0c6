"""Leave-one-family-out (issue 20): does what is learnt from occluded faces carry over to an occluder family never
seen in training?

Retraining the student once per family is beyond a CPU session, so this measures the two read-outs as linear
probes on the shipped teacher's frozen features (`models.model.guard_features`: the last
map pooled over the upper and lower face apart, plus the last stage; the teacher saw no occluder in training, so
its features favour no family):

- the occlusion flag: a logistic regression (clean vs occluded), the same model as the teacher's shipped
  occlusion head (its L2 strength), thresholded at 99 % specificity on the clean test faces;
- the age of an occluded face: a ridge regression on the same features, fitted on clean and occluded faces.

For every family F: the probes are fitted once on clean faces plus every family but F ("unseen") and once on clean
faces plus every family ("seen"), and both are scored on F's test crops (test faces never enter a fit). Train and
test faces: seeded samples of the UTKFace train and test caches (aligned 256 px crops with FaceMesh landmarks);
each train face appears clean and under two random families, each test face clean and under every family (a
random kind of it), seeded. Beside them, the shipped student's own MAE on the same test crops (single view). The
student of docs/lofo.md (2026-11-30) had seen the paper's types only; every student since 2026-12-04 trains on
every family, so for today's student that column is seen. The occlusion detector itself, retrained once per
family: `benchmarks/lofo_detector.py`.

    python benchmarks/lofo.py --train 1200 --test 400 --out docs/lofo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from agelens.data.cache import FaceCache
from agelens.models.weights import resolve_model
from agelens.occlusion.synth import FAMILIES, OcclusionError, occlude
from agelens.train.trunk_guards import embed
from agelens.utils import atomic_write_json, atomic_write_text

FAMS = tuple(FAMILIES)
SPECIFICITY = 0.99


def faces(cache: FaceCache, n: int, seed: int) -> list[int]:
    ok = [i for i in range(len(cache.records)) if np.isfinite(cache.landmarks[i]).all()]
    return sorted(np.random.default_rng(seed).choice(ok, min(n, len(ok)), replace=False).tolist())


def draw(cache: FaceCache, idx: list[int], fams_per_face: int | None, seed: int
         ) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    """Crops, their family ("clean" or a FAMILIES key) and ages: each face clean, plus under `fams_per_face`
    random families (None: every family)."""
    crops, fam, ages = [], [], []
    for j, i in enumerate(idx):
        rng = np.random.default_rng((seed, j))
        img, lm, age = np.asarray(cache.images[i]), np.asarray(cache.landmarks[i]), float(cache.records[i].age)
        chosen = FAMS if fams_per_face is None else rng.choice(FAMS, fams_per_face, replace=False)
        crops.append(img)
        fam.append("clean")
        ages.append(age)
        for f in chosen:
            kinds = FAMILIES[f]
            try:
                crops.append(occlude(img, lm, kinds[rng.integers(len(kinds))], rng).image)
            except OcclusionError:
                continue
            fam.append(str(f))
            ages.append(age)
    return crops, fam, np.array(ages, np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=1200, help="UTKFace train faces")
    ap.add_argument("--test", type=int, default=400, help="UTKFace test faces")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/lofo")
    a = ap.parse_args()
    from sklearn.linear_model import LogisticRegression, RidgeCV

    t0 = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, cfg, card = resolve_model("teacher")
    model.eval().to(memory_format=torch.channels_last)
    crop, size = cfg.data.crop_size, cfg.data.input_size
    tr_cache, te_cache = FaceCache("cache/utkface/train"), FaceCache("cache/utkface/test")
    tr_crops, tr_fam, tr_age = draw(tr_cache, faces(tr_cache, a.train, a.seed), 2, a.seed)
    te_crops, te_fam, te_age = draw(te_cache, faces(te_cache, a.test, a.seed + 1), None, a.seed + 1)
    tr_fam, te_fam = np.array(tr_fam), np.array(te_fam)
    print(f"{len(tr_crops)} train crops, {len(te_crops)} test crops; embedding", flush=True)
    x_tr = embed(model, tr_crops, crop, size, None)
    x_te = embed(model, te_crops, crop, size, None)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd

    from agelens.export.shipped import ensure_export
    from agelens.inference.backends.onnx import OnnxModel

    student = OnnxModel(ensure_export() / "student.notta.onnx")
    student_age = student.run(student.views(np.stack(te_crops)))[0]

    c = float(card["guard_metrics"]["c"]["occlusion"])
    alphas = RidgeCV(alphas=np.logspace(0, 4, 9)).fit(x_tr, tr_age).alpha_  # one strength, chosen on every family

    def probes(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flag = LogisticRegression(C=c, max_iter=3000).fit(x_tr[train], tr_fam[train] != "clean")
        age = RidgeCV(alphas=[alphas]).fit(x_tr[train], tr_age[train])
        return flag.predict_proba(x_te)[:, 1], age.predict(x_te)

    seen_p, seen_a = probes(np.ones(len(tr_fam), bool))
    rows = []
    for f in FAMS:
        un_p, un_a = probes(tr_fam != f)
        t = te_fam == f
        clean = te_fam == "clean"
        th_un, th_seen = (float(np.quantile(p[clean], SPECIFICITY)) for p in (un_p, seen_p))
        row = {"family": f, "kinds": list(FAMILIES[f]), "n_test": int(t.sum()),
               "flag_recall_unseen": float((un_p[t] >= th_un).mean()),
               "flag_recall_seen": float((seen_p[t] >= th_seen).mean()),
               "age_mae_unseen": float(np.abs(un_a[t] - te_age[t]).mean()),
               "age_mae_seen": float(np.abs(seen_a[t] - te_age[t]).mean()),
               "student_mae": float(np.abs(student_age[t] - te_age[t]).mean())}
        row["age_unseen_vs_seen"] = row["age_mae_unseen"] / row["age_mae_seen"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    clean = te_fam == "clean"
    res = {"command": f"python benchmarks/lofo.py --train {a.train} --test {a.test} --seed {a.seed} --out {a.out}",
           "n_train_crops": len(tr_crops), "n_test_crops": len(te_crops), "ridge_alpha": float(alphas),
           "logistic_c": c, "clean_age_mae_probe": float(np.abs(seen_a[clean] - te_age[clean]).mean()),
           "clean_student_mae": float(np.abs(student_age[clean] - te_age[clean]).mean()),
           "families": rows, "seconds": round(time.perf_counter() - t0)}
    res["mean_age_unseen_vs_seen"] = float(np.mean([r["age_unseen_vs_seen"] for r in rows]))
    res["max_age_unseen_vs_seen"] = float(np.max([r["age_unseen_vs_seen"] for r in rows]))
    atomic_write_json(Path(a.out).with_suffix(".json"), res)
    lines = ["# Leave-one-family-out (linear probes on the teacher's frozen features)", "",
             f"Generated by `{res['command']}` ({res['seconds']} s). What each column means: the docstring of "
             "`benchmarks/lofo.py`. Unseen: probe fitted without the family; seen: with every family. Flag recall at "
             f"{SPECIFICITY:.0%} specificity on the clean test faces. {res['n_train_crops']} train crops, "
             f"{res['n_test_crops']} test crops; clean test faces: probe MAE {res['clean_age_mae_probe']:.2f}, "
             f"student MAE {res['clean_student_mae']:.2f}.", "",
             "| family | test crops | flag recall, unseen | flag recall, seen | age MAE, unseen | age MAE, seen | "
             "unseen ÷ seen | shipped student MAE |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['n_test']} | {r['flag_recall_unseen']:.3f} | {r['flag_recall_seen']:.3f} | "
                     f"{r['age_mae_unseen']:.2f} | {r['age_mae_seen']:.2f} | {r['age_unseen_vs_seen']:.3f} | "
                     f"{r['student_mae']:.2f} |")
    lines += ["", f"Age MAE unseen ÷ seen: mean {res['mean_age_unseen_vs_seen']:.3f}, worst "
              f"{res['max_age_unseen_vs_seen']:.3f} (target ≤ 1.10)."]
    atomic_write_text(Path(a.out).with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
