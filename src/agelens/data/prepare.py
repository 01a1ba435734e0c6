"""Dataset → saved group-safe split → one memory-mapped cache per split part."""

from __future__ import annotations

import contextlib
import math
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .adapters import FaceRecord, Listing, load_dataset, write_bad_rows
from .cache import FaceCache, build_cache
from .splits import check_group_safe, group_split, load_split, save_split, split_settings

# datasets whose faces are not aligned crops (each at its own place and scale): read with data.aligned=true, a
# photo's face is not looked for
FULL_PHOTO_DATASETS = ("afad", "morph", "cacd", "imdbwiki", "imdbclean", "fgnet")


def list_records(data: DataConfig) -> Listing:
    """The config's dataset (its adapter); a note where a dataset of whole photos is read as aligned crops."""
    listing = load_dataset(data.dataset, data.root, groups_csv=data.groups_csv, labels=data.labels)
    if data.aligned and data.dataset in FULL_PHOTO_DATASETS:
        listing.notes.append(f"{data.dataset}'s faces are not aligned crops, and data.aligned=true reads each image "
                             "as one (no face detection): give data.aligned=false to find each face first")
    return listing


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_or_load_split(data: DataConfig, listing: Listing | None = None, force: bool = False,
                       log: Callable[[str], None] | None = _stderr) -> dict[str, list[FaceRecord]]:
    """Reuse data.split_file when present, else make a group-safe seeded split and save it. `log` (None: quiet)
    hears what a user would not see otherwise: rows skipped (listed in SPLIT.bad_rows.csv), records a reused split
    leaves out (added to the dataset after it was made), and split settings of the config that a reused split does
    not follow."""
    listing = listing or list_records(data)
    recs = listing.records
    sp = Path(data.split_file)
    note = log or (lambda _: None)
    for n in listing.notes:
        note(n)
    made_here = not sp.is_file() or force
    if not made_here:
        parts = load_split(sp, recs, data.root)
        left_out = len(recs) - sum(len(v) for v in parts.values())
        if left_out > 0:
            note(f"{left_out} of the dataset's {len(recs)} records are in no part of {sp} (the split was made before "
                 "they were there): they are left out; `agelens split --force` makes the split anew")
        made = split_settings(sp)
        differs = [f"{k} {made[k]} (the config says {want})" for k, want in
                   (("seed", data.split_seed), ("val_frac", data.val_frac), ("test_frac", data.test_frac))
                   if k in made and made[k] != want]
        if differs:
            note(f"{sp} was made with {', '.join(differs)}; it is used as it is: `agelens split --force`, or another "
                 "data.split_file, makes the split the config asks for")
    else:
        idx = group_split(recs, data.val_frac, data.test_frac, data.split_seed)
        _refuse_empty_parts(data, recs, idx)
        save_split(sp, recs, idx, dataset=data.dataset, root=data.root, seed=data.split_seed,
                   val_frac=data.val_frac, test_frac=data.test_frac, groups_csv=data.groups_csv)
        parts = {k: [recs[i] for i in v] for k, v in idx.items()}
    if listing.bad:
        bad_p = sp.with_suffix(".bad_rows.csv")
        if made_here or not bad_p.is_file():
            with contextlib.suppress(OSError):  # a split reused from a read-only place: the count below still says
                write_bad_rows(listing.bad, bad_p)
        reasons = Counter(re.sub(r" ?'[^']*'| of .*", "", b.reason) for b in listing.bad)  # the kinds, values left out
        note(f"{len(listing.bad)} row(s) of {data.dataset} skipped ({', '.join(f'{r}: {n}' for r, n in reasons.most_common(3))}"
             f"{', ...' if len(reasons) > 3 else ''}): every one in {bad_p}")
    check_group_safe(parts)
    return parts


def _refuse_empty_parts(data: DataConfig, recs: list[FaceRecord], idx: dict[str, list[int]]) -> None:
    """ConfigError where a new split leaves a part empty that the config gives a share (before: `split` printed
    `val 0` and `prepare` failed later); a part asked for with a 0 fraction may stay empty."""
    fracs = {"train": 1.0, "val": data.val_frac, "test": data.test_frac}
    empty = [k for k, f in fracs.items() if f > 0 and not idx.get(k)]
    if not empty:
        return
    sizes = Counter(r.group or r.path for r in recs)
    n, g = len(recs), len(sizes)
    wanted = sum(f > 0 for f in fracs.values())
    if g < wanted:
        fix = f"a split into {wanted} parts needs at least {wanted} groups: use more data"
    else:  # a part takes a whole group once the group's middle fits its share (splits.group_split)
        need = math.ceil(100 * min(sizes.values()) / (2 * n)) / 100
        fix = (f"a part takes whole groups only, so raise {' and '.join(f'data.{k}_frac' for k in empty)} to at "
               f"least {need:g} (half the smallest group's share of the records), or use more data")
    raise ConfigError(f"the split of {n} records in {g} groups leaves {' and '.join(empty)} empty: {fix}")


def prepare_caches(data: DataConfig, parts_wanted: tuple[str, ...] = ("train", "val", "test"), workers: int = 2,
                   progress: bool = True, force: bool = False, listing: Listing | None = None,
                   log: Callable[[str], None] | None = _stderr) -> dict[str, FaceCache]:
    """`listing`: the dataset's records when the caller has listed them already (else listed here); `log`: as
    `make_or_load_split`."""
    parts = make_or_load_split(data, listing, log=log)
    out = {}
    for k in parts_wanted:
        if not parts.get(k):
            raise DataError(f"split part {k!r} is empty in {data.split_file}")
        out[k] = build_cache(parts[k], Path(data.cache_dir) / k, data.cache_size, data.aligned, workers, progress, force)
    if data.shards:  # the caches (new or reused as they are) → WebDataset shards for streamed, multi-node training
        from .shards import write_shards

        source = {"dataset": data.dataset, "root": str(data.root), "split_file": str(data.split_file)}
        for k, cache in out.items():
            write_shards(cache, Path(data.shards) / k, data.shard_size, data.split_seed, force, progress,
                         {**source, "part": k})
    return out


def refuse_shards_with_extra(main: DataConfig, extra: list[DataConfig]) -> None:
    """ConfigError for data.shards with extra_data: training from shards streams one dataset's parts, so the extra
    datasets would be left out of training without a word."""
    if extra and (main.shards or any(d.shards for d in extra)):
        raise ConfigError(f"data.shards streams one dataset's parts, so training from them would leave extra_data "
                          f"({', '.join(d.dataset for d in extra)}) out: unset data.shards (train from the caches) "
                          "or extra_data")


def combine_caches(caches: list[FaceCache], path: str | Path) -> FaceCache:
    """All rows of several prepared caches as one (training on several datasets at once)."""
    from .cache import CacheSubset

    if len(caches) == 1:
        return caches[0]
    picks = [(k, row) for k, c in enumerate(caches) for row in range(len(c))]
    return CacheSubset(caches, picks, path, [f for c in caches for f in c.failed])


def prepare_all(main: DataConfig, extra: list[DataConfig], parts_wanted: tuple[str, ...] = ("train", "val", "test"),
                workers: int = 2, progress: bool = True, force: bool = False,
                log: Callable[[str], None] | None = _stderr) -> dict[str, dict[str, FaceCache]]:
    """Caches of the main dataset and of every extra one: {dataset name: {part: cache}}, main first."""
    refuse_shards_with_extra(main, extra)
    out = {main.dataset: prepare_caches(main, parts_wanted, workers, progress, force, log=log)}
    for d in extra:
        if d.dataset in out:
            raise DataError(f"dataset {d.dataset!r} is listed twice (data and extra_data)")
        out[d.dataset] = prepare_caches(d, parts_wanted, workers, progress, force, log=log)
    return out
