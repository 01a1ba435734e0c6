"""Group-safe, seeded train/val/test and k-fold splits, saved to JSON and reused."""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..utils import atomic_write_json
from .adapters import FaceRecord

PARTS = ("train", "val", "test")


def _groups(records: list[FaceRecord]) -> dict[str, list[int]]:
    g: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        g[r.group or r.path].append(i)
    return g


def _shuffled_groups(records: list[FaceRecord], seed: int) -> list[list[int]]:
    g = _groups(records)
    keys = sorted(g)
    order = np.random.default_rng(seed).permutation(len(keys))
    return [g[keys[i]] for i in order]


def group_split(records: list[FaceRecord], val_frac: float = 0.1, test_frac: float = 0.1,
                seed: int = 0) -> dict[str, list[int]]:
    """Assign whole groups to test, then val, then train until each reaches its share of records."""
    if not 0 <= val_frac + test_frac < 1:
        raise DataError(f"val_frac + test_frac must be in [0, 1), got {val_frac} + {test_frac}")
    n = len(records)
    targets = {"test": test_frac * n, "val": val_frac * n}
    out: dict[str, list[int]] = {k: [] for k in PARTS}
    for members in _shuffled_groups(records, seed):
        part = next((p for p in ("test", "val") if len(out[p]) + len(members) / 2 <= targets[p]), "train")
        out[part].extend(members)
    return {k: sorted(v) for k, v in out.items()}


def kfold_split(records: list[FaceRecord], k: int = 5, seed: int = 0) -> list[list[int]]:
    """k folds of whole groups with near-equal record counts (largest groups placed first); ConfigError when there
    are fewer groups than folds (a fold would test nothing)."""
    if k < 2:
        raise DataError(f"k-fold needs k >= 2, got {k}")
    groups = sorted(_shuffled_groups(records, seed), key=len, reverse=True)  # stable: ties keep seeded order
    if len(groups) < k:  # a fold without a group would have no test records (and no metrics to average)
        raise ConfigError(f"{k} folds need at least {k} groups; the dataset has {len(groups)} (a group: one identity "
                          "or set of duplicates, else one record): "
                          + (f"use --folds {len(groups)} or fewer, or more data" if len(groups) >= 2 else "use more data"))
    folds: list[list[int]] = [[] for _ in range(k)]
    for members in groups:
        min(folds, key=len).extend(members)
    return [sorted(f) for f in folds]


def kfold_parts(records: list[FaceRecord], k: int, val_frac: float, seed: int = 0) -> list[dict[str, list[int]]]:
    """Per fold {train, val, test}: test is that fold of `kfold_split`, val a group-safe share of the rest
    (`val_frac` of the whole dataset, at most half the rest; seeded per fold), train the remainder."""
    out = []
    for i, test_idx in enumerate(kfold_split(records, k, seed)):
        test_set = set(test_idx)
        rest = [j for j in range(len(records)) if j not in test_set]
        inner = group_split([records[j] for j in rest], min(0.5, val_frac * len(records) / max(1, len(rest))), 0.0,
                            seed + i)
        out.append({"train": [rest[j] for j in inner["train"]], "val": [rest[j] for j in inner["val"]],
                    "test": sorted(test_idx)})
    return out


def _rel(path: str, root: str) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return path


def records_fingerprint(records: list[FaceRecord], root: str) -> str:
    """A hash of the records' sorted `path|age|group` lines (paths relative to `root`): any record added, removed or
    relabelled changes it."""
    h = hashlib.sha256()
    for line in sorted(f"{_rel(r.path, root)}|{r.age}|{r.group or ''}" for r in records):
        h.update(f"{line}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def save_split(path: str | Path, records: list[FaceRecord], parts: dict[str, list[int]], *, dataset: str,
               root: str, seed: int, **meta: object) -> None:
    """Write {part: [file relative to root]} with the settings that made it."""
    data = {"dataset": dataset, "root": str(root), "seed": seed, **meta,
            "counts": {k: len(v) for k, v in parts.items()},
            "parts": {k: [_rel(records[i].path, root) for i in v] for k, v in parts.items()}}
    atomic_write_json(path, data)


def read_parts(path: str | Path) -> dict[str, list[str]]:
    """{part: [file relative to the dataset root]} of a saved split (`save_split`)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"split file not found: {p}")
    try:
        parts = json.loads(p.read_text())["parts"]
        return {str(k): list(v) for k, v in parts.items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise DataError(f"split file {p} is not a valid agelens split") from None


def split_settings(path: str | Path) -> dict:
    """The settings a saved split was made with (`save_split`: seed, val_frac, test_frac, ...), {} where unknown."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if k not in ("parts", "counts")} if isinstance(data, dict) else {}


def split_part(path: str | Path, part: str) -> list[str]:
    """The file names of one part ("train", "val", "test") of a saved split."""
    parts = read_parts(path)
    if part not in parts:
        raise DataError(f"split file {path} has no part {part!r} (parts: {', '.join(parts)})")
    return parts[part]


def sample_names(names: list[str], n: int, seed: int) -> list[str]:
    """n of the names, drawn at random (seeded) and kept in their order; all of them when there are n or fewer.
    Measure on this, not on the first n: the split files list names sorted, and UTKFace and All-Age-Faces names
    begin with the age (or with an ID that follows it), so the first few hundred of a part are children and
    teenagers."""
    rng = np.random.default_rng(seed)
    return [names[i] for i in sorted(rng.choice(len(names), min(n, len(names)), replace=False))]


def load_split(path: str | Path, records: list[FaceRecord], root: str) -> dict[str, list[FaceRecord]]:
    """Match a saved split against the records found now; files missing now are reported, not ignored."""
    p = Path(path)
    parts = read_parts(p)
    by_rel = {_rel(r.path, root): r for r in records}
    out: dict[str, list[FaceRecord]] = {}
    missing = []
    for k, names in parts.items():
        out[k] = [by_rel[n] for n in names if n in by_rel]
        missing += [n for n in names if n not in by_rel]
    if missing:
        hint = ("none of them is: the split is another dataset's; set data.split_file to this dataset's own (made on "
                "first use)" if len(missing) == sum(map(len, parts.values())) else
                "`agelens split --force` makes the split anew")
        raise DataError(f"split file {p}: {len(missing)} listed files are not in the dataset now (first: {missing[0]}); "
                        + hint)
    return out


def check_group_safe(parts: dict[str, list[FaceRecord]]) -> None:
    """Raise DataError when a group appears in more than one part (a record without a group is its own, as the
    splits treat it)."""
    seen: dict[str, str] = {}
    for k, recs in parts.items():
        for r in recs:
            g = r.group or r.path
            if seen.setdefault(g, k) != k:
                raise DataError(f"group {g!r} appears in both {seen[g]} and {k}")
