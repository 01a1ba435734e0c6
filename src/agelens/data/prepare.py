"""Dataset → saved group-safe split → one memory-mapped cache per split part."""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .adapters import FaceRecord, Listing, load_dataset, write_bad_rows
from .cache import FaceCache, build_cache
from .splits import check_group_safe, group_split, load_split, save_split


def list_records(data: DataConfig) -> Listing:
    return load_dataset(data.dataset, data.root, groups_csv=data.groups_csv)


def make_or_load_split(data: DataConfig, listing: Listing | None = None, force: bool = False) -> dict[str, list[FaceRecord]]:
    """Reuse data.split_file when present, else make a group-safe seeded split and save it."""
    listing = listing or list_records(data)
    recs = listing.records
    sp = Path(data.split_file)
    if sp.is_file() and not force:
        parts = load_split(sp, recs, data.root)
    else:
        idx = group_split(recs, data.val_frac, data.test_frac, data.split_seed)
        save_split(sp, recs, idx, dataset=data.dataset, root=data.root, seed=data.split_seed,
                   val_frac=data.val_frac, test_frac=data.test_frac, groups_csv=data.groups_csv)
        parts = {k: [recs[i] for i in v] for k, v in idx.items()}
        if listing.bad:
            write_bad_rows(listing.bad, sp.with_suffix(".bad_rows.csv"))
    check_group_safe(parts)
    return parts


def prepare_caches(data: DataConfig, parts_wanted: tuple[str, ...] = ("train", "val", "test"), workers: int = 2,
                   progress: bool = True, force: bool = False, listing: Listing | None = None) -> dict[str, FaceCache]:
    """`listing`: the dataset's records when the caller has listed them already (else listed here)."""
    parts = make_or_load_split(data, listing)
    out = {}
    for k in parts_wanted:
        if not parts.get(k):
            raise DataError(f"split part {k!r} is empty in {data.split_file}")
        out[k] = build_cache(parts[k], Path(data.cache_dir) / k, data.cache_size, data.aligned, workers, progress, force)
    if data.shards:  # the caches (new or reused as they are) → WebDataset shards for streamed, multi-node training
        from .shards import write_shards

        for k, cache in out.items():
            write_shards(cache, Path(data.shards) / k, data.shard_size, data.split_seed, force, progress)
    return out


def combine_caches(caches: list[FaceCache], path: str | Path) -> FaceCache:
    """All rows of several prepared caches as one (training on several datasets at once)."""
    from .cache import CacheSubset

    if len(caches) == 1:
        return caches[0]
    picks = [(k, row) for k, c in enumerate(caches) for row in range(len(c))]
    return CacheSubset(caches, picks, path, [f for c in caches for f in c.failed])


def prepare_all(main: DataConfig, extra: list[DataConfig], parts_wanted: tuple[str, ...] = ("train", "val", "test"),
                workers: int = 2, progress: bool = True, force: bool = False) -> dict[str, dict[str, FaceCache]]:
    """Caches of the main dataset and of every extra one: {dataset name: {part: cache}}, main first."""
    out = {main.dataset: prepare_caches(main, parts_wanted, workers, progress, force)}
    for d in extra:
        if d.dataset in out:
            raise DataError(f"dataset {d.dataset!r} is listed twice (data and extra_data)")
        out[d.dataset] = prepare_caches(d, parts_wanted, workers, progress, force)
    return out
