"""Layer-wise distillation (paper 1, Algorithm 1): the student (same architecture, initialised from the teacher)
sees an occluded copy, the frozen teacher the clean image under the same crop; stage k is trained with an L2 loss
between their stage-k maps while every other stage is frozen, k = 1..4; then global fine-tuning with age labels
on occluded faces (the standard engine, `train` section). Checkpointed after every epoch; `--resume` continues."""

from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import RunConfig, config_to_dict
from ..data.dataset import CachedFaceDataset
from ..errors import CheckpointError
from ..evaluate.predict import predict_cache
from ..models import build_model
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.inputs import to_input
from ..models.weights import frozen_model
from ..numerics import Numerics, choose_numerics
from ..utils import atomic_write_json, release_lock, seed_everything
from .batch import photometric_jitter
from .engine import RUN_CHECKPOINTS, lock_run_dir, occlusion_mix, replace_earlier_run

# what the student takes over from the teacher whole, so must match (the feature `align` modules are the student's own)
TEACHER_FITS = ("backbone", "head", "min_age", "max_age", "region_attention")
STAGE_FILES = ("stages.pt", "stages_last.pt", "distill_history.json")


def check_teacher(name: str, tcfg: RunConfig, cfg: RunConfig, log=print) -> None:
    """CheckpointError where `distill.teacher` cannot be the student's teacher (not an age model, or a model whose
    weights do not fit the student's `TEACHER_FITS`); a note where it reads crops unlike the ones it trained on."""
    if tcfg.train.task != "age" or tcfg.model.head == "binary":
        raise CheckpointError(f"distill.teacher {name!r} is a binary classifier (train.task={tcfg.train.task}, "
                              f"model.head={tcfg.model.head}): the teacher must be an age model")
    off = [f"model.{k}: {getattr(cfg.model, k)!r} (student) vs {getattr(tcfg.model, k)!r} (teacher)"
           for k in TEACHER_FITS if getattr(cfg.model, k) != getattr(tcfg.model, k)]
    if off:
        raise CheckpointError(f"distill.teacher {name!r} does not fit the student, which starts from its weights: "
                              f"{'; '.join(off)}: give the student the teacher's")
    if (tcfg.data.input_size, tcfg.data.crop_size) != (cfg.data.input_size, cfg.data.crop_size):
        log(f"note: the teacher was trained on {tcfg.data.crop_size} px crops read at {tcfg.data.input_size} px and "
            f"reads {cfg.data.crop_size} px crops at {cfg.data.input_size} px here (the student's)")


def student_from_teacher(cfg: RunConfig, teacher) -> torch.nn.Module:
    cfg.model.pretrained = False
    student = build_model(cfg.model)
    # the teacher's guard heads read the teacher's own features: a student without guards leaves them behind
    state = {k: v for k, v in teacher.state_dict().items() if student.guards is not None or not k.startswith("guards.")}
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or any(".adapters." not in k and not k.startswith("backbone.adapters") for k in missing):
        raise CheckpointError(f"teacher weights do not fit the student ({(unexpected or missing)[:3]})")
    return student


def student_to_continue(cfg: RunConfig, name_or_path: str) -> torch.nn.Module:
    """A student built from `cfg.model` holding the weights of an earlier student (`distill.student_init`)."""
    from ..models.weights import resolve_model

    earlier, ecfg, _ = resolve_model(name_or_path)
    if ecfg.model.backbone != cfg.model.backbone or ecfg.model.align != cfg.model.align:
        raise CheckpointError(f"student_init {name_or_path!r} is a {ecfg.model.backbone} (align {ecfg.model.align}), "
                              f"the config asks for {cfg.model.backbone} (align {cfg.model.align})")
    cfg.model.pretrained = False
    student = build_model(cfg.model)
    state = {k: v.float() if v.is_floating_point() else v for k, v in earlier.state_dict().items()
             if student.guards is not None or not k.startswith("guards.")}
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"student_init {name_or_path!r} does not fit the student ({(missing or unexpected)[:3]})")
    return student


def _set_stage_trainable(model, k: int) -> list[torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    params = model.backbone.stage_parameters(k)
    for p in params:
        p.requires_grad_(True)
    model.eval()  # frozen parts keep their BN statistics
    for m in model.backbone.stage_modules(k):
        m.train()
    return params


def distill_stages(cfg: RunConfig, train_cache, val_cache, resume: bool = False, log=print) -> dict:
    """Run the stage-wise phase; returns a summary and leaves RUN_DIR/stages.pt (model + config)."""
    d, t = cfg.distill, cfg.train
    run = cfg.run_dir
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    seed_everything(t.seed)
    teacher, tcfg = frozen_model(d.teacher)
    check_teacher(d.teacher, tcfg, cfg, log)
    run.mkdir(parents=True, exist_ok=True)  # after the checks: a refused run leaves no folder behind
    lock = lock_run_dir(run, "distil")
    try:
        if not resume:
            replace_earlier_run(run, log, STAGE_FILES + RUN_CHECKPOINTS)
        return _stages(cfg, teacher, train_cache, val_cache, resume, log)
    finally:
        release_lock(lock)  # the fine-tuning engine takes it next


def _stages(cfg: RunConfig, teacher, train_cache, val_cache, resume: bool, log) -> dict:
    """`distill_stages` once the teacher is checked and the run folder held."""
    d, t, run = cfg.distill, cfg.train, cfg.run_dir
    if d.student_init:
        student = student_to_continue(cfg, d.student_init)
        log(f"stage-wise distillation continues from {d.student_init}")
    else:
        student = student_from_teacher(cfg, teacher)

    def probe_loss(m, x, y):
        return m.head.loss(m(x), y)

    done: list[tuple[int, int]] = []
    history: list[dict] = []
    ck_path, ck, numerics = run / "stages_last.pt", None, None
    if resume and ck_path.is_file():  # checked before the numerics probe: a refused resume costs nothing
        ck = load_checkpoint(ck_path)
        from ..config import refuse_resume_changes

        refuse_resume_changes(ck.get("config"), cfg, ck_path, "distilled")  # another teacher, other stage rates
        student.load_state_dict(ck["model"])
        done, history = [tuple(x) for x in ck["done"]], ck["history"]
        log(f"resumed stage-wise distillation after {done[-1] if done else 'nothing'}")
        if ck.get("numerics") and "auto" in (t.numerics, t.channels_last):  # a probe per resume had switched them
            numerics = Numerics.from_dict(ck["numerics"], "as the distillation started")
    numerics = numerics or choose_numerics(t, student, probe_loss, cfg.data.input_size)
    dev = numerics.device
    for m in (teacher, student):
        m.to(dev)
        if numerics.channels_last:
            m.to(memory_format=torch.channels_last)
    log(f"numerics: {numerics.dtype}, channels_last={numerics.channels_last} ({numerics.reason})")
    mix = occlusion_mix(cfg)
    if mix is None:
        raise CheckpointError("distillation needs occlusion.enabled=true (the student learns from occluded faces)")
    n_train = min(len(train_cache), cfg.data.max_train or len(train_cache))
    ds = CachedFaceDataset(train_cache, True, cfg.data.crop_size, cfg.data.input_size, seed=t.seed,
                           indices=np.arange(n_train), occlusion=mix, pair=True)
    gen = torch.Generator()
    dl = DataLoader(ds, batch_size=t.batch_size, shuffle=True, generator=gen, num_workers=cfg.data.num_workers,
                    drop_last=len(ds) > t.batch_size)  # fresh workers each epoch: set_epoch reaches them
    mean, std = student.mean_std
    jitter_gen = torch.Generator()
    val_idx = np.arange(min(len(val_cache), cfg.data.max_eval or len(val_cache)))
    for k in d.stages:
        params = _set_stage_trainable(student, k)
        opt = torch.optim.Adam(params, lr=d.stage_lrs[k - 1])
        if ck is not None and ck.get("stage") == k and ck.get("optimizer"):
            opt.load_state_dict(ck["optimizer"])
        for epoch in range(d.stage_epochs):
            if (k, epoch) in done:
                continue
            ds.set_epoch(1000 * k + epoch)
            gen.manual_seed(t.seed * 1000 + 100 * k + epoch)
            jitter_gen.manual_seed(t.seed * 7919 + 100 * k + epoch)
            t0, seen, loss_sum, steps = time.perf_counter(), 0, 0.0, len(dl)
            if t.max_steps_per_epoch:
                steps = min(steps, t.max_steps_per_epoch)
            for step, (clean, occ, _, _) in enumerate(dl):
                if step >= steps:
                    break
                xc = to_input(photometric_jitter(clean, jitter_gen), mean, std, dev, numerics.channels_last)
                xo = to_input(occ, mean, std, dev, numerics.channels_last)
                with numerics.autocast():
                    with torch.no_grad():
                        ft, _ = teacher.backbone(xc, until=k)
                    fs, _ = student.backbone(xo, until=k, teacher=ft)
                    loss = F.mse_loss(fs[-1].float(), ft[-1].float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(occ)
                loss_sum += loss.item()
                if (step + 1) % t.log_every == 0:
                    log(f"stage {k} epoch {epoch} step {step + 1}/{steps} L2 {loss_sum / (step + 1):.4f} "
                        f"{seen / (time.perf_counter() - t0):.1f} img/s")
            row = {"stage": k, "epoch": epoch, "l2": round(loss_sum / max(1, steps), 5),
                   "train_s": round(time.perf_counter() - t0, 1)}
            if epoch == d.stage_epochs - 1:  # the student as it stands after this stage, on occluded validation
                pred, _, _ = predict_cache(student, val_cache, cfg, numerics, tta_flip=t.tta_flip, indices=val_idx,
                                           occlusion=occlusion_mix(cfg, 0.0), seed=t.seed + 1)
                row["val_mae_occluded"] = round(float(np.abs(pred - val_cache.ages[val_idx]).mean()), 4)
            history.append(row)
            done.append((k, epoch))
            log(json.dumps(row))
            save_checkpoint(ck_path, {"model": student.state_dict(), "optimizer": opt.state_dict(), "stage": k,
                                      "done": done, "history": history, "config": config_to_dict(cfg),
                                      "numerics": numerics.as_dict()})
    student.cpu().to(memory_format=torch.contiguous_format)
    save_checkpoint(run / "stages.pt", {"model": student.state_dict(), "config": config_to_dict(cfg),
                                        "history": history, "numerics": numerics.as_dict()})
    atomic_write_json(run / "distill_history.json", history)
    return {"stages": history, "numerics": numerics.as_dict()}


def distill_and_finetune(cfg: RunConfig, resume: bool = False, progress: bool = True, log=print) -> dict:
    """Stage-wise phase, then the engine's global fine-tuning from RUN_DIR/stages.pt, then test evaluation."""
    from ..data.prepare import prepare_caches
    from .run import train_and_test

    caches = prepare_caches(cfg.data, ("train", "val", "test"), progress=progress)
    stages_done = (cfg.run_dir / "stages.pt").is_file() and resume
    summary = {} if stages_done else distill_stages(cfg, caches["train"], caches["val"], resume=resume, log=log)
    if not cfg.distill.finetune:
        return summary
    ft_resume = resume and (cfg.run_dir / "last.pt").is_file()  # (a resumed fine-tuning keeps its own numerics)
    chosen = None if ft_resume else summary.get("numerics") or load_checkpoint(cfg.run_dir / "stages.pt").get("numerics")
    if chosen and cfg.train.numerics == "auto":  # the fine-tuning at the stages' numerics: one recipe, one precision
        cfg.train.numerics = chosen["dtype"]
        if cfg.train.channels_last == "auto":
            cfg.train.channels_last = "on" if chosen["channels_last"] else "off"
        log(f"fine-tuning at the stage-wise phase's numerics: {chosen['dtype']}, channels_last="
            f"{chosen['channels_last']}")
    cfg.model.init_from = str(cfg.run_dir / "stages.pt")
    cfg.model.pretrained = False
    summary.update(train_and_test(cfg, resume=ft_resume, progress=progress, log=log))
    return summary
