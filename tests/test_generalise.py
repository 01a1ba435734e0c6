"""Issue 19/18 building blocks: realistic degradations, the All-Age-Faces adapter, several datasets in one run,
group DRO within strata and the age-standardised group MAE."""

from __future__ import annotations

import unittest.mock as mock

import numpy as np
import pytest
import torch

from agelens.config import load_config
from agelens.data import augment
from agelens.data.adapters import load_dataset
from agelens.errors import ConfigError
from agelens.evaluate.metrics import standardised_mae
from agelens.fairness.losses import GroupDRO


def _face(seed: int = 0, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx * 2, yy * 2, (xx + yy)], -1).astype(np.float32) % 256
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(augment.DEGRADATIONS))
def test_each_degradation_changes_the_image_and_keeps_its_format(name):
    img = _face()
    out = augment.degrade_for_test(img, name, seed=3)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).mean() > 0.5, name
    np.testing.assert_array_equal(out, augment.degrade_for_test(img, name, seed=3))  # seeded: same copy every time


def test_grayscale_and_sepia_remove_colour():
    img = _face()
    g = augment.degrade_for_test(img, "grayscale", 0)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    s = augment.degrade_for_test(img, "sepia", 0).astype(int)
    assert (s[..., 0] >= s[..., 2]).mean() > 0.95  # warm tone: red over blue


def test_realistic_augmentation_is_seeded_and_strength_zero_is_identity():
    img = _face()
    a = augment.realistic(img, np.random.default_rng(5))
    np.testing.assert_array_equal(a, augment.realistic(img, np.random.default_rng(5)))
    np.testing.assert_array_equal(augment.realistic(img, np.random.default_rng(5), strength=0.0), img)
    changed = np.mean([np.abs(augment.realistic(img, np.random.default_rng(s)).astype(int) - img).mean() > 0.5
                       for s in range(40)])
    assert 0.6 < changed < 1.0  # most images get something, a few stay clean


def test_augment_p_replaces_the_named_probabilities():
    img = _face()
    off = dict.fromkeys(augment.TRAIN_P, 0.0)
    np.testing.assert_array_equal(augment.realistic(img, np.random.default_rng(1), p=off), img)
    grey = augment.realistic(img, np.random.default_rng(1), p={**off, "grayscale": 1.0})
    assert (grey[..., 0] == grey[..., 1]).all() and (grey != img).any()
    # the working resolution of the pixel-level ones: lower source_min, coarser JPEG blocks
    jpeg_only = {**off, "jpeg": 1.0}
    fine = augment.realistic(img, np.random.default_rng(2), source_scale=1.0, p=jpeg_only, source_min=1.0)
    coarse = augment.realistic(img, np.random.default_rng(2), source_scale=1.0, p=jpeg_only, source_min=0.1)
    assert fine.shape == coarse.shape == img.shape and (fine != coarse).any()
    with pytest.raises(ConfigError, match="train.augment_p must map"):
        load_config(None, ["train.augment_p={fog: 0.5}"])
    with pytest.raises(ConfigError, match="augment_source_min must be in"):
        load_config(None, ["train.augment_source_min=0.01"])


def test_old_print_is_every_sign_at_once_and_off_unless_asked():
    img = _face(size=128)
    outs = [augment.old_print(img, np.random.default_rng(s)).astype(float) for s in range(12)]
    for out in outs:
        assert out.shape == img.shape
        assert out.std() < img.std()  # faded: less contrast than the photo
        assert np.abs(out[1:] - out[:-1]).mean() > 0.5  # grain, not a flat wash
    # colour is gone or faint in every look (grey, toned, faded): the channels move together
    sat = [np.abs(o - o.mean(axis=2, keepdims=True)).mean() for o in outs]
    assert max(sat) < 0.5 * np.abs(img - img.mean(axis=2, keepdims=True)).mean()
    assert augment.TRAIN_P["old_print"] == 0.0
    # a degradation at probability 0 draws no random number: the recipes before it keep their exact stream
    without = {k: v for k, v in augment.TRAIN_P.items() if k != "old_print"}
    a = augment.realistic(img, np.random.default_rng(9), p={"old_print": 0.0})
    with mock.patch.object(augment, "TRAIN_P", without):
        np.testing.assert_array_equal(a, augment.realistic(img, np.random.default_rng(9)))
    on = augment.realistic(img, np.random.default_rng(9), p={**dict.fromkeys(augment.TRAIN_P, 0.0), "old_print": 1.0})
    assert np.abs(on.astype(float) - img).mean() > 5


def test_unknown_degradation_is_named():
    with pytest.raises(ValueError, match="unknown degradation 'fog'"):
        augment.degrade_for_test(_face(), "fog", 0)


def test_aaf_adapter_reads_the_csv_beside_the_folder(tmp_path):
    root = tmp_path / "aaf"
    root.mkdir()
    for f in ("00001A05.jpg", "00002A61.jpg"):
        (root / f).write_bytes(b"x")
    (tmp_path / "aaf.csv").write_text("file,age,gender,src_md5\n00001A05.jpg,5,female,aa\n00002A61.jpg,61,male,bb\n"
                                      "00003A20.jpg,20,male,cc\n,7,male,dd\n")
    listing = load_dataset("aaf", root)
    assert [(r.age, r.gender, r.race, r.group) for r in listing.records] == [(5, "female", None, "aa"),
                                                                           (61, "male", None, "bb")]
    assert sorted(b.reason for b in listing.bad) == ["empty file name", "missing file"]


def test_extra_data_config_parses_and_is_checked(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("extra_data:\n  - dataset: aaf\n    root: x\n    cache_dir: cache/aaf\n    split_file: s.json\n")
    cfg = load_config(p)
    assert cfg.extra_data[0].dataset == "aaf" and cfg.extra_data[0].cache_dir == "cache/aaf"
    p.write_text("extra_data:\n  - dataset: aaf\n")
    with pytest.raises(ConfigError, match=r"extra_data\[0\] needs its own cache_dir"):
        load_config(p)
    p.write_text("extra_data:\n  - dataset: aaf\n    bogus: 1\n")
    with pytest.raises(ConfigError, match=r"extra_data\[0\]\.bogus"):
        load_config(p)
    with pytest.raises(ConfigError, match="dro_within"):
        load_config(None, ["fairness.dro_by=age_bin", "fairness.dro_within=race"])


def test_group_dro_within_strata_keeps_each_stratum_mass():
    # groups 0,1 in stratum 0 (mass 3), groups 2,3 in stratum 1 (mass 1)
    dro = GroupDRO(np.array([0, 1, 2, 3]), 4, eta=0.5, strata=np.array([0, 0, 1, 1]), stratum_mass=np.array([3.0, 1.0]))
    for _ in range(20):  # group 1 always has the higher loss of its stratum, group 2 of the other; stratum 1 is worse
        dro(torch.tensor([1.0, 2.0, 9.0, 5.0]), torch.arange(4))
    q = dro.q.numpy()
    np.testing.assert_allclose([q[:2].sum(), q[2:].sum()], [0.75, 0.25], atol=1e-6)  # mass never moves across strata
    assert q[1] > q[0] and q[2] > q[3]  # inside a stratum it moves to the worse group


def test_standardised_mae_compares_groups_at_equal_age():
    # the same error at each age for both groups, but group b is mostly old (where errors are large):
    # raw MAE differs a lot, the age-standardised MAE does not
    ages = np.array([5.0] * 80 + [70.0] * 20 + [5.0] * 20 + [70.0] * 80)
    err = np.where(ages < 50, 1.0, 6.0)
    race = ["a"] * 100 + ["b"] * 100
    out = standardised_mae(ages + err, ages, None, race, n_boot=200)
    raw_a, raw_b = err[:100].mean(), err[100:].mean()
    assert raw_b - raw_a > 2.5
    r = out["race"]
    assert r["by_group"]["a"]["mae"] == pytest.approx(r["by_group"]["b"]["mae"]) == pytest.approx(3.5)
    assert r["spread"] == pytest.approx(0.0)
    lo, hi = r["spread_ci95"]
    assert lo <= r["spread"] <= hi
    assert "gender" not in out  # no gender labels given


def test_standardised_mae_finds_a_real_gap_with_an_interval_that_excludes_zero():
    rng = np.random.default_rng(0)
    ages = rng.integers(1, 80, 1000).astype(float)
    g = np.array(["female", "male"] * 500)
    err = rng.exponential(np.where(g == "male", 5.0, 3.0))
    out = standardised_mae(ages + err, ages, list(g), None, n_boot=300)["gender"]
    assert out["by_group"]["male"]["mae"] > out["by_group"]["female"]["mae"] + 1
    assert out["spread_ci95"][0] > 1.0


def test_conformal_z_covers_the_level_on_new_faces():
    from agelens.evaluate.calibrate import conformal_z, coverage

    rng = np.random.default_rng(1)

    def draw(n):
        true = rng.uniform(1, 90, n)
        spread = rng.uniform(1, 6, n)
        pred = true + rng.standard_t(4, n) * spread * 1.7  # heavier tails and wider than the spread says
        return pred, true, spread

    z = conformal_z(*draw(4000), level=0.9)
    assert z > 1.645  # the normal model's 1.645 under-covers these errors
    new = coverage(*draw(20000), z, 0, 200)
    assert 0.88 <= new["coverage"] <= 0.92
    assert set(new["per_bin"]) >= {"0-10", "61+"}
    with pytest.raises(ValueError, match="level"):
        conformal_z(np.ones(3), np.ones(3), np.ones(3), level=1.5)
    # under 9 faces no score is beyond the ⌈(n+1)·0.9⌉-th: the largest would cover 5 new faces in 6, not 9 in 10
    with pytest.raises(ValueError, match="8 calibration faces cannot calibrate a 90% interval: it needs at least 9"):
        conformal_z(*draw(8), level=0.9)
    assert conformal_z(*draw(9), level=0.9) > 0


def _age_dependent_errors(rng, n):
    """Predictions whose error grows with age faster than their spread says (as the age models' do)."""
    true = rng.uniform(1, 80, n)
    spread = rng.uniform(1.5, 3.0, n)
    pred = true + rng.normal(0, 1, n) * spread * (0.6 + true / 25)
    return pred, true, spread


def test_calibrate_from_end_to_end_predictions_writes_z_to_the_card(tmp_path):
    import json
    import shutil

    import pandas as pd
    from typer.testing import CliRunner

    from agelens.cli import app
    from agelens.utils import weights_dir

    for ext in (".safetensors", ".json"):
        shutil.copy(weights_dir() / f"teacher{ext}", tmp_path / f"t{ext}")
    before = json.loads((tmp_path / "t.json").read_text())
    (tmp_path / "t.json").write_text(json.dumps(before, indent=1) + "\n")  # a card laid out as the shipped ones
    name = before["name"]
    rng = np.random.default_rng(3)
    files = []
    for k in range(2):
        pred, true, spread = _age_dependent_errors(rng, 1500)
        d = pd.DataFrame({"path": [f"{k}_{i}.jpg" for i in range(len(pred))], "age": true, "pred": pred,
                          "spread": spread, "model": [name] * (len(pred) - 50) + ["student"] * 50})
        files.append(tmp_path / f"val_{k}" / "predictions.csv")
        files[-1].parent.mkdir()
        d.to_csv(files[-1], index=False)
    args = ["calibrate", str(tmp_path / "t.safetensors"), "--quiet"] + [a for f in files for a in ("--predictions", str(f))]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    text = (tmp_path / "t.json").read_text()
    card = json.loads(text)
    rec = card["interval_calibration"]
    # written back in the card's own layout: the lines before the changed keys are the old file's, unchanged
    assert text.splitlines()[:20] == (json.dumps(before, indent=1)).splitlines()[:20]
    assert rec["coverage"]["n"] == 2 * 1450  # the model's own rows only
    assert card["interval_z"] == rec["interval_z"] and 0.895 <= rec["coverage"]["coverage"] <= 0.905
    assert set(rec["per_dataset"]) == {str(f) for f in files}
    test_csv = tmp_path / "test" / "predictions.csv"
    test_csv.parent.mkdir()
    shutil.copy(files[0], test_csv)
    bad = CliRunner().invoke(app, ["calibrate", str(tmp_path / "t.safetensors"), "--predictions", str(test_csv)])
    assert bad.exit_code != 0 and "test part" in str(bad.exception)
    # the part evaluate recorded decides, not a folder named test higher up (before: refused as "a test part")
    val_csv = tmp_path / "test" / "mine" / "predictions.csv"
    val_csv.parent.mkdir()
    shutil.copy(files[0], val_csv)
    (val_csv.parent / "metrics.json").write_text(json.dumps({"part": "val"}))
    ok = CliRunner().invoke(app, ["calibrate", str(tmp_path / "t.safetensors"), "--predictions", str(val_csv),
                                  "--no-write"])
    assert ok.exit_code == 0, ok.output
    (val_csv.parent / "metrics.json").write_text(json.dumps({"part": "test"}))
    bad = CliRunner().invoke(app, ["calibrate", str(tmp_path / "t.safetensors"), "--predictions", str(val_csv)])
    assert bad.exit_code != 0 and "its metrics.json says so" in str(bad.exception)
    # --occluded picks cached faces; given with predictions it would be ignored: refused
    bad = CliRunner().invoke(app, ["calibrate", str(tmp_path / "t.safetensors"), "--predictions", str(files[0]),
                                   "--occluded", "--no-write"])
    assert bad.exit_code != 0 and "--occluded choose cached faces" in str(bad.exception)
    few = tmp_path / "val_few" / "predictions.csv"
    few.parent.mkdir()
    pd.read_csv(files[0]).head(5).to_csv(few, index=False)
    bad = CliRunner().invoke(app, ["calibrate", str(tmp_path / "t.safetensors"), "--predictions", str(few)])
    assert bad.exit_code != 0 and "5 calibration faces cannot calibrate" in str(bad.exception)


def test_two_datasets_train_together_and_each_test_part_is_reported(tmp_path, utk_folder):
    """UTKFace-style + an All-Age-Faces-style second dataset: one run over both train parts, realistic augmentation
    and group DRO within age bins, then one test report per dataset."""
    import json

    from PIL import Image

    from agelens.train.run import train_and_test

    aaf = tmp_path / "aaf"
    aaf.mkdir()
    rows = ["file,age,gender,src_md5"]
    for k, p in enumerate(sorted(utk_folder.glob("*.chip.jpg"))[:20]):
        name = f"{k:05d}A{k + 10:02d}.jpg"
        Image.open(p).save(aaf / name)
        rows.append(f"{name},{k + 10},{'male' if k % 2 else 'female'},h{k}")
    (tmp_path / "aaf.csv").write_text("\n".join(rows) + "\n")
    common = ["data.cache_size=48", "data.crop_size=40", "data.input_size=32", "data.val_frac=0.2", "data.test_frac=0.2"]
    cfg_p = tmp_path / "c.yaml"
    cfg_p.write_text(f"""
extra_data:
  - {{dataset: aaf, root: {aaf}, aligned: true, split_file: {tmp_path}/aaf_split.json, cache_dir: {tmp_path}/cache_aaf,
     cache_size: 48, crop_size: 40, input_size: 32, val_frac: 0.2, test_frac: 0.2}}
""")
    cfg = load_config(cfg_p, [f"data.root={utk_folder}", f"data.split_file={tmp_path}/split.json",
                              f"data.cache_dir={tmp_path}/cache", *common, "model.backbone=resnet18",
                              "train.batch_size=8", "train.numerics=fp32", "train.channels_last=off",
                              "train.freeze_backbone_epochs=0", "train.epochs=1", "train.augment=1.0",
                              "fairness.group_dro=true", "fairness.dro_by=age_bin,race,gender",
                              "fairness.dro_within=age_bin", f"out_dir={tmp_path}/runs", "name=both"])
    result = train_and_test(cfg, progress=False, log=lambda *_: None)
    run = tmp_path / "runs" / "both"
    utk_test = json.loads((run / "test" / "metrics.json").read_text())
    aaf_test = json.loads((run / "test_aaf" / "metrics.json").read_text())
    assert result["test_aaf"]["n"] == aaf_test["n"] == 4 and aaf_test["dataset"] == "aaf"
    assert utk_test["n"] == result["test"]["n"] and "standardised" in utk_test
    n_train = sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if '"dro_q"' in line)
    assert n_train >= 1
    q = json.loads([x for x in (run / "metrics.jsonl").read_text().splitlines() if '"dro_q"' in x][-1])["dro_q"]
    assert any(k.endswith("|unknown|female") or k.endswith("|unknown|male") for k in q)  # AAF: no race label


def test_source_scale_degrades_at_the_photo_s_pixel_size(monkeypatch):
    """Grain drawn at a lower working resolution and scaled back is coarse: neighbouring pixels move together."""
    monkeypatch.setattr(augment, "TRAIN_P", {"noise": 1.0})
    flat = np.full((128, 128, 3), 128, np.uint8)

    def roughness(out):  # neighbour difference relative to the noise's own size
        x = out[..., 0].astype(float)
        return np.abs(np.diff(x, axis=1)).mean() / (np.abs(x - 128).mean() + 1e-6)

    fine = np.mean([roughness(augment.realistic(flat, np.random.default_rng(s))) for s in range(8)])
    coarse = np.mean([roughness(augment.realistic(flat, np.random.default_rng(s), source_scale=1.0))
                      for s in range(8)])
    assert coarse < 0.7 * fine
    out = augment.realistic(flat, np.random.default_rng(0), source_scale=1.0)
    assert out.shape == flat.shape and out.dtype == np.uint8


class _FakeCache:
    """What CachedFaceDataset reads from a FaceCache: images, ages, landmarks, size."""

    def __init__(self, n: int = 2, size: int = 64) -> None:
        self.images = np.stack([_face(i, size) for i in range(n)])
        self.ages = np.linspace(30, 50, n).astype(np.float32)
        self.landmarks = np.full((n, 478, 2), np.nan, np.float32)
        self.size = size

    def __len__(self) -> int:
        return len(self.images)


def test_augment_pair_gives_two_degradation_draws_under_one_crop_and_flip(monkeypatch):
    from agelens.data.dataset import CachedFaceDataset

    ds = CachedFaceDataset(_FakeCache(), train=True, crop_size=56, input_size=48, seed=1, augment=1.0,
                           augment_pair=True)
    views = [ds[0][0], ds[1][0]]
    assert all(v.shape == (2, 48, 48, 3) for v in views)
    assert any((v[0] != v[1]).any() for v in views)  # two draws of the degradations
    monkeypatch.setattr(augment, "realistic", lambda img, *args, **kwargs: img)
    for k in range(2):  # without degradations the two views are the same pixels: same crop, same flip
        v = ds[k][0]
        assert (v[0] == v[1]).all()
    with pytest.raises(ValueError, match="augment_pair=True needs augment > 0"):
        CachedFaceDataset(_FakeCache(), train=True, crop_size=56, input_size=48, augment_pair=True)


def test_anchored_pair_keeps_the_first_view_undegraded():
    from agelens.data.dataset import CachedFaceDataset

    kw = {"train": True, "crop_size": 56, "input_size": 48, "seed": 1}
    plain = CachedFaceDataset(_FakeCache(), **kw)  # no degradations: the same crop and flip per record and epoch
    ds = CachedFaceDataset(_FakeCache(), augment=3.0, augment_pair=True, anchor=True, **kw)
    for k in range(2):
        pair = ds[k][0]
        assert (pair[0] == plain[k][0]).all()
        assert (pair[1] != pair[0]).any()  # at strength 3 every degradation is drawn on the second view
    with pytest.raises(ValueError, match="anchor=True needs augment_pair=True"):
        CachedFaceDataset(_FakeCache(), augment=1.0, anchor=True, **kw)


def test_resave_pair_is_one_photo_saved_twice():
    from agelens.data.augment import resave_pair

    img = _face(0, 64)
    for seed in range(12):
        a, b = resave_pair(img, np.random.default_rng(seed))
        assert a.shape == b.shape == img.shape and a.dtype == b.dtype == np.uint8
        assert 0 < np.abs(a.astype(int) - b.astype(int)).mean() < 12  # the same face, not the same pixels
        a2, b2 = resave_pair(img, np.random.default_rng(seed))
        assert (a == a2).all() and (b == b2).all()  # seeded


def test_resaved_pair_views_share_crop_flip_and_degradations(monkeypatch):
    from agelens.data import augment as aug
    from agelens.data.dataset import CachedFaceDataset

    kw = {"train": True, "crop_size": 56, "input_size": 48, "seed": 1}
    ds = CachedFaceDataset(_FakeCache(), augment=1.0, augment_pair=True, resave=True, **kw)
    for k in range(2):
        pair = ds[k][0]
        assert pair.shape == (2, 48, 48, 3)
        assert 0 < (pair[0].int() - pair[1].int()).abs().float().mean() < 12
    monkeypatch.setattr(aug, "resave_pair", lambda img, rng, source_min: (img, img))
    plain = CachedFaceDataset(_FakeCache(), augment=1.0, augment_pair=True, resave=True, **kw)
    for k in range(2):  # without the re-save the two views are the same degraded pixels
        pair = plain[k][0]
        assert (pair[0] == pair[1]).all()
    with pytest.raises(ValueError, match="resave=True needs augment_pair=True"):
        CachedFaceDataset(_FakeCache(), augment=1.0, resave=True, **kw)
    with pytest.raises(ConfigError, match="augment_resave needs train.augment_consistency > 0"):
        load_config(None, ["train.augment_resave=true", "train.augment=1.0"])
    cfg = load_config(None, ["train.augment_resave=true", "train.augment=1.0", "train.augment_consistency=1.0"])
    assert cfg.train.augment_resave


def test_augment_consistency_config_is_checked():
    with pytest.raises(ConfigError, match="augment_consistency needs train.augment > 0"):
        load_config(None, ["train.augment_consistency=1.0"])
    cfg = load_config(None, ["train.augment_consistency=1.0", "train.augment=1.0", "train.augment_source_scale=0.5"])
    assert cfg.train.augment_consistency == 1.0 and cfg.train.augment_source_scale == 0.5
    with pytest.raises(ConfigError, match="augment_anchor needs train.augment_consistency > 0"):
        load_config(None, ["train.augment_anchor=true", "train.augment=1.0"])


def test_the_smallest_working_resolution_has_one_default():
    """train.augment_source_min and CachedFaceDataset's source_min default to the augmentation's own floor."""
    import inspect

    from agelens.config import TrainConfig
    from agelens.data.augment import SOURCE_SCALE
    from agelens.data.dataset import CachedFaceDataset

    default = inspect.signature(CachedFaceDataset.__init__).parameters["source_min"].default
    assert TrainConfig().augment_source_min == default == SOURCE_SCALE[0]



def test_realign_finds_the_occluded_face_again_as_predict_does():
    """occlusion.realign: an occluded training face is found and aligned again on the occluded image (the landmarks
    meet the occluder); without a face found the image stays as it is; evaluation never realigns."""
    from importlib import resources

    from PIL import Image

    from agelens.data.dataset import CachedFaceDataset
    from agelens.faces.detect import FaceAnalyzer
    from agelens.faces.prepare import prepare_face
    from agelens.occlusion.synth import OcclusionMix

    photo = np.asarray(Image.open(resources.files("agelens") / "assets" / "astronaut.jpg").convert("RGB"))
    crop, lm = prepare_face(photo, FaceAnalyzer(), 256, aligned=False)
    cache = _FakeCache(1, 256)
    cache.images, cache.landmarks = crop[None], lm[None]
    kw = {"crop_size": 224, "input_size": 64, "seed": 3, "occlusion": OcclusionMix({"sunglasses+mask": 1.0})}
    kept, kind = CachedFaceDataset(cache, train=True, **kw).occluded_view(0)
    ds = CachedFaceDataset(cache, train=True, realign=1.0, **kw)
    again, kind2 = ds.occluded_view(0)
    assert kind == kind2 == "sunglasses+mask" and again.shape == kept.shape
    assert np.abs(again.astype(int) - kept.astype(int)).mean() > 1  # warped again from the found landmarks
    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    assert ds._realigned(noise) is noise
    same, _ = CachedFaceDataset(cache, train=False, realign=1.0, **kw).occluded_view(0)
    plain, _ = CachedFaceDataset(cache, train=False, **kw).occluded_view(0)
    assert np.array_equal(same, plain)
    # realign_net: the found crop then corrected by the shipped realignment network, as predict corrects it
    from agelens.faces import realign

    model = realign.shipped()
    if model is None:
        return
    net = CachedFaceDataset(cache, train=True, realign=1.0, realign_net=True, **kw)
    corrected, kind3 = net.occluded_view(0)
    assert kind3 == kind and corrected.shape == again.shape
    assert np.abs(corrected.astype(int) - again.astype(int)).mean() > 1
    assert net._realigned(noise) is noise


def test_calibrate_leaves_a_shipped_card_alone_unless_forced(tmp_path):
    """`agelens calibrate teacher --predictions ...` wrote into the installed package's card (site-packages for a
    pip user: every user of the install got the new intervals, a reinstall undid them); now refused without
    --force, and a calibration on few faces says its z is uncertain."""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from agelens.cli import app
    from agelens.utils import weights_dir

    card = (weights_dir() / "teacher.json").read_text()
    name = json.loads(card)["name"]
    pred, true, spread = _age_dependent_errors(np.random.default_rng(5), 120)
    f = tmp_path / "val" / "predictions.csv"
    f.parent.mkdir()
    pd.DataFrame({"path": [f"{i}.jpg" for i in range(len(pred))], "age": true, "pred": pred, "spread": spread,
                  "model": name}).to_csv(f, index=False)
    r = CliRunner().invoke(app, ["calibrate", "teacher", "--predictions", str(f)])
    assert r.exit_code != 0 and "is a shipped model" in str(r.exception) and "--force" in str(r.exception)
    assert (weights_dir() / "teacher.json").read_text() == card
    assert "calibrated on 120 faces" in r.output and '"interval_z"' in r.output  # the record is still reported
