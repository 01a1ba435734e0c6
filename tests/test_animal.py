"""The ImageNet check (faces.animal): its context crop, which faces it is asked about, its two vetoes (cats, too little
people mass), the people table's fit and file, and the shipped check on a cat and on non-face crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agelens.errors import NoFaceError
from agelens.faces import animal
from agelens.inference import finding


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
    """A check that vetoes everything, recording the people-veto mask of each call."""

    def __init__(self) -> None:
        self.asked: list[list[bool]] = []
        self.mirrored: list[list[bool]] = []
        self.small: list[list[bool]] = []

    def vetoes(self, rgb: np.ndarray, boxes: list, people: np.ndarray, mirrored: np.ndarray,
               small: np.ndarray) -> np.ndarray:
        self.asked.append(people.tolist())
        self.mirrored.append(mirrored.tolist())
        self.small.append(small.tolist())
        return np.ones(len(boxes), bool)


class Scores:
    """A crop classifier scoring every crop `value`."""

    def __init__(self, value: float) -> None:
        self.value = value

    def scores(self, crops: np.ndarray) -> np.ndarray:
        return np.full(len(crops), self.value)


class StubGuard(Scores):
    """A TrunkGuard stand-in: face score `face` for every crop, its estimator's occlusion score `occ`."""

    def __init__(self, occ: float, face: float = 0.9) -> None:
        super().__init__(face)
        self.est = self
        self.detector = Scores(occ)


def _face(score: float, how: str, side: float = 50.0) -> tuple:
    return ([0.0, 0.0, side, side], score, np.zeros((8, 8, 3), np.uint8), True, how)


def test_which_faces_each_veto_is_asked_about(monkeypatch):
    stub = StubCheck()
    monkeypatch.setattr(animal, "shipped", lambda: stub)
    rgb = np.zeros((20, 20, 3), np.uint8)
    # sure; unsure (both vetoes); unsure for cats only; a fallback's (both); unsure for cats only but too small
    faces = [_face(0.95, "detector"), _face(0.6, "detector"), _face(0.8, "detector"), _face(0.9, "padded"),
             _face(0.8, "detector", 30.0)]
    kept = finding.without_non_faces(rgb, faces, StubGuard(0.9))  # reads occluded: the cat veto is asked too
    assert [f[1] for f in kept] == [0.95, 0.8] and kept[1][0][2] == 30.0 and stub.asked == [[True, False, True]]
    stub.asked.clear()
    kept = finding.without_non_faces(rgb, faces, StubGuard(0.1))  # clean: the cat veto alone is not asked
    assert len(kept) == 3 and stub.asked == [[True, True]]
    stub.asked.clear()
    finding.without_non_faces(rgb, faces, object())  # no teacher heads: every unsure face is asked about cats
    assert stub.asked == [[True, False, True]]
    stub.asked.clear()
    kept = finding.without_non_faces(rgb, faces, StubGuard(0.9, face=0.9995))  # the verifier is sure: cats only
    assert [f[1] for f in kept] == [0.95, 0.8] and stub.asked == [[False, False, False]]
    sure = [_face(0.95, "detector"), _face(0.9, "detector")]
    assert finding.without_non_faces(rgb, sure, StubGuard(0.9)) is sure
    stub.asked.clear()
    # a face the mirror step built is asked the people veto even where the verifier is sure, and said to be mirrored
    kept = finding.without_non_faces(rgb, sure, StubGuard(0.1, face=0.9995), [False, True])
    assert [f[1] for f in kept] == [0.95] and stub.asked == [[True]] and stub.mirrored[-1] == [True]
    # on a large image the same faces are small: the one the detector was unsure of (0.6, under SMALL_BELOW) is asked
    # the people veto at SMALL_PEOPLE though the verifier is sure; the sure one (0.95) is not
    stub.asked.clear()
    big = np.zeros((400, 400, 3), np.uint8)
    kept = finding.without_non_faces(big, [_face(0.95, "detector"), _face(0.6, "detector")],
                                     StubGuard(0.1, face=0.9995))
    assert [f[1] for f in kept] == [0.95] and stub.asked == [[True]] and stub.small[-1] == [True]
    monkeypatch.setattr(animal, "shipped", lambda: None)  # no check (no torch to export it): faces as they are
    assert finding.without_non_faces(rgb, faces, StubGuard(0.9)) is faces


def test_small_and_unsure_reads_the_face_against_its_image():
    shape = (400, 300, 3)  # short side 300: under 105 px is small
    assert animal.small_and_unsure([0, 0, 100, 100], 0.7, shape)
    assert animal.small_and_unsure([0, 0, 200, 100], 0.7, shape)  # the box's short side counts
    assert not animal.small_and_unsure([0, 0, 120, 110], 0.7, shape)  # 110 px of 300: not small
    assert not animal.small_and_unsure([0, 0, 100, 100], 0.8, shape)  # the detector was sure enough


def _probs(*rows: dict) -> np.ndarray:
    p = np.zeros((len(rows), 1000), np.float32)
    for i, r in enumerate(rows):
        for k, v in r.items():
            p[i, k] = v
    return p


def test_the_check_vetoes_cats_and_faces_with_little_people_mass(monkeypatch):
    table = animal.PeopleTable(np.array([10, 20, 30]), 0.5)
    check = animal.ImageNetCheck.__new__(animal.ImageNetCheck)
    check.people = table
    probs = _probs({10: 0.4, 20: 0.4}, {10: 0.2, 999: 0.8}, {281: 0.2, 282: 0.2, 10: 0.6}, {10: 0.5})
    monkeypatch.setattr(check, "probs", lambda crops: probs)
    rgb = np.zeros((64, 64, 3), np.uint8)
    boxes = [[0, 0, 32, 32]] * 4
    cat, people = check.scores(rgb, boxes)
    assert np.allclose(cat, [0, 0, 0.4, 0]) and np.allclose(people, [0.8, 0.2, 0.6, 0.5])
    assert check.vetoes(rgb, boxes).tolist() == [False, True, True, False]  # a person; too little mass; a cat; at
    assert check.vetoes(rgb, boxes, np.array([True, False, False, True])).tolist() == [False, False, True, False]
    # faces the mirror step built need animal.MIRROR_PEOPLE (0.85): 0.8 was enough for the table, not for them
    assert check.vetoes(rgb, boxes, None, np.array([True, False, False, False])).tolist() == [True, True, True, False]
    # small faces the detector was unsure of need animal.SMALL_PEOPLE (0.82)
    assert check.vetoes(rgb, boxes, None, None, np.array([True, False, False, True])).tolist() == [True, True, True,
                                                                                                   True]
    check.people = None  # no table: cats only
    assert check.vetoes(rgb, boxes).tolist() == [False, False, True, False]


def test_fit_table_takes_the_classes_carrying_the_cover_and_a_low_quantile_of_their_mass():
    from agelens.train.people import fit_table

    rng = np.random.default_rng(0)
    probs = _probs(*([{1: 0.6, 2: 0.3, 3: 0.1}] * 50 + [{1: 0.3, 2: 0.3, 4: 0.4}] * 50))
    probs += rng.uniform(0, 1e-4, probs.shape).astype(np.float32)
    asked = np.ones(100, bool)
    classes, thr = fit_table(probs, asked, cover=0.7, quantile=0.0)
    assert classes.tolist() == [1, 2]  # means 0.45 + 0.3 reach 0.7 of the mass
    assert 0.6 <= thr <= 0.61  # the least mass among the asked faces (the second kind: 0.3 + 0.3)
    classes, _ = fit_table(probs, asked, cover=0.99, quantile=0.0)
    assert {1, 2, 3, 4} <= set(classes.tolist())
    with pytest.raises(ValueError, match="no human faces"):
        fit_table(probs, np.zeros(100, bool))


def test_a_people_table_that_is_not_one_is_a_clear_error(monkeypatch, tmp_path):
    from agelens.errors import CheckpointError

    monkeypatch.setattr("agelens.utils.weights_dir", lambda: tmp_path)
    animal.people_table.cache_clear()
    try:
        assert animal.people_table() is None  # no table: cats only
        (tmp_path / animal.PEOPLE).write_text('{"classes": [1, 2000], "threshold": 0.5}')
        animal.people_table.cache_clear()
        with pytest.raises(CheckpointError, match="not a people table"):
            animal.people_table()
        (tmp_path / animal.PEOPLE).write_text('{"classes": [1, 2, 3], "threshold": 0.25}')
        animal.people_table.cache_clear()
        t = animal.people_table()
        assert t.classes.tolist() == [1, 2, 3] and t.threshold == 0.25
    finally:
        animal.people_table.cache_clear()


def test_the_shipped_check_turns_a_cat_away_and_keeps_the_astronaut(monkeypatch):
    from skimage import data

    from agelens import AgeEstimator

    est = AgeEstimator.from_pretrained()
    cat = np.ascontiguousarray(data.chelsea()[20:220, 100:300])  # the cat's face: answered without the check
    with pytest.raises(NoFaceError):
        est.predict(cat)
    assert len(est.predict(data.astronaut())) == 1
    monkeypatch.setattr(finding, "without_non_faces", lambda rgb, faces, *_: faces)
    assert est.predict(cat)[0].extra["detection"] == "detector"  # the check, not another step, turned it away


# two crops of the Hubble deep field with a "face" the detector scores 0.56-0.59 (under PEOPLE_BELOW with a margin)
# whose people mass (0.48, 0.65) is well under the shipped threshold (0.737), so other CPUs' numerics agree
@pytest.mark.parametrize("name, box", [("hubble_deep_field", (285, 64, 583, 669)),
                                       ("hubble_deep_field", (249, 11, 523, 600))])
def test_the_shipped_check_turns_away_crops_that_look_like_nothing_a_person_looks_like(monkeypatch, name, box):
    from skimage import data

    from agelens import AgeEstimator

    y, x, h, w = box
    crop = np.ascontiguousarray(getattr(data, name)()[y:y + h, x:x + w, :3])  # the detector finds a "face" here
    est = AgeEstimator.from_pretrained()
    with pytest.raises(NoFaceError):
        est.predict(crop)
    monkeypatch.setattr(finding, "without_non_faces", lambda rgb, faces, *_: faces)
    assert est.predict(crop)[0].detection_score < animal.PEOPLE_BELOW  # the check, not another step, turned it away


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
    with pytest.warns(RuntimeWarning, match="not checked for cats and non-faces"):
        assert animal.ensure_export() is None
    assert not (tmp_path / "ro").exists()


def test_an_estimator_on_the_shipped_export_makes_the_check_as_it_loads_and_says_so(monkeypatch, tmp_path):
    from agelens.export import shipped
    from agelens.inference import predictor
    from agelens.inference.backends import onnx as onnx_backend

    monkeypatch.setenv("AGELENS_ONNX_DIR", str(tmp_path))
    monkeypatch.setattr(shipped, "ensure_export", lambda d, log, int8: tmp_path)
    monkeypatch.setattr(animal, "export", lambda p: p.write_bytes(b"\0" * 2_000_000))

    def stop(*a):
        raise RuntimeError("models not loaded in this test")

    monkeypatch.setattr(onnx_backend, "load_onnx_models", stop)
    said = []
    with pytest.raises(RuntimeError, match="models not loaded"):
        predictor.AgeEstimator.from_onnx(log=said.append)
    assert (tmp_path / f"{animal.FORMAT}.onnx").is_file()
    assert said == [f"cat / non-face check: {tmp_path / animal.FORMAT}.onnx (2.0 MB)"]
