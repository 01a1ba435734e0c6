"""`agelens train`: caches → Trainer.fit → best checkpoint evaluated on the test part."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..data.prepare import prepare_caches
from ..evaluate.runner import evaluate_cache
from .engine import Trainer, model_from_checkpoint


def train_and_test(cfg: RunConfig, resume: bool = False, progress: bool = True, log=print) -> dict:
    caches = prepare_caches(cfg.data, ("train", "val", "test"), progress=progress)
    trainer = Trainer(cfg, caches["train"], caches["val"], resume=resume, progress=progress, log=log)
    result = trainer.fit()
    if trainer.dist.main:
        model, _ = model_from_checkpoint(cfg.run_dir / "best.pt")
        model.to(trainer.numerics.device)
        if trainer.numerics.channels_last:
            model.to(memory_format=torch.channels_last)
        test = evaluate_cache(model, caches["test"], cfg, trainer.numerics, cfg.run_dir / "test",
                              tta_flip=cfg.train.tta_flip, progress=progress,
                              extra={"split": cfg.data.split_file, "run": str(cfg.run_dir), **result})
        result["test"] = test
        log(f"test: MAE {test['mae']:.3f}  CS5 {test['cs5']:.3f}  CMAE {test['cmae']:.3f}  bias {test['bias_score']:.3f}")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return result
