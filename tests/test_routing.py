"""Soft routing: teacher and student blended by the occlusion score inside SOFT_BAND, one model outside it."""

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


def test_soft_weight_is_zero_score_one_outside_and_inside_the_band():
    lo, hi = SOFT_BAND
    s = np.array([0.0, lo, 0.3, 0.7, hi, 1.0, np.nan, np.nan], np.float32)
    occ = np.array([0, 0, 0, 1, 1, 1, 1, 0], bool)
    assert np.allclose(soft_weight(s, occ), [0, 0, 0.3, 0.7, 1, 1, 1, 0])


def test_auto_route_blends_only_uncertain_faces_and_names_the_heavier_model():
    est = estimator([0.02, 0.3, 0.7, 0.99])
    r = est.analyse_crops(np.zeros((4, 256, 256, 3), np.uint8))
    assert np.allclose(r["age"], [20, 20 * 0.7 + 40 * 0.3, 20 * 0.3 + 40 * 0.7, 40], atol=1e-4)
    assert list(r["model"]) == ["teacher", "teacher", "student", "student"]
    assert list(r["occluded"]) == [False, False, True, True]
    assert np.allclose(r["student_weight"], [0, 0.3, 0.7, 1])
    # each model ran only on the faces it weighs: the teacher on 3, the student on 3, at its views where it weighs
    # VIEWS_FROM or more (0.7, 1.0) and at one view where it is blended in under that (0.3)
    assert len(est.student_views) == 3 and 0.3 < VIEWS_FROM <= 0.7
    assert est.teacher.calls == 3 and est.student.calls == 1 + 2 * len(est.student_views)


@pytest.mark.parametrize(("route", "age", "model"), [("teacher", 20.0, "teacher"), ("student", 40.0, "student")])
def test_forced_routes_use_one_model(route, age, model):
    r = estimator([0.3, 0.99], route).analyse_crops(np.zeros((2, 256, 256, 3), np.uint8))
    assert np.allclose(r["age"], age) and list(r["model"]) == [model, model]
