"""Sharded face caches for training across nodes: WebDataset tar shards of aligned crops + landmarks + labels.

A shard folder (one per split part, e.g. SHARDS/train) holds
    shard-000000.tar, ...  samples "<index>.crop.npy" (uint8 S×S×3), "<index>.landmarks.npy" (float32 478×2) and
                           "<index>.json" (the FaceRecord); <index> (8 digits) is the row in the source FaceCache
    shards.json            version, crop size, the source cache's signature, the dataset, root, split file and part
                           it holds, every record in index order, failed files, and per shard its name and
                           indices. Written last: a folder without it is incomplete.
Rows go to shards by a seeded permutation, so each shard is a random sample of the part. Every shard is written to
a temporary name and renamed, so a killed `prepare` leaves whole shards or none.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import ConfigError, DataError
from ..utils import atomic_write, atomic_write_json
from .adapters import FaceRecord
from .cache import N_LANDMARKS, FaceCache, FaceSet

SHARD_VERSION = 1
MANIFEST = "shards.json"
PARTS = ("train", "val", "test")


def write_shards(cache: FaceCache, out_dir: str | Path, shard_size: int = 1000, seed: int = 0, force: bool = False,
                 progress: bool = False, source: dict | None = None) -> Path:
    """Write (or keep, when its manifest matches this cache, shard size, seed and source) the shards of one cache.
    source: {dataset, root, split_file, part} the cache was made from, recorded for `check_shards`."""
    import webdataset as wds

    out = Path(out_dir)
    if shard_size < 1:
        raise DataError(f"shard size must be >= 1, got {shard_size}")
    want = {"version": SHARD_VERSION, "signature": cache.meta.get("signature"), "shard_size": shard_size,
            "seed": seed, "n": len(cache), **(source or {})}
    if not force and (out / MANIFEST).is_file():
        try:
            have = json.loads((out / MANIFEST).read_text())
            if {k: have.get(k) for k in want} == want and all((out / s["name"]).is_file() for s in have["shards"]):
                return out
        except (OSError, ValueError, KeyError, TypeError):
            pass
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on the folder reads as incomplete until the new manifest
    for old in [*out.glob("shard-*.tar"), *out.glob(".shard-*.tmp")]:
        old.unlink()
    perm = np.random.default_rng(seed).permutation(len(cache))
    shards = []
    from ..progress import track

    starts = range(0, len(cache), shard_size)
    for k, start in track(enumerate(starts), total=len(starts), description=f"sharding {out.name}", enabled=progress):
        rows = [int(i) for i in perm[start:start + shard_size]]
        name = f"shard-{k:06d}.tar"

        def write(tmp: str, rows: list[int] = rows) -> None:
            with wds.TarWriter(tmp) as tw:
                for i in rows:
                    tw.write({"__key__": f"{i:08d}", "crop.npy": np.ascontiguousarray(cache.images[i]),
                              "landmarks.npy": np.ascontiguousarray(cache.landmarks[i], np.float32),
                              "json": asdict(cache.records[i])})

        atomic_write(out / name, write)
        shards.append({"name": name, "n": len(rows), "indices": sorted(rows)})
    atomic_write_json(out / MANIFEST, {**want, "size": cache.size, "aligned": cache.meta.get("aligned"),
                                       "records": [asdict(r) for r in cache.records], "failed": cache.failed,
                                       "no_landmarks": cache.meta.get("no_landmarks", []), "shards": shards})
    return out


SOURCE_KEYS = ("dataset", "root", "split_file")


def check_shards(data, log=print) -> None:
    """ConfigError where data.shards were written from another dataset, root or split file than the config names,
    or hold other faces than the config's split gives each part now (their cache signature, computed from the
    listed records without detection). Shards written before they recorded their source pass with a note."""
    from .adapters import load_dataset
    from .cache import cache_signature
    from .splits import load_split

    root = Path(data.shards)
    have = {}
    for k in PARTS:
        try:
            have[k] = json.loads((root / k / MANIFEST).read_text())
        except (OSError, ValueError):
            continue  # missing or torn: ShardSet says so when it loads the part
    if any(not all(key in m for key in SOURCE_KEYS) for m in have.values()):
        log(f"note: {root} was written before shards recorded their dataset and split, so it is not checked "
            "against the config (`agelens prepare --shards` rewrites it)")
        return
    now = {"dataset": data.dataset, "root": str(data.root), "split_file": str(data.split_file)}
    for k, m in have.items():
        differ = [f"{key} {m[key]} (the config: {now[key]})" for key in SOURCE_KEYS if m[key] != now[key]]
        if differ:
            raise ConfigError(f"{root / k} was written from {', '.join(differ)}: rewrite it with `agelens prepare "
                              f"-c CONFIG --shards {root}`, or set data.shards to this config's shards")
    if not Path(data.root).exists():  # a node with the shards but not the dataset: the faces cannot be listed here
        log(f"note: {data.root} is not on this machine, so the faces of {root} are not checked against its split")
        return
    parts = load_split(data.split_file, load_dataset(data.dataset, data.root, groups_csv=data.groups_csv, labels=data.labels).records,
                       data.root)  # as prepare.list_records lists them (prepare imports this module)
    for k, m in have.items():
        sig = cache_signature(parts.get(k, []), data.cache_size, data.aligned)
        if m.get("signature") != sig:
            raise ConfigError(f"{root / k} holds other faces than part {k} of {data.split_file} gives now (cache "
                              f"signature {m.get('signature')}, now {sig}: the dataset, the split, data.cache_size or "
                              f"data.aligned changed since): rewrite it with `agelens prepare -c CONFIG --shards {root}`")


def check_slots(shards: ShardSet, world: int, num_workers: int) -> None:
    """DataError where a shard folder has fewer shards than (rank, loader worker) slots: a slot would read none."""
    workers = max(1, num_workers)
    if len(shards.shards) < world * workers:
        raise DataError(f"{shards.path} has {len(shards.shards)} shard(s) for {world} rank(s) x {workers} loader "
                        f"worker(s); rewrite it with a smaller data.shard_size")


class ShardSet(FaceSet):
    """A shard folder's manifest: records and ages (for samplers, fairness terms, metrics) and the shard files.
    Stands in for the training FaceCache; the Trainer streams it with ShardStream."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        mp = self.path / MANIFEST
        if not mp.is_file():
            raise DataError(f"not a complete shard folder (no {MANIFEST}): {self.path}; write it with "
                            f"`agelens prepare --shards DIR` (data.shards)")
        try:
            self.meta = json.loads(mp.read_text())
            self.records = [FaceRecord(**r) for r in self.meta["records"]]
            self.shards: list[dict] = self.meta["shards"]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"shard manifest {mp} is corrupt: {e}") from None
        if self.meta.get("version") != SHARD_VERSION:
            raise DataError(f"{mp}: shard format version {self.meta.get('version')}, this agelens reads "
                            f"{SHARD_VERSION}; rewrite the shards with `agelens prepare --shards DIR`")
        missing = [s["name"] for s in self.shards if not (self.path / s["name"]).is_file()]
        if missing:
            raise DataError(f"shard folder {self.path} lacks {len(missing)} shard(s), e.g. {missing[0]}")

    def urls(self, ids: list[int] | None = None) -> list[str]:
        return [str(self.path / self.shards[k]["name"]) for k in (range(len(self.shards)) if ids is None else ids)]


def _samples(urls: list[str]):
    """Decoded samples (dicts with __key__, crop.npy, landmarks.npy, json) of these shards, in order."""
    import webdataset as wds

    return wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), wds.decode())


class ShardCache(FaceCache):
    """A whole shard folder read into memory as a FaceCache (validation and test parts: small, random access)."""

    def __init__(self, path: str | Path) -> None:  # no super().__init__: the rows come from shards, not .npy files
        s = ShardSet(path)
        n, size = len(s), s.size
        self.path, self.meta, self.records = s.path, s.meta, s.records
        self.images = np.zeros((n, size, size, 3), np.uint8)
        self.landmarks = np.full((n, N_LANDMARKS, 2), np.nan, np.float32)
        seen = np.zeros(n, bool)
        for sample in _samples(s.urls()):
            i = int(sample["__key__"])
            self.images[i], self.landmarks[i], seen[i] = sample["crop.npy"], sample["landmarks.npy"], True
        if not seen.all():
            raise DataError(f"shard folder {self.path} is incomplete: {int((~seen).sum())} of {n} faces missing")


def shard_caches(folder: str | Path) -> dict:
    """{train: ShardSet (streamed), val, test: ShardCache (in memory)} of a folder written by `agelens prepare`."""
    root = Path(folder)
    return {"train": ShardSet(root / "train"), "val": ShardCache(root / "val"), "test": ShardCache(root / "test")}


class _RowStore:
    """One record's crop, landmarks and age under its cache index: the `cache` CachedFaceDataset.item reads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: dict[int, np.ndarray] = {}
        self.landmarks: dict[int, np.ndarray] = {}
        self.ages: dict[int, np.float32] = {}

    def __len__(self) -> int:
        return len(self.images)

    def put(self, i: int, crop: np.ndarray, lm: np.ndarray, age: float) -> None:
        self.images, self.landmarks, self.ages = {i: crop}, {i: lm}, {i: np.float32(age)}


class ShardStream(IterableDataset):
    """Training samples streamed from a ShardSet under DDP and DataLoader workers.

    Each epoch the shards are permuted with (seed, epoch) and dealt, in that order, each to the (rank, worker) slot
    with the fewest faces so far. A slot reads its shards with WebDataset, keeps records with index < limit
    (data.max_train), shuffles them in a buffer seeded by (seed, epoch, slot) and augments each with
    CachedFaceDataset.item: the same crop, flip and occluder as the memory-mapped path gives that record in that
    epoch. Every slot yields the same number of samples (the smallest slot's, in whole batches), so all ranks take
    the same number of steps; the rest of bigger slots sits out that epoch. len() is per rank."""

    def __init__(self, shards: ShardSet, limit: int, batch_size: int, rank: int = 0, world: int = 1,
                 num_workers: int = 0, seed: int = 0, shuffle_buffer: int = 1000, **view_kw) -> None:
        from .dataset import CachedFaceDataset

        self.shards, self.limit, self.batch_size = shards, limit, batch_size
        self.rank, self.world, self.workers = rank, world, max(1, num_workers)
        self.seed, self.epoch, self.buffer = seed, 0, shuffle_buffer
        self.store = _RowStore(shards.size)
        self.view = CachedFaceDataset(self.store, True, seed=seed, indices=np.arange(0), **view_kw)
        self.counts = np.array([sum(i < limit for i in s["indices"]) for s in shards.shards])
        check_slots(shards, world, num_workers)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.view.set_epoch(epoch)

    def plan(self, epoch: int) -> tuple[list[list[int]], int]:
        """(shard ids per slot, samples per slot) for an epoch; slot = rank × workers + worker."""
        order = np.random.default_rng((self.seed, epoch)).permutation(len(self.shards.shards))
        slots = self.world * self.workers
        dealt: list[list[int]] = [[] for _ in range(slots)]
        load = np.zeros(slots, np.int64)
        for k in order:  # each shard to the slot with the fewest faces so far: the equal share drops least
            s = int(np.argmin(load))
            dealt[s].append(int(k))
            load[s] += self.counts[k]
        least = int(load.min())
        if least == 0:
            raise DataError(f"a (rank, worker) slot of {self.shards.path} got no training face in epoch {epoch}: "
                            f"use fewer ranks/workers, a smaller data.shard_size or a larger data.max_train")
        quota = least if least < self.batch_size else least // self.batch_size * self.batch_size
        return dealt, quota

    def __len__(self) -> int:
        return self.plan(self.epoch)[1] * self.workers

    def __iter__(self):
        import webdataset as wds

        info = get_worker_info()
        worker = info.id if info is not None else 0
        if (info.num_workers if info is not None else 1) != self.workers:
            raise DataError(f"ShardStream was made for {self.workers} loader worker(s), runs under "
                            f"{info.num_workers if info is not None else 1}")
        slot = self.rank * self.workers + worker
        dealt, quota = self.plan(self.epoch)
        shuffle_seed = int(np.random.SeedSequence((self.seed, self.epoch, slot)).generate_state(1)[0])
        limit = self.limit
        pipe = wds.DataPipeline(
            wds.SimpleShardList(self.shards.urls(dealt[slot])), wds.tarfile_to_samples(),
            wds.select(lambda s: int(s["__key__"]) < limit),
            wds.shuffle(self.buffer, min(self.buffer, 100), seed=shuffle_seed), wds.decode())
        for n, sample in enumerate(pipe):
            if n >= quota:
                break
            i = int(sample["__key__"])
            self.store.put(i, sample["crop.npy"], sample["landmarks.npy"], sample["json"]["age"])
            yield self.view.item(i)
