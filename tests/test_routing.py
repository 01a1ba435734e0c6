"""Soft routing: teacher and student blended across SOFT_BAND (the student's weight rising with the occlusion
score), one model outside it."""

from __future__ import annotations

import numpy as np
import pytest

from agelens.inference.predictor import SOFT_BAND, VIEWS_FROM, AgeEstimator, soft_weight


class FakeExpert:
    """A model answering a constant age (the AgeBackend protocol: run(views) → ages, spreads)."""

    def __init__(self, name: str, age: float) -> None:
        self.name, self.age, self.crop_size, self.input_size, self.calls = name, age, 224, 32, 0
        self.interval_z = 1.645

    def run(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += len(views)
        return np.full(len(views), self.age, np.float32), np.full(len(views), 2.0, np.float32)


class FakeDetector:
    threshold = 0.5

    def __init__(self, scores: list[float]) -> None:
        self.s = np.array(scores, np.float32)

    def scores(self, crops: np.ndarray) -> np.ndarray:
        return self.s[: len(crops)]


def estimator(scores: list[float], route: str = "auto") -> AgeEstimator:
    return AgeEstimator(FakeExpert("teacher", 20.0), FakeExpert("student", 40.0), FakeDetector(scores), route,
                        backend="fake")


def test_soft_weight_is_zero_below_the_band_one_above_and_a_ramp_inside():
    lo, hi = SOFT_BAND
    quarter, three = lo + 0.25 * (hi - lo), lo + 0.75 * (hi - lo)
    s = np.array([0.0, lo, quarter, three, hi, 1.0, np.nan, np.nan], np.float32)
    occ = np.array([0, 0, 0, 1, 1, 1, 1, 0], bool)
    assert np.allclose(soft_weight(s, occ), [0, 0, 0.25, 0.75, 1, 1, 1, 0], atol=1e-6)
    ramp = soft_weight(np.linspace(0, 1, 101, dtype=np.float32), np.zeros(101, bool))
    assert np.all(np.diff(ramp) >= 0) and np.abs(np.diff(ramp)).max() < 0.02  # no jump anywhere


def test_auto_route_blends_only_uncertain_faces_and_names_the_heavier_model():
    lo, hi = SOFT_BAND
    est = estimator([0.02, lo + 0.25 * (hi - lo), lo + 0.75 * (hi - lo), 0.99])
    r = est.analyse_crops(np.zeros((4, 256, 256, 3), np.uint8))
    assert np.allclose(r["age"], [20, 20 * 0.75 + 40 * 0.25, 20 * 0.25 + 40 * 0.75, 40], atol=1e-4)
    assert list(r["model"]) == ["teacher", "teacher", "student", "student"]
    assert list(r["occluded"]) == [False, False, True, True]
    assert np.allclose(r["student_weight"], [0, 0.25, 0.75, 1], atol=1e-6)
    # each model ran only on the faces it weighs: the teacher on 3, the student on 3, at its views where it weighs
    # VIEWS_FROM or more (0.75, 1.0) and at one view where it is blended in under that (0.25)
    assert len(est.student_views) == 3 and 0.25 < VIEWS_FROM <= 0.75
    assert est.teacher.calls == 3 and est.student.calls == 1 + 2 * len(est.student_views)


class SelectiveStudent(FakeExpert):
    """A single-view student whose card gives a selective-TTA cut (tta="auto"): spread 2 on plain views (under the
    cut), 9 on mirrored ones; counts mirrored views apart."""

    tta_flip, tta_spread = False, 5.0

    def __init__(self) -> None:
        super().__init__("student", 40.0)
        self.mirrored = 0

    def run(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += len(views)
        marked = views[:, 0, 0, 0] == 1  # the fake crops mark their left column, which a mirror moves right
        self.mirrored += int((~marked).sum())
        return np.full(len(views), self.age, np.float32), np.where(marked, 2.0, 9.0).astype(np.float32)


def test_student_mirror_mirrors_every_view_of_its_faces_and_only_unsure_blended_ones():
    lo, hi = SOFT_BAND
    est = AgeEstimator(FakeExpert("teacher", 20.0), SelectiveStudent(), FakeDetector([lo + 0.25 * (hi - lo), 0.99]),
                       "auto", backend="fake")
    assert est.student_tta_spread == 5.0 and not est.student_mirror  # by default each view mirrored where unsure
    est.student_mirror = True
    crops = np.zeros((2, 256, 256, 3), np.uint8)
    crops[:, :, :60] = 1
    est.realign = False  # the fake crops as they are (no realignment network)
    r = est.analyse_crops(crops)
    # the blended face: one plain view, sure (spread 2 < 5), not mirrored; the student's face: each view plain and
    # mirrored although sure, its spread the mean of the two (2 and 9)
    views = len(est.student_views)
    assert est.student.calls == 1 + 2 * views and est.student.mirrored == views
    assert r["spread"][1] == pytest.approx(5.5)
    est.student.calls = est.student.mirrored = 0
    est.student_mirror = False  # each view mirrored only where unsure: none here
    est.analyse_crops(crops)
    assert est.student.calls == 1 + views and est.student.mirrored == 0


@pytest.mark.parametrize(("route", "age", "model"), [("teacher", 20.0, "teacher"), ("student", 40.0, "student")])
def test_forced_routes_use_one_model(route, age, model):
    r = estimator([0.3, 0.99], route).analyse_crops(np.zeros((2, 256, 256, 3), np.uint8))
    assert np.allclose(r["age"], age) and list(r["model"]) == [model, model]


def test_a_binary_classifier_is_refused_as_an_age_model():
    from agelens.errors import CheckpointError
    from agelens.inference.backends.torch import TorchModel
    from agelens.utils import shipped_models

    if "occlusion" not in shipped_models():
        pytest.skip("no shipped occlusion detector")
    with pytest.raises(CheckpointError, match="binary classifier .* not an age model"):
        TorchModel.load("occlusion")
    with pytest.raises(CheckpointError, match="not an age model"):
        AgeEstimator.from_pretrained("occlusion", backend="torch")


def test_each_models_interval_z_blends_with_the_weight_and_intervals_stay_in_the_age_range():
    est = estimator([0.02])
    est.student.interval_z = 3.0
    assert np.allclose(est.interval_z(np.array([0.0, 1.0, 0.5], np.float32)), [1.645, 3.0, 2.3225], atol=1e-5)
    lo, hi = est.intervals(np.array([99.0, 1.0]), np.array([5.0, 5.0]), np.array([0.0, 0.0], np.float32))
    assert hi[0] == est.max_age and lo[1] == est.min_age
    assert lo[0] == pytest.approx(99 - 1.645 * 5) and hi[1] == pytest.approx(1 + 1.645 * 5)


def test_a_face_weighed_half_and_half_is_named_the_students():
    lo, hi = SOFT_BAND
    s = np.float32(lo + 0.5 * (hi - lo))
    for _ in range(8):  # the float32 score whose weight is exactly one half
        w = soft_weight(np.array([s]), np.zeros(1, bool))[0]
        if w == 0.5:
            break
        s = np.nextafter(s, np.float32(1 if w < 0.5 else 0))
    assert soft_weight(np.array([s]), np.zeros(1, bool))[0] == 0.5
    r = estimator([float(s)]).analyse_crops(np.zeros((1, 256, 256, 3), np.uint8))
    assert r["student_weight"][0] == 0.5 and r["model"][0] == "student" and r["age"][0] == pytest.approx(30.0)
