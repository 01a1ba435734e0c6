"""Dataset adapters behind one interface: each yields FaceRecords and reports bad rows with file and reason."""

from __future__ import annotations

import csv
import datetime as _dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..registry import DATASETS

# image files a folder is read for (predict, curate, the adapters): JPEG under its other names too (.jfif is what
# browsers save), GIF (its first frame) and AVIF (Pillow 11.3+)
IMAGE_EXTS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".avif", ".tif", ".tiff", ".heic",
              ".heif"}
MAX_AGE = 120
UTK_GENDER = {"0": "male", "1": "female"}
UTK_RACE = {"0": "white", "1": "black", "2": "asian", "3": "indian", "4": "other"}


@dataclass(frozen=True)
class FaceRecord:
    """One labelled face image."""

    path: str
    age: float
    gender: str | None = None
    race: str | None = None
    group: str = ""  # records sharing a group (same identity / duplicate) never cross a split


@dataclass(frozen=True)
class BadRecord:
    path: str
    reason: str


@dataclass
class Listing:
    """What an adapter found: good records plus every skipped row with its reason."""

    records: list[FaceRecord] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a user should hear about the listing (columns not read)
    _seen: dict[str, str] = field(default_factory=dict, repr=False)  # absolute path → the row that listed it first

    def add(self, path: str | Path, age: object, gender: str | None = None, race: str | None = None,
            group: str | None = None, check_file: bool = True) -> None:
        """Validate one row and append it to records or bad."""
        p = str(path)
        try:
            a = float(str(age).strip())
        except (TypeError, ValueError):
            self.bad.append(BadRecord(p, f"unparsable age {age!r}"))
            return
        if not (0 <= a <= MAX_AGE) or a != a:
            self.bad.append(BadRecord(p, f"age {age!r} outside 0-{MAX_AGE}"))
            return
        if check_file and not Path(p).is_file():
            self.bad.append(BadRecord(p, "missing file"))
            return
        key = os.path.normpath(os.path.abspath(p))  # the same image listed twice (relative and absolute, a/./b)
        if key in self._seen:
            self.bad.append(BadRecord(p, f"duplicate of {self._seen[key]} (kept once)"))
            return
        self._seen[key] = p
        self.records.append(FaceRecord(p, a, gender or None, race or None, group if group else p))


def _require_dir(root: str | Path) -> Path:
    r = Path(root)
    if not r.exists():
        raise DataError(f"dataset root not found: {r} (give the folder with data.root=DIR, on the command line or "
                        "in the -c config's data section)")
    if not r.is_dir():
        raise DataError(f"dataset root is not a folder: {r}")
    return r


def _images(root: Path, recursive: bool = False) -> list[Path]:
    it = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.suffix.lower() in IMAGE_EXTS and not p.is_dir())


# labels that say the value is not known: left out of the groups that use the attribute, as an empty cell is
MISSING_LABELS = frozenset({"", "nan", "none", "null", "na", "n/a", "unknown", "unk", "u", "?", "-", "missing",
                            "not given", "not known"})


GENDER_LABELS = {"m": "male", "male": "male", "man": "male", "men": "male", "boy": "male", "1": "male", "1.0": "male",
                 "f": "female", "female": "female", "woman": "female", "women": "female", "girl": "female",
                 "0": "female", "0.0": "female"}


def _norm_gender(g: str | None) -> str | None:
    if g is None:
        return None
    s = str(g).strip().lower()
    return GENDER_LABELS.get(s, s) if s not in MISSING_LABELS else None


# The generic CSV's columns (`csv_dataset`), each under the header names it is read from (any case)
CSV_COLUMNS = {"path": ("path", "file", "filename", "file_name", "image", "image_path"),
               "age": ("age", "age_years", "age_in_years"),
               "gender": ("gender", "sex"), "race": ("race", "ethnicity"),
               "group": ("group", "identity", "identity_id", "subject", "subject_id", "person", "person_id")}
# columns known and not needed, passed over without a note: `source`, the dataset `agelens curate` took a row from
CSV_PASSED_OVER = ("source",)


def _csv_rows(p: Path, required: set[str], what: str) -> list[dict[str, str]]:
    """Rows of a CSV after checking its required columns (DataError naming the file and the missing ones)."""
    return _csv_table(p, required, what)[1]


def _csv_table(p: Path, required: set[str], what: str) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a CSV, read once, after checking its required columns (`_csv_rows`)."""
    with p.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            need = (f"need columns {sorted(required)}" if required else
                    "it needs one naming at least the path and age columns")
            raise DataError(f"{p}: {what} is empty (no header row; {need})")
        cols = set(reader.fieldnames)
        if not required <= cols:
            raise DataError(f"{p}: {what} missing required column(s) {sorted(required - cols)}; have {sorted(cols)}")
        return list(reader.fieldnames), list(reader)


def _from_names(root: Path, pattern: re.Pattern[str], expected: str, recursive: bool,
                fields: Callable[[re.Match[str]], tuple[str, ...]]) -> Listing:
    """Labels parsed from file names: fields(match) → (age, group[, gender]); names that do not match are
    reported."""
    out = Listing()
    for p in _images(root, recursive=recursive):
        m = pattern.match(p.name)
        if not m:
            out.bad.append(BadRecord(str(p), f"file name is not {expected}"))
            continue
        age, group, *gender = fields(m)
        out.add(p, age, gender[0] if gender else None, group=group, check_file=False)
    return out


def load_duplicate_groups(path: str | Path | None) -> dict[str, str]:
    """Map file name → group id from a CSV with columns `group,file`."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise DataError(f"duplicate-groups CSV not found: {p}")
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"group", "file"} <= set(reader.fieldnames):
            raise DataError(f"{p}: expected columns 'group,file', got {reader.fieldnames}")
        return {row["file"]: row["group"] for row in reader}


@DATASETS.register("utkface")
def utkface(root: str | Path, groups_csv: str | Path | None = None, **_: object) -> Listing:
    """UTKFace: `AGE_GENDER_RACE_DATE.jpg.chip.jpg` (a few names lack the race field)."""
    r = _require_dir(root)
    groups = load_duplicate_groups(groups_csv) if groups_csv else {}
    out = Listing()
    for p in _images(r):
        parts = p.name.split("_")
        if len(parts) < 2 or not parts[0].isdigit():
            out.bad.append(BadRecord(str(p), "file name does not start with AGE_GENDER_"))
            continue
        gender = UTK_GENDER.get(parts[1])
        race = UTK_RACE.get(parts[2]) if len(parts) >= 4 else None
        out.add(p, parts[0], gender, race, groups.get(p.name, p.name), check_file=False)
    return out


@DATASETS.register("csv")
def csv_dataset(root: str | Path, csv_path: str | Path | None = None, labels: str | Path | None = None,
                **_: object) -> Listing:
    """Generic CSV with columns `path,age[,gender][,race][,group]` (other header names for each in `CSV_COLUMNS`:
    `sex`, `ethnicity`, `subject_id`, ...; any case); paths relative to the CSV's folder (to ROOT where data.labels
    names the CSV and ROOT is the images' folder). gender: male / female
    (m / f, man / woman; any case; other values are refused, naming them); race: any labels, read in lower case;
    group: the identity or duplicate group, kept on one side of every split. Columns not read go into the
    listing's notes."""
    csv_path = csv_path or labels
    p = Path(csv_path) if csv_path else Path(root)
    # image paths relative to the CSV's folder; a label file named apart from a ROOT folder: relative to ROOT
    base_given = Path(root) if labels and Path(root).is_dir() else None
    if p.is_dir():
        cands = sorted(p.glob("*.csv"))
        if len(cands) != 1:
            raise DataError(f"{p}: expected exactly one .csv file, found {len(cands)}; pass the CSV path")
        p = cands[0]
    if not p.is_file():
        raise DataError(f"CSV not found: {p}")
    base = base_given or p.parent
    out = Listing()
    header, rows = _csv_table(p, set(), "CSV")
    cols = _csv_columns(p, header, out)
    unknown: dict[str, int] = {}
    for i, raw in enumerate(rows, start=2):
        row = {k: (raw.get(c) or "").strip() for k, c in cols.items()}
        if not row.get("path"):
            out.bad.append(BadRecord(f"{p}:{i}", "empty path"))
            continue
        g = row.get("gender", "")
        if g.replace(".", "", 1).isdigit():  # no convention to follow: UTKFace codes 0 as male, IMDB-WIKI as female
            raise DataError(f"{p}:{i}: gender {g!r} is a number, which datasets code either way (UTKFace 0 = male, "
                            "IMDB-WIKI 0 = female); write male / female (or m / f)")
        gender = _norm_gender(g)
        if gender not in (None, "male", "female"):
            unknown[g] = unknown.get(g, 0) + 1
            continue
        img = Path(row["path"])
        img = img if img.is_absolute() else base / img
        race = row.get("race", "").lower()  # "White" and "white" are one group
        race = None if race in MISSING_LABELS else race
        out.add(img, row.get("age"), gender, race, row.get("group") or None)
    if unknown:
        raise DataError(f"{p}: gender values not read: {', '.join(f'{g!r} ({n} rows)' for g, n in unknown.items())}; "
                        "write male / female (or m / f, man / woman, boy / girl) or "
                        "leave the cell empty where it is not known")
    return out


def _csv_columns(p: Path, header: list[str], out: Listing) -> dict[str, str]:
    """field → the CSV header it is read from (`CSV_COLUMNS`, any case); DataError where `path` or `age` has none or
    a field has two; the columns left unread (but CSV_PASSED_OVER) go into out.notes."""
    found: dict[str, list[str]] = {}
    for h in header:
        for k, names in CSV_COLUMNS.items():
            if h.strip().lower() in names:
                found.setdefault(k, []).append(h)
    missing = [k for k in ("path", "age") if k not in found]
    if missing:
        raise DataError(f"{p}: CSV missing required column(s) {missing} (read from "
                        f"{'; '.join('/'.join(CSV_COLUMNS[k]) for k in missing)}); have {header}")
    twice = {k: v for k, v in found.items() if len(v) > 1}
    if twice:
        raise DataError(f"{p}: more than one column for " + "; ".join(f"{k} ({', '.join(v)})" for k, v in twice.items()))
    unread = [h for h in header if not any(h in v for v in found.values()) and h.strip().lower() not in CSV_PASSED_OVER]
    if unread:
        out.notes.append(f"{p}: column(s) not read: {', '.join(unread)} (the csv adapter reads "
                         f"{'; '.join(f'{k} from ' + '/'.join(v) for k, v in CSV_COLUMNS.items())}, any case)")
    return {k: v[0] for k, v in found.items()}


_AAF = re.compile(r"^(\d{5})A(\d{2})\.(jpg|jpeg|png)$", re.IGNORECASE)
AAF_LAST_FEMALE = 7380  # the dataset's README: serial numbers 00000-07380 are female, 07381-13321 male
AAF_FOLDERS = ("aligned faces", "aglined faces", "original images")  # as published (one mirror spells it aglined)


@DATASETS.register("aaf")
def aaf(root: str | Path, csv_path: str | Path | None = None, labels: str | Path | None = None,
        **_: object) -> Listing:
    """All-Age-Faces: images in ROOT, labels in `aaf.csv` beside ROOT or inside it (or data.labels) with columns
    `file,age,gender[,src_md5]`; records sharing a source image hash share a group. Without such a CSV, the
    dataset as published: ROOT its `aligned faces` folder (or the folder holding it), labels from the names
    `%05dA%02d.jpg` (serial number, age), gender from the serial number (00000-07380 female, 07381 on male, as
    the dataset's README says), each image its own person. Race is not labelled."""
    r = _require_dir(root)
    csv_path = csv_path or labels
    p = Path(csv_path) if csv_path else r.parent / f"{r.name}.csv"
    if not p.is_file():
        p = r / "aaf.csv"
    if not p.is_file():
        if csv_path:
            raise DataError(f"All-Age-Faces CSV not found: {csv_path}")
        return _aaf_published(r)
    out = Listing()
    for i, row in enumerate(_csv_rows(p, {"file", "age", "gender"}, "All-Age-Faces CSV"), start=2):
        if not row.get("file"):
            out.bad.append(BadRecord(f"{p}:{i}", "empty file name"))
            continue
        out.add(r / row["file"], row["age"], _norm_gender(row.get("gender")), None,
                row.get("src_md5") or row["file"])
    return out


def _aaf_published(r: Path) -> Listing:
    """All-Age-Faces as downloaded (`_AAF` names), from ROOT or the first of AAF_FOLDERS inside it."""
    if not any(_AAF.match(x.name) for x in _images(r)):  # ROOT the folder holding the download's folders
        r = next((r / name for name in AAF_FOLDERS if (r / name).is_dir()), r)
    out = _from_names(r, _AAF, "%05dA%02d.jpg (NNNNNAyy.jpg) or listed in an aaf.csv", False,
                      lambda m: (m.group(2), f"aaf{m.group(1)}",
                                 "female" if int(m.group(1)) <= AAF_LAST_FEMALE else "male"))
    if out.records:
        out.notes.append(f"All-Age-Faces read from the file names in {r} (no aaf.csv): age from NNNNNAyy.jpg, gender "
                         f"from the serial number (up to {AAF_LAST_FEMALE:05d} female, after it male)")
    return out


@DATASETS.register("folder")
def folder_per_age(root: str | Path, **_: object) -> Listing:
    """`ROOT/AGE/*.jpg`: one folder per age."""
    r = _require_dir(root)
    out = Listing()
    for p in _images(r):  # an image beside the age folders has no age: reported, not passed over
        out.bad.append(BadRecord(str(p), "not inside an AGE folder (ROOT/AGE/*.jpg)"))
    for d in sorted(x for x in r.iterdir() if x.is_dir()):
        for p in _images(d, recursive=True):
            out.add(p, d.name, check_file=False)
    return out


@DATASETS.register("afad")
def afad(root: str | Path, **_: object) -> Listing:
    """AFAD-Full: `ROOT/AGE/{111,112}/*.jpg` (111 male, 112 female), all Asian; ROOT is the AFAD-Full folder."""
    r = _require_dir(root)
    out = Listing()
    for d in sorted(x for x in r.iterdir() if x.is_dir()):
        for p in _images(d):
            out.bad.append(BadRecord(str(p), "not inside a gender folder (ROOT/AGE/111 or 112/*.jpg)"))
        for g in sorted(x for x in d.iterdir() if x.is_dir()):
            gender = {"111": "male", "112": "female"}.get(g.name)
            for p in _images(g):
                if gender is None:
                    out.bad.append(BadRecord(str(p), f"gender folder {g.name!r} is neither 111 = male nor 112 = female"))
                else:
                    out.add(p, d.name, gender, "asian", check_file=False)
    return out


@DATASETS.register("morph")
def morph(root: str | Path, csv_path: str | Path | None = None, labels: str | Path | None = None,
          **_: object) -> Listing:
    """MORPH-2 album CSV (the first *.csv in ROOT, or data.labels): columns `id_num, photo, age, gender (M/F),
    race (B/W/A/H/O)`, photo paths relative to ROOT; identity is the group."""
    r = _require_dir(root)
    csv_path = csv_path or labels
    p = Path(csv_path) if csv_path else next(iter(sorted(r.glob("*.csv"))), None)
    if p is None or not p.is_file():
        raise DataError(f"MORPH CSV not found: {p}" if csv_path else
                        f"MORPH CSV not found under {r} (a *.csv beside the photos; or data.labels=FILE)")
    races = {"B": "black", "W": "white", "A": "asian", "H": "hispanic", "O": "other"}
    out = Listing()
    for row in _csv_rows(p, {"photo", "age"}, "MORPH CSV"):
        out.add(r / row["photo"], row["age"], _norm_gender(row.get("gender")), races.get((row.get("race") or "").strip()),
                row.get("id_num") or None)
    return out


_CACD = re.compile(r"^(\d+)_(.+)_(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


@DATASETS.register("cacd")
def cacd(root: str | Path, **_: object) -> Listing:
    """CACD2000: `AGE_First_Last_NNNN.jpg`; the celebrity is the group."""
    return _from_names(_require_dir(root), _CACD, "AGE_Name_NNNN.jpg", False, lambda m: (m.group(1), m.group(2)))


_FGNET = re.compile(r"^(\d{3})A(\d{2})[a-z]?\.(jpg|jpeg|png)$", re.IGNORECASE)


@DATASETS.register("fgnet")
def fgnet(root: str | Path, **_: object) -> Listing:
    """FG-NET: `SSSAaa[x].JPG` (subject SSS, age aa); the subject is the group."""
    return _from_names(_require_dir(root), _FGNET, "SSSAaa.JPG", True, lambda m: (m.group(2), f"fgnet{m.group(1)}"))


def imdb_age(taken: float, dob: float) -> int:
    """IMDB-WIKI's age as the dataset defines it, `[age, ~] = datevec(datenum(photo_taken, 7, 1) - dob)`: the year of
    MATLAB's date number for the days from the date of birth (a datenum) to the middle of the year the photo was
    taken (MATLAB's year 0 is a leap year: day numbers 1-366; from 367 they are Python's ordinals + 366). −1 for a
    birth after that day; ValueError for dates outside the years 1-9999."""
    days = int((_dt.date(int(taken), 7, 1).toordinal() + 366) - dob)  # datevec reads the whole days
    if days < 1:
        return -1
    return 0 if days < 367 else _dt.date.fromordinal(days - 366).year


@DATASETS.register("imdbwiki")
def imdbwiki(root: str | Path, mat_path: str | Path | None = None, min_face_score: float = 1.0,
             labels: str | Path | None = None, **_: object) -> Listing:
    """IMDB-WIKI `.mat` (imdb.mat / wiki.mat in ROOT, the imdb_crop / wiki_crop folder, or data.labels): age as the
    dataset defines it (`imdb_age`); rows with no face or 2 faces skipped."""
    import numpy as np
    from scipy.io import loadmat

    r = _require_dir(root)
    mat_path = mat_path or labels
    p = Path(mat_path) if mat_path else next(iter(sorted(r.glob("*.mat"))), None)
    if p is None or not p.is_file():
        raise DataError(f"IMDB-WIKI .mat file not found: {p}" if mat_path else
                        f"IMDB-WIKI .mat file not found under {r} (imdb.mat / wiki.mat; or data.labels=FILE)")
    try:
        mat = loadmat(str(p))
    except Exception as e:  # scipy raises several types for corrupt files
        raise DataError(f"{p}: cannot read .mat file ({e})") from None
    key = next((k for k in ("imdb", "wiki") if k in mat), None)
    if key is None:
        raise DataError(f"{p}: no 'imdb' or 'wiki' struct inside")
    s = mat[key][0, 0]
    dob, taken = s["dob"][0], s["photo_taken"][0]
    paths = [str(x[0]) for x in s["full_path"][0]]
    gender = s["gender"][0]
    face = s["face_score"][0]
    second = s["second_face_score"][0]
    names = [str(x[0]) if len(x) else "" for x in s["name"][0]] if "name" in s.dtype.names else [""] * len(paths)
    out = Listing()
    for i, rel in enumerate(paths):
        img = r / rel
        if not np.isfinite(face[i]) or face[i] < min_face_score:
            out.bad.append(BadRecord(str(img), f"no face (face_score {face[i]})"))
            continue
        if np.isfinite(second[i]):
            out.bad.append(BadRecord(str(img), "second face present"))
            continue
        if not (np.isfinite(dob[i]) and np.isfinite(taken[i])):
            out.bad.append(BadRecord(str(img), f"no date of birth or year taken ({dob[i]}, {taken[i]})"))
            continue
        try:
            age = imdb_age(float(taken[i]), float(dob[i]))
        except (ValueError, OverflowError):
            out.bad.append(BadRecord(str(img), f"date of birth {dob[i]} or year taken {taken[i]} out of range"))
            continue
        g = None if not np.isfinite(gender[i]) else ("male" if gender[i] == 1 else "female")
        out.add(img, age, g, None, names[i] or None)
    return out


_IMDB_PERSON = re.compile(r"nm\d+")


def _imdbclean_csvs(r: Path) -> list[Path]:
    """The split CSVs of an IMDB-Clean checkout (`csvs/imdb_{train,valid,test}_new_1024.csv`, or without _1024, or
    in data/imdb-clean-1024/): those of the 1024 px crops where there are, else the others; one set, not both.
    Without either, the one CSV under ROOT (several: DataError naming them)."""
    found = sorted(r.rglob("imdb_*_new_1024.csv")) or sorted(r.rglob("imdb_*_new.csv"))
    if found:
        return found
    other = sorted(r.rglob("*.csv"))
    if len(other) > 1:
        raise DataError(f"IMDB-Clean: no imdb_*_new[_1024].csv under {r}, and {len(other)} other CSVs "
                        f"({', '.join(str(x.relative_to(r)) for x in other[:4])}): name one with data.labels=FILE")
    return other


@DATASETS.register("imdbclean")
def imdbclean(root: str | Path, csv_path: str | Path | None = None, labels: str | Path | None = None,
              **_: object) -> Listing:
    """IMDB-Clean (yiminglin-ai/imdb-clean, ROOT its checkout or data folder): every split CSV
    (`imdb_{train,valid,test}_new_1024.csv`, else `..._new.csv`; or the one data.labels names), columns
    `filename,age,gender,...`, images relative to ROOT[/data]/imdb-clean-1024 or ROOT; the person (the `nm...`
    IMDb id in each file name) is the group, so nobody is on both sides of a split."""
    r = _require_dir(root)
    csv_path = csv_path or labels
    csvs = [Path(csv_path)] if csv_path else _imdbclean_csvs(r)
    if not csvs or not csvs[0].is_file():
        raise DataError(f"IMDB-Clean CSV not found {'at ' + str(csv_path) if csv_path else 'under ' + str(r)} "
                        "(imdb_train_new_1024.csv, imdb_valid_new_1024.csv, imdb_test_new_1024.csv)")
    base = next((b for b in (r / "imdb-clean-1024", r / "data" / "imdb-clean-1024") if b.is_dir()), r)
    out = Listing()
    for p in csvs:
        for row in _csv_rows(p, {"filename", "age"}, "IMDB-Clean CSV"):
            person = _IMDB_PERSON.search(row["filename"])
            out.add(base / row["filename"], row["age"], _norm_gender(row.get("gender")), None,
                    person.group(0) if person else None)
    if not csv_path:
        out.notes.append(f"IMDB-Clean: read {len(csvs)} CSV(s) ({', '.join(p.name for p in csvs)}); images under "
                         f"{base}")
    return out


def load_dataset(name: str, root: str | Path, **kwargs: object) -> Listing:
    """Run the named adapter; raises DataError when nothing usable is found, with the commonest reasons rows were
    skipped (one example each) and the layout the adapter reads."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    params = set(DATASETS.options(name)[0])  # an adapter's **_ swallows what it does not read: not counted
    if kwargs.get("labels") and "labels" not in params:
        raise DataError(f"a label file (data.labels, --labels, curate's csv_path=): the {name} adapter reads its "
                        "labels from the file names or folders, not from a label file")
    unused = sorted(set(kwargs) - params)
    if unused:  # before: silently not used (groups_csv on All-Age-Faces, csv_path on IMDB-WIKI)
        raise DataError(f"the {name} adapter takes no {', '.join(unused)} (it takes: "
                        f"{', '.join(sorted(params - {'root'})) or 'nothing but ROOT'})")
    listing = DATASETS.build(name, root, **kwargs)
    if not listing.records:
        why: dict[str, list[str]] = {}
        for b in listing.bad:
            why.setdefault(b.reason if "(" not in b.reason else b.reason.split(" (")[0], []).append(b.path)
        top = sorted(why.items(), key=lambda kv: -len(kv[1]))[:3]
        doc = " ".join((DATASETS.get(name).__doc__ or "").split())
        raise DataError(f"dataset {name!r} at {root}: no usable records ({len(listing.bad)} bad rows"
                        + ("".join(f"; {len(v)} {k}, e.g. {v[0]}" for k, v in top) if top else "; no image found")
                        + f"). The {name} adapter reads: {doc}")
    return listing


def write_bad_rows(bad: list[BadRecord], path: str | Path) -> None:
    from ..utils import atomic_write_text

    lines = ["path,reason"] + [f'"{b.path}","{b.reason}"' for b in bad]
    atomic_write_text(path, "\n".join(lines) + "\n")
