"""Calibrated age intervals (split conformal): the interval is age ± z·spread, with z chosen on held-out faces so
that it covers the true age of `level` of them. The spread (the std of the predicted age distribution) keeps each
face's own width; z makes the widths honest. z is stored per model in its card (`interval_z`) and used by both
backends; `coverage` reports how often, overall and per age bin, an interval holds the true age.

The calibration faces can be cached crops (`calibrate_model`) or end-to-end predictions of `agelens evaluate` on
a val part (`calibrate_predictions`), which carry the detection and alignment noise the cached crops do not.
`docs/interval_coverage.md` compares the two, and one z per predicted-age bin, on the test parts end to end."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .metrics import interval_report, mae

LEVEL = 0.9  # without calibration the interval is ± 1.645·spread (inference.backends.Z90, a normal error model)


def conformal_z(pred: np.ndarray, true: np.ndarray, spread: np.ndarray, level: float = LEVEL) -> float:
    """The split-conformal multiplier: the ⌈(n+1)·level⌉-th smallest |pred − true| / spread of the calibration
    faces, so that a new face's interval pred ± z·spread covers its age with probability ≥ level."""
    pred, true, spread = (np.asarray(a, np.float64) for a in (pred, true, spread))
    if not (len(pred) == len(true) == len(spread)) or len(pred) == 0:
        raise ValueError(f"need equal, non-empty arrays, got {len(pred)}, {len(true)}, {len(spread)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    k = math.ceil((len(pred) + 1) * level)
    if k > len(pred):  # the guarantee needs a score beyond the largest: no finite z holds it
        raise ValueError(f"{len(pred)} calibration faces cannot calibrate a {level:.0%} interval: it needs at least "
                         f"{math.ceil(level / (1 - level) - 1e-9)} (the {k}-th smallest score of {len(pred)})")
    scores = np.sort(np.abs(pred - true) / np.maximum(spread, 1e-3))
    return float(scores[k - 1])


def coverage(pred: np.ndarray, true: np.ndarray, spread: np.ndarray, z: float, min_age: float = 0.0,
             max_age: float = 100.0) -> dict:
    """Share of faces whose interval [pred − z·spread, pred + z·spread] (clipped to the model's age range) holds
    the true age: overall, per age bin, and the mean interval width."""
    pred, true, spread = (np.asarray(a, np.float64) for a in (pred, true, spread))
    lo, hi = np.maximum(min_age, pred - z * spread), np.minimum(max_age, pred + z * spread)
    return {"z": round(float(z), 4), **interval_report(true, lo, hi)}


def _record(parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], level: float, lo: float, hi: float,
            **about) -> dict:
    """The calibration record of pooled (pred, true, spread) per dataset: z and the coverage it gives on these
    faces, overall and per dataset."""
    pred, true, spread = (np.concatenate([p[i] for p in parts.values()]) for i in range(3))
    z = conformal_z(pred, true, spread, level)
    return {"interval_z": round(z, 4), "level": level, **about, "coverage": coverage(pred, true, spread, z, lo, hi),
            "per_dataset": {k: {**coverage(p, t, s, z, lo, hi), "mae": round(mae(p, t), 4)}
                            for k, (p, t, s) in parts.items()}}


def calibrate_predictions(files: list[str], model: str, level: float = LEVEL, min_age: float = 0.0,
                          max_age: float = 100.0) -> dict:
    """z for one model from end-to-end predictions: `agelens evaluate` predictions.csv files of val parts (each
    file one dataset), the rows the model answered (column `model`)."""
    import pandas as pd

    parts = {}
    for f in files:
        every = pd.read_csv(f)
        missing = {"age", "pred", "spread", "model"} - set(every.columns)
        if missing:
            raise ValueError(f"{f} is not an `agelens evaluate` predictions.csv (no {sorted(missing)})")
        d = every[every.model == model]
        if len(d) == 0:
            raise ValueError(f"{f} has no faces answered by {model!r} (models there: {sorted(set(every.model))})")
        parts[str(f)] = (d.pred.to_numpy(), d.age.to_numpy(), d.spread.to_numpy())
    return _record(parts, level, min_age, max_age, part="predictions", files=[str(f) for f in files], model=model)


def calibrate_model(model_spec: str, config: str, part: str = "val", occluded: bool = False, level: float = LEVEL,
                    seed: int = 0, progress: bool = True) -> dict:
    """z for one model on the prepared `part` caches of a config (its dataset and every extra_data one, pooled):
    clean faces, or with occluded=True every face given a seeded synthetic occluder (the student's faces).
    Returns the calibration record (z, level, coverage on the calibration faces, per dataset)."""
    from ..config import load_config
    from ..occlusion.synth import PAPER_MIX, OcclusionMix
    from .predict import predict_cache
    from .prepared import eval_numerics, load_model_config, open_part

    model, cfg, _ = load_model_config(model_spec, config)
    crop, size = cfg.data.crop_size, cfg.data.input_size  # the model's own view, whatever the data config says
    occ = OcclusionMix(dict(PAPER_MIX), 0.0) if occluded else None
    parts = {}
    for data in [cfg.data, *load_config(config).extra_data]:
        cfg.data = dataclasses.replace(data, crop_size=crop, input_size=size)
        cache = open_part(cfg, part)
        p, s, _ = predict_cache(model, cache, cfg, eval_numerics(), progress=progress, occlusion=occ, seed=seed + 1)
        parts[data.dataset] = (p, cache.ages, s)
    return _record(parts, level, float(cfg.model.min_age), float(cfg.model.max_age), part=part, occluded=occluded,
                   config=str(config))
