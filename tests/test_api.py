"""The public API: AgeEstimator, FacePrediction, draw, BGR input."""

from __future__ import annotations

import numpy as np
import pytest

import agelens
from agelens.errors import AgelensError


@pytest.fixture(scope="module")
def est():
    return agelens.AgeEstimator.from_pretrained(backend="torch")


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()


def test_public_names():
    assert {"AgeEstimator", "FacePrediction", "draw", "predict_many"} <= set(agelens.__all__)
    assert agelens.FacePrediction.__name__ == "FacePrediction"


def test_bgr_input_gives_the_rgb_answer(est, astronaut):
    rgb = est.predict(astronaut)
    bgr = est.predict(np.ascontiguousarray(astronaut[..., ::-1]), channels="bgr")
    assert [f.age for f in rgb] == [f.age for f in bgr] and [f.box for f in rgb] == [f.box for f in bgr]
    swapped = est.predict(np.ascontiguousarray(astronaut[..., ::-1]))  # BGR read as RGB: a different image
    assert swapped[0].age != rgb[0].age
    with pytest.raises(AgelensError, match="channels must be"):
        est.predict(astronaut, channels="hsv")


def test_draw_marks_each_face_and_leaves_the_input_alone(est, astronaut):
    faces = est.predict(astronaut)
    before = astronaut.copy()
    out = agelens.draw(astronaut, faces)
    np.testing.assert_array_equal(astronaut, before)
    x1, y1, x2, y2 = (int(round(v)) for v in faces[0].box)
    assert tuple(out[y1, (x1 + x2) // 2]) == (0, 200, 0)  # the box's top edge, green in RGB
    bgr = agelens.draw(astronaut[..., ::-1], [f.to_dict() for f in faces], channels="bgr")
    np.testing.assert_array_equal(bgr[..., ::-1], out)  # dicts (JSON records) draw the same, in either order
    with pytest.raises(ValueError, match="HxWx3"):
        agelens.draw(astronaut[..., 0], faces)


def test_predict_many_takes_a_folder_a_glob_or_an_iterator(est, astronaut, tmp_path):
    import cv2

    for k in range(3):
        cv2.imwrite(str(tmp_path / f"p{k}.jpg"), astronaut[..., ::-1])
    (tmp_path / "notes.txt").write_text("not an image")
    by_folder = list(agelens.predict_many(tmp_path, estimator=est, batch_size=2))
    by_iter = list(agelens.predict_many((tmp_path / f"p{k}.jpg" for k in range(3)), estimator=est))
    by_glob = list(agelens.predict_many(str(tmp_path / "p*.jpg"), estimator=est))
    assert [r["file"] for r in by_folder] == [r["file"] for r in by_iter] == [r["file"] for r in by_glob]
    assert len(by_folder) == 3 and all(r["error"] is None and len(r["faces"]) >= 1 for r in by_folder)
    assert {r["faces"][0]["age"] for r in by_folder + by_iter} == {est.predict(tmp_path / "p0.jpg")[0].age}
