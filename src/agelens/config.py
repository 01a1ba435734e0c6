"""Typed dataclass configs: YAML in, `key=value` CLI overrides, validated, saved resolved in each run dir."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    """Where the faces come from and how they are cropped."""

    dataset: str = "utkface"
    root: str = "../shared/data/utkface"
    groups_csv: str | None = None
    labels: str | None = None  # the dataset's label file where its adapter reads one and ROOT does not hold it
    # (aaf / morph / imdbclean / csv: a CSV; imdbwiki: the .mat)
    split_file: str = "splits/utkface_seed0.json"
    split_seed: int = 0
    val_frac: float = 0.1
    test_frac: float = 0.1
    cache_dir: str = "cache/utkface"
    aligned: bool = True  # inputs are already-aligned crops (e.g. UTKFace chips): no detector, landmarks still recorded
    cache_size: int = 256
    crop_size: int = 224  # crop taken from the cache_size image (random in training, centre in evaluation)
    input_size: int = 224  # crop resized to this before the network
    num_workers: int = 0
    max_train: int = 0  # >0: use only the first N training records (quick runs)
    max_eval: int = 0
    shards: str | None = None  # folder of WebDataset shards (docs/scale.md): `prepare` writes them, `train` streams them
    shard_size: int = 1000  # faces per shard (use >= ranks x loader workers shards per part)


@dataclass
class ModelConfig:
    """Backbone and ordinal head."""

    backbone: str = "resnet34"
    head: str = "dldl"
    # ImageNet weights: none (the default) = where they install offline (EfficientNet-Lite0/1/2 from pip; ResNets
    # start from scratch); true = required (a ResNet is refused); false = random init
    pretrained: bool | None = None
    init_from: str | None = None  # start from this checkpoint's (.pt or run folder) model weights
    min_age: int = 0
    max_age: int = 100
    dropout: float = 0.0
    dldl_sigma: float = 2.0
    mwr_window: int = 10
    mwr_iterations: int = 3
    align: str = "none"  # none | residual | concat: feature alignment after each stage (the occlusion student)
    region_attention: bool = False  # face-region attention on the last feature map (fairness recipe; identity at init)
    guards: bool = False  # occlusion and face logits from the same pooled features (train.trunk_guards fits them), so
    #                       one backbone pass answers age, occlusion and faceness at inference
    backbone_args: dict = field(default_factory=dict)  # keyword options of the backbone's builder (a plugin's own
    #                                                    backbone, docs/extending.md); saved with the model
    head_args: dict = field(default_factory=dict)  # keyword options of the head's builder, beside sigma / window /
    #                                                iterations (dldl_sigma, mwr_window, mwr_iterations)


@dataclass
class TrainConfig:
    """Optimisation, numerics and checkpointing."""

    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-4
    head_lr: float | None = None  # defaults to lr
    region_lr: float | None = None  # region-attention weights (model.region_attention); defaults to 10 × head_lr
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | adamw | sgd
    scheduler: str = "plateau"  # plateau | cosine | none
    warmup_epochs: float = 0.0
    freeze_backbone_epochs: int = 20
    early_stop_patience: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    numerics: str = "auto"  # auto | fp32 | bf16 | fp16 (fp16 only on CUDA)
    channels_last: str = "auto"  # auto | on | off
    grad_clip: float = 0.0
    max_steps_per_epoch: int = 0  # >0: cap steps per epoch (smoke runs)
    eval_every: int = 1
    tta_flip: bool = True
    log_every: int = 50
    threads: int = 0  # >0: torch.set_num_threads
    task: str = "age"  # age | occlusion (binary occluded-face detector; needs model.head=binary, occlusion.enabled)
    sampler: str = "default"  # default (shuffle) | balanced (demographic-aware draw per epoch, fairness.sampling)
    balance_by: list[str] = field(default_factory=lambda: ["age_bin"])  # keys from age_bin, age, gender, race
    balance_power: float = 1.0  # draw probability ∝ group_count^-power (1: equal mass per group, 0: uniform)
    tail_augment: float = 0.0  # strong-augmentation probability for the rarest balance_by group (0: off)
    augment: float = 0.0  # realistic photo degradations (data.augment: grey, sepia, casts, blur, JPEG, noise, scans,
    #                       mild geometry), each at its own probability × this strength; 0 = off
    flip_consistency: float = 0.0  # >0: every face is seen with its mirror image in the same batch, and this weight
    #                                × |age(face) − age(mirror)| joins the loss, so one view answers as the flip-TTA pair
    augment_p: dict[str, float] = field(default_factory=dict)  # per-degradation training probabilities that replace
    #                                                            data.augment.TRAIN_P's (e.g. scan_grain: 0.4)
    augment_source_min: float = 0.35  # the smallest working resolution of augment_source_scale, share of the crop
    augment_source_scale: float = 0.0  # probability that the pixel-level degradations (grain, noise, blur, JPEG) run at
    #                                    a lower working resolution, as they do on a small face in a photo (0: off)
    augment_consistency: float = 0.0  # >0: every face is seen twice in the batch, under two independent draws of the
    #                                   photo degradations (same crop and flip), both fitted to the label, and this
    #                                   weight × |age(view 1) − age(view 2)| joins the loss: the same face gets the same
    #                                   age whatever the photo did to it (needs train.augment > 0)
    augment_anchor: bool = False  # with augment_consistency: the first view is the undegraded face (same occluder,
    #                               crop and flip) and the term pulls only the degraded view towards its answer
    #                               (stop-gradient), so a degraded photo learns the clean answer instead of both views
    #                               meeting in between, nearer the mean age
    augment_resave: bool = False  # with augment_consistency: the two views are one degradation draw saved as two files
    #                               (JPEG re-encoded at a lower quality, halved and restored, or shifted 2 px, at a
    #                               small face's working resolution: data.augment.resave_pair), what issue 19's
    #                               stability benchmark does to a photo
    kd_weight: float = 0.0  # >0: output distillation (the occlusion student's fine-tuning): the frozen teacher
    #                         (distill.teacher) reads the clean face under the same crop and flip, and this weight ×
    #                         KL(teacher's age distribution ‖ the model's on the occluded, degraded face) joins the loss


def _paper_mix() -> dict[str, float]:
    from .occlusion.kinds import PAPER_MIX

    return dict(PAPER_MIX)


@dataclass
class OcclusionConfig:
    """Synthetic occluders drawn on the fly from cached landmarks (training; evaluation via `evaluate --occlude`)."""

    enabled: bool = False
    mix: dict[str, float] = field(default_factory=_paper_mix)  # per-type probabilities; default paper 1, Table 7
    clean_fraction: float = 0.0  # share of training images left clean
    clear_glasses: float = 0.0  # share of clean images given see-through glasses (hard negatives, detector)
    degrade: bool = False  # random blur / rescale / JPEG on training images (detector)
    realign: float = 0.0  # training: the share of occluded faces found and aligned again on the occluded image, as
    #                       predict finds them on a photo (the landmarks then meet the occluder), instead of keeping
    #                       the clean face's alignment
    realign_net: bool = False  # with realign: the found crop then corrected by the shipped realignment network
    #                            (faces.realign), as predict corrects every crop the student reads


@dataclass
class DistillConfig:
    """Stage-wise distillation of an occlusion-robust student from a clean teacher (paper 1, Algorithm 1)."""

    teacher: str = "teacher"  # shipped name, .safetensors, .pt checkpoint or run folder
    stages: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    stage_epochs: int = 40
    stage_lrs: list[float] = field(default_factory=lambda: [1e-4, 5e-5, 1e-5, 5e-6])  # one per stage 1..4
    finetune: bool = True  # then global fine-tuning with age labels on occluded faces (the train section)
    # "" = the student starts as a copy of the teacher (the paper); else a student to continue from (shipped name,
    # .safetensors, .pt checkpoint or run folder, same architecture): stage-wise budget added across runs
    student_init: str = ""


GROUP_KEYS = ("age_bin", "age", "gender", "race")


@dataclass
class FairnessConfig:
    """Fairness-aware losses (docs/fairness.md): L = L_head + lambda_cb·L_head(w) + gamma_knn·L_knn.

    w are per-sample weights from class-balanced effective numbers (cb_beta > 0) and/or label-distribution
    smoothing (lds), computed on the distribution the sampler actually draws; both off by default."""

    cb_beta: float = 0.0  # Cui et al. 2019 effective-number weighting; 0 = off, e.g. 0.999
    cb_by: list[str] = field(default_factory=lambda: ["age_bin"])  # what a "class" is (keys as train.balance_by)
    lds: bool = False  # Yang et al. 2021 label-distribution smoothing of the age density
    lds_sigma: float = 2.0  # Gaussian kernel sigma in years
    lds_kernel: int = 5  # kernel window in years (odd; Yang et al.'s ks)
    lds_mode: str = "inverse_sqrt"  # inverse_sqrt | inverse
    max_weight: float = 10.0  # clip per-sample weights (after normalising to mean 1) to this
    lambda_cb: float = 1.0  # weight of the re-weighted loss term (used when cb_beta > 0 or lds)
    gamma_knn: float = 0.0  # weight of the KNN-adjustment loss (0 = off)
    knn_k: int = 10  # neighbours in the KNN-adjustment loss
    knn_bank: int = 2048  # memory bank of recent (embedding, age) pairs searched with the batch
    group_dro: bool = False  # online group DRO over dro_by groups (Sagawa et al. 2020): minimise the worst group
    dro_by: list[str] = field(default_factory=lambda: ["age_bin"])  # the DRO groups (keys as train.balance_by)
    dro_eta: float = 0.001  # step size of the group distribution q (0: fixed uniform q = group-balanced mean)
    dro_within: list[str] = field(default_factory=list)  # strata (keys of dro_by) q never moves mass across, e.g.
    #                       dro_by=[age_bin, race, gender] + dro_within=[age_bin]: equal error at equal age


@dataclass
class RunConfig:
    """One run: name and output folder plus the three sections."""

    name: str = "run"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    occlusion: OcclusionConfig = field(default_factory=OcclusionConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    fairness: FairnessConfig = field(default_factory=FairnessConfig)
    # more datasets trained on together with `data` (each with its own split and cache); the train and val parts
    # are concatenated, each test part is evaluated and reported on its own (test_<dataset>/)
    extra_data: list[DataConfig] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def validate(self) -> RunConfig:
        """Raise ConfigError naming the first bad value."""
        from .data.augment import TRAIN_P

        d, m, t, f = self.data, self.model, self.train, self.fairness
        checks = [
            (0 <= d.val_frac < 1 and 0 <= d.test_frac < 1 and d.val_frac + d.test_frac < 1,
             f"data.val_frac + data.test_frac must be in [0, 1), got {d.val_frac} + {d.test_frac}"),
            (d.cache_size >= 32, f"data.cache_size must be >= 32, got {d.cache_size}"),
            (0 < d.crop_size <= d.cache_size, f"data.crop_size must be in (0, cache_size={d.cache_size}], got {d.crop_size}"),
            (d.input_size >= 32, f"data.input_size must be >= 32, got {d.input_size}"),
            (d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}"),
            (d.max_train >= 0 and d.max_eval >= 0,
             f"data.max_train / data.max_eval must be >= 0 (0: all), got {d.max_train} / {d.max_eval}"),
            (0 <= m.min_age < m.max_age <= 120, f"model.min_age/max_age must satisfy 0 <= min < max <= 120, got {m.min_age}/{m.max_age}"),
            (m.dldl_sigma > 0, f"model.dldl_sigma must be > 0, got {m.dldl_sigma}"),
            (m.align in ("none", "residual", "concat"), f"model.align must be none|residual|concat, got {m.align!r}"),
            (m.mwr_window >= 2, f"model.mwr_window must be >= 2, got {m.mwr_window}"),
            (m.mwr_iterations >= 1, f"model.mwr_iterations must be >= 1, got {m.mwr_iterations}"),
            (isinstance(m.backbone_args, dict) and isinstance(m.head_args, dict),
             f"model.backbone_args / model.head_args must be mappings, got {m.backbone_args!r} / {m.head_args!r}"),
            (0 <= m.dropout < 1, f"model.dropout must be in [0, 1), got {m.dropout}"),
            (t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
            (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
            (self.data.shard_size >= 1, f"data.shard_size must be >= 1, got {self.data.shard_size}"),
            (t.lr > 0, f"train.lr must be > 0, got {t.lr}"),
            (t.head_lr is None or t.head_lr > 0, f"train.head_lr must be > 0, got {t.head_lr}"),
            (t.region_lr is None or t.region_lr > 0, f"train.region_lr must be > 0, got {t.region_lr}"),
            (t.optimizer in ("adam", "adamw", "sgd"), f"train.optimizer must be adam|adamw|sgd, got {t.optimizer!r}"),
            (t.scheduler in ("plateau", "cosine", "none"), f"train.scheduler must be plateau|cosine|none, got {t.scheduler!r}"),
            (t.device in ("auto", "cpu", "cuda"), f"train.device must be auto|cpu|cuda, got {t.device!r}"),
            (t.numerics in ("auto", "fp32", "bf16", "fp16"), f"train.numerics must be auto|fp32|bf16|fp16, got {t.numerics!r}"),
            (t.channels_last in ("auto", "on", "off"), f"train.channels_last must be auto|on|off, got {t.channels_last!r}"),
            (t.freeze_backbone_epochs >= 0, f"train.freeze_backbone_epochs must be >= 0, got {t.freeze_backbone_epochs}"),
            (t.early_stop_patience >= 0, f"train.early_stop_patience must be >= 0, got {t.early_stop_patience}"),
            (t.eval_every >= 1, f"train.eval_every must be >= 1, got {t.eval_every}"),
            (t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}"),
            (t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}"),
            (t.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {t.warmup_epochs}"),
            (t.grad_clip >= 0, f"train.grad_clip must be >= 0 (0: off), got {t.grad_clip}"),
            (t.max_steps_per_epoch >= 0, f"train.max_steps_per_epoch must be >= 0 (0: all), got {t.max_steps_per_epoch}"),
            (t.threads >= 0, f"train.threads must be >= 0 (0: torch's default), got {t.threads}"),
            (t.task in ("age", "occlusion"), f"train.task must be age|occlusion, got {t.task!r}"),
            (t.task == "age" or (self.occlusion.enabled and m.head == "binary"),
             "train.task=occlusion needs occlusion.enabled=true and model.head=binary"),
            (isinstance(self.distill.stages, list) and bool(self.distill.stages)
             and all(k in (1, 2, 3, 4) for k in self.distill.stages)
             and list(self.distill.stages) == sorted(set(self.distill.stages)),
             "distill.stages must be stages of 1,2,3,4 in increasing order, each once (the paper's order: each "
             f"stage is distilled with the earlier ones in place), got {self.distill.stages!r}; to fine-tune on "
             "occluded faces without stage-wise distillation, train with occlusion.enabled=true and "
             "model.init_from=TEACHER"),
            (isinstance(self.distill.stage_lrs, list) and len(self.distill.stage_lrs) == 4
             and all(isinstance(v, int | float) and v > 0 for v in self.distill.stage_lrs),
             f"distill.stage_lrs must be 4 positive numbers (stages 1..4), got {self.distill.stage_lrs!r}"),
            (self.distill.stage_epochs >= 0, f"distill.stage_epochs must be >= 0, got {self.distill.stage_epochs}"),
            (isinstance(self.occlusion.mix, dict), f"occlusion.mix must be a mapping type: probability, got {self.occlusion.mix!r}"),
            (t.sampler in ("default", "balanced"), f"train.sampler must be default|balanced, got {t.sampler!r}"),
            (_keys_ok(t.balance_by), f"train.balance_by must be a non-empty list from {', '.join(GROUP_KEYS)}, got {t.balance_by!r}"),
            (t.balance_power >= 0, f"train.balance_power must be >= 0, got {t.balance_power}"),
            (0 <= t.tail_augment <= 1, f"train.tail_augment must be in [0, 1], got {t.tail_augment}"),
            (0 <= t.augment <= 3, f"train.augment must be in [0, 3], got {t.augment}"),
            (0 <= t.augment_source_scale <= 1,
             f"train.augment_source_scale must be in [0, 1], got {t.augment_source_scale}"),
            (t.augment_consistency >= 0, f"train.augment_consistency must be >= 0, got {t.augment_consistency}"),
            (isinstance(t.augment_p, dict) and all(k in TRAIN_P and 0 <= v <= 1 for k, v in t.augment_p.items()),
             f"train.augment_p must map degradations from {', '.join(TRAIN_P)} to probabilities in [0, 1], "
             f"got {t.augment_p!r}"),
            (0.1 <= t.augment_source_min <= 1,
             f"train.augment_source_min must be in [0.1, 1], got {t.augment_source_min}"),
            (t.augment_consistency == 0 or (t.augment > 0 and t.flip_consistency == 0 and not m.region_attention),
             "train.augment_consistency needs train.augment > 0, and works without train.flip_consistency and "
             "model.region_attention"),
            (not t.augment_anchor or t.augment_consistency > 0,
             "train.augment_anchor needs train.augment_consistency > 0"),
            (not t.augment_resave or (t.augment_consistency > 0 and not t.augment_anchor),
             "train.augment_resave needs train.augment_consistency > 0 and works without train.augment_anchor"),
            (t.kd_weight >= 0, f"train.kd_weight must be >= 0, got {t.kd_weight}"),
            (0 <= self.occlusion.realign <= 1, f"occlusion.realign must be in [0, 1], got {self.occlusion.realign}"),
            (t.kd_weight == 0 or (m.head in ("dldl", "ce") and t.task == "age" and t.augment_consistency == 0
                                  and t.flip_consistency == 0 and not m.region_attention),
             "train.kd_weight needs a distribution head (dldl or ce) on the age task, without the consistency terms "
             "and region attention"),
            (0 <= f.cb_beta < 1, f"fairness.cb_beta must be in [0, 1), got {f.cb_beta}"),
            (_keys_ok(f.cb_by), f"fairness.cb_by must be a non-empty list from {', '.join(GROUP_KEYS)}, got {f.cb_by!r}"),
            (f.lds_sigma > 0, f"fairness.lds_sigma must be > 0, got {f.lds_sigma}"),
            (f.lds_kernel >= 1 and f.lds_kernel % 2 == 1, f"fairness.lds_kernel must be an odd window >= 1, got {f.lds_kernel}"),
            (f.lds_mode in ("inverse_sqrt", "inverse"), f"fairness.lds_mode must be inverse_sqrt|inverse, got {f.lds_mode!r}"),
            (f.max_weight >= 1, f"fairness.max_weight must be >= 1, got {f.max_weight}"),
            (f.lambda_cb >= 0, f"fairness.lambda_cb must be >= 0, got {f.lambda_cb}"),
            (f.gamma_knn >= 0, f"fairness.gamma_knn must be >= 0, got {f.gamma_knn}"),
            (f.knn_k >= 1, f"fairness.knn_k must be >= 1, got {f.knn_k}"),
            (f.knn_bank >= 0, f"fairness.knn_bank must be >= 0, got {f.knn_bank}"),
            (_keys_ok(f.dro_by), f"fairness.dro_by must be a non-empty list from {', '.join(GROUP_KEYS)}, got {f.dro_by!r}"),
            (f.dro_eta >= 0, f"fairness.dro_eta must be >= 0, got {f.dro_eta}"),
            (isinstance(f.dro_within, list) and set(f.dro_within) < set(f.dro_by),
             f"fairness.dro_within must be a strict subset of fairness.dro_by ({f.dro_by}), got {f.dro_within!r}"),
            (t.task == "age" or not (f.cb_beta or f.lds or f.gamma_knn or f.group_dro or t.sampler != "default"),
             "fairness options (fairness.*, train.sampler=balanced) need train.task=age"),
        ]
        for j, e in enumerate(self.extra_data):
            checks += [
                (e.cache_dir != d.cache_dir and e.split_file != d.split_file,
                 f"extra_data[{j}] needs its own cache_dir and split_file (both equal data's now)"),
                (e.cache_size == d.cache_size, f"extra_data[{j}].cache_size must equal data.cache_size ({d.cache_size})"),
            ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        from .occlusion.synth import OcclusionMix

        try:
            OcclusionMix({k: float(v) for k, v in self.occlusion.mix.items()}, self.occlusion.clean_fraction,
                         self.occlusion.clear_glasses)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"occlusion: {e}") from None
        return self  # backbone and head names are checked by the models layer (agelens.models.check_config)


def _keys_ok(keys: Any) -> bool:
    return isinstance(keys, list) and len(keys) > 0 and all(k in GROUP_KEYS for k in keys) and len(set(keys)) == len(keys)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated field type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list and typing.get_args(tp) == (str,) and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]  # `train.balance_by=age_bin,gender`
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # `data.aligned=1` on the command line reads as a YAML integer
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key} must be true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans
            return "on" if value else "off"
        if isinstance(value, dict | list):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def _apply(obj: Any, values: dict[str, Any], prefix: str = "", strict: bool = True) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if k not in names and not strict:
            continue  # a key an older version wrote (saved checkpoints and cards)
        if k not in names:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(prefix + n for n in names))}")
        cur = getattr(obj, k)
        item_tp = typing.get_args(hints[k])[0] if typing.get_origin(hints[k]) is list else None
        if item_tp is not None and dataclasses.is_dataclass(item_tp):
            if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
                raise ConfigError(f"{key} must be a list of mappings, got {v!r}")
            items = []
            for j, x in enumerate(v):
                items.append(item_tp())
                _apply(items[-1], x, f"{key}[{j}].", strict)
            setattr(obj, k, items)
        elif dataclasses.is_dataclass(cur):
            if not isinstance(v, dict):
                raise ConfigError(f"{key} must be a mapping, got {v!r}")
            _apply(cur, v, key + ".", strict)
        else:
            setattr(obj, k, _coerce(v, hints[k], key))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['train.lr=1e-3', 'model.head=coral'] → nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            val = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            val = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = val
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults ← YAML file ← overrides, validated."""
    cfg = RunConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            hint = (" (the configs/ examples come with the source repository, not the installed package: copy one "
                    "from there, or write your own: its sections and keys are the fields of agelens.config.RunConfig)"
                    if p.parts[:1] == ("configs",) else "")
            raise ConfigError(f"config file not found: {p}{hint}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)  # where the parser stopped (1-based line and column)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"config file {p} is not valid YAML{where}: {what}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must contain a mapping at top level")
        _apply(cfg, data)
    if overrides:
        _apply(cfg, parse_overrides(overrides))
    return cfg.validate()


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a saved config; keys this version no longer has are ignored, unknown values still fail."""
    cfg = RunConfig()
    _apply(cfg, data, strict=False)
    return cfg


def config_changes(saved: dict, cfg: RunConfig, ignored: tuple[str, ...] = ()) -> list[str]:
    """'key: saved → now' for every setting of `cfg` that differs from a saved config (a run's config.yaml or a
    checkpoint's "config"), less the `ignored` keys and those only one of them has."""
    def flat(d: dict, pre: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{pre}{k}.") if isinstance(v, dict) else {f"{pre}{k}": v})
        return out

    was = flat(yaml.safe_load(yaml.safe_dump(saved, sort_keys=False)) or {})  # tuples read back as saved
    now = flat(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg), sort_keys=False)))
    # settings one of them lacks (a version of agelens before a setting existed, or after one went) are not changes
    return [f"{k}: {was[k]!r} → {now[k]!r}" for k in sorted(set(was) & set(now)) if k not in ignored and was[k] != now[k]]


# settings a run may change when it is resumed (`refuse_resume_changes`); any other change is another recipe
RESUME_FREE = ("train.epochs", "train.log_every", "train.threads", "data.num_workers")


def refuse_resume_changes(saved: dict | None, cfg: RunConfig, checkpoint: str | Path, did: str = "trained") -> None:
    """ConfigError where `cfg` changes a setting of the checkpoint's saved config other than RESUME_FREE (before: a
    resume ran on with the new settings, or ignored them, and the run's record described settings it never had)."""
    changed = config_changes(saved, cfg, RESUME_FREE) if saved else []
    if changed:
        raise ConfigError(f"--resume: {checkpoint} was {did} with other settings ({'; '.join(changed[:4])}"
                          f"{'; ...' if len(changed) > 4 else ''}): resume with the run's own config (only "
                          f"{', '.join(RESUME_FREE)} may change), or {did.removesuffix('ed')} under another name=")
