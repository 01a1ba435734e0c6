import cv2
import numpy as np
import pytest
from PIL import Image

from agelens.data.adapters import FaceRecord, load_dataset
from agelens.data.cache import FaceCache, build_cache
from agelens.data.dataset import CachedFaceDataset
from agelens.errors import DataError, ImageError
from agelens.faces import FaceAnalyzer
from agelens.faces.align import (
    AA_SCALE,
    TEMPLATE_KEYPOINTS,
    align_face,
    similarity_transform,
    transform_points,
    warp,
)
from agelens.imageio import load_image


def test_similarity_transform_recovers_known_motion():
    src = TEMPLATE_KEYPOINTS
    ang, s, t = 0.3, 1.7, np.array([5.0, -2.0])
    rot = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = src @ rot.T + t
    m = similarity_transform(src, dst)
    assert np.allclose(transform_points(src, m), dst, atol=1e-3)


@pytest.mark.parametrize("scale, angle", [(0.1, 0.0), (0.2, 0.0), (0.3, 17.0), (0.35, 3.0), (0.45, -40.0)])
def test_shrinking_warp_keeps_geometry_and_averages_noise(scale, angle):
    """Where it shrinks, `warp` area-averages first: on a smooth image it matches the plain bilinear warp (same
    geometry, pixel centres included), on pixel noise it averages instead of sampling."""
    rng = np.random.default_rng(0)
    # detail no finer than 4 output pixels: area averaging and point sampling then agree; half a pixel off would
    # not (about 15 levels)
    smooth = cv2.GaussianBlur(rng.normal(0, 1, (1500, 1500, 3)).astype(np.float32), (0, 0), 4 / scale)
    smooth = cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX)
    c, s = scale * np.cos(np.radians(angle)), scale * np.sin(np.radians(angle))
    rot = np.array([[c, -s], [s, c]])
    m = np.hstack([rot, (np.array([64.0, 64.0]) - rot @ [750.0, 750.0])[:, None]]).astype(np.float32)
    plain = cv2.warpAffine(smooth, m, (128, 128), flags=cv2.INTER_LINEAR)
    assert np.abs(warp(smooth, m, 128) - plain).mean() < 0.5
    noise = rng.normal(128, 30, (1500, 1500)).astype(np.float32)
    assert warp(noise, m, 128).std() < 0.6 * cv2.warpAffine(noise, m, (128, 128)).std()


def test_warp_at_or_above_aa_scale_is_the_plain_warp():
    img = np.random.default_rng(1).integers(0, 255, (300, 300, 3)).astype(np.uint8)
    m = np.float32([[AA_SCALE, 0, -3.5], [0, AA_SCALE, 2.25]])
    assert np.array_equal(warp(img, m, 128), cv2.warpAffine(img, m, (128, 128), flags=cv2.INTER_LINEAR,
                                                             borderMode=cv2.BORDER_REPLICATE))
    edge = np.float32([[0.2, 0, -10], [0, 0.2, -5]])  # the output runs past the image: edges replicated
    assert warp(img, edge, 128).shape == (128, 128, 3)


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
