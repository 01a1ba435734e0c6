"""The head re-fit: its weights and its fit on synthetic features."""

import numpy as np

from agelens.train.head_refit import fit_head, group_weights, groups_of, head_ages


def test_group_weights_balance_bins_and_groups():
    ages = np.array([5.0] * 8 + [25.0] * 2)
    groups = np.array(["a"] * 6 + ["b"] * 2 + ["a", "b"])
    same = group_weights(ages, groups, 0.0, 0.0)
    assert np.allclose(same, 1.0)
    w = group_weights(ages, groups, 1.0, 0.0)  # each bin the same total mass
    assert np.isclose(w[:8].sum(), w[8:].sum()) and np.isclose(w.mean(), 1.0)
    g = group_weights(ages, groups, 0.0, 1.0)  # within 0-10: a and b the same mass, the bin's mass kept
    assert np.isclose(g[:6].sum(), g[6:8].sum()) and np.isclose(g[:8].sum(), 8.0)
    assert np.allclose(g[8:], 1.0)


def test_groups_of_marks_unlabelled_race():
    assert list(groups_of(np.array(["white", ""]), np.array(["male", "female"]))) == ["white|male", "aaf|female"]


def test_fit_head_learns_and_reweights():
    rng = np.random.default_rng(0)
    ages = rng.uniform(0, 80, 2000).astype(np.float32)
    emb = np.stack([ages / 80, rng.normal(size=2000)], 1).astype(np.float32) + rng.normal(0, 0.02, (2000, 2))
    w0, b0 = np.zeros((101, 2), np.float32), np.zeros(101, np.float32)
    before = np.abs(head_ages(w0, b0, emb) - ages).mean()
    w, b = fit_head(emb, ages, np.ones(2000), w0, b0, sigma=2.0, epochs=30, lr=0.05, dropout=0.0, batch=256)
    after = np.abs(head_ages(w, b, emb) - ages).mean()
    assert after < 0.5 * before


def test_group_weights_keep_each_stratum_mass():
    ages = np.full(6, 30.0)
    groups = np.array(["a", "a", "b", "x", "x", "x"])
    strata = np.array(["utk"] * 3 + ["aaf"] * 3)
    g = group_weights(ages, groups, 0.0, 1.0, strata)
    assert np.isclose(g[:3].sum(), 3.0) and np.isclose(g[:2].sum(), g[2]) and np.allclose(g[3:], 1.0)


def test_apply_writes_the_teacher_with_the_new_head(tmp_path):
    import json

    from agelens.models.weights import load_weights, weights_dir
    from agelens.train.head_refit import STALE, apply

    _, _, card = load_weights(weights_dir() / "teacher.safetensors")
    w = np.random.default_rng(0).normal(0, 0.01, (101, 1280)).astype(np.float32)
    b = np.linspace(-1, 1, 101).astype(np.float32)
    np.savez(tmp_path / "head.npz", weight=w, bias=b)
    (tmp_path / "scores.json").write_text(json.dumps({"recipe": {"age_power": 0.0}}))
    out = apply(tmp_path, tmp_path / "weights")
    model, _, new_card = load_weights(out)
    assert np.allclose(model.head.fc.weight.detach().numpy(), w, atol=1e-4)
    assert np.allclose(model.head.fc.bias.detach().numpy(), b, atol=1e-3)
    assert new_card["head_refit"]["recipe"] == {"age_power": 0.0}
    assert not set(STALE) & set(new_card) and new_card["guard_thresholds"] == card["guard_thresholds"]


def test_consistency_moves_the_head_off_features_that_change_on_resave():
    """Two features carry the age equally well; the second one moves between two files of a face. With the
    consistency term the head leans on the first and the pairs' answers agree more."""
    rng = np.random.default_rng(0)
    ages = rng.uniform(0, 80, 3000).astype(np.float32)
    emb = np.stack([ages / 80 + rng.normal(0, 0.05, 3000), ages / 80 + rng.normal(0, 0.05, 3000)], 1)
    emb = emb.astype(np.float32)
    b_view = emb + np.stack([np.zeros(3000), rng.normal(0, 0.2, 3000)], 1).astype(np.float32)
    w0, b0 = np.zeros((101, 2), np.float32), np.zeros(101, np.float32)
    change = {}
    for c in (0.0, 5.0):
        w, b = fit_head(emb, ages, np.ones(3000), w0, b0, sigma=2.0, epochs=30, lr=0.05, dropout=0.0, batch=256,
                        pairs=(emb, b_view, ages, np.ones(3000)), consistency=c)
        change[c] = np.abs(head_ages(w, b, emb) - head_ages(w, b, b_view)).mean()
    assert change[5.0] < 0.6 * change[0.0]


def test_jpeg_pair_keeps_the_size_and_differs():
    from agelens.train.head_refit import jpeg_pair

    img = (np.random.default_rng(0).uniform(0, 255, (64, 64, 3))).astype(np.uint8)
    a, b = jpeg_pair(img, np.random.default_rng(1))
    assert a.shape == b.shape == img.shape and a.dtype == np.uint8 and np.abs(a.astype(int) - b).mean() > 0


def test_occluded_draws_one_occluder_per_face_and_skips_faces_without_landmarks():
    from importlib import resources

    from agelens.train.head_refit import occluded

    lm = np.load(str(resources.files("agelens") / "assets" / "mean_landmarks_256.npy")).astype(np.float32)
    imgs = np.full((3, 256, 256, 3), 150, np.uint8)
    lms = np.stack([lm, np.full_like(lm, np.nan), lm])
    out = occluded(imgs, lms, {"mask": 1.0}, seed=0)
    changed = [(out[i] != imgs[i]).any() for i in range(3)]
    assert changed == [True, False, True] and (imgs == 150).all()  # the input is left as it was
    again = occluded(imgs, lms, {"mask": 1.0}, seed=0)
    assert (again == out).all()  # seeded per face


def test_fit_refuses_another_models_features(tmp_path, monkeypatch):
    import sys

    import pytest

    from agelens.train import head_refit

    for ds in head_refit.DATASETS:
        np.savez(tmp_path / f"{ds}_train.npz", age=np.zeros(2, np.float32), model=np.array("teacher"))
    monkeypatch.setattr(sys, "argv", ["head_refit", "fit", "--model", "student", "--features", str(tmp_path),
                                      "--out", str(tmp_path / "fit")])
    with pytest.raises(SystemExit, match="teacher's features"):
        head_refit.main()


def test_photo_scale_degradation_is_coarser_than_at_crop_scale():
    """Grain added at a small photo's pixel scale and enlarged is smoother (coarser blobs) than the same grain
    drawn on the crop: the view `features --views photo_scan_grain` extracts."""
    from agelens.data.augment import degrade_for_test
    from agelens.train.head_refit import at_photo_scale

    img = np.full((128, 128, 3), 128, np.uint8)
    photo, crop = at_photo_scale(img, "noise", 3), degrade_for_test(img, "noise", 3)
    assert photo.shape == img.shape and photo.dtype == np.uint8
    grad = {k: np.abs(np.diff(v.astype(np.float32), axis=1)).mean() for k, v in (("photo", photo), ("crop", crop))}
    assert grad["photo"] < 0.6 * grad["crop"] and photo.std() > 1.0
    assert (at_photo_scale(img, "noise", 3) == photo).all()  # seeded
