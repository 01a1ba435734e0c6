"""The fast face path: BlazeFace through LiteRT (`faces.blazeface`) and the plain landmark model (`faces.mesh`):
their geometry, and their agreement with mediapipe's graphs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agelens.faces import blazeface, mesh
from agelens.faces.align import TEMPLATE_KEYPOINTS, align_face, similarity_transform, transform_points
from agelens.faces.detect import FaceAnalyzer, iou

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
    fast, iris = FaceAnalyzer(fast=True), FaceAnalyzer(fast=False)
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


def test_anchors_match_the_models_outputs():
    assert len(blazeface.anchors(blazeface.MODELS[0])) == 896  # 16×16×2 + 8×8×6
    assert len(blazeface.anchors(blazeface.MODELS[1])) == 2304  # 48×48×1
    a = blazeface.anchors(blazeface.MODELS[0])
    np.testing.assert_allclose(a[0], [1 / 32, 1 / 32])  # first cell of the stride-8 layer
    np.testing.assert_allclose(a[512], [1 / 16, 1 / 16])  # first cell of the stride-16 layers


def test_letterbox_centres_the_image_and_reports_the_border():
    img = np.full((50, 100, 3), 255, np.uint8)
    x, pad = blazeface.letterbox(img, 128)
    assert x.shape == (128, 128, 3) and x.dtype == np.float32
    np.testing.assert_allclose(pad, [0, 32 / 128, 0, 32 / 128])
    assert x[0, 0, 0] == -1.0 and x[64, 64, 0] == 1.0  # black border, white image in [-1, 1]


def test_weighted_nms_merges_a_cluster_into_its_score_weighted_mean():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    points = np.zeros((3, 6, 2), np.float32)
    points[1] += 3.0
    out = blazeface.weighted_nms(boxes, points, np.array([0.9, 0.6, 0.8], np.float32))
    assert [round(s, 2) for _, _, s in out] == [0.9, 0.8]
    np.testing.assert_allclose(out[0][0], [0.4, 0, 10.4, 10], atol=1e-5)  # 0.6 / 1.5 of the way to the second box
    np.testing.assert_allclose(out[0][1], 1.2, atol=1e-5)


def test_blazeface_finds_the_face_mediapipe_finds(astronaut):
    an = FaceAnalyzer()
    try:
        ref = an._detect(astronaut, 0)
    finally:
        an.close()
    got = blazeface.BlazeFace(0)(astronaut)
    assert len(ref) == len(got) == 1
    (box, score, kp), f = got[0], ref[0]
    w = f.box[2] - f.box[0]
    # not bit-exact: mediapipe resamples the 512 px photo to 128 px its own way
    assert iou(box, f.box) > 0.85 and abs(score - f.score) < 0.05
    assert np.abs(kp[:4] - f.keypoints).max() < 0.08 * w
    assert blazeface.BlazeFace(0)(np.full((300, 300, 3), 128, np.uint8)) == []


def test_mediapipe_loads_without_matplotlib_and_its_tasks_and_still_draws():
    """The FaceMesh fallback imports mediapipe without its drawing helpers (matplotlib.pyplot, half a second of a
    worker's first fallback) and without its Tasks API (audio, vision, ...: 0.15 s); a caller who asks for them
    later still gets the real modules."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from agelens.faces.detect import mediapipe_solutions\n"
        "s = mediapipe_solutions()\n"
        "assert s.face_mesh.FaceMesh and 'matplotlib' not in sys.modules, sorted(sys.modules)\n"
        "assert not [m for m in sys.modules if m.startswith('mediapipe.tasks') or m == 'sounddevice']\n"
        "import mediapipe as mp\n"
        "assert mp.solutions.drawing_utils.DrawingSpec and 'matplotlib.pyplot' in sys.modules\n"
        "from mediapipe.python.solutions import drawing_styles\n"
        "assert drawing_styles.get_default_face_mesh_contours_style()\n"
        "assert mp.tasks is mp.tasks and mp.tasks.__name__ == 'mediapipe.tasks.python' and mp.tasks.BaseOptions\n"
        "from mediapipe.tasks.python import vision\n"
        "assert vision.FaceLandmarker is mp.tasks.vision.FaceLandmarker\n"
        "assert mediapipe_solutions() is s\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    # the Tasks API imported by name first (mediapipe's own examples do both): `mp.tasks` is still what mediapipe binds
    code = ("from agelens.faces.detect import mediapipe_solutions\n"
            "mediapipe_solutions()\n"
            "from mediapipe.tasks import python\n"
            "import mediapipe as mp\n"
            "assert mp.tasks is python and mp.tasks.BaseOptions and mp.tasks.vision.FaceLandmarker\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# ---- alignment geometry, pinned by hand (a mutation audit changed these unnoticed) --------------------------------


def test_alignment_lands_keypoints_on_the_template_at_any_size_and_repeats_the_border():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 300, 3), np.uint8)
    kp = TEMPLATE_KEYPOINTS * 0.8 + [30.0, 40.0]  # the template shrunk and moved: a pure similarity
    for size in (128, 256):
        _, m = align_face(img, kp, size)
        mapped = kp @ m[:, :2].T + m[:, 2]
        assert np.allclose(mapped, TEMPLATE_KEYPOINTS * size / 256, atol=1e-3)
    four = np.vstack([kp[:3], kp[3:].mean(0)])  # the detector's keypoints: mouth centre
    _, m = align_face(img, four, 256)
    assert np.allclose(four[3] @ m[:, :2].T + m[:, 2], [128.0, 176.8], atol=1e-3)
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.ones((5, 2)), TEMPLATE_KEYPOINTS)
    flat = np.full((40, 40, 3), 200, np.uint8)
    crop, _ = align_face(flat, TEMPLATE_KEYPOINTS * 0.1 - 5, 256)  # the crop reaches past the top-left edge
    assert crop.min() == 200  # the border repeats the edge, not black
