"""A model on prepared caches: `agelens evaluate --from-cache`, and the model and caches `agelens index` and
`agelens calibrate` read."""

from __future__ import annotations

import copy
from pathlib import Path

from ..config import RunConfig, _apply, parse_overrides
from ..data.cache import FaceCache
from ..errors import AgelensError, DataError
from ..numerics import Numerics


def eval_numerics() -> Numerics:
    """CPU fp32, channels_last: what evaluation on prepared caches runs with."""
    return Numerics("cpu", "fp32", True, "evaluation default: fp32 + channels_last")


def load_model_config(spec: str | None, config: str | Path | None = None, overrides: list[str] | None = None):
    """(model, config for the data): the model's own config (its crop and input size always win), with the data
    section of --config and then key=value overrides applied."""
    import torch

    from ..config import load_config
    from ..models.weights import resolve_model

    if not spec:
        raise AgelensError("give the model: a run folder, .pt checkpoint, .safetensors or shipped name")
    model, mcfg, card = resolve_model(spec)
    cfg = copy.deepcopy(mcfg)
    if config is not None:
        cfg.data = load_config(config).data
    if overrides:
        _apply(cfg, parse_overrides(overrides))
    cfg.data.crop_size, cfg.data.input_size = mcfg.data.crop_size, mcfg.data.input_size
    model.eval().to(memory_format=torch.channels_last)
    return model, cfg, card


def open_part(cfg: RunConfig, part: str) -> FaceCache:
    p = Path(cfg.data.cache_dir) / part
    if not (p / "meta.json").is_file():
        raise DataError(f"no prepared cache at {p}: run `agelens prepare` with this config first")
    return FaceCache(p)


def evaluate_prepared_cache(model_spec: str | None, config: str | Path | None, part: str, output: str | Path, *,
                            tta: bool = True, occlusion=None, seed: int = 0, knn=None, embeddings: bool = False,
                            bootstrap: int = 1000, progress: bool = True, extra: dict | None = None) -> dict:
    """The model alone (no detector, no routing) on cache_dir/PART, as at the end of training; `extra` goes into
    metrics.json as it is (the CLI's occlusion settings)."""
    from .runner import evaluate_cache

    model, cfg, card = load_model_config(model_spec, config)
    cache = open_part(cfg, part)
    spec = Path(model_spec)  # a path as typed would not load from another folder (`agelens report` reloads it)
    extra = {"model": str(card.get("name", model_spec)),
             "model_path": str(spec.resolve()) if spec.exists() else str(model_spec), "cache": str(cache.path.resolve()),
             "part": part, "detect": False, "tta_flip": tta, **(extra or {})}
    return evaluate_cache(model, cache, cfg, eval_numerics(), output, tta_flip=tta, progress=progress, extra=extra,
                          occlusion=occlusion, seed=seed, knn=knn, embeddings=embeddings, bootstrap=bootstrap)
