"""The guards' recipe (face verifier and occlusion detector): data pieces, sampling, a tiny fit and its export."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
from PIL import Image

from agelens.errors import ConfigError
from agelens.train import guards
from agelens.train.guards import GuardRecipe


@pytest.fixture(scope="module")
def face_crop():
    """The demo photo's aligned face crop (256 px) and its landmarks."""
    from agelens.faces.detect import FaceAnalyzer
    from agelens.faces.prepare import prepare_face

    rgb = np.asarray(Image.open(resources.files("agelens") / "assets" / "astronaut.jpg").convert("RGB"))
    an = FaceAnalyzer()
    crop, lm = prepare_face(rgb, an, guards.SIZE, aligned=False)
    an.close()
    assert np.isfinite(lm).all()
    return crop, lm


def test_realocc_half_is_a_fixed_split():
    names = [f"realocc/mask/img{i}.jpg" for i in range(200)]
    halves = [guards.realocc_half(n) for n in names]
    assert halves == [guards.realocc_half(n) for n in names] and 60 < halves.count("fit") < 140


def test_guard_crops_pick_a_random_sample_unless_asked_for_the_first_names():
    from agelens.train.guards import pick

    names = [f"{age}_0_0_x.jpg" for age in range(1, 101)]
    assert pick(names, 5, "first") == names[:5]
    rnd = pick(names, 5, "random")
    assert rnd != names[:5] and rnd == sorted(rnd, key=names.index) and rnd == pick(names, 5, "random")
    with pytest.raises(ValueError, match="random, first"):
        pick(names, 5, "last")


def test_procedural_negatives_are_varied_images():
    rng = np.random.default_rng(0)
    for make in guards.PROCEDURAL:
        img = make(rng)
        assert img.shape == (guards.SIZE, guards.SIZE, 3) and img.dtype == np.uint8
        assert img.std() > 3, make.__name__  # never a flat image


def test_whole_image_landmarks_follow_the_square_padding():
    lm = np.array([[0.0, 0.0], [100.0, 50.0]], np.float32)
    out = guards.whole_image_landmarks((50, 100), lm, size=200)  # 100 wide, 50 high: 25 px added above
    assert np.allclose(out, [[0, 50], [200, 150]])


def test_a_guard_recipe_is_checked_and_its_flags_parse_back_to_it():
    recipes = [GuardRecipe("faceness"), GuardRecipe("faceness", photo=True, bands=True, halves=True, old_print=0.2),
               GuardRecipe("occlusion", kinds="all", sides=True, without="hand", real=False, random_shapes=0.25,
                           seed=3)]
    for r in recipes:
        a = guards.parser().parse_args(["fit", r.task, "--out", "x", *r.flags()])
        assert GuardRecipe.from_metrics(vars(a)) == r
    assert recipes[0].flags() == [] and recipes[2].flags()[:2] == ["--kinds", "all"]
    assert GuardRecipe.from_metrics({"task": "occlusion", "steps": 600}) == GuardRecipe("occlusion")  # an older run
    for bad, match in (({"task": "verifier"}, "task"), ({"task": "occlusion", "kinds": "hands"}, "kinds"),
                       ({"task": "faceness", "real": False}, "occlusion guard only"),
                       ({"task": "occlusion", "without": "hands"}, "unknown occluder family"),
                       ({"task": "occlusion", "old_print": -0.1}, "old_print")):
        with pytest.raises(ConfigError, match=match):
            GuardRecipe(**bad)


def test_random_patch_keeps_away_from_faces():
    rng = np.random.default_rng(0)
    img = np.zeros((300, 300, 3), np.uint8)
    img[100:200, 100:200] = 255  # the "face"
    for _ in range(20):
        p = guards.random_patch(img, rng, avoid=[(100.0, 100.0, 200.0, 200.0)])
        assert p is None or p.max() == 0


def test_tiny_fit_writes_a_checkpoint_with_a_threshold_and_ships(tmp_path, face_crop):
    crop, lm = face_crop
    rng = np.random.default_rng(0)
    neg = np.stack([guards.PROCEDURAL[i](rng) for i in range(4)])
    data = {"utk": np.stack([crop] * 3), "utk_lm": np.stack([lm] * 3), "aaf": crop[None], "aaf_lm": lm[None],
            "utk_val": np.stack([crop] * 2), "utk_val_lm": np.stack([lm] * 2), "real": crop[None],
            "real_kind": np.array(["mask"]), "neg": neg}
    np.savez(tmp_path / "guards.npz", **data)
    for task in ("faceness", "occlusion"):
        samples = guards.GuardSamples(data, GuardRecipe(task))
        views = [samples.draw(rng) for _ in range(6)]
        assert all(v.shape == (guards.INPUT, guards.INPUT, 3) and lab in (0.0, 1.0) for v, lab in views)
    m = guards.fit(GuardRecipe("faceness"), tmp_path, tmp_path / "run", steps=2, batch=4, init=None, threads=1)
    assert 0 <= m["threshold"] <= 1 and m["n_val"] == 2 and len(m["log"]) == 2
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["threshold"] == m["threshold"]
    p = guards.ship(tmp_path / "run", "faceness", tmp_path / "weights")
    from agelens.occlusion.detector import OcclusionDetector

    v = OcclusionDetector.from_pretrained(str(p))
    assert v.threshold == pytest.approx(m["threshold"]) and v.scores(np.stack([crop, neg[0]])).shape == (2,)
    # the occlusion guard's positives can come from every occluder family; its card's recipe says so
    m = guards.fit(GuardRecipe("occlusion", kinds="all"), tmp_path, tmp_path / "occ", steps=1, batch=4, init=None,
                   threads=1)
    assert m["kinds"] == "all" and 0 <= m["threshold"] <= 1
    card = json.loads(guards.ship(tmp_path / "occ", "occlusion", tmp_path / "weights").with_suffix(".json").read_text())
    assert card["recipe"].endswith("--kinds all")
    assert f"--out {tmp_path / 'occ'}" in card["recipe"]  # the recipe runs as written (--out is required)
    # --photo: a quarter of the samples get the grain / pixelation / noise of scanned prints and small faces
    plain = guards.GuardSamples(data, GuardRecipe("faceness"))
    photo = guards.GuardSamples(data, GuardRecipe("faceness", photo=True))
    pairs = [(plain.draw(np.random.default_rng(k)), photo.draw(np.random.default_rng(k))) for k in range(16)]
    assert all(b[0].shape == (guards.INPUT, guards.INPUT, 3) and a[1] == b[1] for a, b in pairs)
    assert any((a[0] != b[0]).any() for a, b in pairs)
    m = guards.fit(GuardRecipe("faceness", photo=True), tmp_path, tmp_path / "photo", steps=1, batch=4, init=None,
                   threads=1)
    card = json.loads(guards.ship(tmp_path / "photo", "faceness", tmp_path / "weights").with_suffix(".json").read_text())
    assert m["photo"] and card["recipe"].endswith("--photo")
    # the occlusion guard under --photo also reports its specificity on photo-degraded validation faces
    m = guards.fit(GuardRecipe("occlusion", kinds="all", photo=True), tmp_path, tmp_path / "occ_photo", steps=1,
                   batch=4, init=None, threads=1)
    card = json.loads(guards.ship(tmp_path / "occ_photo", "occlusion", tmp_path / "weights").with_suffix(".json")
                      .read_text())
    assert 0 <= m["val_photo_specificity"] <= 1 and card["recipe"].endswith("--kinds all --photo")
    assert "val_photo_specificity" not in guards.fit(GuardRecipe("occlusion"), tmp_path, tmp_path / "occ", steps=1,
                                                     batch=4, init=None, threads=1)
    with pytest.raises(ConfigError, match="kinds"):
        guards.fit(GuardRecipe("occlusion", kinds="hands"), tmp_path, tmp_path / "occ", steps=1, batch=4, init=None)
    # --old-print: that share of samples turned into scanned old prints, labels kept; at 0 the draws are as before
    printed = guards.GuardSamples(data, GuardRecipe("occlusion", old_print=1.0))
    pairs = [(guards.GuardSamples(data, GuardRecipe("occlusion")).draw(np.random.default_rng(k)),
              guards.GuardSamples(data, GuardRecipe("occlusion", old_print=0.0)).draw(np.random.default_rng(k)),
              printed.draw(np.random.default_rng(k))) for k in range(8)]
    assert all((a[0] == b[0]).all() and a[1] == b[1] == c[1] for a, b, c in pairs)
    assert all((a[0] != c[0]).any() for a, _, c in pairs)
    m = guards.fit(GuardRecipe("occlusion", old_print=0.5), tmp_path, tmp_path / "occ_print", steps=1, batch=4,
                   init=None, threads=1)
    card = json.loads(guards.ship(tmp_path / "occ_print", "occlusion", tmp_path / "weights").with_suffix(".json")
                      .read_text())
    assert card["recipe"].endswith("--old-print 0.5")
    assert f"fit occlusion --data {tmp_path} --steps 1 " in card["recipe"]  # data other than the default is named
    assert 0 <= m["val_old_print_specificity"] <= 1 and 0 <= m["val_old_print_recall"] <= 1
    with pytest.raises(ConfigError, match="old_print"):
        guards.fit(GuardRecipe("occlusion", old_print=1.5), tmp_path, tmp_path / "occ", steps=1, batch=4, init=None)


def test_cascade_bands_keep_every_verdict_of_the_separate_networks_with_a_margin(tmp_path):
    from agelens.train.guard_bands import bands, write_card

    def row(s, head_occ, sep_occ, head_face=0.99999):
        return {"set": s, "head_occ": head_occ, "sep_occ": sep_occ, "head_face": head_face, "sep_face": 0.99}

    rows = [row("utk_clean", 0.001, 0.02), row("utk_clean", 0.3, 0.6, 0.5), row("aaf_clean", 0.0001, 0.0),
            row("utk_sunglasses", 0.08, 0.97), row("utk_mask", 0.9, 0.99), row("real_mask", 0.2, 0.95),
            row("real_sunglasses", 0.03, 0.05),  # the separate detector does not count it: not in the rule
            row("utk_hair", 1e-5, 0.4)]  # a newer family: reported, not in the rule
    neg_head = np.array([0.2, 0.9995, 0.99999, 0.5])
    neg_sep = np.array([0.1, 0.05, 0.9, 0.3])  # 0.99999 passes the separate network too: not a rejected one
    res = bands(rows, neg_head, neg_sep, occ_min=0.1)
    assert res["occlusion"]["skip_below"] == 0.04 and res["occlusion"]["n_flagged"] == 3
    assert res["face"]["skip_above"] == pytest.approx(0.99975) and res["face"]["negatives_skipped"] == 1
    per = res["per_set"]
    assert per["utk_clean"] == {"n": 2, "occlusion_skipped": 0.5, "face_skipped": 0.5}
    assert per["utk_hair"]["occlusion_skipped"] == 1.0 and per["utk_mask"]["occlusion_skipped"] == 0.0
    (tmp_path / "teacher.json").write_text(json.dumps({"name": "teacher", "guard_metrics": {"n_train": 4}}))
    write_card({**res, "recipe": "r"}, tmp_path)
    card = json.loads((tmp_path / "teacher.json").read_text())
    assert card["guard_cascade"] == {"occlusion": {"skip_below": 0.04}, "face": {"skip_above": 0.99975}}
    assert card["guard_metrics"]["n_train"] == 4 and card["guard_metrics"]["cascade"]["recipe"] == "r"


def test_face_like_negatives_are_the_predictors_proposals_on_face_free_photos(tmp_path):
    """Crops of every seeded sub-crop (aligned detector proposals and the sub-crop whole), all SIZE, reproducible;
    non-image files are ignored."""
    photo = Image.open(resources.files("agelens") / "assets" / "astronaut.jpg").convert("RGB")  # a face: proposals
    photo.save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    crops = guards.face_like_negatives(tmp_path, views=4)
    assert len(crops) > 4 and all(c.shape == (guards.SIZE, guards.SIZE, 3) for c in crops)  # proposals + 4 wholes
    again = guards.face_like_negatives(tmp_path, views=4)
    assert len(again) == len(crops) and all(np.array_equal(a, b) for a, b in zip(crops, again, strict=True))


def test_split_part_reads_the_age_models_split_and_names_what_is_missing(tmp_path):
    """The guards take their faces from the split the age models use (no test face of theirs is a guard's training
    face); a missing file, a missing part or a file that is not a split is a DataError naming it."""
    from agelens.data.splits import split_part
    from agelens.errors import DataError

    f = tmp_path / "split.json"
    f.write_text('{"parts": {"train": ["a.jpg", "b.jpg"], "val": ["c.jpg"], "test": ["d.jpg"]}}')
    assert split_part(f, "train") == ["a.jpg", "b.jpg"] and split_part(f, "test") == ["d.jpg"]
    with pytest.raises(DataError, match="no part 'holdout'"):
        split_part(f, "holdout")
    with pytest.raises(DataError, match="missing.json"):
        split_part(tmp_path / "missing.json", "train")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not a valid agelens split"):
        split_part(tmp_path / "list.json", "train")


def test_occlusion_threshold_rule_reports_specificity_under_photo_degradations(face_crop):
    """A detector that reads pixel noise as occlusion keeps 99 % of clean validation faces under its threshold but
    few of the same faces under grain and noise: the report must show the gap (photo) and leave it out (plain)."""
    import torch

    class NoiseReader(torch.nn.Module):
        mean_std = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

        def predict(self, x, tta_flip=False):
            hf = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean((1, 2, 3))  # high-frequency energy
            return torch.sigmoid(hf - hf.new_tensor(8.0)), None, None

    crop, lm = face_crop
    smooth = np.stack([cv2_blur(np.roll(crop, k, axis=1)) for k in range(0, 40, 4)])
    data = {"utk_val": smooth, "utk_val_lm": np.stack([lm] * len(smooth))}
    plain = guards.choose_threshold(NoiseReader(), data, GuardRecipe("occlusion"))
    photo = guards.choose_threshold(NoiseReader(), data, GuardRecipe("occlusion", photo=True))
    assert "val_photo_specificity" not in plain and plain["val_specificity"] >= 0.9
    assert photo["threshold"] == plain["threshold"] and photo["val_photo_specificity"] < plain["val_specificity"]


def cv2_blur(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (0, 0), 3)


def test_bands_cover_the_eyes_and_mouth_rows_from_the_landmarks(face_crop):
    img, lm = face_crop
    eyes_top, chin = lm[[105, 334, 66, 296], 1].min(), lm[[152, 148, 377], 1].max()
    seen = set()
    for seed in range(12):
        out = guards._bands(img, lm, np.random.default_rng(seed))
        changed = np.abs(out.astype(int) - img.astype(int)).sum(2) > 0
        rows = np.flatnonzero(changed.any(1))
        assert out.shape == img.shape and len(rows)
        assert rows.min() >= eyes_top - 0.2 * (chin - eyes_top) and rows.max() <= chin + 0.2 * (chin - eyes_top)
        seen.add((rows.min() < lm[6, 1], rows.max() > lm[2, 1]))  # (eyes covered, mouth covered)
    assert {(True, True), (True, False), (False, True)} <= seen  # both bands, the eyes' alone, the mouth's alone
    blank = np.full_like(img, 128)
    assert (guards._bands(blank, None, np.random.default_rng(0)) != 128).any()  # no landmarks: bands anyway


def test_large_blocks_cover_one_side_of_the_face_or_a_third_of_it(face_crop):
    """`halves`: a half face from about the nose's midline outwards, or a block of 30-45 % of the face box."""
    img, lm = face_crop
    x0, x1 = lm[[234, 93], 0].min(), lm[[454, 323], 0].max()
    mid = lm[[1, 6, 197, 195], 0].mean()
    sides, blocks = set(), 0
    for seed in range(20):
        out = guards._large_block(img, lm, np.random.default_rng(seed))
        changed = np.abs(out.astype(int) - img.astype(int)).sum(2) > 0
        cols = np.flatnonzero(changed.any(0))
        assert out.shape == img.shape and len(cols)
        if cols.min() <= x0 and abs(cols.max() - mid) <= 0.11 * (x1 - x0) + 1:
            sides.add("the image's left half")
        elif cols.max() >= min(x1, img.shape[1] - 1) and abs(cols.min() - mid) <= 0.11 * (x1 - x0) + 1:
            sides.add("the image's right half")
        else:
            blocks += 1
            assert changed.mean() > 0.02  # a block of a third of the face, not a speck
    assert len(sides) == 2 and blocks > 0
    blank = np.full_like(img, 128)
    assert (guards._large_block(blank, None, np.random.default_rng(1)) != 128).any()  # no landmarks: a block anyway


def test_side_covers_hide_one_side_of_the_face_behind_a_soft_edge(face_crop):
    """`sides` (the occlusion guard): one side of the face covered from about the nose's midline outwards, both
    sides over seeds; GuardSamples draws them among the occlusion positives."""
    img, lm = face_crop
    x0, x1 = lm[[234, 93], 0].min(), lm[[454, 323], 0].max()
    mid, fw = lm[[1, 6, 197, 195], 0].mean(), x1 - x0
    eye_row = int(lm[[33, 263], 1].mean())
    sides = set()
    for seed in range(16):
        out = guards._side_cover(img, lm, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.uint8
        changed = (np.abs(out.astype(int) - img.astype(int)).sum(2) > 6)[eye_row]
        left = changed[int(x0):int(mid - 0.25 * fw)].mean()
        right = changed[int(mid + 0.25 * fw):int(x1)].mean()
        assert max(left, right) > 0.9 and min(left, right) < 0.1  # one side covered at the eyes, the other not
        sides.add("left" if left > right else "right")
    assert sides == {"left", "right"}
    rng = np.random.default_rng(0)
    samples = guards.GuardSamples({"utk": img[None], "utk_lm": lm[None], "aaf": img[:0], "aaf_lm": lm[None][:0],
                                   "real": img[None]}, GuardRecipe("occlusion", sides=True))
    assert {samples.draw(rng)[1] for _ in range(40)} == {0.0, 1.0}


def _occlusion_data(crop: np.ndarray, lm: np.ndarray) -> dict[str, np.ndarray]:
    """A guards.npz's arrays for the occlusion guard, made of one face crop (and one blank "real" occluded face)."""
    return {"utk": np.stack([crop] * 2), "utk_lm": np.stack([lm] * 2), "aaf": crop[None], "aaf_lm": lm[None],
            "utk_val": np.stack([crop] * 2), "utk_val_lm": np.stack([lm] * 2),
            "real": np.zeros((1, *crop.shape), np.uint8), "real_kind": np.array(["mask"])}


def test_leave_one_family_out_options_of_the_occlusion_guard(tmp_path, face_crop):
    crop, lm = face_crop
    data = _occlusion_data(crop, lm)
    # without the real faces, a quarter of the draws that were real occluded faces are synthetic ones
    plain = guards.GuardSamples(data, GuardRecipe("occlusion"))
    synthetic = guards.GuardSamples(data, GuardRecipe("occlusion", real=False))
    rngs = [np.random.default_rng(k) for k in range(40)]
    real_drawn = [k for k in range(40) if 0.5 <= np.random.default_rng(k).random() < 0.75]
    assert real_drawn
    for k in real_drawn:
        a, b = plain.draw(np.random.default_rng(k)), synthetic.draw(np.random.default_rng(k))
        assert a[1] == 1.0 and (a[0] != b[0]).any()
    assert all(synthetic.draw(r)[0].shape == (guards.INPUT, guards.INPUT, 3) for r in rngs)
    np.savez(tmp_path / "guards.npz", **data)
    with pytest.raises(ConfigError, match="occlusion guard only"):
        guards.fit(GuardRecipe("faceness", without="hand"), tmp_path, tmp_path / "f", steps=1, batch=4, init=None)
    with pytest.raises(ConfigError, match="unknown occluder family"):
        guards.fit(GuardRecipe("occlusion", kinds="all", without="hands"), tmp_path, tmp_path / "o", steps=1, batch=4,
                   init=None)
    m = guards.fit(GuardRecipe("occlusion", kinds="all", without="hand", real=False), tmp_path, tmp_path / "o",
                   steps=1, batch=4, init=None, threads=1)
    card = json.loads(guards.ship(tmp_path / "o", "occlusion", tmp_path / "weights").with_suffix(".json").read_text())
    assert m["without"] == "hand" and m["real"] is False
    assert card["recipe"].endswith("--kinds all --without hand --no-real")


def test_random_shapes_in_the_occlusion_guard(tmp_path, face_crop, monkeypatch):
    crop, lm = face_crop
    data = _occlusion_data(crop, lm)
    drawn = []
    real_occluded = guards._occluded
    monkeypatch.setattr(guards, "_occluded", lambda img, lm, rng, kinds=(): drawn.append(kinds) or
                        real_occluded(img, lm, rng, kinds))
    plain = guards.GuardSamples(data, GuardRecipe("occlusion"))
    none = guards.GuardSamples(data, GuardRecipe("occlusion", random_shapes=0.0))
    for k in range(30):  # a share of 0 makes no draw: a recipe without the option samples as it did
        a, b = plain.draw(np.random.default_rng(k)), none.draw(np.random.default_rng(k))
        assert a[1] == b[1] and np.array_equal(a[0], b[0])
    assert drawn and ("random_shape",) not in drawn
    drawn.clear()
    half = guards.GuardSamples(data, GuardRecipe("occlusion", real=False, random_shapes=0.5))
    for k in range(80):
        half.draw(np.random.default_rng(k))
    assert 0.25 < drawn.count(("random_shape",)) / len(drawn) < 0.75
    np.savez(tmp_path / "guards.npz", **data)
    for task, share in (("faceness", 0.2), ("occlusion", 1.5)):
        with pytest.raises(ConfigError, match="random_shapes"):
            guards.fit(GuardRecipe(task, random_shapes=share), tmp_path, tmp_path / "x", steps=1, batch=4, init=None)
    m = guards.fit(GuardRecipe("occlusion", kinds="all", without="paper", real=False, random_shapes=0.25, seed=2),
                   tmp_path, tmp_path / "o", steps=1, batch=4, init=None, threads=1)
    card = json.loads(guards.ship(tmp_path / "o", "occlusion", tmp_path / "weights").with_suffix(".json").read_text())
    assert m["random_shapes"] == 0.25 and card["recipe"].endswith("--no-real --random-shapes 0.25 --seed 2")
