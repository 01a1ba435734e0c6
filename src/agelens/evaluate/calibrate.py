"""Calibrated age intervals (split conformal): the interval is age ± z·spread, with z chosen on held-out faces so
that it covers the true age of `level` of them. The spread (the std of the predicted age distribution) keeps each
face's own width; z makes the widths honest. z is stored per model in its card (`interval_z`) and used by both
backends; `coverage` reports how often, overall and per age bin, an interval holds the true age."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .metrics import AGE_BINS, age_bin

LEVEL = 0.9  # without calibration the interval is ± 1.645·spread (inference.backends.Z90, a normal error model)


def conformal_z(pred: np.ndarray, true: np.ndarray, spread: np.ndarray, level: float = LEVEL) -> float:
    """The split-conformal multiplier: the ⌈(n+1)·level⌉-th smallest |pred − true| / spread of the calibration
    faces, so that a new face's interval pred ± z·spread covers its age with probability ≥ level."""
    pred, true, spread = (np.asarray(a, np.float64) for a in (pred, true, spread))
    if not (len(pred) == len(true) == len(spread)) or len(pred) == 0:
        raise ValueError(f"need equal, non-empty arrays, got {len(pred)}, {len(true)}, {len(spread)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    scores = np.sort(np.abs(pred - true) / np.maximum(spread, 1e-3))
    k = min(len(scores), math.ceil((len(scores) + 1) * level))
    return float(scores[k - 1])


def coverage(pred: np.ndarray, true: np.ndarray, spread: np.ndarray, z: float, min_age: float = 0.0,
             max_age: float = 100.0) -> dict:
    """Share of faces whose interval [pred − z·spread, pred + z·spread] (clipped to the model's age range) holds
    the true age: overall, per age bin, and the mean interval width."""
    pred, true, spread = (np.asarray(a, np.float64) for a in (pred, true, spread))
    lo, hi = np.maximum(min_age, pred - z * spread), np.minimum(max_age, pred + z * spread)
    hit = (lo <= true) & (true <= hi)
    bins = np.array([age_bin(a) for a in true])
    per_bin = {label: round(float(hit[bins == label].mean()), 4) for label, _, _ in AGE_BINS if (bins == label).any()}
    return {"z": round(float(z), 4), "n": int(len(true)), "coverage": round(float(hit.mean()), 4),
            "mean_width": round(float((hi - lo).mean()), 3), "per_bin": per_bin}


def calibrate_model(model_spec: str, config: str, part: str = "val", occluded: bool = False, level: float = LEVEL,
                    seed: int = 0, progress: bool = True) -> dict:
    """z for one model on the prepared `part` caches of a config (its dataset and every extra_data one, pooled):
    clean faces, or with occluded=True every face given a seeded synthetic occluder (the student's faces).
    Returns the calibration record (z, level, coverage on the calibration faces, per dataset)."""
    from ..config import load_config
    from ..fairness.evaluate import _numerics, load_model_config, open_part
    from ..occlusion.synth import PAPER_MIX, OcclusionMix
    from .metrics import mae
    from .predict import predict_cache

    model, cfg, _ = load_model_config(model_spec, config)
    crop, size = cfg.data.crop_size, cfg.data.input_size  # the model's own view, whatever the data config says
    occ = OcclusionMix(dict(PAPER_MIX), 0.0) if occluded else None
    preds, trues, spreads, parts = [], [], [], {}
    for data in [cfg.data, *load_config(config).extra_data]:
        cfg.data = dataclasses.replace(data, crop_size=crop, input_size=size)
        cache = open_part(cfg, part)
        p, s, _ = predict_cache(model, cache, cfg, _numerics(), progress=progress, occlusion=occ, seed=seed + 1)
        preds.append(p)
        spreads.append(s)
        trues.append(cache.ages)
        parts[data.dataset] = (p, cache.ages, s)
    pred, true, spread = (np.concatenate(a) for a in (preds, trues, spreads))
    z = conformal_z(pred, true, spread, level)
    lo, hi = float(cfg.model.min_age), float(cfg.model.max_age)
    return {"interval_z": round(z, 4), "level": level, "part": part, "occluded": occluded, "config": str(config),
            "coverage": coverage(pred, true, spread, z, lo, hi),
            "per_dataset": {k: {**coverage(p, t, s, z, lo, hi), "mae": round(mae(p, t), 4)}
                            for k, (p, t, s) in parts.items()}}
