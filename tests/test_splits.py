import pytest

from agelens.data.adapters import FaceRecord
from agelens.data.splits import check_group_safe, group_split, kfold_split, load_split, save_split
from agelens.errors import ConfigError, DataError


def _records(n=200):
    # groups of 1-3 records, some with conflicting ages (as duplicate groups can be)
    out = []
    for i in range(n):
        out.append(FaceRecord(f"/d/{i}.jpg", float(i % 90), group=f"g{i // 3 if i < 90 else i}"))
    return out


def test_group_split_is_group_safe_seeded_and_sized():
    recs = _records()
    a = group_split(recs, 0.1, 0.2, seed=1)
    b = group_split(recs, 0.1, 0.2, seed=1)
    c = group_split(recs, 0.1, 0.2, seed=2)
    assert a == b and a != c
    assert sorted(sum(a.values(), [])) == list(range(len(recs)))
    assert abs(len(a["test"]) - 40) <= 3 and abs(len(a["val"]) - 20) <= 3
    check_group_safe({k: [recs[i] for i in v] for k, v in a.items()})


def test_kfold_covers_everything_once():
    recs = _records()
    folds = kfold_split(recs, 5, seed=0)
    assert sorted(sum(folds, [])) == list(range(len(recs)))
    assert max(map(len, folds)) - min(map(len, folds)) <= 3
    check_group_safe({str(i): [recs[j] for j in f] for i, f in enumerate(folds)})


def test_kfold_refuses_more_folds_than_groups():
    """A fold without a group tested nothing (before: `cv --folds 8` on 6 records crashed with a TypeError)."""
    with pytest.raises(ConfigError, match="3 folds need at least 3 groups; the dataset has 2 .*--folds 2 or fewer"):
        kfold_split(_records(6), 3)  # 2 groups of 3
    assert all(kfold_split(_records(12), 4))  # 4 groups, 4 folds: each fold tests one group


def test_split_cli_refuses_more_folds_than_groups_before_writing(tmp_path, utk_folder):
    """Before: `split --folds 50` on 24 faces wrote fold files with 0 test records."""
    from agelens.cli import split

    with pytest.raises(ConfigError, match="50 folds need at least 50 groups; the dataset has 24"):
        split(None, [f"data.root={utk_folder}", f"data.split_file={tmp_path}/split.json"], folds=50)
    assert not list(tmp_path.glob("split*.json"))


def test_a_new_split_that_leaves_a_wanted_part_empty_is_refused(tmp_path, utk_folder):
    """Before: `split` printed `val 0` (exit 0) and `prepare` failed later; a part given no share may stay empty."""
    from agelens.cli import split
    from agelens.config import load_config
    from agelens.data.prepare import make_or_load_split

    args = [f"data.root={utk_folder}", f"data.split_file={tmp_path}/split.json"]
    with pytest.raises(ConfigError, match=r"split of 24 records in 24 groups leaves val empty: .*raise data.val_frac "
                                          r"to at least 0.03"):
        split(None, [*args, "data.val_frac=0.01"])
    assert not (tmp_path / "split.json").exists()
    with pytest.raises(ConfigError, match="into 3 parts needs at least 3 groups"):
        make_or_load_split(load_config(None, args).data, _two_faces(tmp_path), log=None)
    parts = make_or_load_split(load_config(None, [*args, "data.test_frac=0"]).data, log=None)
    assert not parts["test"] and parts["val"] and parts["train"]


def _two_faces(tmp_path):
    from agelens.data.adapters import Listing

    return Listing([FaceRecord(f"{tmp_path}/{i}.jpg", 30.0) for i in range(2)], [], [])


def test_kfold_parts_carve_a_group_safe_val_part_from_each_folds_rest():
    from agelens.data.splits import kfold_parts

    recs = _records()
    folds = kfold_parts(recs, 5, 0.1, seed=0)
    assert [f["test"] for f in folds] == kfold_split(recs, 5, seed=0)
    for f in folds:
        assert sorted(f["train"] + f["val"] + f["test"]) == list(range(len(recs)))
        assert abs(len(f["val"]) - 20) <= 3
        check_group_safe({k: [recs[i] for i in v] for k, v in f.items()})


def test_split_cli_fold_files_have_the_val_part_cv_trains_with(tmp_path, utk_folder):
    """Before: `split --folds K` wrote "val": [], which `train` refused ("split part 'val' is empty")."""
    import json

    from agelens.cli import split

    split(None, [f"data.root={utk_folder}", f"data.split_file={tmp_path}/split.json", "data.val_frac=0.2"], folds=3)
    files = sorted(tmp_path.glob("split.fold*of3.json"))
    parts = [json.loads(f.read_text())["parts"] for f in files]
    assert len(parts) == 3 and all(p["train"] and p["val"] and p["test"] for p in parts)
    assert all(not set(p["val"]) & set(p["train"]) for p in parts)
    assert sorted(n for p in parts for n in p["test"]) == sorted({n for p in parts for n in p["test"]})


def test_save_load_roundtrip_and_missing_files(tmp_path):
    recs = _records(30)
    parts = group_split(recs, 0.2, 0.2, seed=0)
    p = tmp_path / "split.json"
    save_split(p, recs, parts, dataset="x", root="/d", seed=0)
    loaded = load_split(p, recs, "/d")
    assert {k: [r.path for r in v] for k, v in loaded.items()} == {k: [recs[i].path for i in v] for k, v in parts.items()}
    with pytest.raises(DataError, match="not in the dataset now"):
        load_split(p, recs[:10], "/d")


def test_group_leak_detected():
    a, b = FaceRecord("/1", 3, group="g"), FaceRecord("/2", 4, group="g")
    with pytest.raises(DataError, match="appears in both"):
        check_group_safe({"train": [a], "test": [b]})


def test_sample_names_is_a_seeded_random_sample_not_the_first_names():
    from agelens.data.splits import sample_names as sample

    names = [f"{age}_0_0_x.jpg" for age in range(1, 101)]  # sorted by age, as a split file lists UTKFace names
    s = sample(names, 10, 0)
    assert len(s) == len(set(s)) == 10 and s == sorted(s, key=names.index) and s == sample(names, 10, 0)
    assert s != names[:10] and max(int(n.split("_")[0]) for n in s) > 30
    assert sample(names, 500, 0) == names  # fewer names than asked: all of them


# ---- pinned by hand (each a mutation of splits.py once passed unnoticed) -----------------------------------------


def test_a_group_joins_a_part_while_half_of_it_still_fits():
    recs = [FaceRecord(f"/d/{i}.jpg", 30.0, group=f"g{i // 4}") for i in range(100)]  # 25 groups of 4
    parts = group_split(recs, 0.0, 0.1, seed=0)  # test target 10 faces: groups join at 0, 4 and 8 (8 + 2 <= 10)
    assert len(parts["test"]) == 12 and len(parts["val"]) == 0
    assert all(v == sorted(v) for v in parts.values())


def test_test_is_filled_first_from_the_seeded_group_order_and_record_order_does_not_matter():
    import random

    from agelens.data.splits import _shuffled_groups

    recs = _records()
    parts = group_split(recs, 0.1, 0.1, seed=3)
    assert set(_shuffled_groups(recs, 3)[0]) <= set(parts["test"])
    shuffled = recs[:]
    random.Random(0).shuffle(shuffled)
    again = group_split(shuffled, 0.1, 0.1, seed=3)
    names = lambda p, rs: sorted(rs[i].path for i in p)  # noqa: E731
    assert all(names(parts[k], recs) == names(again[k], shuffled) for k in parts)
    with pytest.raises(DataError, match="must be in"):
        group_split(recs, 0.5, 0.5)


def test_kfold_places_the_largest_groups_first_and_needs_two_folds():
    for seed in range(6):
        recs = [FaceRecord(f"/d/{i}.jpg", 30.0, group="big" if i < 5 else f"s{i}") for i in range(10)]
        assert sorted(len(f) for f in kfold_split(recs, 2, seed)) == [5, 5]
    with pytest.raises(DataError, match="k >= 2"):
        kfold_split(_records(), 1)


def test_a_relabelled_record_changes_the_fingerprint_and_a_missing_part_is_named(tmp_path):
    from agelens.data.splits import records_fingerprint, split_part

    recs = _records(20)
    moved = recs[:5] + [FaceRecord(recs[5].path, recs[5].age + 1, group=recs[5].group)] + recs[6:]
    assert records_fingerprint(recs, "/d") != records_fingerprint(moved, "/d")
    assert records_fingerprint(recs, "/d") == records_fingerprint(recs[::-1], "/d")
    save_split(tmp_path / "s.json", recs, group_split(recs, 0.2, 0.2), dataset="x", root="/d", seed=0)
    with pytest.raises(DataError, match="has no part 'nope'"):
        split_part(tmp_path / "s.json", "nope")


def test_records_without_a_group_are_each_their_own_group_in_the_leak_check():
    a, b = FaceRecord("/d/a.jpg", 30.0), FaceRecord("/d/b.jpg", 40.0)  # group "" (not set): one record each
    check_group_safe({"train": [a], "val": [b]})
    with pytest.raises(DataError, match="appears in both"):
        check_group_safe({"train": [a], "val": [a]})
