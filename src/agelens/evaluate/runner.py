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
                   tta_flip: bool = True, progress: bool = True, extra: dict | None = None) -> dict:
    from ..train.engine import predict_cache

    idx = np.arange(min(len(cache), cfg.data.max_eval or len(cache)))
    pred, spread, _ = predict_cache(model, cache, cfg, numerics, tta_flip=tta_flip, indices=idx, progress=progress)
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
