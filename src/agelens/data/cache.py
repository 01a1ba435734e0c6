"""Preprocess once: detect → landmarks → align → size×size uint8 crops + landmarks in memory-mapped .npy files."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, ImageError, NoFaceError
from ..faces.detect import FaceAnalyzer
from ..faces.mesh import N_MESH
from ..faces.prepare import N_LANDMARKS, prepare_face
from ..imageio import load_image
from ..parallel import CRASHED, crash_safe_map, per_input
from ..utils import crc32_file, staging_dir
from .adapters import FaceRecord

CACHE_VERSION = 1


@dataclass
class _Job:
    index: int
    path: str


_ANALYZER: tuple[bool | None, FaceAnalyzer] | None = None  # (the `fast` it was made with, the analyzer)


def _work(args: tuple[_Job, int, bool, bool | None, Callable | None]
          ) -> tuple[int, np.ndarray | None, np.ndarray | None, str | None]:
    global _ANALYZER
    job, size, aligned, fast, prepare = args
    if _ANALYZER is None or _ANALYZER[0] != fast:
        _ANALYZER = (fast, FaceAnalyzer(fast=fast))
    try:
        rgb = load_image(job.path)
        if prepare is not None and not aligned:
            crop, lm = prepare(rgb, _ANALYZER[1], size)
        else:
            crop, lm = prepare_face(rgb, _ANALYZER[1], size, aligned)
        return job.index, crop, lm, None
    except (ImageError, NoFaceError) as e:
        return job.index, None, None, str(e).replace(f"{job.path}: ", "")
    except Exception as e:  # a worker must report, never kill the whole run
        return job.index, None, None, f"{type(e).__name__}: {e}"


def cache_signature(records: list[FaceRecord], size: int, aligned: bool) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{aligned}".encode())
    for r in records:
        h.update(f"{r.path}|{r.age}|{r.gender}|{r.race}|{r.group}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


CHECKED_FILES = ("images.npy", "landmarks.npy")


def cache_checksums(folder: str | Path) -> dict[str, str]:
    """CRC-32 of each checked array of a cache folder, as meta.json stores them."""
    return {name: crc32_file(Path(folder) / name) for name in CHECKED_FILES}


class FaceSet:
    """What every prepared set of faces has (a cache folder, a subset of caches, a shard folder): records and
    meta.json's fields; its length, crop size, failed files and ages derive from them."""

    records: list[FaceRecord]
    meta: dict

    def __len__(self) -> int:
        return len(self.records)

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def failed(self) -> list[dict[str, str]]:
        return self.meta.get("failed", [])

    @functools.cached_property
    def ages(self) -> np.ndarray:
        return np.array([r.age for r in self.records], np.float32)


class FaceCache(FaceSet):
    """A read-only, memory-mapped store of aligned crops, landmarks and labels. The arrays' CRC-32s (in
    meta.json) are verified on load; caches written before checksums existed load unverified."""

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.path = Path(path)
        meta_p = self.path / "meta.json"
        if not meta_p.is_file():
            raise DataError(f"not a face cache (no meta.json): {self.path} (`agelens prepare -c CONFIG` makes a "
                            "config's caches)")
        try:
            self.meta = json.loads(meta_p.read_text())
            self.images = np.load(self.path / "images.npy", mmap_mode="r")
            self.landmarks = np.load(self.path / "landmarks.npy", mmap_mode="r")
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise DataError(f"face cache {self.path} is corrupt: {e}") from None
        if verify:
            for name, expected in self.meta.get("checksums", {}).items():
                got = crc32_file(self.path / name)
                if got != expected:
                    raise DataError(f"face cache {self.path} is corrupt: {name} checksum mismatch (crc32 {got}, "
                                    f"meta.json says {expected}); rebuild it with `agelens prepare --force`")
        self.records = [FaceRecord(**r) for r in self.meta["records"]]
        n = len(self.records)
        if self.images.shape != (n, self.meta["size"], self.meta["size"], 3) or self.landmarks.shape != (n, N_LANDMARKS, 2):
            raise DataError(f"face cache {self.path} is corrupt: array shapes do not match {n} records")


def _iter_results(jobs: list[_Job], size: int, aligned: bool, workers: int, fast: bool | None = False,
                  prepare: Callable | None = None) -> Iterator[tuple]:
    if workers <= 1:
        yield from (_work((j, size, aligned, fast, prepare)) for j in jobs)
        return
    # a worker that dies on a photo (a native crash) fails that photo only, instead of hanging the run
    chunks = [(jobs[i:i + 16], size, aligned, fast, prepare) for i in range(0, len(jobs), 16)]
    yield from crash_safe_map(per_input(_work), chunks, workers, lambda j: (j.index, None, None, CRASHED))


def _failure(record: FaceRecord, reason: str) -> dict:
    """A record the cache could not prepare: its path, why, and its labels (predictions.csv keeps them)."""
    return {"path": record.path, "reason": reason, "age": record.age, "gender": record.gender, "race": record.race}


STALE_STAGING_S = 600  # a staging folder none of whose files changed for this long belongs to a killed build


def _remove_stale_staging(out: Path) -> None:
    """Removes the staging folders (`.NAME.XXXX` beside `out`) that builds killed with SIGKILL left: the partly
    written arrays of a whole cache each (a build in progress writes to its own at least every few seconds)."""
    import time

    for d in out.parent.glob(f".{out.name}.*"):
        try:
            if d.is_dir() and all(time.time() - f.stat().st_mtime > STALE_STAGING_S for f in [d, *d.iterdir()]):
                shutil.rmtree(d, ignore_errors=True)
        except OSError:  # gone meanwhile, or not ours to read
            continue


def _refuse_another_dataset(out: Path, old: dict | None, records: list[FaceRecord]) -> None:
    """DataError where the cache at `out` (its meta.json `old`) shares no image with `records`: the folder holds
    another dataset's faces, which a rebuild would delete (a config for a CSV dataset left data.cache_dir at UTKFace's
    default); a stale cache of the same images (other labels, size or split) is rebuilt as before."""
    had = {r.get("path") for r in (old or {}).get("records") or [] if isinstance(r, dict)}
    if had and records and not had & {r.path for r in records}:
        example = next(iter(sorted(had)))
        raise DataError(f"{out} holds the cache of other images ({len(had)} faces, e.g. {example}), which this run "
                        "would replace: set data.cache_dir to a folder of this dataset's own (or remove that cache)")


def build_cache(records: list[FaceRecord], out_dir: str | Path, size: int = 256, aligned: bool = True,
                workers: int = 2, progress: bool = True, force: bool = False, fast: bool | None = False,
                prepare: Callable | None = None) -> FaceCache:
    """Write (or reuse, when the signature matches) the cache for these records; atomic via a temp folder.
    fast: the face path (`FaceAnalyzer(fast=...)`): False, mediapipe's graphs with iris points (training caches,
    occluder placement); None, predict's own (LiteRT where installed; iris points NaN). prepare: a module-level
    function (rgb, analyzer, size) → (crop, landmarks) that finds and aligns the face of a photo instead of the
    analyzer's largest face (`inference.finding.predicted_face`: predict's own search, for `evaluate`)."""
    out = Path(out_dir)
    sig = cache_signature(records, size, aligned) + ("" if fast is False else "-fast")
    if prepare is not None:
        sig += f"-{prepare.__module__}.{prepare.__qualname__}"
    if not force and (out / "meta.json").is_file():
        try:  # the signature first: a stale cache is rebuilt without reading (and checksumming) its arrays
            old = json.loads((out / "meta.json").read_text())
            if old.get("signature") == sig:
                _remove_stale_staging(out)  # a killed rebuild's, else kept until the cache is next rebuilt
                return FaceCache(out)
        except (DataError, OSError, ValueError):
            old = None
        _refuse_another_dataset(out, old, records)
    if not records:
        raise DataError(f"no records to cache into {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    tmp = staging_dir(out)
    try:
        n = len(records)
        imgs = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        lms = np.lib.format.open_memmap(tmp / "landmarks.npy", mode="w+", dtype=np.float32, shape=(n, N_LANDMARKS, 2))
        ok = np.zeros(n, bool)
        failed: list[dict] = []
        no_landmarks: list[str] = []
        jobs = [_Job(i, r.path) for i, r in enumerate(records)]
        from ..progress import track

        for i, crop, lm, err in track(_iter_results(jobs, size, aligned, workers, fast, prepare), total=n,
                                      description=f"caching {out.name}", enabled=progress):
            if err is not None:
                failed.append(_failure(records[i], err))
                continue
            imgs[i], lms[i], ok[i] = crop, lm, True
            if np.isnan(lm[:N_MESH]).any():  # the fast face path has no iris points (468-477) by design
                no_landmarks.append(records[i].path)
        keep = np.flatnonzero(ok)
        if len(keep) == 0:
            raise DataError(f"no face could be prepared from {n} records (first failure: {failed[0] if failed else '?'})")
        if len(keep) < n:  # compact: drop failed rows
            imgs2 = np.lib.format.open_memmap(tmp / "images2.npy", mode="w+", dtype=np.uint8, shape=(len(keep), size, size, 3))
            lms2 = np.lib.format.open_memmap(tmp / "landmarks2.npy", mode="w+", dtype=np.float32, shape=(len(keep), N_LANDMARKS, 2))
            for j, i in enumerate(keep):
                imgs2[j], lms2[j] = imgs[i], lms[i]
            imgs2.flush()
            lms2.flush()
            del imgs, lms, imgs2, lms2
            (tmp / "images2.npy").replace(tmp / "images.npy")
            (tmp / "landmarks2.npy").replace(tmp / "landmarks.npy")
        else:
            imgs.flush()
            lms.flush()
            del imgs, lms
        meta = {"version": CACHE_VERSION, "signature": sig, "size": size, "aligned": aligned,
                "records": [asdict(records[i]) for i in keep], "failed": failed, "no_landmarks": no_landmarks,
                "checksums": cache_checksums(tmp)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FaceCache(out, verify=False)  # its checksums were just computed from these very files


class _Rows:
    """Read-only row access into several memory-mapped arrays: rows[i] → source[k][row]."""

    def __init__(self, arrays: list[np.ndarray], picks: list[tuple[int, int]]) -> None:
        self.arrays, self.picks = arrays, picks
        tail = arrays[0].shape[1:] if arrays else ()
        self.shape = (len(picks), *tail)

    def __len__(self) -> int:
        return len(self.picks)

    def __getitem__(self, i: int) -> np.ndarray:
        k, row = self.picks[int(i)]
        return self.arrays[k][row]


class CacheSubset(FaceCache):
    """A FaceCache view of chosen rows of prepared caches (k-fold parts without re-running detection); shares
    FaceSet's len/size/failed/ages, builds its own arrays instead of loading a folder."""

    def __init__(self, caches: list[FaceCache], picks: list[tuple[int, int]], path: str | Path,
                 failed: list[dict[str, str]] | None = None) -> None:
        # no super().__init__: the rows come from already-loaded (and verified) caches, not from a folder
        sizes = {c.size for c in caches}
        if len(sizes) > 1:
            raise DataError(f"cannot combine caches of different sizes {sorted(sizes)}")
        self.path = Path(path)
        self.records = [caches[k].records[row] for k, row in picks]
        self.images = _Rows([c.images for c in caches], picks)
        self.landmarks = _Rows([c.landmarks for c in caches], picks)
        self.meta = {"size": caches[0].size if caches else 0, "failed": failed or []}


def subset_cache(records: list[FaceRecord], donors: list[FaceCache], path: str | Path) -> CacheSubset:
    """The cached rows of `records` (matched by path) from donor caches; records the donors failed on are listed as
    failed; a record no donor knows raises DataError (run `agelens prepare` for that dataset first)."""
    where = {r.path: (k, row) for k, c in enumerate(donors) for row, r in enumerate(c.records)}
    failed_in = {f["path"]: f for c in donors for f in c.failed}
    picks, failed = [], []
    for r in records:
        if r.path in where:
            picks.append(where[r.path])
        elif r.path in failed_in:
            failed.append(_failure(r, failed_in[r.path]["reason"]))
        else:
            raise DataError(f"{r.path} is in none of the prepared caches {[str(c.path) for c in donors]}; "
                            f"run `agelens prepare` with this dataset first")
    return CacheSubset(donors, picks, path, failed)
