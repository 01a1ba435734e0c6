"""One training engine for every recipe: Adam + schedulers, frozen-backbone warm-up, early stopping, numerics per
machine, DDP under torchrun, atomic checkpoints with --resume (after every epoch, and at the step where SIGTERM or
Ctrl-C stops a single-process run), JSONL metrics, resolved config in the run dir."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, Sampler

from ..config import RunConfig, config_to_dict, refuse_resume_changes
from ..data.cache import FaceCache
from ..data.dataset import CachedFaceDataset
from ..data.shards import ShardSet, ShardStream, check_slots
from ..errors import CheckpointError, ConfigError, NonFiniteLossError
from ..evaluate.predict import predict_cache
from ..models import AgeModel, build_model
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.inputs import to_input
from ..numerics import Numerics, choose_numerics
from ..utils import (
    atomic_write_json,
    atomic_write_text,
    exclusive_lock,
    finite_json,
    release_lock,
    seed_everything,
)
from .batch import photometric_jitter


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def environment(numerics: Numerics) -> dict:
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "threads": torch.get_num_threads(),
            "numerics": numerics.as_dict()}


# ---- evaluation pass used during training -----------------------------------------------------------------------


def occlusion_mix(cfg: RunConfig, clean_fraction: float | None = None):
    """The config's OcclusionMix, or None when occlusion is off."""
    from ..occlusion.synth import OcclusionMix

    if not cfg.occlusion.enabled:
        return None
    cf = cfg.occlusion.clean_fraction if clean_fraction is None else clean_fraction
    return OcclusionMix({k: float(v) for k, v in cfg.occlusion.mix.items()}, cf, cfg.occlusion.clear_glasses)


# ---- the loop ----------------------------------------------------------------------------------------------------


def _set_backbone_trainable(model: AgeModel, trainable: bool) -> None:
    for p in model.backbone.parameters():
        p.requires_grad_(trainable)


def _lr_factor(cfg: RunConfig, epoch: int, step_frac: float) -> float:
    """Warm-up then cosine (scheduler=cosine); plateau/none return the warm-up factor only."""
    t = cfg.train
    e = epoch + step_frac
    if t.warmup_epochs and e < t.warmup_epochs:
        return max(0.01, e / t.warmup_epochs)
    if t.scheduler == "cosine":
        span = max(1e-9, t.epochs - t.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (e - t.warmup_epochs) / span)))
    return 1.0


def kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher's age distribution ‖ the model's), mean over the batch (output distillation, Hinton et al.)."""
    return F.kl_div(logits.float().log_softmax(-1), teacher_logits.float().log_softmax(-1), log_target=True,
                    reduction="batchmean")


def train_step(net: torch.nn.Module, head, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               numerics: Numerics, images: torch.Tensor, ages: torch.Tensor, grad_clip: float = 0.0,
               regions: torch.Tensor | None = None, loss_fn=None, flip_consistency: float = 0.0,
               pair_consistency: float = 0.0, pair_anchor: bool = False, teacher_logits: torch.Tensor | None = None,
               kd_weight: float = 0.0) -> float:
    """One optimisation step on a uint8 NHWC batch with the chosen numerics; returns the loss. `regions`: face-region
    masks for region attention; `loss_fn(out, y)` replaces head.loss (the fairness terms). flip_consistency > 0: the
    batch also holds every face's mirror image (same label), and that weight × the mean |age(face) − age(mirror)|
    is added, so a single view learns to answer as the flip-TTA pair does. pair_consistency > 0: `images` already
    holds two views of every face (all first views, then the second views in the same order; `ages` labels one
    half), each fitted to the label, and that weight × the mean |age(view 1) − age(view 2)| is added; pair_anchor:
    view 1 is the reference, held fixed in that term (stop-gradient), so only view 2 moves towards it.
    teacher_logits with kd_weight > 0: the frozen teacher's age logits for the same faces (`kd_loss`)."""
    if flip_consistency > 0 and pair_consistency > 0:
        raise ValueError("flip_consistency and pair_consistency are exclusive")
    mean, std = (net.module if hasattr(net, "module") else net).mean_std
    x = to_input(images, mean, std, numerics.device, numerics.channels_last)
    y = ages.to(numerics.device)
    n = len(y)
    if pair_consistency > 0 and len(x) != 2 * n:
        raise ValueError(f"pair_consistency needs two views per label: {len(x)} images for {n} labels")
    if flip_consistency > 0:
        x = torch.cat([x, torch.flip(x, dims=[3])])
        if regions is not None:
            regions = torch.cat([regions, torch.flip(regions, dims=[3])])
    with numerics.autocast():
        out = net(x) if regions is None else net(x, regions.to(x.device))
        weight = flip_consistency + pair_consistency
        if weight > 0:
            halves = [{k: v[sl] for k, v in out.items() if torch.is_tensor(v)} for sl in (slice(0, n), slice(n, None))]
            fit = [head.loss(o, y) if loss_fn is None else loss_fn(o, y) for o in halves]
            ref = head.decode(halves[0])[0].float()
            if pair_anchor:
                ref = ref.detach()
            gap = (ref - head.decode(halves[1])[0].float()).abs().mean()
            loss = (fit[0] + fit[1]) / 2 + weight * gap
        else:
            loss = head.loss(out, y) if loss_fn is None else loss_fn(out, y)
        if teacher_logits is not None and kd_weight > 0:
            loss = loss + kd_weight * kd_loss(out["logits"], teacher_logits)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def _check_label_range(train: FaceCache, val: FaceCache | None, lo: int, hi: int, log) -> None:
    """Says where training or validation ages lie outside the head's model.min_age..max_age: the head answers at
    most its range, so those faces are fitted to its nearest end (UTKFace has 17 training faces aged 101-116 for the
    0-100 heads; refusing them, as this did for a day, stopped every UTKFace recipe)."""
    for name, cache in (("training", train), ("validation", val)):
        ages = np.asarray(cache.ages if cache is not None else [], np.float64)
        out = ages[(ages < lo) | (ages > hi)]
        if len(out):
            log(f"note: {len(out)} of the {len(ages)} {name} faces are aged outside model.min_age..max_age "
                f"({lo}-{hi}): {out.min():g} to {out.max():g}; the head reads them at the nearest end of its range "
                "(model.min_age / model.max_age, at most 0-120, cover them)")


RUN_CHECKPOINTS = ("best.pt", "last.pt")


def replace_earlier_run(run_dir: Path, log, checkpoints: tuple[str, ...] = RUN_CHECKPOINTS) -> None:
    """A fresh run under the name of an earlier one replaces it: say so, and remove the earlier run's `checkpoints`
    and what was made from its model (test metrics, reports), which would otherwise sit beside the new one (and a
    --resume after an early kill would continue the earlier model under this run's config)."""
    import shutil

    earlier = [f for f in checkpoints if (run_dir / f).is_file()]
    if not earlier:
        return
    made = sorted(d for d in run_dir.iterdir()
                  if d.is_dir() and (d.name in ("test", "report") or d.name.startswith("test_")))
    log(f"warning: {run_dir} holds an earlier run ({', '.join(earlier)}): this run replaces it"
        + (f", and its {', '.join(d.name + '/' for d in made)} go" if made else "")
        + " (--resume continues it instead; name= another run keeps it)")
    for d in made:
        shutil.rmtree(d, ignore_errors=True)
    for f in earlier:
        (run_dir / f).unlink(missing_ok=True)


def lock_run_dir(run_dir: Path, verb: str = "train") -> int | None:
    """An exclusive lock on a run folder (`utils.exclusive_lock`, released with `utils.release_lock`):
    CheckpointError where another training process holds it (two runs under one name had interleaved their epochs
    and tested each other's best.pt)."""
    return exclusive_lock(run_dir / ".agelens.lock", f"{run_dir} is being written by another training process: "
                          f"wait for it, or {verb} under another name=", CheckpointError, 0o644)


class StepBoundary:
    """SIGTERM and Ctrl-C held to the end of the training step under way, so that the run can save where it is
    (`Trainer._fit`: a mid-epoch last.pt that --resume continues from that step); the signal then does what it did
    before (the CLI: exit 143 / 130; a program's default SIGTERM: the process ends by it). Outside the steps
    (validation, checkpoints, set-up) and at a second signal it acts at once, as before. Installed only from the
    main thread; a signal the program ignores stays ignored."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.pending: int | None = None
        self.in_steps = False
        self._previous: dict = {}

    def __enter__(self) -> StepBoundary:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                prev = signal.getsignal(s)
                if prev in (signal.SIG_IGN, None):
                    continue
                self._previous[s] = prev
                signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        previous, self._previous = self._previous, {}
        for s, prev in previous.items():
            signal.signal(s, prev)

    def _handle(self, signum, frame) -> None:
        if self.in_steps and self.pending is None:
            self.pending = signum
            return
        self.deliver(signum, frame)

    def deliver(self, signum: int, frame=None) -> None:
        """The signal's own action, the handlers as they were before: raises (the CLI's SystemExit, Python's
        KeyboardInterrupt) or ends the process."""
        prev = self._previous.get(signum, signal.SIG_DFL)
        self.__exit__()
        if callable(prev):
            prev(signum, frame)
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


class SkipFirst(Sampler):
    """A batch sampler that passes over its inner one's first `skip` batches without their faces being read (a run
    resumed mid-epoch): the inner sampler draws the epoch's order as it does uninterrupted. `skip` applies once."""

    def __init__(self, inner: BatchSampler) -> None:
        self.inner, self.skip = inner, 0

    def __iter__(self):
        it, skip, self.skip = iter(self.inner), self.skip, 0
        for _ in range(skip):
            next(it, None)
        yield from it

    def __len__(self) -> int:
        return len(self.inner)


class Trainer:
    def __init__(self, cfg: RunConfig, train_cache: FaceCache, val_cache: FaceCache | None, resume: bool = False,
                 progress: bool = True, log=print) -> None:
        self.cfg, self.train_cache, self.val_cache = cfg, train_cache, val_cache
        self.resume, self.progress, self.log = resume, progress, log
        self.run_dir = cfg.run_dir
        self._lock_fd: int | None = None  # the run folder's lock while fit runs (`_hold_run_dir`)
        if resume and not (self.run_dir / "last.pt").is_file():  # a requeued job killed before its first checkpoint
            log(f"--resume: no checkpoint in {self.run_dir} yet, so the run starts from the beginning")
            self.resume = resume = False
        t = cfg.train
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        seed_everything(t.seed)
        if t.task == "age":
            _check_label_range(train_cache, val_cache, cfg.model.min_age, cfg.model.max_age, log)
        self.model = build_model(cfg.model)
        if self.model.region_attention is not None:  # mean-face fallback masks for this run's evaluation crop
            self.model.region_attention.set_prior(min(1.0, cfg.data.crop_size / cfg.data.cache_size))
        if cfg.model.init_from and not resume:
            from ..models.model import load_compatible
            from ..models.weights import resolve_model

            init = cfg.model.init_from  # a shipped name, .safetensors, .pt checkpoint or run folder
            try:
                state = resolve_model(init)[0].state_dict()
            except (CheckpointError, ConfigError) as e:  # say which setting named it
                raise type(e)(f"model.init_from={init}: {e}") from None
            stale = [k for k in state if k.startswith("guards.")] if self.model.guards is None else []
            own = self.model.state_dict()
            # another age range (model.min_age / max_age) changes only the head's output size: the trunk is taken
            # and the head starts fresh (before: "weights do not fit this model")
            resized = [k for k in state if k.startswith("head.") and k in own and own[k].shape != state[k].shape]
            fresh = load_compatible(self.model, {k: v for k, v in state.items() if k not in stale + resized},
                                    f"model.init_from={init}", fresh_ok=("head.",) if resized else ())
            fresh = [k for k in fresh if k not in resized]
            log(f"initialised from {init}" + (f" (new, at identity: {', '.join(fresh)})" if fresh else "")
                + (" (its guard heads left out: refit them on the new trunk with train.trunk_guards)" if stale else "")
                + (f" (its age head left out, trained afresh: it reads another age range, "
                   f"{tuple(state[resized[0]].shape)} → {tuple(own[resized[0]].shape)})" if resized else ""))

        def probe_loss(m, x, y):
            return m.head.loss(m(x), y)

        want_cuda = t.device in ("auto", "cuda") and torch.cuda.is_available()
        self.dist = setup_distributed("cuda" if want_cuda else "cpu")
        # every rank must use the same numerics: rank 0 chooses (and probes), the others receive its choice
        numerics = [(self._started_numerics() or choose_numerics(t, self.model, probe_loss, cfg.data.input_size))
                    if self.dist.main else None]
        if self.dist.world > 1:
            dist.broadcast_object_list(numerics, src=0)
        self.numerics: Numerics = numerics[0]
        dev = f"cuda:{self.dist.local_rank}" if self.numerics.device == "cuda" else "cpu"
        self.numerics.device = dev
        self.model.to(dev)
        if self.numerics.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.teacher = None  # the frozen teacher of output distillation (train.kd_weight)
        if t.kd_weight > 0:
            from ..models.heads import DistributionHead
            from ..models.weights import frozen_model

            self.teacher = frozen_model(cfg.distill.teacher)[0].to(dev)
            t_ages, m_ages = self.teacher.head.ages.cpu(), self.model.head.ages.cpu()
            if not isinstance(self.teacher.head, DistributionHead) or t_ages.shape != m_ages.shape \
                    or not torch.equal(t_ages, m_ages):
                raise ConfigError(f"train.kd_weight: the teacher {cfg.distill.teacher} must answer over the same ages "
                                  f"as the model ({cfg.model.min_age}-{cfg.model.max_age}, a distribution head)")
            if self.numerics.channels_last:
                self.teacher.to(memory_format=torch.channels_last)
            log(f"output distillation from {cfg.distill.teacher} (weight {t.kd_weight})")
        head_lr = t.head_lr or t.lr
        groups = [{"params": list(self.model.backbone.parameters()), "lr": t.lr, "base_lr": t.lr},
                  {"params": self.model.head_parameters(), "lr": head_lr, "base_lr": head_lr}]
        if self.model.region_attention is not None:  # 7 new weights: their own (higher) rate, also while frozen
            region_lr = t.region_lr or 10 * head_lr
            groups.append({"params": list(self.model.region_attention.parameters()), "lr": region_lr,
                           "base_lr": region_lr})
        opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(t.optimizer)
        if opt_cls is not None:
            self.optimizer = opt_cls(groups, lr=t.lr, weight_decay=t.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, nesterov=True)
        self.lr_scale, self.plateau_bad = 1.0, 0  # scheduler=plateau: halve the lr after 2 epochs without val gain
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.numerics.dtype == "fp16")
        self.start_epoch, self.best_mae, self.best_epoch, self.bad_epochs = 0, float("inf"), -1, 0
        self.history: list[dict] = []
        self.in_epoch: dict | None = None  # a resumed mid-epoch checkpoint's place in its epoch (`_save_stopped`)
        from ..fairness.losses import GroupDRO, KnnAdjustment
        from ..fairness.sampling import records_labels

        f = cfg.fairness
        self.knn = KnnAdjustment(f.knn_k, f.knn_bank) if f.gamma_knn > 0 else None
        self.dro = None
        if f.group_dro and t.task == "age":  # group index of every training record
            names, groups = np.unique(records_labels(train_cache.records, f.dro_by), return_inverse=True)
            strata = mass = None
            if f.dro_within:  # DRO inside each stratum (e.g. race × gender within an age bin): strata keep their mass
                s_names, s_of_rec = np.unique(records_labels(train_cache.records, f.dro_within), return_inverse=True)
                strata = np.zeros(len(names), np.int64)
                strata[groups] = s_of_rec
                mass = np.bincount(s_of_rec, minlength=len(s_names)).astype(np.float64)
            self.dro = GroupDRO(groups, len(names), f.dro_eta, strata, mass)
            self.dro_groups = [str(n) for n in names]
        if self.resume:
            self._load_resume()

    # -- state --
    def _state(self, epoch: int) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": {"lr_scale": self.lr_scale, "plateau_bad": self.plateau_bad}, "scaler": self.scaler.state_dict(),
                "epoch": epoch, "config": config_to_dict(self.cfg), "best_mae": self.best_mae,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "history": self.history,
                "numerics": self.numerics.as_dict(), "rng": {"torch": torch.get_rng_state()},
                **({"knn_bank": self.knn.state_dict()} if self.knn is not None else {}),
                **({"group_dro": self.dro.state_dict()} if self.dro is not None else {})}

    def _started_numerics(self) -> Numerics | None:
        """On --resume with train.numerics / channels_last "auto": the numerics the run started with (its env.json;
        a probe per resume had switched a run between them), else None."""
        t = self.cfg.train
        if not self.resume or "auto" not in (t.numerics, t.channels_last):
            return None
        try:
            was = json.loads((self.run_dir / "env.json").read_text())["numerics"]
            return Numerics.from_dict(was, f"as the run started ({was.get('reason', '')})")
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _load_resume(self) -> None:
        p = self.run_dir / "last.pt"
        if not p.is_file():
            raise CheckpointError(f"--resume given but no checkpoint at {p}")
        ck = load_checkpoint(p)
        try:
            self.model.load_state_dict(ck["model"])
        except RuntimeError as e:  # another architecture: name both, not thousands of missing keys
            was, now = (ck.get("config") or {}).get("model") or {}, self.cfg.model
            what = (f"a {was.get('backbone')} + {was.get('head')} model, the config {now.backbone} + {now.head}"
                    if (was.get("backbone"), was.get("head")) != (now.backbone, now.head)
                    else f"weights that do not fit the config's model ({str(e).splitlines()[0]})")
            raise CheckpointError(f"--resume: {p} holds {what}; resume with the run's own config.yaml, or train "
                                  "under another name=") from None
        refuse_resume_changes(ck.get("config"), self.cfg, p)
        self.optimizer.load_state_dict(ck["optimizer"])
        self.lr_scale, self.plateau_bad = ck["scheduler"]["lr_scale"], ck["scheduler"]["plateau_bad"]
        self.scaler.load_state_dict(ck["scaler"])
        self.start_epoch = ck["epoch"] + 1
        self.best_mae, self.best_epoch = ck["best_mae"], ck["best_epoch"]
        self.bad_epochs, self.history = ck["bad_epochs"], ck["history"]
        torch.set_rng_state(ck["rng"]["torch"])
        if self.knn is not None and "knn_bank" in ck:
            self.knn.load_state_dict(ck["knn_bank"])
        if self.dro is not None and "group_dro" in ck:
            self.dro.load_state_dict(ck["group_dro"])
        if ck.get("stopped_early"):  # before: a resume trained on past the early stop
            self.start_epoch = self.cfg.train.epochs
            self.log(f"resumed from {p}: the run had stopped early at epoch {ck['epoch']}, so no epoch runs")
        elif ck.get("in_epoch"):  # saved at a step by SIGTERM / Ctrl-C
            self.in_epoch = ck["in_epoch"]
            self.log(f"resumed from {p} at epoch {self.start_epoch} step {self.in_epoch['step']}/"
                     f"{self.in_epoch['steps']}")
        else:
            done = self.start_epoch >= self.cfg.train.epochs
            self.log(f"resumed from {p} at epoch {self.start_epoch}" + (
                f": its {self.start_epoch} epochs already reach train.epochs={self.cfg.train.epochs}, so no epoch "
                "runs (raise train.epochs to train on)" if done else ""))
        self._trim_jsonl(int(ck["epoch"]), self.in_epoch["step"] if self.in_epoch else 0)

    def _trim_jsonl(self, epoch: int, steps: int = 0) -> None:
        """metrics.jsonl cut back to the rows of epochs up to the checkpoint's, and of the next epoch's first `steps`
        steps when it was saved mid-epoch (before: a resume appended the interrupted epoch's rows again, after any
        torn last line)."""
        p = self.run_dir / "metrics.jsonl"
        if not self.dist.main or not p.is_file():
            return
        kept = []
        for line in p.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            e = int(row.get("epoch", -1))
            if e <= epoch or (e == epoch + 1 and "train_loss" not in row and int(row.get("step", steps + 1)) <= steps):
                kept.append(line + "\n")
        atomic_write_text(p, "".join(kept))

    def _stop_at(self, epoch: int, done: int, n_steps: int, loss_sum: float, seen: int, t0: float,
                 jitter_gen: torch.Generator, held: StepBoundary) -> None:
        """A signal held to the step's end: last.pt saved at step `done`, then the signal's own action."""
        signum, held.pending, held.in_steps = held.pending, None, False
        self._save_stopped(epoch, done, n_steps, loss_sum, seen, time.perf_counter() - t0, jitter_gen, signum)
        held.deliver(signum)
        held.in_steps = True  # a handler that returned: training goes on (the handlers as they were before)

    def _save_stopped(self, epoch: int, done: int, n_steps: int, loss_sum: float, seen: int, train_s: float,
                      jitter_gen: torch.Generator, signum: int) -> None:
        """last.pt at step `done` of `epoch`, stopped by signal `signum`: the state after that step, and what the
        rest of the epoch needs to go on as if uninterrupted (its loss sum, faces seen, time, jitter generator)."""
        save_checkpoint(self.run_dir / "last.pt", {
            **self._state(epoch - 1), "in_epoch": {"epoch": epoch, "step": done, "steps": n_steps,
                                                   "loss_sum": loss_sum, "seen": seen, "train_s": train_s,
                                                   "jitter": jitter_gen.get_state()}})
        name = signal.Signals(signum).name
        self.log(f"{name}: saved {self.run_dir / 'last.pt'} at epoch {epoch} step {done}/{n_steps}; "
                 "--resume continues from there")

    def _hold_run_dir(self) -> None:
        """The run folder locked for this process (`lock_run_dir`), then the temp files a killed run left behind
        removed."""
        if self._lock_fd is None:
            self._lock_fd = lock_run_dir(self.run_dir)
        for tmp in self.run_dir.glob(".*.pt.*.tmp"):  # `utils.atomic_write`'s, left by a kill -9
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Lets go of the run folder's lock (`_hold_run_dir`)."""
        fd, self._lock_fd = self._lock_fd, None
        release_lock(fd)

    def _write_jsonl(self, row: dict) -> None:
        if self.dist.main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(finite_json(row)) + "\n")  # a NaN loss as null: JSON has no NaN

    def validate(self, idx: np.ndarray) -> float:
        """Validation score, lower is better: age MAE (on occluded copies when occlusion is on), or for the
        occlusion task the error rate at threshold 0.5 on a seeded clean/occluded mix."""
        cfg = self.cfg
        mix = occlusion_mix(cfg)
        if cfg.train.task == "occlusion":
            from ..evaluate.detector import detector_scores

            scores, labels = detector_scores(self.model, self.val_cache, cfg, self.numerics, mix,
                                             seed=cfg.train.seed + 1, indices=idx, tta_flip=cfg.train.tta_flip)
            return float(((scores >= 0.5) != labels).mean())
        pred, _, _ = predict_cache(self.model, self.val_cache, cfg, self.numerics, tta_flip=cfg.train.tta_flip,
                                   indices=idx, occlusion=mix, seed=cfg.train.seed + 1)
        return float(np.abs(pred - self.val_cache.ages[idx]).mean())

    def _fairness_setup(self, n_train: int) -> dict:
        """Sampler (balanced or None), tail-augmentation probabilities and the fairness loss for the first n_train
        training records; everything None when the fairness options are off (the default recipe)."""
        from ..fairness.losses import FairLoss, sample_weights
        from ..fairness.sampling import BalancedSampler, records_labels, tail_probabilities

        t, f = self.cfg.train, self.cfg.fairness
        recs = self.train_cache.records[:n_train]
        out: dict = {"sampler": None, "strong_p": None, "loss": None}
        if t.task != "age":
            return out
        labels = records_labels(recs, t.balance_by) if (t.sampler == "balanced" or t.tail_augment > 0) else None
        draws = None
        if t.sampler == "balanced":
            out["sampler"] = BalancedSampler(labels, n_train, self.dist.world, self.dist.rank, t.seed, t.balance_power)
            draws = out["sampler"].expected_draws()
        if t.tail_augment > 0:
            out["strong_p"] = tail_probabilities(labels, t.tail_augment)
        w = sample_weights(f, [r.age for r in recs], [r.gender for r in recs], [r.race for r in recs], draws)
        loss = FairLoss(self.model.head, w, f.lambda_cb, self.knn, f.gamma_knn, self.dro)
        out["loss"] = loss if loss.active else None
        if self.dist.main and (out["sampler"] is not None or out["loss"] is not None or out["strong_p"] is not None):
            msg = [f"sampler={t.sampler}" + (f" by {'×'.join(t.balance_by)}" if t.sampler == "balanced" else "")]
            if w is not None:
                msg.append(f"loss weights (cb_beta={f.cb_beta}, lds={f.lds}) in [{w.min():.2f}, {w.max():.2f}], "
                           f"lambda_cb={f.lambda_cb}")
            if self.knn is not None:
                msg.append(f"knn term gamma={f.gamma_knn}, k={f.knn_k}")
            if self.dro is not None:
                msg.append(f"group DRO over {len(self.dro_groups)} {'×'.join(f.dro_by)} groups, eta={f.dro_eta}")
            if out["strong_p"] is not None:
                msg.append(f"tail augmentation p<={float(out['strong_p'].max()):.2f}")
            self.log("fairness: " + "; ".join(msg))
        return out

    @torch.no_grad()
    def _teacher_logits(self, clean: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's age logits for uint8 NHWC clean views."""
        mean, std = self.teacher.mean_std
        x = to_input(clean, mean, std, self.numerics.device, self.numerics.channels_last)
        with self.numerics.autocast():
            return self.teacher(x)["logits"].float()

    # -- loop --
    def fit(self) -> dict:
        """Trains from start_epoch to train.epochs (or an early stop); the run folder is locked meanwhile."""
        try:
            return self._fit()
        finally:
            self.release()

    def _fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        if isinstance(self.train_cache, ShardSet):  # before the run folder is written (and an earlier run replaced)
            check_slots(self.train_cache, self.dist.world, cfg.data.num_workers)
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._hold_run_dir()
            import yaml

            if not self.resume:  # a fresh run starts a fresh log
                replace_earlier_run(self.run_dir, self.log)
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
            init = (f"{cfg.model.init_from} (model.init_from)" if cfg.model.init_from
                    else self.model.backbone.info.weights)
            atomic_write_json(self.run_dir / "env.json", {**environment(self.numerics), "init": init})
            self.log(f"numerics: {self.numerics.dtype}, channels_last={self.numerics.channels_last} on "
                     f"{self.numerics.device} ({self.numerics.reason}); weights at the start: {init}")
        n_train = min(len(self.train_cache), cfg.data.max_train or len(self.train_cache))
        fair = self._fairness_setup(n_train)
        view_kw = {"crop_size": cfg.data.crop_size, "input_size": cfg.data.input_size, "occlusion": occlusion_mix(cfg),
                   "target": "occluded" if t.task == "occlusion" else "age", "degrade": cfg.occlusion.degrade,
                   "strong_p": fair["strong_p"], "regions": self.model.region_attention is not None,
                   "augment": t.augment, "source_scale": t.augment_source_scale, "augment_p": t.augment_p,
                   "source_min": t.augment_source_min,
                   "augment_pair": t.augment_consistency > 0, "anchor": t.augment_anchor, "resave": t.augment_resave,
                   "pair": self.teacher is not None, "realign": cfg.occlusion.realign,
                   "realign_net": cfg.occlusion.realign_net}  # (clean view for the teacher, shown view, age, index)
        sampler = fair["sampler"]
        loss_fn = fair["loss"]
        gen = torch.Generator().manual_seed(t.seed)
        if isinstance(self.train_cache, ShardSet):  # streamed: each rank and loader worker reads its own shards
            if sampler is not None:
                raise ConfigError("train.sampler=balanced draws from the memory-mapped cache; unset data.shards")
            ds = ShardStream(self.train_cache, n_train, t.batch_size, self.dist.rank, self.dist.world,
                             cfg.data.num_workers, t.seed, **view_kw)
            dl = DataLoader(ds, batch_size=t.batch_size, num_workers=cfg.data.num_workers)
            batches = None  # streamed shards are not resumed mid-epoch
        else:
            ds = CachedFaceDataset(self.train_cache, True, seed=t.seed, indices=np.arange(n_train), **view_kw)
            if sampler is None and self.dist.world > 1:
                sampler = DistributedSampler(ds, self.dist.world, self.dist.rank, shuffle=True, seed=t.seed)
            # what DataLoader(shuffle=True, generator=gen) builds, with a way past the batches a run resumed
            # mid-epoch has done
            batches = SkipFirst(BatchSampler(sampler if sampler is not None else RandomSampler(ds, generator=gen),
                                             t.batch_size, drop_last=len(ds) > t.batch_size))
            dl = DataLoader(ds, batch_sampler=batches, generator=gen if sampler is None else None,
                            num_workers=cfg.data.num_workers)  # workers made afresh each epoch: kept ones held
            # the first epoch's copy of the dataset, so set_epoch never reached them (the same draws every epoch)
        jitter_gen = torch.Generator().manual_seed(t.seed + 1)
        held = StepBoundary() if batches is not None and self.dist.world == 1 else None
        with held or contextlib.nullcontext():
            return self._epochs(ds, dl, batches, gen, jitter_gen, sampler, loss_fn, held)

    def _epochs(self, ds, dl: DataLoader, batches: SkipFirst | None, gen: torch.Generator,
                jitter_gen: torch.Generator, sampler, loss_fn, held: StepBoundary | None) -> dict:
        """The epochs from start_epoch on (a resumed mid-epoch checkpoint's from its step); `held` (single-process,
        map-style data): a SIGTERM or Ctrl-C during the steps saves last.pt after the step under way."""
        cfg, t = self.cfg, self.cfg.train
        for epoch in range(self.start_epoch, t.epochs):
            frozen = epoch < t.freeze_backbone_epochs
            _set_backbone_trainable(self.model, not frozen)
            if epoch == t.freeze_backbone_epochs and epoch > 0:
                self.bad_epochs = 0  # early stopping restarts when the whole network starts to learn
            net = self.model
            if self.dist.world > 1:
                net = torch.nn.parallel.DistributedDataParallel(
                    self.model, device_ids=[self.dist.local_rank] if self.numerics.device_type == "cuda" else None)
            ds.set_epoch(epoch)
            gen.manual_seed(t.seed * 1000 + epoch)
            jitter_gen.manual_seed(t.seed * 7919 + epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            self.model.train()
            if frozen:
                self.model.backbone.eval()  # linear-probe phase: BN statistics stay as they are
            t0, seen, loss_sum, n_steps = time.perf_counter(), 0, 0.0, len(dl)
            if t.max_steps_per_epoch:
                n_steps = min(n_steps, t.max_steps_per_epoch)
            first, part = 0, self.in_epoch if self.in_epoch and self.in_epoch["epoch"] == epoch else None
            if part is not None and batches is None:
                raise CheckpointError(f"{self.run_dir / 'last.pt'} was saved in the middle of epoch {epoch} of a "
                                      "run on the prepared cache: resume it without data.shards, as it ran")
            if part is not None:  # resumed mid-epoch: on from the step it was saved at, as if never stopped
                first, loss_sum, seen = int(part["step"]), float(part["loss_sum"]), int(part["seen"])
                t0 -= float(part["train_s"])
                batches.skip = first
                jitter_gen.set_state(part["jitter"])
                rng, self.in_epoch = torch.get_rng_state(), None
            if held is not None:
                held.in_steps = True
            loader = iter(dl)
            if part is not None:
                torch.set_rng_state(rng)  # as saved: the loader's start may have drawn from it
            for step in range(first, n_steps):
                try:
                    batch = next(loader)
                except StopIteration:
                    break
                except Exception:  # the loader's workers ended by the same Ctrl-C: save the steps done
                    if held is not None and held.pending is not None:
                        self._stop_at(epoch, step, n_steps, loss_sum, seen, t0, jitter_gen, held)
                    raise
                clean = None
                if self.teacher is not None:
                    clean, imgs, ages, idx = batch
                    rest = []
                else:
                    imgs, ages, idx, *rest = batch
                factor = _lr_factor(cfg, epoch, step / n_steps)
                for g in self.optimizer.param_groups:
                    g["lr"] = g["base_lr"] * factor * self.lr_scale
                if t.augment_consistency > 0:  # (B, 2, H, W, 3): all first views, then all second views
                    imgs = torch.cat([imgs[:, 0], imgs[:, 1]])
                imgs = photometric_jitter(imgs, jitter_gen)
                teacher_logits = None if clean is None else self._teacher_logits(clean)
                step_loss = None if loss_fn is None else (lambda out, y, idx=idx: loss_fn(out, y, idx))
                loss = train_step(net, self.model.head, self.optimizer, self.scaler, self.numerics, imgs, ages, t.grad_clip,
                                  regions=rest[0] if rest else None, loss_fn=step_loss,
                                  flip_consistency=t.flip_consistency, pair_consistency=t.augment_consistency,
                                  pair_anchor=t.augment_anchor, teacher_logits=teacher_logits,
                                  kd_weight=t.kd_weight)
                if not math.isfinite(loss):
                    raise NonFiniteLossError(f"training loss became {loss} at epoch {epoch} step {step}: lower "
                                             "train.lr (the last checkpoint, if any, resumes with --resume)")
                seen += len(imgs)
                loss_sum += loss
                if (step + 1) % t.log_every == 0 or step + 1 == n_steps:
                    dt = time.perf_counter() - t0
                    row = {"epoch": epoch, "step": step + 1, "steps": n_steps, "loss": round(loss_sum / (step + 1), 4),
                           "lr": self.optimizer.param_groups[0]["lr"], "img_s": round(seen * self.dist.world / dt, 2),
                           "frozen_backbone": frozen}
                    if self.dro is not None:  # the group DRO weights, to see which groups it leans on
                        row["dro_q"] = dict(zip(self.dro_groups, (round(float(v), 4) for v in self.dro.q)))
                    self._write_jsonl(row)
                    if self.dist.main and self.progress:
                        self.log(f"epoch {epoch} step {step + 1}/{n_steps} loss {row['loss']:.3f} {row['img_s']:.1f} img/s")
                if held is not None and held.pending is not None:
                    self._stop_at(epoch, step + 1, n_steps, loss_sum, seen, t0, jitter_gen, held)
            if held is not None:
                held.in_steps = False
            if batches is not None:  # a resume saved at an epoch's last step reads no batch, so skip is still set
                batches.skip = 0
            train_time = time.perf_counter() - t0
            row = {"epoch": epoch, "train_loss": round(loss_sum / max(1, n_steps), 4), "train_s": round(train_time, 1),
                   "train_img_s": round(seen * self.dist.world / train_time, 2)}
            if self.val_cache is not None and ((epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs):
                idx = np.arange(min(len(self.val_cache), cfg.data.max_eval or len(self.val_cache)))
                mae = self.validate(idx)
                row["val_error" if t.task == "occlusion" else "val_mae"] = round(mae, 4)
                improved = mae < self.best_mae - 1e-4
                if t.scheduler == "plateau" and not frozen:
                    self.plateau_bad = 0 if improved else self.plateau_bad + 1
                    if self.plateau_bad >= 2:
                        self.lr_scale, self.plateau_bad = self.lr_scale * 0.5, 0
                if improved:
                    self.best_mae, self.best_epoch, self.bad_epochs = mae, epoch, 0
                    if self.dist.main:
                        save_checkpoint(self.run_dir / "best.pt", self._state(epoch))
                else:
                    self.bad_epochs += 1
            self.history.append(row)
            self._write_jsonl(row)
            stop = bool(t.early_stop_patience and self.bad_epochs >= t.early_stop_patience and not frozen)
            if self.dist.main:
                self.log(json.dumps(row))
                save_checkpoint(self.run_dir / "last.pt", {**self._state(epoch), "stopped_early": stop})
                if self.val_cache is None:
                    save_checkpoint(self.run_dir / "best.pt", self._state(epoch))
            if stop:
                self.log(f"early stopping at epoch {epoch}: no val MAE gain for {self.bad_epochs} epochs")
                break
        result = {"best_val_mae": self.best_mae if self.best_mae < float("inf") else None, "best_epoch": self.best_epoch,
                  "epochs_run": len(self.history), "numerics": self.numerics.dtype}
        if self.dist.world > 1:
            dist.barrier()
        return result
