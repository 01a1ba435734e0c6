"""A model's predictions over a prepared face cache (centre crop, optional seeded occluders or degradation): the
evaluation pass shared by training's validation, `evaluate --from-cache`, KNN indexing and calibration."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import RunConfig
from ..data.cache import FaceCache
from ..data.dataset import CachedFaceDataset
from ..models import AgeModel
from ..models.inputs import to_input
from ..numerics import Numerics


@torch.no_grad()
def predict_cache(model: AgeModel, cache: FaceCache, cfg: RunConfig, numerics: Numerics, batch_size: int = 64,
                  tta_flip: bool = True, indices: np.ndarray | None = None, progress: bool = False, occlusion=None,
                  seed: int = 0, target: str = "age", degradation: str | None = None,
                  drawn: dict | None = None) -> tuple[np.ndarray, ...]:
    """Ages (or occlusion probabilities for a binary head), spreads and embeddings for (a subset of) a cache,
    centre-cropped; `occlusion` (an OcclusionMix) draws a fixed, seeded occluder per image first (`drawn`, where
    given, gets each record's type: index → type, None when clean). With target="occluded" a fourth array holds
    1/0 for the faces that did / did not get an occluder. `degradation` (a data.augment name) degrades every face
    the same seeded way (the degraded test)."""
    regions = getattr(model, "region_attention", None) is not None  # masks from each face's cached landmarks
    ds = CachedFaceDataset(cache, False, cfg.data.crop_size, cfg.data.input_size, indices=indices, occlusion=occlusion,
                           seed=seed, target=target, regions=regions, degradation=degradation)
    dl = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    mean, std = model.mean_std
    model.eval()
    ages, spreads, embs, targets = [], [], [], []
    from ..progress import track

    for imgs, tgt, _, *rest in track(dl, total=len(dl), description="evaluating", enabled=progress):
        x = to_input(imgs, mean, std, numerics.device, numerics.channels_last)
        with numerics.autocast():
            a, s, e = model.predict(x, tta_flip, rest[0].to(x.device) if rest else None)
        ages.append(a.cpu())
        spreads.append(s.cpu())
        embs.append(e.cpu())
        targets.append(tgt)
    if drawn is not None:
        drawn.update(ds.drawn)
    out = torch.cat(ages).numpy(), torch.cat(spreads).numpy(), torch.cat(embs).numpy()
    return (*out, torch.cat(targets).float().numpy()) if target == "occluded" else out
