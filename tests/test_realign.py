"""Realigning the student's crops: the correction's geometry, the training targets, the exported network, the
shipped one on a shifted face, resampling from the crop's source, and the predictor's wiring."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agelens.data.views import centre_views
from agelens.faces import realign
from agelens.faces.align import TEMPLATE_KEYPOINTS, align_face, transform_points, warp
from agelens.faces.realign import RealignModel
from agelens.inference.predictor import FAST_STUDENT_VIEWS, SINGLE_VIEW, STUDENT_VIEWS

needs_weights = pytest.mark.skipif(realign.shipped() is None, reason="no shipped realignment network")


@pytest.fixture(scope="module")
def photo() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut photo and its face's keypoints (FaceMesh with iris points, as the caches are aligned)."""
    from importlib import resources

    from agelens.faces.detect import FaceAnalyzer
    from agelens.faces.prepare import largest_face

    rgb = np.asarray(Image.open(resources.files("agelens") / "assets" / "astronaut.jpg").convert("RGB"))
    a = FaceAnalyzer()
    face = largest_face([f for f in a.find_faces(rgb) if f.landmarks is not None])
    a.close()
    return rgb, face.keypoints


@pytest.fixture(scope="module")
def aligned(photo) -> np.ndarray:
    """The astronaut's face, aligned as the caches are, 256 px."""
    return align_face(photo[0], photo[1], 256)[0]


class TrueReader(RealignModel):
    """Reads the template's keypoints where a known similarity `j` put them: the ideal network."""

    def __init__(self, j: np.ndarray) -> None:
        self.j, self.calls = j, 0

    def points(self, crops):
        j = self.j if self.calls == 0 else np.eye(2, 3, dtype=np.float32)  # after one correction: aligned
        self.calls += 1
        side = np.asarray(crops).shape[1]
        return np.stack([transform_points(TEMPLATE_KEYPOINTS * side / 256, j) / side] * len(crops))


def jitter(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    from agelens.faces.realign import centred_similarity

    return centred_similarity(scale, degrees, shift)


def test_correction_undoes_a_known_misalignment(aligned):
    j = jitter(1.12, 6.0, (14.0, -9.0))
    moved = warp(aligned, j, 256)
    back = TrueReader(j).realign(moved[None])[0]
    inner = slice(48, 208)  # away from the edges the warps replicated
    err = np.abs(back[inner, inner].astype(int) - aligned[inner, inner]).mean()
    assert err < 6, err  # bilinear resampling twice, nothing more
    assert np.abs(moved[inner, inner].astype(int) - aligned[inner, inner]).mean() > 3 * err


def test_a_source_resamples_the_crop_from_its_surroundings_and_travels_framed(photo):
    import pickle

    rgb, kp = photo
    crop, m = align_face(rgb, kp, 256)
    src = realign.CropSource(rgb, m, 256)
    same = np.abs(src.resample(np.eye(2, 3, dtype=np.float32)).astype(int) - crop)
    assert same.mean() < 0.05  # the crop again, but for OpenCV's 1/32 px rounding of the shifted warp
    shift = jitter(0.85, 8.0, (30.0, -20.0))  # zooms out and shifts past the crop's edges
    want = warp(rgb, realign.compose(shift, m), 256)  # the moved crop warped from the photo
    assert np.abs(src.resample(shift).astype(int) - want).mean() < 1.5  # resampled twice, nothing cut off
    from_crop = warp(crop, shift, 256)  # the crop's edges replicated where the photo has the face's surroundings
    assert np.abs(from_crop.astype(int) - want).mean() > 5
    d = int(round(realign.CONTEXT * 256))
    assert src.framed_source() is src.framed_source() and src.framed_source().image.shape == (256 + 2 * d,) * 2 + (3,)
    sent = pickle.loads(pickle.dumps(src))  # as a worker process gets it: the frame, not the photo
    assert sent.framed and sent.image.nbytes < rgb.nbytes
    assert np.array_equal(sent.resample(shift), src.resample(shift))  # the same answer in every process
    assert np.array_equal(pickle.loads(pickle.dumps(sent)).image, sent.image)
    moved = TrueReader(shift).realign(crop[None], sources=[src])[0]  # the realignment warps from the source
    assert np.array_equal(moved, src.resample(TrueReader(shift).corrections(crop[None])[0]))


def test_training_targets_follow_the_jitter_and_mirror_consistently():
    from agelens.train.realign import mirrored, sample, sample_jitter

    rng = np.random.default_rng(0)
    img = np.zeros((256, 256, 3), np.uint8)
    for p in TEMPLATE_KEYPOINTS.astype(int):  # a bright dot on each template keypoint
        img[p[1] - 3:p[1] + 4, p[0] - 3:p[0] + 4] = 255
    lm = np.full((478, 2), np.nan, np.float32)  # no landmarks: never occluded
    for _ in range(5):
        x, y = sample(img, lm, np.random.default_rng(rng.integers(1 << 30)), degraded_p=0.0)
        big = np.repeat(np.repeat(x, 4, 0), 4, 1)
        for p in (y.reshape(5, 2) * 256).astype(int):  # each target keypoint sits on a dot
            assert big[np.clip(p[1], 0, 255), np.clip(p[0], 0, 255)].max() > 60
    tpl = (TEMPLATE_KEYPOINTS / 256).reshape(1, 10)
    assert np.allclose(mirrored(np.zeros((1, 4, 4, 3), np.uint8), tpl)[1], tpl, atol=1e-6)  # the template is symmetric
    for seed in range(20):  # a similarity about the centre: rotation and scale only, shift within 25 px
        j = sample_jitter(np.random.default_rng(seed))
        assert j[0, 0] == pytest.approx(j[1, 1]) and j[0, 1] == pytest.approx(-j[1, 0])
        assert 0.77 < np.linalg.det(j[:, :2]) ** 0.5 < 1.3
        assert np.abs(transform_points(np.array([[128.0, 128.0]]), j) - 128).max() <= 25.0 + 1e-3


def test_exported_network_matches_torch_on_uint8_crops(tmp_path):
    import torch

    from agelens.train.realign import export, make_net

    torch.manual_seed(0)
    net = make_net().eval()
    export(net, tmp_path / "r.onnx")
    m = RealignModel(tmp_path / "r.onnx")
    crops = np.random.default_rng(0).integers(0, 255, (3, realign.SIZE, realign.SIZE, 3), dtype=np.uint8)
    with torch.no_grad():
        want = net(torch.from_numpy(crops)).numpy().reshape(3, 5, 2)
    assert np.allclose(m.points(crops, mirror=False), want, atol=1e-4)
    # the default reading averages each crop's with its mirror image's, mirrored back: so a mirrored crop reads
    # as the mirror image of the crop's reading
    flipped = np.ascontiguousarray(crops[:, :, ::-1])
    back = m.points(flipped)[:, realign.FLIP]  # mirrored back by hand, not by the code under test
    back[..., 0] = 1.0 - back[..., 0]
    assert np.allclose(back, m.points(crops), atol=1e-5)
    assert not np.allclose(m.points(crops), want, atol=1e-4)
    assert m.points(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, 5, 2)
    assert m.realign(np.zeros((0, 256, 256, 3), np.uint8)).shape == (0, 256, 256, 3)
    assert not list(tmp_path.glob("*.tmp"))


def _keypoint_error(net: RealignModel, crop: np.ndarray, j: np.ndarray) -> tuple[float, float]:
    """Mean distance (px) of the template keypoints from where they belong, before and after the correction."""
    true = transform_points(TEMPLATE_KEYPOINTS, j)
    before = np.linalg.norm(true - TEMPLATE_KEYPOINTS, axis=1).mean()
    m = net.corrections(crop[None])[0]
    after = np.linalg.norm(transform_points(true, m) - TEMPLATE_KEYPOINTS, axis=1).mean()
    return float(before), float(after)


@needs_weights
def test_shipped_network_brings_a_misaligned_face_back(aligned):
    net = realign.shipped()
    for j in (jitter(1.15, 0.0, (0.0, 12.0)), jitter(0.9, -7.0, (-10.0, 5.0))):
        before, after = _keypoint_error(net, warp(aligned, j, 256), j)
        assert after < 0.5 * before, (before, after)
    _, still = _keypoint_error(net, aligned, np.eye(2, 3, dtype=np.float32))
    assert still < 3.0  # an aligned face stays about where it is


@needs_weights
def test_student_reads_realigned_crops_and_the_switch_turns_it_off(aligned):
    from agelens import AgeEstimator

    est = AgeEstimator.from_pretrained(backend="onnx", route="student")
    est.student_views = SINGLE_VIEW  # the views are tested below
    moved = warp(aligned, jitter(1.12, 5.0, (10.0, 12.0)), 256)[None]
    on = est.analyse_crops(moved)["age"]
    est.realign = False
    off = est.analyse_crops(moved)["age"]
    by_hand = est.analyse_crops(realign.shipped().realign(moved))["age"]
    assert on == pytest.approx(by_hand, abs=1e-4) and abs(on[0] - off[0]) > 1e-3


@needs_weights
def test_predict_realigns_the_students_faces_from_the_photo(photo):
    from agelens import AgeEstimator

    rgb = photo[0]
    est = AgeEstimator.from_pretrained(backend="onnx", route="student")
    est.student_views = SINGLE_VIEW
    faces = est.faces_of(rgb)
    src = faces[0][5]
    assert isinstance(src, realign.CropSource) and src.image is rgb
    crops = np.stack([f[2] for f in faces])
    got = [p.age for p in est.predict(rgb)]
    from_crops = est.analyse_crops(crops)["age"]  # no sources: realigned within the crop
    est.realign = False
    want = est.analyse_crops(realign.shipped().realign(crops, sources=[f[5] for f in faces]))["age"]
    assert got == pytest.approx(want, abs=0.01) and abs(from_crops[0] - want[0]) > 1e-3
    assert est.analyse_faces(faces)["age"] == pytest.approx(est.analyse_crops(crops)["age"], abs=1e-5)


@needs_weights
@pytest.mark.parametrize(("tta", "views", "mirror"), [("auto", STUDENT_VIEWS, False), ("auto", FAST_STUDENT_VIEWS, True),
                                                      ("full", STUDENT_VIEWS, False)])
def test_student_answers_the_mean_of_its_views(photo, tta, views, mirror):
    """Each view warped from the source, read plain and mirrored ("auto": the mirror where that view is unsure, or
    for every view with student_mirror; "full": the flip-TTA graph), the answer their mean."""
    from agelens import AgeEstimator

    est = AgeEstimator.from_pretrained(backend="onnx", route="student", tta_flip=tta)
    assert est.student_views == STUDENT_VIEWS and len(STUDENT_VIEWS) > 1 and not est.student_mirror
    est.student_views, est.student_mirror = views, mirror
    faces = est.faces_of(photo[0])
    crops, sources = np.stack([f[2] for f in faces]), [f[5] for f in faces]
    got = est.analyse_faces(faces)
    net = realign.shipped()
    c = net.corrections(crops, sources=sources)
    s = est.student
    per_view = []  # each view warped by hand from the source, read plain and mirrored
    for scale, degrees in views:
        v = realign.centred_similarity(scale, degrees)
        moved = centre_views(np.stack([src.resample(realign.compose(v, m)) for src, m in zip(sources, c)]),
                             s.crop_size, s.input_size)
        plain = s.run(moved)
        if tta == "auto":  # the single-view graph: the mirror by hand, where unsure unless student_mirror
            mirrored = s.run(np.ascontiguousarray(moved[:, :, ::-1]))
            flip = np.ones(len(moved), bool) if mirror else plain[1] >= est.student_tta_spread
            plain = tuple(np.where(flip, (p + q) / 2, p) for p, q in zip(plain, mirrored))
        per_view.append(plain)
    assert got["age"] == pytest.approx(np.mean([r[0] for r in per_view], 0), abs=1e-4)
    assert got["spread"] == pytest.approx(np.mean([r[1] for r in per_view], 0), abs=1e-4)
    if len(views) > 1:
        assert np.ptp([r[0][0] for r in per_view]) > 1e-3  # the views differ
    single = AgeEstimator.from_pretrained(backend="onnx", route="student", tta_flip="none")
    assert single.student_views == SINGLE_VIEW
