"""benchmarks/gpu_train.py: the cache pack that travels to a GPU machine unpacks into a usable FaceCache."""

import json
import sys
from pathlib import Path

import numpy as np

from agelens.data.cache import N_LANDMARKS, FaceCache, cache_checksums
from agelens.models.regions import region_masks, view_landmarks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_train  # noqa: E402


def _fake_cache(root: Path, n: int, size: int = 256) -> Path:
    """A FaceCache of smooth synthetic faces with jittered mean landmarks; record 1 has none (NaN)."""
    from agelens.models.regions import mean_landmarks

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size]
    imgs = np.stack([np.stack([(xx + 40 * k) % 256, (yy * 2 + 30 * k) % 256, (xx + yy) // 2], -1)
                     for k in range(n)]).astype(np.uint8)
    lms = mean_landmarks()[None] * (size / 256) + rng.normal(0, 2, (n, N_LANDMARKS, 2)).astype(np.float32)
    lms[1] = np.nan
    np.save(root / "images.npy", imgs)
    np.save(root / "landmarks.npy", lms.astype(np.float32))
    records = [{"path": f"{20 + k}_0_0_x.jpg", "age": 20.0 + k, "gender": "male", "race": "white",
                "group": f"g{k}"} for k in range(n)]
    meta = {"version": 1, "signature": "test", "size": size, "aligned": True, "records": records, "failed": [],
            "checksums": cache_checksums(root)}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_pack_unpack_roundtrip(tmp_path):
    caches = tmp_path / "caches"
    for part, n in (("train", 5), ("val", 3)):
        _fake_cache(caches / part, n)
    gpu_train.pack(caches, tmp_path / "pack", 90, {"train": 4, "val": None}, [], imagenet=False)
    out = gpu_train.unpack(tmp_path / "pack", tmp_path / "unpacked")
    src, got = FaceCache(caches / "train"), FaceCache(out / "train")  # FaceCache verifies the new checksums
    assert len(got) == 4 and got.size == gpu_train.SIZE and len(FaceCache(out / "val")) == 3
    assert [r.age for r in got.records] == [20.0, 21.0, 22.0, 23.0]
    scale = gpu_train.SIZE / src.size
    idx = gpu_train.used_points()
    # the points the region masks and the occluders read survive to 1/4 px; a face without landmarks stays NaN
    np.testing.assert_allclose(got.landmarks[0][idx], src.landmarks[0][idx] * scale, atol=0.13)
    assert np.isnan(got.landmarks[1]).all() and np.isfinite(got.landmarks[2]).all()
    # so the region masks of the small crop match those of the original at the same relative view
    a = region_masks(view_landmarks(np.asarray(src.landmarks[0]), src.size, 16, 16, 224, False))
    b = region_masks(view_landmarks(np.asarray(got.landmarks[0]), got.size, 8, 8, 112, False))
    assert np.abs(a - b).mean() < 0.01 and np.abs(a - b).max() <= 0.25  # edge sub-pixels only
    small = np.asarray(got.images[2]).astype(float)  # lossy WebP of an area-downscaled crop
    ref = np.asarray(src.images[2]).reshape(128, 2, 128, 2, 3).mean((1, 3))
    assert np.abs(small - ref).mean() < 6


def test_ship_pack_roundtrip(tmp_path):
    """The ship pack: both datasets at a chosen size, landmarks as int8 pixels from the median face (NaN kept), a
    seeded validation sample rather than the first faces (the caches are in file-name order, age first)."""
    caches = tmp_path / "caches"
    for ds in gpu_train.SHIP_DATASETS:
        for part, n in (("train", 5), ("val", 6)):
            _fake_cache(caches / ds / part, n)
    gpu_train.pack_ship(tmp_path / "pack", 183, 90, dict.fromkeys(gpu_train.SHIP_DATASETS, 3), caches=caches)
    out = gpu_train.unpack(tmp_path / "pack", tmp_path / "unpacked")
    for ds in gpu_train.SHIP_DATASETS:
        src, got = FaceCache(caches / ds / "train"), FaceCache(out / ds / "train")
        assert len(got) == 5 and got.size == 183
        idx = gpu_train.used_points()
        np.testing.assert_allclose(got.landmarks[0][idx], src.landmarks[0][idx] * 183 / 256, atol=0.51)
        assert np.isnan(got.landmarks[1]).all() and np.isfinite(got.landmarks[2]).all()
        val = FaceCache(out / ds / "val")
        ages = [r.age for r in val.records]
        assert len(ages) == 3 and ages == sorted(ages) and ages != [20.0, 21.0, 22.0]  # a sample, not the first 3
