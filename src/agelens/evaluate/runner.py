"""Evaluate an AgeModel on a FaceCache: predictions.csv + metrics.json, written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..data.cache import FaceCache
from ..models import AgeModel
from ..train.numerics import Numerics
from ..utils import atomic_write_json, atomic_write_text
from .metrics import compute_metrics


def evaluate_cache(model: AgeModel, cache: FaceCache, cfg: RunConfig, numerics: Numerics, out_dir: str | Path | None,
                   tta_flip: bool = True, progress: bool = True, extra: dict | None = None, occlusion=None,
                   seed: int = 0) -> dict:
    """`occlusion` (an OcclusionMix) evaluates on seeded occluded copies: the same copies for every model."""
    from ..train.engine import predict_cache

    idx = np.arange(min(len(cache), cfg.data.max_eval or len(cache)))
    pred, spread, _ = predict_cache(model, cache, cfg, numerics, tta_flip=tta_flip, indices=idx, progress=progress,
                                    occlusion=occlusion, seed=seed)
    recs = [cache.records[i] for i in idx]
    true = cache.ages[idx]
    metrics = compute_metrics(pred, true, [r.gender for r in recs], [r.race for r in recs])
    metrics["failed"] = len(cache.failed)
    metrics.update(extra or {})
    if out_dir is not None:
        out = Path(out_dir)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "age", "pred", "spread", "abs_error", "gender", "race"])
        for r, p, s in zip(recs, pred, spread):
            w.writerow([r.path, r.age, f"{p:.3f}", f"{s:.3f}", f"{abs(p - r.age):.3f}", r.gender or "", r.race or ""])
        for f in cache.failed:
            w.writerow([f["path"], "", "", "", "", "", f"failed: {f['reason']}"])
        atomic_write_text(out / "predictions.csv", buf.getvalue())
        atomic_write_json(out / "metrics.json", metrics)
    return metrics


def evaluate_estimator(est, cache: FaceCache, out_dir: str | Path | None, occlusion=None, seed: int = 0,
                       batch_size: int = 64, progress: bool = True, extra: dict | None = None,
                       inpaint: bool = False, max_eval: int = 0) -> dict:
    """Evaluate a (routed) AgeEstimator on a cache, optionally on seeded occluded copies (`occlusion`, an
    OcclusionMix whose clean_fraction sets the clean share, e.g. 0.5 for the paper's 50 % protocol).
    Adds per-occlusion-type MAE, the routing shares and the detector's accuracy against the drawn truth.
    inpaint=True fills each drawn occluder (its true mask, dilated) with OpenCV Telea inpainting first: the
    inpainting baseline of paper 1. max_eval > 0: only the first max_eval faces."""
    from ..data.dataset import CachedFaceDataset
    from ..progress import track

    ds = CachedFaceDataset(cache, False, 16, 16, occlusion=occlusion, seed=seed)
    n = min(len(cache), max_eval or len(cache))
    ages, spreads, scores, occluded, models, kinds = [], [], [], [], [], []
    for start in track(range(0, n, batch_size), total=(n + batch_size - 1) // batch_size, description="evaluating",
                       enabled=progress):
        views = [ds.occluded_view(i, with_alpha=True) for i in range(start, min(n, start + batch_size))]
        if inpaint:
            views = [(_inpaint(img, alpha), kind, alpha) for img, kind, alpha in views]
        r = est.analyse_crops(np.stack([v[0] for v in views]))
        ages.append(r["age"])
        spreads.append(r["spread"])
        scores.append(r["occlusion_score"])
        occluded.append(r["occluded"])
        models += list(r["model"])
        kinds += [v[1] or "clean" for v in views]
    pred, spread = np.concatenate(ages), np.concatenate(spreads)
    score, occ = np.concatenate(scores), np.concatenate(occluded)
    recs = cache.records[:n]
    true = cache.ages[:n]
    metrics = compute_metrics(pred, true, [r.gender for r in recs], [r.race for r in recs])
    kinds_a, models_a = np.array(kinds), np.array(models)
    err = np.abs(pred - true)
    metrics["per_occlusion"] = {k: {"n": int((kinds_a == k).sum()), "mae": round(float(err[kinds_a == k].mean()), 4)}
                                for k in sorted(set(kinds))}
    metrics["routed_to"] = {m: int((models_a == m).sum()) for m in sorted(set(models))}
    if est.detector is not None:
        truth = kinds_a != "clean"
        metrics["detector_accuracy"] = round(float((occ == truth).mean()), 4)
    metrics["failed"] = len(cache.failed)
    metrics["route"] = est.route
    metrics.update(extra or {})
    if out_dir is not None:
        out = Path(out_dir)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "age", "pred", "spread", "abs_error", "gender", "race", "occlusion", "occlusion_score",
                    "occluded", "model"])
        for r, p, s, k, sc, o, m in zip(recs, pred, spread, kinds, score, occ, models):
            w.writerow([r.path, r.age, f"{p:.3f}", f"{s:.3f}", f"{abs(p - r.age):.3f}", r.gender or "", r.race or "",
                        k, "" if not np.isfinite(sc) else f"{sc:.4f}", int(o), m])
        for f in cache.failed:
            w.writerow([f["path"], "", "", "", "", "", f"failed: {f['reason']}", "", "", "", ""])
        atomic_write_text(out / "predictions.csv", buf.getvalue())
        atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _inpaint(img: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    import cv2

    if alpha is None:
        return img
    mask = cv2.dilate((alpha > 0.05).astype(np.uint8) * 255, np.ones((5, 5), np.uint8))
    return cv2.inpaint(np.ascontiguousarray(img), mask, 5, cv2.INPAINT_TELEA)
