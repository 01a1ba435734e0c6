import numpy as np
import pytest
from PIL import Image

from agelens.data.adapters import FaceRecord, load_dataset
from agelens.data.cache import FaceCache, build_cache
from agelens.data.dataset import CachedFaceDataset
from agelens.errors import DataError, ImageError
from agelens.faces import FaceAnalyzer
from agelens.faces.align import TEMPLATE_KEYPOINTS, align_face, similarity_transform, transform_points
from agelens.imageio import load_image


def test_similarity_transform_recovers_known_motion():
    src = TEMPLATE_KEYPOINTS
    ang, s, t = 0.3, 1.7, np.array([5.0, -2.0])
    rot = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = src @ rot.T + t
    m = similarity_transform(src, dst)
    assert np.allclose(transform_points(src, m), dst, atol=1e-3)


def test_astronaut_face_detected_and_aligned(astronaut_path):
    rgb = load_image(astronaut_path)
    faces = FaceAnalyzer().find_faces(rgb)
    assert len(faces) == 1
    f = faces[0]
    assert 150 < f.box[0] < 220 and 60 < f.box[1] < 130 and f.landmarks is not None and f.landmarks.shape == (478, 2)
    crop, m = align_face(rgb, f.keypoints)
    assert crop.shape == (256, 256, 3)
    assert np.abs(transform_points(f.keypoints, m) - TEMPLATE_KEYPOINTS).max() < 12


def test_cache_lists_failures_and_dataset_crops(tmp_path, astronaut_path):
    rgb = load_image(astronaut_path)
    face = tmp_path / "face.png"
    Image.fromarray(rgb[30:300, 130:330]).save(face)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((120, 120, 3), 127, np.uint8)).save(blank)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really")
    recs = [FaceRecord(str(p), 40.0, group=str(p)) for p in (face, blank, broken)]
    cache = build_cache(recs, tmp_path / "c", size=128, aligned=False, workers=1, progress=False)
    assert len(cache) == 1 and cache.records[0].path == str(face)
    reasons = {f["path"]: f["reason"] for f in cache.failed}
    assert reasons[str(blank)] == "no face found" and "not a recognised image" in reasons[str(broken)]
    assert not np.isnan(cache.landmarks[0]).any()
    again = build_cache(recs, tmp_path / "c", size=128, aligned=False, workers=1, progress=False)
    assert again.meta["signature"] == cache.meta["signature"]
    ds = CachedFaceDataset(cache, train=True, crop_size=112, input_size=64, seed=3)
    a, age, _ = ds[0]
    b, _, _ = ds[0]
    assert a.shape == (64, 64, 3) and a.dtype.is_floating_point is False and float(age) == 40.0
    assert (a == b).all()  # same seed, epoch, index → same crop
    ev = CachedFaceDataset(cache, train=False, crop_size=112, input_size=112)
    assert ev[0][0].shape == (112, 112, 3)


def test_aligned_mode_keeps_crops_without_landmarks(utk_folder, tmp_path):
    lst = load_dataset("utkface", utk_folder)
    cache = build_cache(lst.records[:4], tmp_path / "c", size=64, aligned=True, workers=1, progress=False)
    assert len(cache) == 4 and cache.failed == [] and len(cache.meta["no_landmarks"]) >= 1
    for i, r in enumerate(cache.records):  # crops without a mesh are kept, their landmarks NaN
        assert np.isnan(cache.landmarks[i]).all() == (r.path in cache.meta["no_landmarks"])


def test_corrupt_cache_is_reported(tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        FaceCache(tmp_path)


@pytest.mark.parametrize("make,fragment", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(300)), "not a recognised image"),
    (lambda p: p.mkdir(), "is a directory"),
])
def test_bad_images_have_clear_errors(tmp_path, make, fragment):
    p = tmp_path / "x.jpg"
    make(p)
    with pytest.raises(ImageError, match=fragment):
        load_image(p)


def test_exif_rotation_and_modes(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10] = 255
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (40, 20, 3)
    Image.fromarray(np.zeros((10, 10, 4), np.uint8)).save(tmp_path / "alpha.png")
    assert load_image(tmp_path / "alpha.png")[0, 0].tolist() == [255, 255, 255]  # transparent → white
    Image.fromarray(np.arange(100, dtype=np.uint16).reshape(10, 10) * 600).save(tmp_path / "g16.png")
    assert load_image(tmp_path / "g16.png").shape == (10, 10, 3)
