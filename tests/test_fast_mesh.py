"""The fast landmark path (`faces.mesh`): its region, its template keypoints, and its agreement with FaceMesh."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agelens.faces import mesh
from agelens.faces.align import TEMPLATE_KEYPOINTS, align_face, similarity_transform, transform_points
from agelens.faces.detect import FaceAnalyzer

pytestmark = pytest.mark.skipif(not mesh.available(), reason="LiteRT (ai-edge-litert) not installed")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from importlib import resources

    return np.asarray(Image.open(resources.files("agelens") / "assets" / "astronaut.jpg").convert("RGB"))


def test_roi_is_the_box_times_1_5_turned_level_by_the_eyes():
    box = (100.0, 50.0, 180.0, 150.0)  # 80 × 100 px: the long side, × 1.5, spans the 192 px input
    m = mesh.roi(box, np.array([[120.0, 80.0], [160.0, 120.0]]))  # eyes on a 45° line
    centre = transform_points(np.array([[140.0, 100.0]]), m)[0]
    np.testing.assert_allclose(centre, [96, 96], atol=1e-3)
    eyes = transform_points(np.array([[120.0, 80.0], [160.0, 120.0]]), m)
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-3 and eyes[1, 0] > eyes[0, 0]  # level, image-left eye on the left
    scale = np.hypot(*m[:, 0])
    np.testing.assert_allclose(scale, mesh.INPUT / (1.5 * 100), rtol=1e-5)


def test_template_keypoints_give_the_contour_template_alignment():
    rng = np.random.default_rng(0)
    lm = rng.uniform(40, 200, (mesh.N_MESH, 2)).astype(np.float32)
    expected = similarity_transform(mesh.contour_keypoints(lm), mesh.CONTOUR_TEMPLATE)
    got = similarity_transform(mesh.template_keypoints(lm), TEMPLATE_KEYPOINTS)
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_fast_landmarks_agree_with_facemesh_and_align_the_same_face(astronaut):
    fast, iris = FaceAnalyzer(fast_landmarks=True), FaceAnalyzer(fast_landmarks=False)
    try:
        f = fast.find_faces(astronaut)[0]
        g = iris.find_faces(astronaut)[0]
    finally:
        fast.close()
        iris.close()
    assert f.landmarks.shape == (478, 2) and np.isnan(f.landmarks[468:]).all()  # no iris points on this path
    assert np.isfinite(f.landmarks[:468]).all() and np.isfinite(g.landmarks).all()
    iod = np.linalg.norm(g.landmarks[468] - g.landmarks[473])
    assert np.linalg.norm(f.landmarks[:468] - g.landmarks[:468], axis=1).mean() < 0.06 * iod
    # both alignments put the face in (nearly) the same place of the 256 px crop
    a, ma = align_face(astronaut, f.keypoints)
    b, mb = align_face(astronaut, g.keypoints)
    corners = transform_points(np.array([[0, 0], [256, 256]], np.float32), np.linalg.inv(np.vstack([mb, [0, 0, 1]]))[:2])
    assert np.abs(transform_points(corners, ma) - [[0, 0], [256, 256]]).max() < 12


def test_the_model_says_when_there_is_no_face():
    lmm = mesh.LandmarkModel()
    flat = np.full((200, 200, 3), 128, np.uint8)
    lm, presence = lmm(flat, (50.0, 50.0, 150.0, 150.0), np.array([[80.0, 90.0], [120.0, 90.0]]))
    assert lm is None and presence < mesh.PRESENCE
