import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agelens.data.adapters import load_dataset
from agelens.errors import DataError


def _img(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)
    return p


def test_utkface_names_and_bad_rows(utk_folder):
    lst = load_dataset("utkface", utk_folder)
    assert len(lst.records) == 24
    assert [b.reason for b in lst.bad] == ["file name does not start with AGE_GENDER_"]
    no_race = [r for r in lst.records if r.race is None]
    assert len(no_race) == 1
    assert {r.gender for r in lst.records} == {"male", "female"}


def test_utkface_groups_from_duplicates_csv(utk_folder, tmp_path):
    names = sorted(p.name for p in utk_folder.glob("*.chip.jpg"))
    g = tmp_path / "groups.csv"
    g.write_text("group,file\n" + f"{names[0]},{names[0]}\n{names[0]},{names[1]}\n")
    lst = load_dataset("utkface", utk_folder, groups_csv=g)
    by = {r.path.split("/")[-1]: r.group for r in lst.records}
    assert by[names[0]] == by[names[1]] == names[0]
    assert by[names[2]] == names[2]


def test_csv_reports_every_bad_row(tmp_path):
    _img(tmp_path / "a.jpg")
    _img(tmp_path / "b.jpg")
    (tmp_path / "labels.csv").write_text(
        "path,age,gender\na.jpg,31,M\nb.jpg,abc,F\nmissing.jpg,20,F\na.jpg,200,M\na.jpg,-3,M\n,5,M\n")
    lst = load_dataset("csv", tmp_path)
    assert [(r.age, r.gender) for r in lst.records] == [(31.0, "male")]
    reasons = sorted(b.reason for b in lst.bad)
    assert reasons == ["age '-3' outside 0-120", "age '200' outside 0-120", "empty path", "missing file",
                       "unparsable age 'abc'"]


def test_csv_missing_columns(tmp_path):
    (tmp_path / "x.csv").write_text("file,years\na.jpg,3\n")
    with pytest.raises(DataError, match="missing required column"):
        load_dataset("csv", tmp_path / "x.csv")


def test_folder_per_age_and_afad(tmp_path):
    _img(tmp_path / "f" / "23" / "x.jpg")
    _img(tmp_path / "f" / "old" / "y.jpg")
    lst = load_dataset("folder", tmp_path / "f")
    assert [r.age for r in lst.records] == [23.0] and lst.bad[0].reason.startswith("unparsable age")
    _img(tmp_path / "afad" / "18" / "111" / "1.jpg")
    _img(tmp_path / "afad" / "40" / "112" / "2.jpg")
    lst = load_dataset("afad", tmp_path / "afad")
    assert [(r.age, r.gender, r.race) for r in lst.records] == [(18.0, "male", "asian"), (40.0, "female", "asian")]


def test_morph_csv(tmp_path):
    root = tmp_path / "morph"
    _img(root / "Album2" / "001_0M22.JPG")
    with open(root / "morph_2008_nonCommercial.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id_num", "photo", "age", "gender", "race"])
        w.writerow(["001", "Album2/001_0M22.JPG", "22", "M", "B"])
        w.writerow(["002", "Album2/002_0F30.JPG", "30", "F", "W"])
    lst = load_dataset("morph", root)
    assert [(r.age, r.gender, r.race, r.group) for r in lst.records] == [(22.0, "male", "black", "001")]
    assert lst.bad[0].reason == "missing file"


def test_cacd_and_fgnet(tmp_path):
    _img(tmp_path / "cacd" / "14_Aaron_Johnson_0001.jpg")
    _img(tmp_path / "cacd" / "53_Aaron_Johnson_0002.jpg")
    _img(tmp_path / "cacd" / "junk.jpg")
    lst = load_dataset("cacd", tmp_path / "cacd")
    assert [(r.age, r.group) for r in lst.records] == [(14.0, "Aaron_Johnson"), (53.0, "Aaron_Johnson")]
    assert len(lst.bad) == 1
    _img(tmp_path / "fg" / "images" / "001A02.JPG")
    _img(tmp_path / "fg" / "images" / "001A43a.JPG")
    lst = load_dataset("fgnet", tmp_path / "fg")
    assert [(r.age, r.group) for r in lst.records] == [(2.0, "fgnet001"), (43.0, "fgnet001")]


def test_imdbwiki_mat(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "imdb_crop"
    _img(root / "01" / "a.jpg")
    _img(root / "02" / "b.jpg")
    _img(root / "03" / "c.jpg")
    dt = [("dob", "O"), ("photo_taken", "O"), ("full_path", "O"), ("gender", "O"), ("name", "O"),
          ("face_score", "O"), ("second_face_score", "O")]
    s = np.zeros((1, 1), dtype=dt)
    # Matlab datenum of 1980-07-01 = 723363; photo taken 2010 → age 29 (the dataset's own definition: to the
    # middle of 2010, a day short of 30 years)
    s[0, 0]["dob"] = np.array([[723363, 723363, 723363]], float)
    s[0, 0]["photo_taken"] = np.array([[2010, 2010, 2010]])
    fp = np.empty((1, 3), dtype=object)
    fp[0, 0], fp[0, 1], fp[0, 2] = np.array(["01/a.jpg"]), np.array(["02/b.jpg"]), np.array(["03/c.jpg"])
    s[0, 0]["full_path"] = fp
    s[0, 0]["gender"] = np.array([[1.0, 0.0, np.nan]])
    nm = np.empty((1, 3), dtype=object)
    nm[0, 0], nm[0, 1], nm[0, 2] = np.array(["Ann"]), np.array(["Bob"]), np.array(["Cy"])
    s[0, 0]["name"] = nm
    s[0, 0]["face_score"] = np.array([[3.2, -np.inf, 2.5]])
    s[0, 0]["second_face_score"] = np.array([[np.nan, np.nan, 1.9]])
    savemat(root / "imdb.mat", {"imdb": s})
    lst = load_dataset("imdbwiki", root)
    assert [(r.age, r.gender, r.group) for r in lst.records] == [(29.0, "male", "Ann")]
    assert sorted(b.reason.split(" (")[0] for b in lst.bad) == ["no face", "second face present"]
    # curate's csv_path= is the source's label file: here a .mat kept apart from ROOT (before: imdbwiki did not
    # take csv_path, which was silently not used, and the first .mat under ROOT was read instead)
    from agelens.fairness.curate import CurateConfig, Source, curate

    s[0, 0]["photo_taken"] = np.array([[2011, 2011, 2011]])
    savemat(tmp_path / "mine.mat", {"imdb": s})
    cfg = CurateConfig(sources=[Source("imdbwiki", str(root), csv_path=str(tmp_path / "mine.mat"))],
                       output=str(tmp_path / "m.csv"), near_dup=-1)
    curate(cfg, progress=False, log=lambda *_: None)
    manifest = (tmp_path / "m.csv").read_text()
    assert "a.jpg" in manifest and ",30" in manifest and ",29" not in manifest, manifest


def test_imdb_age_is_the_datasets_own():
    """IMDB-WIKI's age: `datevec(datenum(photo_taken, 7, 1) - dob)`, the years to the middle of the year taken; a
    birthday from July on is one year less than photo_taken − birth year (before: half of all ages one too old)."""
    import datetime as dt

    from agelens.data.adapters import imdb_age

    def datenum(y, m, d):
        return dt.date(y, m, d).toordinal() + 366

    assert imdb_age(2012, datenum(1971, 12, 31)) == 40  # taken − birth year would say 41
    assert imdb_age(2012, datenum(1960, 11, 9)) == 51
    assert imdb_age(2012, datenum(1960, 3, 9)) == 52
    assert imdb_age(2012, datenum(1960, 6, 30)) == 52
    # MATLAB's year 0 is a leap year, so the day count's year is not the calendar difference: 61 years and a day
    # read 60 (born 1940-06-30, photo 2001; `taken - year - (month >= 7)` said 61)
    assert imdb_age(2001, datenum(1940, 6, 30)) == 60
    assert imdb_age(2010, datenum(2010, 3, 1)) == 0 and imdb_age(2010, datenum(2011, 1, 1)) == -1
    assert imdb_age(2012, 100) > 120  # a date of birth before year 1 (datenum < 367): an age out of range, no crash
    with pytest.raises(ValueError):
        imdb_age(2012, -5e6)  # beyond the year 9999: the adapter makes it a bad row


def test_all_age_faces_as_published_without_a_csv(tmp_path):
    """The download: `aligned faces/%05dA%02d.jpg`, gender from the serial number (the dataset's README)."""
    root = tmp_path / "All-Age-Faces Dataset"
    for name in ("00012A02.jpg", "07380A41.jpg", "07381A23.jpg", "13321A80.jpg"):
        _img(root / "aligned faces" / name)
    _img(root / "aligned faces" / "notes.jpg")
    (root / "image sets").mkdir()
    for r in (root, root / "aligned faces"):
        lst = load_dataset("aaf", r)
        assert [(Path(x.path).name, x.age, x.gender) for x in lst.records] == [
            ("00012A02.jpg", 2.0, "female"), ("07380A41.jpg", 41.0, "female"), ("07381A23.jpg", 23.0, "male"),
            ("13321A80.jpg", 80.0, "male")]
        assert len({x.group for x in lst.records}) == 4 and [Path(b.path).name for b in lst.bad] == ["notes.jpg"]
        assert "gender from the serial number" in lst.notes[0]
    with pytest.raises(DataError, match="All-Age-Faces CSV not found: .*nowhere.csv"):
        load_dataset("aaf", root, labels=tmp_path / "nowhere.csv")


def test_afad_images_outside_a_gender_folder_are_reported(tmp_path):
    _img(tmp_path / "15" / "111" / "a.jpg")
    _img(tmp_path / "15" / "113" / "b.jpg")
    _img(tmp_path / "15" / "c.jpg")
    lst = load_dataset("afad", tmp_path)
    assert [(r.age, r.gender) for r in lst.records] == [(15.0, "male")]
    assert sorted(b.reason for b in lst.bad) == ["gender folder '113' is neither 111 = male nor 112 = female",
                                                 "not inside a gender folder (ROOT/AGE/111 or 112/*.jpg)"]


def test_labels_apart_from_root(tmp_path):
    """data.labels / --labels: a csv label file kept apart from the images reads its paths relative to ROOT; an
    adapter that reads no label file refuses one instead of passing over it."""
    _img(tmp_path / "imgs" / "sub" / "x0.jpg")
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "my labels.csv").write_text("path,age\nsub/x0.jpg,33\n")
    lst = load_dataset("csv", tmp_path / "imgs", labels=tmp_path / "lab" / "my labels.csv")
    assert [(Path(r.path).name, r.age) for r in lst.records] == [("x0.jpg", 33.0)]
    with pytest.raises(DataError, match="the utkface adapter reads its labels from the file names or folders"):
        load_dataset("utkface", tmp_path / "imgs", labels=tmp_path / "lab" / "my labels.csv")
    # an option the adapter does not take was silently not used (data.groups_csv on All-Age-Faces)
    with pytest.raises(DataError, match="the csv adapter takes no groups_csv"):
        load_dataset("csv", tmp_path / "imgs", labels=tmp_path / "lab" / "my labels.csv", groups_csv="dups.csv")
    assert load_dataset("csv", tmp_path / "imgs", labels=tmp_path / "lab" / "my labels.csv", groups_csv=None).records
    # curate's csv_path= of a csv source is its CSV, whose image paths read from its own folder (as before)
    from agelens.fairness.curate import CurateConfig, Source, curate

    _img(tmp_path / "meta" / "a.jpg")
    (tmp_path / "meta" / "labels.csv").write_text("path,age\na.jpg,27\n")
    cfg = CurateConfig(sources=[Source("csv", str(tmp_path / "imgs"), csv_path=str(tmp_path / "meta" / "labels.csv"))],
                       output=str(tmp_path / "m.csv"), near_dup=-1)
    curate(cfg, progress=False, log=lambda *_: None)
    assert "a.jpg" in (tmp_path / "m.csv").read_text()


def test_imdbclean_csv(tmp_path):
    """Every split CSV of the checkout is read (before: the first found, the test split), the IMDb person id is
    the group."""
    root = tmp_path / "imdbclean"
    head = "filename,age,gender,x_min,y_min,x_max,y_max\n"
    rows = {"train": ["00/nm0000001_rm1_1990_2000.jpg,10,F,1,1,5,5", "00/nm0000001_rm2_1990_2005.jpg,15,F,1,1,5,5"],
            "valid": ["01/nm0000002_rm3_1950_2000.jpg,50,M,1,1,5,5"],
            "test": ["02/nm0000003_rm4_1970_2000.jpg,30,M,1,1,5,5"]}
    (root / "csvs").mkdir(parents=True)
    for split, lines in rows.items():
        for line in lines:
            _img(root / "data" / "imdb-clean-1024" / line.split(",")[0])
        (root / "csvs" / f"imdb_{split}_new_1024.csv").write_text(head + "\n".join(lines) + "\n")
        (root / "csvs" / f"imdb_{split}_new.csv").write_text(head + "\n".join(lines) + "\n")  # the same, 1024 wins
    lst = load_dataset("imdbclean", root)
    assert sorted((r.age, r.gender, r.group) for r in lst.records) == [
        (10.0, "female", "nm0000001"), (15.0, "female", "nm0000001"), (30.0, "male", "nm0000003"),
        (50.0, "male", "nm0000002")]
    assert not lst.bad and "read 3 CSV(s)" in lst.notes[0]
    one = load_dataset("imdbclean", root, labels=root / "csvs" / "imdb_valid_new_1024.csv")
    assert [r.age for r in one.records] == [50.0]
    other = tmp_path / "other"
    (other / "a").mkdir(parents=True)
    for name in ("a/x.csv", "y.csv"):  # no split CSV of the checkout: not every CSV there is read as one
        (other / name).write_text(head)
    with pytest.raises(DataError, match=r"no imdb_\*_new\[_1024\].csv under .*, and 2 other CSVs \(a/x.csv, y.csv\): "
                                        "name one with data.labels=FILE"):
        load_dataset("imdbclean", other)


def test_missing_root_is_clear(tmp_path):
    with pytest.raises(DataError, match=r"dataset root not found: .*nowhere \(give the folder with data.root=DIR"):
        load_dataset("utkface", tmp_path / "nowhere")
    with pytest.raises(DataError, match="no usable records"):
        load_dataset("utkface", tmp_path)
    (tmp_path / "AFAD-Full" / "15" / "111").mkdir(parents=True)  # the folder above AFAD-Full given
    _img(tmp_path / "AFAD-Full" / "15" / "111" / "a.jpg")
    with pytest.raises(DataError, match=r"no usable records \(0 bad rows; no image found\). The afad adapter reads: "
                                        r"AFAD-Full: `ROOT/AGE/\{111,112\}/\*.jpg`"):
        load_dataset("afad", tmp_path)
    with pytest.raises(DataError, match=r"\(1 bad rows; 1 file name is not SSSAaa.JPG, e.g. .*a.jpg\)\. The fgnet"):
        load_dataset("fgnet", tmp_path)


def test_csv_from_spreadsheets_duplicates_and_codes(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.jpg")
    rows = f"path,age,gender,race\na.jpg,31,M,White\nb.jpg,40,female,white\n{tmp_path / 'a.jpg'},31,M,White\n./b.jpg,40,F,x\n"
    (tmp_path / "labels.csv").write_bytes(b"\xef\xbb\xbf" + rows.encode())  # Excel's "CSV UTF-8": a byte-order mark
    lst = load_dataset("csv", tmp_path / "labels.csv")
    assert [(Path(r.path).name, r.gender, r.race) for r in lst.records] == [("a.jpg", "male", "white"),
                                                                             ("b.jpg", "female", "white")]
    assert [b.reason.split(" ")[0] for b in lst.bad] == ["duplicate", "duplicate"]  # relative, absolute, ./
    (tmp_path / "unknown.csv").write_text("path,age,gender,race\na.jpg,31,unknown,N/A\nb.jpg,40,u,Unknown\n")
    lst = load_dataset("csv", tmp_path / "unknown.csv")  # "not known" is no group of its own
    assert [(r.gender, r.race) for r in lst.records] == [(None, None), (None, None)]
    (tmp_path / "coded.csv").write_text("path,age,gender\na.jpg,31,0\n")
    with pytest.raises(DataError, match="gender '0' is a number"):
        load_dataset("csv", tmp_path / "coded.csv")
    (tmp_path / "ages" / "30").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "ages" / "30" / "c.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "ages" / "loose.jpg")
    lst = load_dataset("folder", tmp_path / "ages")
    assert len(lst.records) == 1 and [Path(b.path).name for b in lst.bad] == ["loose.jpg"]


def test_a_reused_split_says_what_it_leaves_out_and_which_settings_it_keeps(tmp_path):
    from agelens.config import load_config
    from agelens.data.prepare import make_or_load_split

    for i in range(30):
        Image.new("RGB", (8, 8)).save(tmp_path / f"f{i}.jpg")
    (tmp_path / "labels.csv").write_text("path,age\n" + "".join(f"f{i}.jpg,{20 + i}\n" for i in range(20)))
    data = load_config(None, ["data.dataset=csv", f"data.root={tmp_path / 'labels.csv'}",
                              f"data.split_file={tmp_path / 'split.json'}"]).data
    said: list[str] = []
    make_or_load_split(data, log=said.append)
    assert said == []
    (tmp_path / "labels.csv").write_text("path,age\n" + "".join(f"f{i}.jpg,{20 + i}\n" for i in range(30))
                                         + "missing.jpg,40\n")
    data.split_seed = 7
    parts = make_or_load_split(data, log=said.append)
    assert sum(map(len, parts.values())) == 20
    assert any("10 of the dataset's 30 records are in no part" in s for s in said), said
    assert any("made with seed 0 (the config says 7)" in s for s in said), said
    assert any("1 row(s) of csv skipped (missing file: 1)" in s for s in said), said


def test_a_curate_manifest_loads_without_a_note(tmp_path):
    """The `source` column `agelens curate` writes is passed over quietly (before: "column(s) not read: source" on
    every split, prepare, train, index and cv of a curated dataset); another unknown column is still named."""
    from agelens.fairness.curate import MANIFEST_COLUMNS

    _img(tmp_path / "a.jpg")
    (tmp_path / "m.csv").write_text(",".join(MANIFEST_COLUMNS) + f"\n{tmp_path / 'a.jpg'},31,female,asian,utk:a,utk\n")
    lst = load_dataset("csv", tmp_path / "m.csv")
    assert len(lst.records) == 1 and lst.notes == []
    (tmp_path / "n.csv").write_text("path,age,Source,camera\na.jpg,31,utk,x\n")
    (note,) = load_dataset("csv", tmp_path / "n.csv").notes
    assert "column(s) not read: camera (" in note


def test_csv_columns_under_other_names_are_read_and_the_rest_named(tmp_path):
    """A researcher's own header: `sex` / `Ethnicity` / `subject_id` are read as gender, race and group (before: every
    face "unknown" and no identity groups, silently); columns not read are named; ambiguous or unknown labels refused."""
    for n in "abcd":
        _img(tmp_path / f"{n}.jpg")
    (tmp_path / "mine.csv").write_text("Path,Age,Sex,Ethnicity,subject_id,camera\na.jpg,31,Woman,East Asian,p1,x\n"
                                       "b.jpg,33,M,white,p1,x\nc.jpg,40,,,p2,y\nd.jpg,50,girl,White,,y\n")
    lst = load_dataset("csv", tmp_path / "mine.csv")
    assert [(r.gender, r.race, r.group) for r in lst.records] == [
        ("female", "east asian", "p1"), ("male", "white", "p1"), (None, None, "p2"),
        ("female", "white", str(tmp_path / "d.jpg"))]
    assert len(lst.notes) == 1 and "column(s) not read: camera" in lst.notes[0]
    (tmp_path / "two.csv").write_text("path,age,gender,sex\na.jpg,31,m,m\n")
    with pytest.raises(DataError, match=r"more than one column for gender \(gender, sex\)"):
        load_dataset("csv", tmp_path / "two.csv")
    (tmp_path / "odd.csv").write_text("path,age,gender\na.jpg,31,W\nb.jpg,40,W\nc.jpg,41,x\n")
    with pytest.raises(DataError, match=r"gender values not read: 'W' \(2 rows\), 'x' \(1 rows\)"):
        load_dataset("csv", tmp_path / "odd.csv")


def test_a_cache_folder_of_other_images_is_not_replaced(tmp_path):
    """A CSV config left data.cache_dir at UTKFace's default: building its cache there would have deleted UTKFace's
    (a stale cache of the same images is still rebuilt)."""
    from agelens.data.adapters import FaceRecord
    from agelens.data.cache import build_cache

    recs = []
    for n in "abcd":
        _img(tmp_path / f"{n}.jpg")
        recs.append(FaceRecord(str(tmp_path / f"{n}.jpg"), 30.0))
    build_cache(recs[:2], tmp_path / "cache", size=32, workers=0, progress=False)
    relabelled = [FaceRecord(recs[0].path, 31.0), recs[1]]
    assert build_cache(relabelled, tmp_path / "cache", size=32, workers=0, progress=False).records[0].age == 31.0
    with pytest.raises(DataError, match="holds the cache of other images .2 faces.*set data.cache_dir"):
        build_cache(recs[2:], tmp_path / "cache", size=32, workers=0, progress=False)
    assert len(build_cache(recs[2:], tmp_path / "cache", size=32, workers=0, progress=False, force=True).records) == 2


def test_staging_folders_of_killed_cache_builds_are_removed(tmp_path):
    """A `prepare` killed with SIGKILL left `.NAME.XXXX/` with its partly written arrays, for good; a build in
    progress (files changed recently) is left alone."""
    import os
    import time

    from agelens.data.adapters import FaceRecord
    from agelens.data.cache import build_cache

    _img(tmp_path / "a.jpg")
    stale, live = tmp_path / ".cache.dead1", tmp_path / ".cache.live1"
    for d in (stale, live):
        d.mkdir()
        (d / "images.npy").write_bytes(b"x" * 100)
    old = time.time() - 3600
    for f in (stale / "images.npy", stale):
        os.utime(f, (old, old))
    build_cache([FaceRecord(str(tmp_path / "a.jpg"), 30.0)], tmp_path / "cache", size=32, workers=0, progress=False)
    assert not stale.exists() and live.is_dir()
    stale.mkdir()  # left beside a cache that is up to date: removed too (before: only when the cache was next rebuilt)
    os.utime(stale, (old, old))
    build_cache([FaceRecord(str(tmp_path / "a.jpg"), 30.0)], tmp_path / "cache", size=32, workers=0, progress=False)
    assert not stale.exists() and live.is_dir()
