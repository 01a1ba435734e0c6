"""Evaluate an AgeModel on a FaceCache: predictions.csv + metrics.json (+ bootstrap intervals, fairlearn group
report, optional KNN refinement and embeddings.npz), written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..data.cache import FaceCache
from ..models import AgeModel
from ..numerics import Numerics
from ..utils import atomic_write_json, atomic_write_npz, atomic_write_text
from .metrics import bootstrap_ci, compute_metrics, group_report, interval_report, standardised_mae

BOOTSTRAP = 1000  # resamples for the 95 % intervals in every metrics.json


def add_fairness(metrics: dict, pred: np.ndarray, true: np.ndarray, genders: list, races: list,
                 bootstrap: int = BOOTSTRAP, seed: int = 0, groups: bool = True, clusters: list | None = None) -> dict:
    """metrics["ci95"] (seeded bootstrap intervals, bootstrap > 0) and metrics["groups"] (fairlearn MetricFrame
    report, groups=True). clusters: the records' groups (duplicate groups, persons), resampled whole."""
    if bootstrap > 0:
        metrics["ci95"] = bootstrap_ci(pred, true, genders, races, n_boot=bootstrap, seed=seed, clusters=clusters)
    if groups:
        metrics["groups"] = group_report(pred, true, genders, races)
        if any(genders) or any(races):  # equal error at equal age (issue 18): age-standardised MAE per group
            metrics["standardised"] = standardised_mae(pred, true, genders, races, n_boot=bootstrap, seed=seed,
                                                       clusters=clusters)
    return metrics


def save_embeddings(path: str | Path, emb: np.ndarray, true: np.ndarray, pred: np.ndarray, recs: list) -> None:
    """embeddings.npz: embedding (fp16), age, pred, gender, race, path; for the t-SNE of `agelens report`."""
    atomic_write_npz(path, embedding=np.asarray(emb, np.float16), age=np.asarray(true, np.float32),
                     pred=np.asarray(pred, np.float32), gender=np.array([r.gender or "" for r in recs]),
                     race=np.array([r.race or "" for r in recs]), path=np.array([r.path for r in recs]))


def apply_knn(knn, fingerprint: str, pred: np.ndarray, emb: np.ndarray, what: str) -> tuple[np.ndarray, dict]:
    """KNN-refined predictions and the metrics entry describing the index (after checking it fits the model)."""
    knn.check(fingerprint, what)
    info = {"index": knn.meta.get("path"), "k": knn.k, "w": knn.w, "n_index": int(knn.index.ntotal)}
    return knn.refine(pred, emb), info


def teacher_fingerprint(est) -> str:
    """The fingerprint a KNN index must carry to refine this estimator's teacher (checked before any face is read)."""
    from ..models.weights import model_fingerprint

    t = est.teacher
    return model_fingerprint(t.model, t.crop_size, t.input_size)


def evaluate_cache(model: AgeModel, cache: FaceCache, cfg: RunConfig, numerics: Numerics, out_dir: str | Path | None,
                   tta_flip: bool = True, progress: bool = True, extra: dict | None = None, occlusion=None,
                   seed: int = 0, knn=None, embeddings: bool = False, bootstrap: int = BOOTSTRAP) -> dict:
    """`occlusion` (an OcclusionMix) evaluates on seeded occluded copies: the same copies for every model.
    `knn` (a fairness.knn.KnnIndex built for this model) refines the predictions; embeddings=True also writes
    OUT/embeddings.npz; bootstrap > 0 adds seeded 95 % intervals (metrics["ci95"])."""
    from ..evaluate.predict import predict_cache

    if knn is not None:  # an index of another model is refused before the prediction pass, not after it
        from ..models.weights import model_fingerprint

        fingerprint = model_fingerprint(model, cfg.data.crop_size, cfg.data.input_size)
        knn.check(fingerprint, "the evaluated model")
    idx = np.arange(min(len(cache), cfg.data.max_eval or len(cache)))
    drawn: dict = {}
    pred, spread, emb = predict_cache(model, cache, cfg, numerics, tta_flip=tta_flip, indices=idx, progress=progress,
                                      occlusion=occlusion, seed=seed, drawn=drawn)
    raw = pred
    knn_info = None
    if knn is not None:
        pred, knn_info = apply_knn(knn, fingerprint, pred, emb, "the evaluated model")
    recs = [cache.records[i] for i in idx]
    true = cache.ages[idx]
    genders, races = [r.gender for r in recs], [r.race for r in recs]
    metrics = compute_metrics(pred, true, genders, races)
    add_fairness(metrics, pred, true, genders, races, bootstrap, clusters=[r.group for r in recs])
    metrics["failed"] = len(cache.failed)
    kinds = None
    if occlusion is not None:  # the occluder each face got in predict_cache, per type
        kinds = np.array([drawn.get(int(i)) or "clean" for i in idx])
        metrics["per_occlusion"] = per_type(kinds, np.abs(pred - true))
    if knn_info is not None:
        metrics["knn"] = knn_info
    metrics.update(extra or {})
    if out_dir is not None:
        out = Path(out_dir)
        buf = io.StringIO()
        w = csv.writer(buf)
        occ = ["occlusion"] if kinds is not None else []
        w.writerow(["path", "age", "pred", "spread", "abs_error", "gender", "race"] + occ
                   + (["pred_before_knn"] if knn else []) + ["error"])
        for j, (r, p, s, p0) in enumerate(zip(recs, pred, spread, raw)):
            w.writerow([r.path, r.age, f"{p:.3f}", f"{s:.3f}", f"{abs(p - r.age):.3f}", r.gender or "", r.race or ""]
                       + ([kinds[j]] if kinds is not None else []) + ([f"{p0:.3f}"] if knn else []) + [""])
        for f in cache.failed:
            w.writerow(_failed_row(f, 4, len(occ)) + ([""] if knn else []) + [f["reason"]])
        atomic_write_text(out / "predictions.csv", buf.getvalue())
        if embeddings:
            save_embeddings(out / "embeddings.npz", emb, true, pred, recs)
        atomic_write_json(out / "metrics.json", metrics)
    return metrics


def per_type(kinds: np.ndarray, err: np.ndarray) -> dict:
    """{occlusion type (or "clean"): {"n", "mae"}} of absolute errors."""
    return {k: {"n": int((kinds == k).sum()), "mae": round(float(err[kinds == k].mean()), 4)} for k in sorted(set(kinds))}


def _failed_row(failure: dict, blank_before: int, blank_after: int) -> list:
    """predictions.csv's row of a face the cache could not prepare: its path and labels (where the cache kept them)
    around blank prediction columns; the reason goes in the last column, `error`."""
    labels = [failure.get("gender") or "", failure.get("race") or ""]
    return [failure["path"], failure.get("age", ""), *[""] * (blank_before - 1), *labels, *[""] * blank_after]


def evaluate_estimator(est, cache: FaceCache, out_dir: str | Path | None, occlusion=None, seed: int = 0,
                       batch_size: int = 64, progress: bool = True, extra: dict | None = None,
                       inpaint: bool = False, max_eval: int = 0, knn=None, embeddings: bool = False,
                       bootstrap: int = BOOTSTRAP, groups: bool = True, adapt: bool = False) -> dict:
    """Evaluate a (routed) AgeEstimator on a cache, optionally on seeded occluded copies (`occlusion`, an
    OcclusionMix whose clean_fraction sets the clean share, e.g. 0.5 for the paper's 50 % protocol).
    Adds per-occlusion-type MAE, the routing shares and the detector's accuracy against the drawn truth.
    inpaint=True fills each drawn occluder (its true mask, dilated) with OpenCV Telea inpainting first: the
    inpainting baseline of paper 1. max_eval > 0: only the first max_eval faces.
    knn: a KnnIndex built for the teacher, applied to the faces the teacher answered; embeddings=True writes the
    teacher's embeddings to OUT/embeddings.npz (from the teacher's own pass; faces routed to the student get an
    extra teacher pass only for that file). bootstrap=0 / groups=False leave out the intervals / fairlearn report.
    adapt=True: the ages adapted to the faces' own age mix as `agelens predict` adapts a job's
    (`AgeEstimator.adapt_arrays`), before any KNN refinement; metrics gain `prior_adaptation`, whose `mae_unadapted`
    is the MAE of the same pipeline without the adaptation (KNN refinement included where on)."""
    from ..data.dataset import CachedFaceDataset
    from ..progress import track

    if knn is not None:
        fingerprint = teacher_fingerprint(est)
        knn.check(fingerprint, f"model {est.teacher.name}")
    ds = CachedFaceDataset(cache, False, 16, 16, occlusion=occlusion, seed=seed)
    n = min(len(cache), max_eval or len(cache))
    ages, spreads, weights, scores, occluded, models, kinds, embs = [], [], [], [], [], [], [], []
    for start in track(range(0, n, batch_size), total=(n + batch_size - 1) // batch_size, description="evaluating",
                       enabled=progress):
        views = [ds.occluded_view(i, with_alpha=True) for i in range(start, min(n, start + batch_size))]
        if inpaint:
            views = [(_inpaint(img, alpha), kind, alpha) for img, kind, alpha in views]
        crops = np.stack([v[0] for v in views])
        r = est.analyse_crops(crops, embeddings=knn is not None or embeddings, all_faces=embeddings)
        if "embedding" in r:
            embs.append(r["embedding"])
        ages.append(r["age"])
        spreads.append(r["spread"])
        weights.append(r["student_weight"])
        scores.append(r["occlusion_score"])
        occluded.append(r["occluded"])
        models += list(r["model"])
        kinds += [v[1] or "clean" for v in views]
    pred, spread, w = np.concatenate(ages), np.concatenate(spreads), np.concatenate(weights)
    score, occ = np.concatenate(scores), np.concatenate(occluded)
    recs = cache.records[:n]
    true = cache.ages[:n]
    adapted = unadapted = None
    if adapt:
        unadapted = pred
        pred, spread, adapted = est.adapt_arrays(pred, spread, w, score)
    raw, knn_info = pred, None
    if knn is not None:
        t = est.teacher
        by_teacher = np.array(models) == t.name  # only the teacher's answers are refined
        emb_t = np.concatenate(embs)[by_teacher]
        refined, knn_info = apply_knn(knn, fingerprint, pred[by_teacher], emb_t, f"model {t.name}")
        pred = pred.copy()
        pred[by_teacher] = refined
        knn_info["refined"] = int(by_teacher.sum())
        if unadapted is not None and not np.array_equal(unadapted, raw):
            # the same pipeline without adaptation refines its answers too, so mae − mae_unadapted is what the
            # adaptation did (before: the unadapted MAE was taken before KNN, crediting KNN's change to it)
            unadapted = unadapted.copy()
            unadapted[by_teacher] = knn.refine(unadapted[by_teacher], emb_t)
        elif unadapted is not None:
            unadapted = pred
    if adapted is not None:
        adapted["mae_unadapted"] = round(float(np.abs(unadapted - np.asarray(true)).mean()), 4) if n else None
    genders, races = [r.gender for r in recs], [r.race for r in recs]
    metrics = compute_metrics(pred, true, genders, races)
    add_fairness(metrics, pred, true, genders, races, bootstrap, groups=groups, clusters=[r.group for r in recs])
    if knn_info is not None:
        metrics["knn"] = knn_info
    kinds_a, models_a = np.array(kinds), np.array(models)
    metrics["per_occlusion"] = per_type(kinds_a, np.abs(pred - true))
    metrics["routed_to"] = {m: int((models_a == m).sum()) for m in sorted(set(models))}
    if est.detector is not None:
        truth = kinds_a != "clean"
        metrics["detector_accuracy"] = round(float((occ == truth).mean()), 4)
    # predict's 90 % intervals (each model's calibrated `interval_z`, blended as the ages): how often they hold
    lo, hi = est.intervals(pred, spread, w)
    metrics["interval"] = interval_report(true, lo, hi)
    if adapted is not None:
        metrics["prior_adaptation"] = adapted
    metrics["failed"] = len(cache.failed)
    metrics["route"] = est.route
    metrics.update(extra or {})
    if out_dir is not None:
        out = Path(out_dir)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "age", "pred", "spread", "abs_error", "gender", "race", "occlusion", "occlusion_score",
                    "occluded", "model", "interval_lo", "interval_hi"] + (["pred_before_knn"] if knn else [])
                   + ["error"])
        for r, p, s, k, sc, o, m, a, b, p0 in zip(recs, pred, spread, kinds, score, occ, models, lo, hi, raw):
            w.writerow([r.path, r.age, f"{p:.3f}", f"{s:.3f}", f"{abs(p - r.age):.3f}", r.gender or "", r.race or "",
                        k, "" if not np.isfinite(sc) else f"{sc:.4f}", int(o), m, f"{a:.1f}", f"{b:.1f}"]
                       + ([f"{p0:.3f}"] if knn else []) + [""])
        for f in cache.failed:
            w.writerow(_failed_row(f, 4, 6) + ([""] if knn else []) + [f["reason"]])
        atomic_write_text(out / "predictions.csv", buf.getvalue())
        if embeddings:
            save_embeddings(out / "embeddings.npz", np.concatenate(embs), true, pred, recs)
        atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _inpaint(img: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    import cv2

    if alpha is None:
        return img
    mask = cv2.dilate((alpha > 0.05).astype(np.uint8) * 255, np.ones((5, 5), np.uint8))
    return cv2.inpaint(np.ascontiguousarray(img), mask, 5, cv2.INPAINT_TELEA)
