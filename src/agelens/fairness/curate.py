"""Dataset curation: merge adapters into one manifest CSV (path, age, gender, race, group, source), find exact and
near duplicate images, resolve duplicate groups whose labels conflict, flag label outliers, and count faces per
age bin × gender × race before and after."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..errors import ConfigError, DataError
from ..evaluate.metrics import AGE_BINS, age_bin
from ..parallel import crash_safe_map
from ..utils import atomic_write_json, atomic_write_text

MANIFEST_COLUMNS = ("path", "age", "gender", "race", "group", "source")
CONFLICT_RULES = ("drop", "median", "first")
HASH_SIZE = 16  # dHash side: 16×16 = 256 bits


@dataclass
class Source:
    """One dataset adapter to merge. duplicate_groups: the adapter's `group` marks duplicate images (UTKFace with a
    duplicate-groups CSV) rather than an identity (MORPH, CACD, FG-NET); default: true only for utkface + groups_csv."""

    dataset: str
    root: str
    name: str | None = None
    groups_csv: str | None = None
    csv_path: str | None = None
    duplicate_groups: bool | None = None

    @property
    def label(self) -> str:
        return self.name or self.dataset

    @property
    def groups_are_duplicates(self) -> bool:
        return self.duplicate_groups if self.duplicate_groups is not None else (self.dataset == "utkface"
                                                                                 and bool(self.groups_csv))


@dataclass
class CurateConfig:
    """What `agelens curate` does; YAML keys are the field names (sources: list of Source mappings)."""

    sources: list[Source] = field(default_factory=list)
    output: str = "manifest.csv"
    report: str | None = None  # JSON report (default: OUTPUT with .report.json)
    conflicts: str = "drop"  # drop | median | first
    age_tolerance: float = 0.0  # ages within a duplicate group differing by more than this conflict
    near_dup: int = 12  # max Hamming distance of 256-bit dHashes for near duplicates; -1: exact duplicates only
    max_age: float = 116.0  # ages outside [0, max_age] are outliers
    outlier_z: float = 3.5  # robust z-score (median/MAD) against duplicate-group siblings
    drop_outliers: bool = False  # remove flagged outliers (else they are only reported)
    keep_duplicates: bool = False  # keep every member of consistent duplicate groups (sharing one group id)
    workers: int = 2

    def validate(self) -> CurateConfig:
        if not self.sources:
            raise ConfigError("curate needs at least one source (--source DATASET=ROOT or sources: in the config)")
        if self.conflicts not in CONFLICT_RULES:
            raise ConfigError(f"conflicts must be drop|median|first, got {self.conflicts!r}")
        if self.near_dup < -1 or self.near_dup > HASH_SIZE**2:
            raise ConfigError(f"near_dup must be -1 (off) or a Hamming distance 0..{HASH_SIZE ** 2}, got {self.near_dup}")
        if self.age_tolerance < 0 or self.outlier_z <= 0 or self.max_age <= 0:
            raise ConfigError("age_tolerance must be >= 0, outlier_z and max_age > 0")
        return self


def parse_source(text: str) -> Source:
    """'utkface=../data/utk,groups_csv=dups.csv,name=utk' → Source."""
    head, *opts = [p.strip() for p in text.split(",")]
    dataset, sep, root = head.partition("=")
    if not sep or not dataset or not root:
        raise ConfigError(f"--source {text!r} is not DATASET=ROOT[,key=value...]")
    kw: dict = {}
    for o in opts:
        k, sep, v = o.partition("=")
        if not sep or k not in ("name", "groups_csv", "csv_path", "duplicate_groups"):
            raise ConfigError(f"--source option {o!r} is not one of name=, groups_csv=, csv_path=, duplicate_groups=")
        kw[k] = v.lower() in ("1", "true", "yes") if k == "duplicate_groups" else v
    return Source(dataset.strip(), root, **kw)


def load_curate_config(path: str | Path | None, **overrides: object) -> CurateConfig:
    """Defaults ← YAML file ← non-None keyword overrides (the CLI flags)."""
    cfg = CurateConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"curate config not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"curate config {p} must be a mapping")
        names = {f for f in CurateConfig.__dataclass_fields__}
        for k, v in data.items():
            if k not in names:
                raise ConfigError(f"{p}: unknown curate key {k!r}; valid keys: {', '.join(sorted(names))}")
            if k == "sources":
                try:
                    v = [Source(**s) for s in v]
                except TypeError as e:
                    raise ConfigError(f"{p}: bad sources entry ({e})") from None
            setattr(cfg, k, v)
    for k, v in overrides.items():
        if v is not None and not (k == "sources" and not v):
            setattr(cfg, k, v)
    return cfg.validate()


# ---- hashing -----------------------------------------------------------------------------------------------------


def image_hashes(path: str) -> tuple[str, np.ndarray] | None:
    """(sha256 of the file bytes, 256-bit difference hash packed into 32 bytes), or None when unreadable."""
    from PIL import Image

    from ..imageio import photo_formats, read_file

    try:
        data = read_file(path)  # a regular file of bounded size (not a device or pipe behind a name)
        with Image.open(io.BytesIO(data), formats=photo_formats()) as im:
            g = np.asarray(im.convert("L").resize((HASH_SIZE + 1, HASH_SIZE), Image.BILINEAR), np.int16)
    except MemoryError:
        raise
    except Exception:  # unreadable, or a file that breaks the decoder (ImageError, OSError, struct.error...)
        return None
    return hashlib.sha256(data).hexdigest(), np.packbits((g[:, 1:] > g[:, :-1]).ravel())


def _hashes_of(job: tuple[list[str]]) -> list[tuple[str, np.ndarray] | None]:
    return [image_hashes(p) for p in job[0]]


def _hash_all(paths: list[str], workers: int) -> list[tuple[str, np.ndarray] | None]:
    if workers <= 1 or len(paths) < 64:
        return [image_hashes(p) for p in paths]
    jobs = [(paths[i:i + 64],) for i in range(0, len(paths), 64)]
    return list(crash_safe_map(_hashes_of, jobs, workers, lambda _: None))  # a file that kills its worker: unreadable


def near_duplicate_pairs(codes: np.ndarray, max_dist: int) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose packed binary codes differ in at most max_dist bits (faiss binary range search)."""
    import faiss

    if len(codes) < 2:
        return []
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    codes = np.ascontiguousarray(codes, np.uint8)
    index.add(codes)
    lims, _, ids = index.range_search(codes, max_dist + 1)  # distance < radius
    return [(i, int(j)) for i in range(len(codes)) for j in ids[lims[i]:lims[i + 1]] if i < j]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the earliest record stays the root


# ---- counting ----------------------------------------------------------------------------------------------------


def demographic_counts(rows: list[dict]) -> dict:
    """{age_bin: {gender: {race: n}}} with 'unknown' for missing gender/race."""
    out: dict = {label: {} for label, _, _ in AGE_BINS}
    for r in rows:
        g, rc = r["gender"] or "unknown", r["race"] or "unknown"
        out[age_bin(r["age"])].setdefault(g, Counter())[rc] += 1
    return {b: {g: dict(sorted(c.items())) for g, c in sorted(v.items())} for b, v in out.items()}


def format_counts(before: dict, after: dict) -> str:
    """Table: one row per age bin × gender, one column per race, cells 'before→after'."""
    races = sorted({r for d in (before, after) for v in d.values() for c in v.values() for r in c})
    genders = sorted({g for d in (before, after) for v in d.values() for g in v})
    w = max(9, *(len(r) + 1 for r in races))
    lines = [f"{'age bin':8s} {'gender':8s} " + " ".join(f"{r:>{w}s}" for r in races) + f" {'total':>{w + 2}s}"]
    for b, _, _ in AGE_BINS:
        for g in genders:
            cb, ca = before.get(b, {}).get(g, {}), after.get(b, {}).get(g, {})
            if not cb and not ca:
                continue
            cells = [f"{cb.get(r, 0)}→{ca.get(r, 0)}" for r in races]
            lines.append(f"{b:8s} {g:8s} " + " ".join(f"{c:>{w}s}" for c in cells)
                         + f" {f'{sum(cb.values())}→{sum(ca.values())}':>{w + 2}s}")
    tb = sum(n for v in before.values() for c in v.values() for n in c.values())
    ta = sum(n for v in after.values() for c in v.values() for n in c.values())
    lines.append(f"{'all':8s} {'':8s} " + " ".join(" " * w for _ in races) + f" {f'{tb}→{ta}':>{w + 2}s}")
    return "\n".join(lines)


# ---- curation ----------------------------------------------------------------------------------------------------


def _robust_outliers(ages: np.ndarray, z_max: float, mad_floor: float = 1.0) -> np.ndarray:
    """Members whose robust z-score 0.6745·|a − median| / max(MAD, mad_floor years) exceeds z_max (the floor keeps a
    one-year disagreement among otherwise identical labels from counting as an outlier)."""
    med = np.median(ages)
    mad = max(float(np.median(np.abs(ages - med))), mad_floor)
    return 0.6745 * np.abs(ages - med) / mad > z_max


def _majority(values: list[str | None]) -> str | None:
    vals = [v for v in values if v]
    return Counter(vals).most_common(1)[0][0] if vals else None


def _group_entry(rows: list[dict], m: list[int]) -> dict:
    """A duplicate group in the report: its members' paths, sources and labels."""
    return {"paths": [rows[i]["path"] for i in m], "sources": [rows[i]["source"] for i in m],
            "ages": [rows[i]["age"] for i in m], "genders": [rows[i]["gender"] for i in m],
            "races": [rows[i]["race"] for i in m]}


def _label_key(dataset: str) -> str:
    """The adapter keyword curate's csv_path= goes to: csv_path where the adapter takes one (its image paths then
    read relative to the CSV's folder), else labels (IMDB-WIKI's .mat; refused by adapters that read no file)."""
    from ..data.adapters import DATASETS

    return "csv_path" if "csv_path" in DATASETS.options(dataset)[0] else "labels"


def curate(cfg: CurateConfig, progress: bool = True, log=print) -> dict:
    """Run the curation and write the manifest and the report (atomically); returns the report."""
    from ..data.adapters import load_dataset

    rows: list[dict] = []
    bad: dict[str, int] = {}
    bad_listed: dict[str, list[dict]] = {}
    for s in cfg.sources:
        kw = {k: v for k, v in (("groups_csv", s.groups_csv), (_label_key(s.dataset), s.csv_path)) if v}
        listing = load_dataset(s.dataset, s.root, **kw)
        bad[s.label] = len(listing.bad)
        bad_listed[s.label] = [{"path": b.path, "reason": b.reason} for b in listing.bad]
        for note in listing.notes:
            log(f"curate: {note}")
        if listing.bad:  # before: counted in the report only, while "N -> N records" read as if none were dropped
            log(f"curate: {s.label}: {len(listing.bad)} row(s) skipped (each with its reason in the report's "
                f"bad_row_list), e.g. {listing.bad[0].path}: {listing.bad[0].reason}")
        for r in sorted(listing.records, key=lambda r: r.path):
            # the path as the source listed it, made absolute but not resolved: a symlinked dataset's manifest and
            # report name the links the user listed (before: their targets, not findable in the user's CSV)
            rows.append({"path": os.path.abspath(r.path), "age": float(r.age), "gender": r.gender, "race": r.race,
                         "adapter_group": f"{s.label}:{r.group}", "source": s.label, "dup_groups": s.groups_are_duplicates})
    n = len(rows)
    counts_before = demographic_counts(rows)
    log(f"curate: {n} records from {len(cfg.sources)} source(s); hashing images")
    hashes = _hash_all([r["path"] for r in rows], cfg.workers)
    unreadable = [i for i, h in enumerate(hashes) if h is None]
    dup = _UnionFind(n)  # duplicate images
    first_of: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r["dup_groups"]:
            j = first_of.setdefault("g:" + r["adapter_group"], i)
            dup.union(i, j)
        if hashes[i] is not None:  # identical bytes: one image, whatever path or link lists it
            dup.union(i, first_of.setdefault("h:" + hashes[i][0], i))
    ok = [i for i in range(n) if hashes[i] is not None]
    near = 0
    if cfg.near_dup >= 0 and ok:
        for a, b in near_duplicate_pairs(np.stack([hashes[i][1] for i in ok]), cfg.near_dup):
            near += dup.find(ok[a]) != dup.find(ok[b])
            dup.union(ok[a], ok[b])
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        if hashes[i] is not None:
            members[dup.find(i)].append(i)

    outliers: list[dict] = []
    flagged = set()
    for i in ok:
        if not 0 <= rows[i]["age"] <= cfg.max_age:
            outliers.append({"path": rows[i]["path"], "source": rows[i]["source"], "age": rows[i]["age"],
                             "reason": f"age outside 0-{cfg.max_age:g}"})
            flagged.add(i)
    for m in members.values():
        if len(m) >= 3:
            ages = np.array([rows[i]["age"] for i in m])
            for i, out in zip(m, _robust_outliers(ages, cfg.outlier_z)):
                if out and i not in flagged:
                    outliers.append({"path": rows[i]["path"], "source": rows[i]["source"], "age": rows[i]["age"],
                                     "reason": f"robust z > {cfg.outlier_z:g} against {len(m) - 1} duplicate(s) "
                                     f"(group median {float(np.median(ages)):g})"})
                    flagged.add(i)

    keep: list[dict] = []
    dropped_groups: list[dict] = []
    resolved_groups: list[dict] = []  # conflicting groups kept by --conflicts median | first
    filled: list[dict] = []  # missing gender / race taken from the record's duplicates
    dup_groups = conflicting = 0
    for root_i, m in sorted(members.items()):
        m = [i for i in m if not (cfg.drop_outliers and i in flagged)]
        if not m:
            continue
        if len(m) == 1:
            keep.append(dict(rows[m[0]], dup_root=root_i))
            continue
        dup_groups += 1
        ages = [rows[i]["age"] for i in m]
        genders = {rows[i]["gender"] for i in m if rows[i]["gender"]}
        races = {rows[i]["race"] for i in m if rows[i]["race"]}
        conflict = max(ages) - min(ages) > cfg.age_tolerance or len(genders) > 1 or len(races) > 1
        conflicting += conflict
        if conflict and cfg.conflicts == "drop":
            dropped_groups.append(_group_entry(rows, m))
            continue
        gender, race = _majority([rows[i]["gender"] for i in m]), _majority([rows[i]["race"] for i in m])
        if conflict:  # kept by median or first: said in the report with the labels kept, as a dropped group is
            kept = (dict(rows[m[0]], age=float(np.median(ages)), gender=gender, race=race, dup_root=root_i)
                    if cfg.conflicts == "median" else dict(rows[m[0]], dup_root=root_i))
            keep.append(kept)
            labels = {k: kept[k] for k in ("path", "age", "gender", "race")}
            resolved_groups.append({**_group_entry(rows, m), "kept": labels})
            continue
        # a consistent group's members agree where labelled: a label one member lacks is taken from the others
        # (before: the first member was kept as is, its missing gender or race too)
        kept_rows = [dict(rows[i], dup_root=root_i) for i in (m if cfg.keep_duplicates else m[:1])]
        for r in kept_rows:
            got = {k: v for k, v in (("gender", gender), ("race", race)) if not r[k] and v}
            if got:
                filled.append({"path": r["path"], "source": r["source"], **got,
                               "from": [rows[i]["path"] for i in m if rows[i]["path"] != r["path"]]})
                r.update(got)
        keep += kept_rows

    # split groups: records linked by a duplicate group or by an adapter identity group share one group id
    link = _UnionFind(len(keep))
    seen: dict[str, int] = {}
    for k, r in enumerate(keep):
        link.union(k, seen.setdefault("a:" + r["adapter_group"], k))
        link.union(k, seen.setdefault(f"d:{r['dup_root']}", k))
    out_rows = [{"path": r["path"], "age": f"{r['age']:g}", "gender": r["gender"] or "", "race": r["race"] or "",
                 "group": keep[link.find(k)]["adapter_group"], "source": r["source"]} for k, r in enumerate(keep)]
    if not out_rows:
        raise DataError(f"curation left no records of {n} (conflicts={cfg.conflicts}); nothing written to {cfg.output}")
    counts_after = demographic_counts([dict(r, age=float(r["age"])) for r in out_rows])

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(out_rows)
    atomic_write_text(cfg.output, buf.getvalue())
    report = {"output": str(cfg.output), "config": {k: v for k, v in asdict(cfg).items() if k != "sources"},
              "sources": [asdict(s) for s in cfg.sources], "bad_rows": bad, "bad_row_list": bad_listed,
              "records_in": n, "records_out": len(out_rows), "unreadable": [rows[i]["path"] for i in unreadable],
              "duplicate_groups": dup_groups, "near_duplicate_links": int(near), "conflicting_groups": conflicting,
              "dropped_groups": dropped_groups, "resolved_groups": resolved_groups, "filled_labels": filled,
              "outliers": outliers,
              "counts_before": counts_before, "counts_after": counts_after}
    report_p = cfg.report or str(Path(cfg.output).with_suffix(".report.json"))
    atomic_write_json(report_p, report)
    report["report"] = report_p
    return report
