"""Faces on photos turned by quarter turns: the box mapping, the orientation classifier, and predict turning the
image upright before it aligns."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agelens.faces import orientation
from agelens.faces.orientation import OrientationModel, box_crop, turned_back

needs_weights = pytest.mark.skipif(orientation.shipped() is None, reason="no shipped orientation classifier")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from importlib import resources

    return np.asarray(Image.open(resources.files("agelens") / "assets" / "astronaut.jpg").convert("RGB"))


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_turned_back_maps_a_box_on_the_turned_image_onto_the_original(k):
    img = np.zeros((60, 90), np.uint8)
    img[10:25, 50:80] = 1  # rows 10-24, columns 50-79: the box (50, 10, 80, 25)
    turned = np.rot90(img, k)
    ys, xs = np.nonzero(turned)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert turned_back(box, k, img.shape) == pytest.approx((50, 10, 80, 25))


def test_box_crop_is_square_centred_and_padded_black_outside_the_image():
    rgb = np.full((40, 40, 3), 200, np.uint8)
    crop = box_crop(rgb, (20, 0, 40, 40))  # a 20 × 40 box at the right edge: the square sticks out by 10 px
    assert crop.shape == (orientation.SIZE, orientation.SIZE, 3)
    inner = crop[1:-1]  # the first and last rows blend with the border: the box's own edges
    assert inner[:, -orientation.SIZE // 4 + 2:].max() == 0 and inner[:, : orientation.SIZE // 2].min() == 200


def test_exported_classifier_matches_the_torch_network_on_uint8_crops_of_any_size(tmp_path):
    import torch

    from agelens.train.orientation import export, turn_net

    torch.manual_seed(0)
    net = turn_net().eval()
    export(net, tmp_path / "o.onnx")
    m = OrientationModel(tmp_path / "o.onnx")
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (3, orientation.SIZE, orientation.SIZE, 3), dtype=np.uint8)
    p = m.probs(crops)
    with torch.no_grad():
        want = net(torch.from_numpy(crops)).numpy()
    assert p.shape == (3, 4) and np.allclose(p.sum(1), 1, atol=1e-5) and np.allclose(p, want, atol=1e-5)
    big = rng.integers(0, 255, (100, 80, 3), dtype=np.uint8)  # resized to the classifier's side first
    assert m.probs([big]).shape == (1, 4) and m.probs([]).shape == (0, 4)
    assert not list(tmp_path.glob("*.tmp"))


@needs_weights
def test_shipped_classifier_reads_each_quarter_turn_of_the_astronaut(astronaut):
    from agelens.faces.detect import FaceAnalyzer

    a = FaceAnalyzer()
    box = max(a.detect(astronaut), key=lambda f: f.score).box
    crop = box_crop(astronaut, box)
    p = orientation.shipped().probs([np.ascontiguousarray(np.rot90(crop, k)) for k in range(4)])
    assert list(p.argmax(1)) == [0, 1, 2, 3] and p.max(1).min() > orientation.CONFIDENT, p.round(3)
    a.close()


@needs_weights
def test_predict_turns_a_sideways_or_upside_down_photo_upright(astronaut):
    from agelens import AgeEstimator

    est = AgeEstimator.from_pretrained()
    upright = est.predict(astronaut)[0]
    x1, y1, x2, y2 = upright.box
    for k in (1, 2, 3):
        faces = est.predict(np.ascontiguousarray(np.rot90(astronaut, k)))
        assert len(faces) == 1
        f = faces[0]
        assert abs(f.age - upright.age) < 2.5, (k, f.age, upright.age)
        # the box is in the turned photo's pixels: where the upright box lands when the photo turns
        h, w = astronaut.shape[:2]
        want = {1: (y1, w - x2, y2, w - x1), 2: (w - x2, h - y2, w - x1, h - y1), 3: (h - y2, x1, h - y1, x2)}[k]
        assert turned_back(want, k, astronaut.shape) == pytest.approx(upright.box)
        assert np.allclose(f.box, want, atol=12), (k, f.box, want)


class StubReader:
    """An orientation model stand-in: a face reads as the turn given for its image (by the image's shape) and the
    calls are counted."""

    def __init__(self, reads: dict[tuple[int, ...], list[float]]) -> None:
        self.reads, self.calls = reads, 0

    def turns(self, rgb, boxes):
        self.calls += 1
        return np.array([self.reads[rgb.shape[:2]]] * len(boxes), np.float32)


def _face(box):
    from agelens.faces.detect import Face

    return Face(box, 0.9, np.zeros((4, 2), np.float32))


def test_upright_check_looks_again_only_where_the_largest_face_reads_turned(monkeypatch):
    from agelens.inference import finding

    rgb = np.zeros((60, 100, 3), np.uint8)
    looked = []

    def detect(img):
        looked.append(img.shape[:2])
        return [_face((5, 5, 40, 40))]

    def find(img, proposed=None, detector_only=False):
        assert detector_only
        return [_face((10, 20, 30, 50))]

    faces = [_face((10, 10, 50, 50))]
    # upright already: no second look
    monkeypatch.setattr(orientation, "shipped", lambda: StubReader({(60, 100): [0.9, 0.05, 0.03, 0.02]}))
    assert finding._upright(rgb, faces, find, detect) == [(faces[0], rgb, 0)] and not looked
    # read as turned once (k = 1): np.rot90(rgb, 3) first, where the face reads upright; boxes come back turned
    monkeypatch.setattr(orientation, "shipped", lambda: StubReader({(60, 100): [0.05, 0.9, 0.03, 0.02],
                                                                     (100, 60): [0.97, 0.01, 0.01, 0.01]}))
    (f, img, turn), = finding._upright(rgb, faces, find, detect)
    assert turn == 3 and img.shape[:2] == (100, 60) and looked == [(100, 60)]
    assert turned_back(f.box, turn, rgb.shape) == (20, 30, 50, 50)  # (y1, h - x2, y2, h - x1)
    # no turn reads upright surely enough: the faces stay as found (a masked face read unsure is not turned)
    looked.clear()
    monkeypatch.setattr(orientation, "shipped", lambda: StubReader({(60, 100): [0.1, 0.5, 0.2, 0.2],
                                                                     (100, 60): [0.6, 0.2, 0.1, 0.1]}))
    assert finding._upright(rgb, faces, find, detect) == [(faces[0], rgb, 0)] and len(looked) == 3


@needs_weights
def test_worker_processes_honour_the_estimators_upright_setting(astronaut, tmp_path):
    from agelens import AgeEstimator
    from agelens.inference.stream import predict_stream

    path = tmp_path / "turned.png"
    Image.fromarray(np.ascontiguousarray(np.rot90(astronaut, 2))).save(path)
    est = AgeEstimator.from_pretrained()
    for upright in (True, False):
        est.upright = upright
        here = [r["faces"][0]["age"] for r, _ in predict_stream(est, [str(path)], workers=0)]
        there = [r["faces"][0]["age"] for r, _ in predict_stream(est, [str(path)], workers=1)]
        assert here == pytest.approx(there, abs=0.05), (upright, here, there)


@needs_weights
def test_worker_processes_honour_every_setting(astronaut, tmp_path):
    """Settings changed after loading (route, realign, student_views) hold in worker processes too: they rebuild
    the estimator from its spec, which had only `upright` passed on (realign=False read 43.3 at workers=0 and 35.6
    at workers=2 on a masked photo)."""
    from agelens import AgeEstimator
    from agelens.inference.stream import predict_stream

    path = tmp_path / "a.png"
    Image.fromarray(astronaut).save(path)
    est = AgeEstimator.from_pretrained()
    est.route, est.realign, est.student_views = "student", False, ((1.0, 0.0),)
    here = [f for r, _ in predict_stream(est, [str(path)], workers=0) for f in r["faces"]]
    there = [f for r, _ in predict_stream(est, [str(path)], workers=1) for f in r["faces"]]
    assert [f["model"] for f in there] == [f["model"] for f in here] == ["student"]
    assert [f["age"] for f in there] == pytest.approx([f["age"] for f in here], abs=0.05)


@needs_weights
def test_evaluate_prepares_a_turned_photo_as_predict_does(astronaut, tmp_path):
    """`agelens evaluate`'s end-to-end cache (build_cache with predict's face search) turns an upside-down photo
    upright: the upright photo's crop, where the detector alone aligns it upside down."""
    from agelens.data.adapters import FaceRecord
    from agelens.data.cache import build_cache
    from agelens.inference.finding import predicted_face

    paths = []
    for k in (0, 2):
        paths.append(tmp_path / f"30_1_0_{k}.png")
        Image.fromarray(np.ascontiguousarray(np.rot90(astronaut, k))).save(paths[-1])
    recs = [FaceRecord(path=str(p), age=30.0, gender="female", race="white", group=str(p)) for p in paths]
    kw = {"size": 128, "aligned": False, "workers": 1, "progress": False, "fast": None}
    crops = build_cache(recs, tmp_path / "c", prepare=predicted_face, **kw).images
    plain = build_cache(recs, tmp_path / "p", **kw).images
    diff = [float(np.abs(c[0].astype(np.float32) - c[1]).mean()) for c in (crops, plain)]
    assert diff[0] < 5 and diff[1] > 30, diff
