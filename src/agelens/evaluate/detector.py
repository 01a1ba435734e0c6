"""Occlusion-detector evaluation (training and benchmarks): thresholds chosen on validation, accuracy per
occlusion type on seeded synthetic occluders."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..data.cache import FaceCache
from ..models import AgeModel
from ..numerics import Numerics
from ..occlusion.kinds import OCCLUSION_TYPES
from ..occlusion.synth import OcclusionMix
from ..utils import atomic_write_json


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Accuracy, precision, recall, F1 (positive = occluded) and ROC-AUC."""
    from sklearn.metrics import roc_auc_score

    pred = scores >= threshold
    lab = labels.astype(bool)
    tp, fp = int((pred & lab).sum()), int((pred & ~lab).sum())
    fn, tn = int((~pred & lab).sum()), int((~pred & ~lab).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    out = {"n": int(len(labels)), "accuracy": (tp + tn) / max(1, len(labels)), "precision": prec, "recall": rec,
           "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0, "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    out["roc_auc"] = float(roc_auc_score(lab, scores)) if 0 < lab.sum() < len(lab) else None
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold with the highest accuracy (ties → closest to 0.5)."""
    cands = np.unique(np.round(np.concatenate([np.linspace(0.05, 0.95, 91), [0.5]]), 2))  # 0.49, not 0.48999...
    acc = np.array([((scores >= t) == labels.astype(bool)).mean() for t in cands])
    best = np.flatnonzero(acc == acc.max())
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


def detector_scores(model: AgeModel, cache: FaceCache, cfg: RunConfig, numerics: Numerics,
                    mix: OcclusionMix | None, seed: int = 0, indices: np.ndarray | None = None,
                    tta_flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) on one cache with seeded occluders drawn from `mix` (None: all clean); a face whose
    occluder could not be placed (no landmarks) stays clean and is labelled clean."""
    from .predict import predict_cache

    scores, _, _, labels = predict_cache(model, cache, cfg, numerics, tta_flip=tta_flip, indices=indices,
                                         occlusion=mix, seed=seed, target="occluded")
    return scores, labels


def evaluate_detector(model: AgeModel, val: FaceCache | None, test: FaceCache, cfg: RunConfig, numerics: Numerics,
                      out_dir: str | Path | None = None, threshold: float | None = None, extra: dict | None = None
                      ) -> dict:
    """Threshold from validation (clean + Table 7 mix), then test metrics: clean vs each type, clean vs the mix.
    The clean faces hold no occluded one, so their row is their count and specificity (precision and recall there
    would be 0 for want of positives); `extra` (run, split, part) is written with the metrics."""
    source = "given" if threshold is not None else "0.5 (no validation part)" if val is None else \
        "chosen on the validation part (clean + the occlusion mix)"
    if threshold is None:
        if val is None:
            threshold = 0.5
        else:
            s0, l0 = detector_scores(model, val, cfg, numerics, None, seed=11)
            mix = OcclusionMix({k: float(v) for k, v in cfg.occlusion.mix.items()}, 0.0)
            s1, l1 = detector_scores(model, val, cfg, numerics, mix, seed=12)
            threshold = best_threshold(np.concatenate([s0, s1]), np.concatenate([l0, l1]))
    clean_s, clean_l = detector_scores(model, test, cfg, numerics, None, seed=21)
    clean = binary_metrics(clean_s, clean_l, threshold)
    out = {**(extra or {}), "threshold": threshold, "threshold_from": source,
           "clean": {"n": clean["n"], "accuracy": clean["accuracy"],
                     "specificity": clean["accuracy"]}, "per_type": {}}
    all_s, all_l = [clean_s], [clean_l]
    for k, kind in enumerate(OCCLUSION_TYPES):
        s, lab = detector_scores(model, test, cfg, numerics, OcclusionMix({kind: 1.0}, 0.0), seed=22 + k)
        out["per_type"][kind] = binary_metrics(np.concatenate([clean_s, s]), np.concatenate([clean_l, lab]), threshold)
        out["per_type"][kind]["recall_on_type"] = round(float((s[lab > 0] >= threshold).mean()), 4)
        all_s.append(s)
        all_l.append(lab)
    out["all_types"] = binary_metrics(np.concatenate(all_s), np.concatenate(all_l), threshold)
    # hard negatives: every clean test face wearing see-through glasses must stay "clean"
    glasses = OcclusionMix(dict(cfg.occlusion.mix), clean_fraction=1.0, clear_glasses=1.0)
    gs, _ = detector_scores(model, test, cfg, numerics, glasses, seed=31)
    out["clear_glasses"] = {"n": int(len(gs)), "specificity": round(float((gs < threshold).mean()), 4)}
    out["min_type_accuracy"] = min(m["accuracy"] for m in out["per_type"].values())
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "metrics.json", out)
    return out
