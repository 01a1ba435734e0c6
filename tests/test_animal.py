"""The cat check (faces.animal): its context crop, which faces it is asked about, and the shipped check on a cat."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agelens.errors import NoFaceError
from agelens.faces import animal
from agelens.inference import predictor


def test_context_crop_centres_the_box_with_context_and_grey_outside_the_image():
    img = np.zeros((400, 600, 3), np.uint8)
    img[150:250, 250:350] = (200, 30, 30)
    c = animal.context_crop(img, (250, 150, 350, 250))
    assert c.shape == (animal.SIZE, animal.SIZE, 3) and c.dtype == np.uint8
    half = animal.SIZE / animal.CONTEXT / 2  # the box's half side in the crop
    lo, hi = int(112 - half) + 2, int(112 + half) - 2
    assert (c[lo:hi, lo:hi] == (200, 30, 30)).all()
    assert (c[112, lo - 8] == 0).all()  # around the box: the image
    corner = animal.context_crop(img, (0, 0, 100, 100))
    assert (corner[3, 3] == 127).all()  # outside the image: grey
    big = cv2.resize(img, (6000, 4000), interpolation=cv2.INTER_NEAREST)  # shrunk 20x: the averaging path
    assert np.abs(animal.context_crop(big, (2500, 1500, 3500, 2500)).astype(int) - c).mean() < 3


class StubCheck:
    """A cat check that calls everything a cat, counting the faces it was asked about."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def cats(self, rgb: np.ndarray, boxes: list) -> np.ndarray:
        self.asked.append(len(boxes))
        return np.ones(len(boxes), bool)


class StubGuard:
    """A TrunkGuard stand-in: its estimator's occlusion score is `occ` for every crop."""

    def __init__(self, occ: float) -> None:
        self.est = self.detector = self
        self.occ = occ

    def scores(self, crops: np.ndarray) -> np.ndarray:
        return np.full(len(crops), self.occ)


def _face(score: float, how: str, side: float = 50.0) -> tuple:
    return ([0.0, 0.0, side, side], score, np.zeros((8, 8, 3), np.uint8), True, how)


def test_only_faces_the_detector_was_unsure_of_and_that_read_occluded_are_asked(monkeypatch):
    stub = StubCheck()
    monkeypatch.setattr(animal, "shipped", lambda: stub)
    rgb = np.zeros((20, 20, 3), np.uint8)
    faces = [_face(0.95, "detector"), _face(0.6, "detector"), _face(0.9, "padded"), _face(0.5, "detector", 30.0)]
    kept = predictor.without_cats(rgb, faces, StubGuard(0.9))  # sure, unsure, a fallback's, too small to ask
    assert [f[1] for f in kept] == [0.95, 0.5] and stub.asked == [2]
    stub.asked.clear()
    assert predictor.without_cats(rgb, faces, StubGuard(0.1)) is faces and stub.asked == []  # clean: not asked
    kept = predictor.without_cats(rgb, faces, object())  # no teacher heads: every unsure face is asked
    assert [f[1] for f in kept] == [0.95, 0.5] and stub.asked == [2]
    monkeypatch.setattr(animal, "shipped", lambda: None)  # no check (no torch to export it): faces as they are
    assert predictor.without_cats(rgb, faces, StubGuard(0.9)) is faces


def test_the_shipped_check_turns_a_cat_away_and_keeps_the_astronaut(monkeypatch):
    from skimage import data

    from agelens import AgeEstimator

    est = AgeEstimator.from_pretrained()
    cat = np.ascontiguousarray(data.chelsea()[20:220, 100:300])  # the cat's face: answered without the check
    with pytest.raises(NoFaceError):
        est.predict(cat)
    assert len(est.predict(data.astronaut())) == 1
    monkeypatch.setattr(predictor, "without_cats", lambda rgb, faces, v: faces)
    assert est.predict(cat)[0].extra["detection"] == "detector"  # the check, not another step, turned it away


def test_the_batch_engine_makes_the_export_before_its_workers(monkeypatch, tmp_path):
    from agelens.inference import stream

    made = []
    monkeypatch.setattr(animal, "ensure_export", lambda: made.append(1))
    monkeypatch.setattr(stream, "_pipeline_stream", lambda *a: iter(()))

    class Est:
        spec = ("from_onnx", {})

    assert list(stream.predict_stream(Est(), ["a.jpg"], workers=2)) == [] and made == [1]
    assert list(stream.predict_stream(Est(), [], workers=0)) == [] and made == [1]  # in process: on first use


def test_a_check_that_cannot_be_exported_warns_and_leaves_faces_unchecked(monkeypatch, tmp_path):
    monkeypatch.setenv("AGELENS_ONNX_DIR", str(tmp_path / "ro"))

    def fail(path):
        raise PermissionError(f"{path}: read-only file system")

    monkeypatch.setattr(animal, "export", fail)
    with pytest.warns(RuntimeWarning, match="not checked for cats"):
        assert animal.ensure_export() is None
    assert not (tmp_path / "ro").exists()
