"""`agelens train`: caches → Trainer.fit → best checkpoint evaluated on the test part."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import RunConfig
from ..data.prepare import combine_caches, prepare_all, prepare_caches
from ..evaluate.metrics import fmt
from ..evaluate.runner import evaluate_cache
from ..models.checkpoint import model_from_checkpoint
from .engine import Trainer


def train_and_test(cfg: RunConfig, resume: bool = False, progress: bool = True, log=print,
                   caches: dict | None = None) -> dict:
    """`caches` ({train, val, test}: FaceCache-like, val may be None) replaces the config's split caches (k-fold)."""
    if caches is None and cfg.data.shards:  # streamed train shards; val/test shards read into memory
        from ..data.prepare import refuse_shards_with_extra
        from ..data.shards import check_shards, shard_caches

        refuse_shards_with_extra(cfg.data, cfg.extra_data)
        check_shards(cfg.data, log)
        caches = shard_caches(cfg.data.shards)
    per_dataset: dict = {}
    if caches is None and cfg.extra_data:  # several datasets: train and val concatenated, tests kept apart
        per_dataset = prepare_all(cfg.data, cfg.extra_data, progress=progress, log=log)
        caches = {k: combine_caches([c[k] for c in per_dataset.values()], Path(cfg.data.cache_dir) / f"combined_{k}")
                  for k in ("train", "val")}
        caches["test"] = per_dataset[cfg.data.dataset]["test"]
    caches = caches or prepare_caches(cfg.data, ("train", "val", "test"), progress=progress, log=log)
    trainer = Trainer(cfg, caches["train"], caches["val"], resume=resume, progress=progress, log=log)
    result = trainer.fit()
    if trainer.dist.main:
        model, _ = model_from_checkpoint(cfg.run_dir / "best.pt")
        model.to(trainer.numerics.device)
        if trainer.numerics.channels_last:
            model.to(memory_format=torch.channels_last)
        if cfg.train.task == "occlusion":
            from ..evaluate.detector import evaluate_detector

            test = evaluate_detector(model, caches["val"], caches["test"], cfg, trainer.numerics, cfg.run_dir / "test",
                                     extra={"run": str(cfg.run_dir), "split": cfg.data.split_file, "part": "test"})
            result["test"] = test
            log(f"occlusion detector: threshold {test['threshold']:.2f}, clean accuracy {test['clean']['accuracy']:.4f}, "
                f"lowest per-type accuracy {test['min_type_accuracy']:.4f}, all-types AUC {test['all_types']['roc_auc']}")
            return _finish(result)
        test = evaluate_cache(model, caches["test"], cfg, trainer.numerics, cfg.run_dir / "test",
                              tta_flip=cfg.train.tta_flip, progress=progress,
                              extra={"split": cfg.data.split_file, "run": str(cfg.run_dir), **result})
        result["test"] = test
        for name, parts in list(per_dataset.items())[1:]:
            other = evaluate_cache(model, parts["test"], cfg, trainer.numerics, cfg.run_dir / f"test_{name}",
                                   tta_flip=cfg.train.tta_flip, progress=progress, extra={"dataset": name})
            result[f"test_{name}"] = other
            log(f"test ({name}): MAE {other['mae']:.3f}  CS5 {other['cs5']:.3f}")
        if cfg.occlusion.enabled:  # the same test faces, every one occluded (seeded, Table 7 mix)
            from .engine import occlusion_mix

            occ = evaluate_cache(model, caches["test"], cfg, trainer.numerics, cfg.run_dir / "test_occluded",
                                 tta_flip=cfg.train.tta_flip, progress=progress, occlusion=occlusion_mix(cfg, 0.0),
                                 seed=1, extra={"occlusion": "all test faces, mix " + json.dumps(cfg.occlusion.mix)})
            result["test_occluded"] = occ
            log(f"test (occluded): MAE {occ['mae']:.3f}  CS5 {occ['cs5']:.3f}")
        log(f"test: MAE {test['mae']:.3f}  CS5 {test['cs5']:.3f}  CMAE {test['cmae']:.3f}  bias {fmt(test['bias_score'])}")
    return _finish(result)


def _finish(result: dict) -> dict:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return result
