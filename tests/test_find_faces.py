"""The face-finding cascade: detector → padded → mesh → whole image → tiles, each fallback behind the face verifier."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agelens.errors import NoFaceError
from agelens.faces.detect import (
    DETECTIONS,
    MIRROR_SURE,
    FaceAnalyzer,
    chroma,
    iou,
    mirror_completed,
    pad_border,
    pad_border_capped,
    whole_image_crop,
)
from agelens.utils import shipped_models


class FixedVerifier:
    """A verifier stand-in with a fixed answer, counting the crops it was shown."""

    def __init__(self, score: float, threshold: float = 0.5) -> None:
        self.score, self.threshold, self.seen = score, threshold, 0

    def scores(self, crops: np.ndarray) -> np.ndarray:
        assert crops.ndim == 4 and crops.shape[1:] == (256, 256, 3) and crops.dtype == np.uint8
        self.seen += len(crops)
        return np.full(len(crops), self.score, np.float32)


@pytest.fixture(scope="module")
def analyzer():
    a = FaceAnalyzer()
    yield a
    a.close()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from importlib import resources

    return np.asarray(Image.open(resources.files("agelens") / "assets" / "astronaut.jpg").convert("RGB"))


def test_pad_border_and_whole_image_crop_geometry():
    img = np.zeros((40, 100, 3), np.uint8)
    padded, p = pad_border(img, 0.5)
    assert p == 50 and padded.shape == (140, 200, 3) and (padded[0, 0] == 127).all()
    img[:, :, 0] = np.arange(100, dtype=np.uint8)[None]  # a horizontal ramp keeps its order and aspect
    crop = whole_image_crop(img, 64)
    assert crop.shape == (64, 64, 3) and crop[32, 0, 0] < crop[32, 63, 0]


def test_detector_faces_are_verified_and_say_how_they_were_found(analyzer, astronaut):
    faces = analyzer.find_faces(astronaut)
    assert len(faces) == 1 and faces[0].detection == "detector" and faces[0].landmarks is not None
    yes = FixedVerifier(0.9)
    assert [f.detection for f in analyzer.find_faces(astronaut, yes.scores, yes.threshold)] == ["detector"]
    assert yes.seen == 1
    # a verifier that rejects everything: the face is not answered, though the detector saw it
    no = FixedVerifier(0.1)
    assert analyzer.find_faces(astronaut, no.scores, no.threshold, verify=True) == []


def test_the_verified_crop_is_the_crop_the_models_read_warped_once(analyzer, astronaut, monkeypatch):
    import agelens.faces.detect as detect
    from agelens.faces.prepare import prepare_face

    warps = []
    real = detect.align_face
    monkeypatch.setattr(detect, "align_face", lambda *a, **k: warps.append(1) or real(*a, **k))
    yes = FixedVerifier(0.9)
    (face,) = analyzer.find_faces(astronaut, yes.scores, yes.threshold)
    crop, _ = prepare_face(astronaut, analyzer, 256, aligned=False, face=face)
    assert len(warps) == 1 and np.array_equal(crop, real(astronaut, face.keypoints, 256)[0])
    face.keypoints = face.keypoints + 3.0  # new keypoints (or another size): a new warp
    moved, _ = face.aligned(astronaut, 256)
    assert len(warps) == 2 and not np.array_equal(moved, crop)
    assert face.aligned(astronaut, 128)[0].shape == (128, 128, 3) and len(warps) == 3
    dark = np.zeros_like(astronaut)  # the same face's keypoints on another image: that image's crop, not the memo
    assert face.aligned(dark, 128)[0].max() == 0 and len(warps) == 4
    assert face.aligned(astronaut, 128)[0].max() > 0 and len(warps) == 5


def test_a_detector_face_inside_a_wider_padded_face_is_a_part_of_it(astronaut, monkeypatch):
    """Faces do not nest: a detector face scored under NESTED_BELOW that a wider face of the padded copy holds around
    its centre (the detector fired on the nose of a face under sunglasses and a mask) is replaced by that face once
    the fallback verifier passes it; a sure detector face, a wider face that does not hold it, holds it off its
    centre or spans a small share of the image, or one the verifier rejects leave the detector's face as it was."""
    import agelens.faces.detect as detect
    from agelens.faces.detect import NESTED_BELOW, Face

    monkeypatch.setattr(detect, "NESTED_FALLBACK_WIDER", 0.0)  # the mesh or whole-image step: the next test
    an = FaceAnalyzer()
    part_box, whole_box = (60.0, 60.0, 110.0, 110.0), (20.0, 20.0, 180.0, 190.0)
    kp = np.array([[70, 75], [100, 75], [85, 90], [85, 100]], np.float32)

    def faces_with(box, score, how="detector"):
        return [Face(box, score, kp.copy(), np.zeros((478, 2), np.float32), how)]

    scene = {"part": 0.6, "wider": whole_box}
    monkeypatch.setattr(FaceAnalyzer, "propose", lambda self, rgb: faces_with(part_box, scene["part"]))
    monkeypatch.setattr(FaceAnalyzer, "_padded_faces",
                        lambda self, rgb: (faces_with(scene["wider"], 0.8, "padded"), None, 0, 1.0))
    monkeypatch.setattr(FaceAnalyzer, "_with_mesh", lambda self, rgb, faces: faces)
    img = np.ascontiguousarray(astronaut[:200, :200])
    yes, no = FixedVerifier(0.9), FixedVerifier(0.3)

    def found(fallback=yes):
        return [(f.box, f.detection) for f in an.find_faces(img, yes.scores, yes.threshold,
                                                            fallback_verifier=(fallback.scores, fallback.threshold))]

    assert scene["part"] < NESTED_BELOW and found() == [(whole_box, "padded")]
    assert found(no) == [(part_box, "detector")]  # the wider face is not verified
    scene["wider"] = (100.0, 100.0, 190.0, 190.0)  # wider, but beside it
    assert found() == [(part_box, "detector")]
    scene["wider"] = (40.0, 50.0, 150.0, 250.0)  # holds it near its top (a head with shoulders around a face)
    assert found() == [(part_box, "detector")]
    scene["wider"] = (55.0, 55.0, 130.0, 130.0)  # holds it, but a small share of the image: a scene, not a crop
    assert found() == [(part_box, "detector")]
    # the detector surer of the wider face by NESTED_MORE_SURE: it holds a part left of or below its centre (the
    # lower half of a grainy face) whatever its width, but not one high in it (a head with shoulders around a face)
    scene["wider"], scene["part"] = (0.0, 0.0, 110.0, 160.0), 0.5  # the part right of its centre by 0.27 of its width
    assert detect.NESTED_MORE_SURE <= 0.8 - 0.5 and found() == [(scene["wider"], "padded")]
    scene["part"] = 0.8 - detect.NESTED_MORE_SURE + 0.01  # not surer enough: off-centre, so no part of it
    assert found() == [(part_box, "detector")]
    scene["wider"], scene["part"] = (40.0, 50.0, 150.0, 250.0), 0.5
    assert found() == [(part_box, "detector")]
    scene["wider"], scene["part"] = whole_box, 0.9  # a sure detector face: the padded copy is not read
    monkeypatch.setattr(FaceAnalyzer, "_padded_faces", lambda self, rgb: pytest.fail("padded copy read"))
    assert found() == [(part_box, "detector")]
    assert detect.NESTED_WIDER > 1 and 0 < detect.NESTED_INSIDE <= 1


class DarkVerifier(FixedVerifier):
    """Passes a crop unless a tenth or more of it is pure black (the test's stand-in for a fragment's crop)."""

    def scores(self, crops: np.ndarray) -> np.ndarray:
        super().scores(crops)
        return np.where((crops.max(-1) == 0).mean((1, 2)) >= 0.1, 0.1, 0.9).astype(np.float32)


def test_a_fragment_no_padded_face_holds_gives_way_to_the_mesh_or_the_whole_image(astronaut, monkeypatch):
    """Under two occluders the padded copy may find nothing wider either: an unsure detector face that the fallback
    verifier does not pass on its own, inside the mesh-only face and at most 1 / NESTED_FALLBACK_WIDER of its width,
    gives way to it, else (an image shaped like a face crop, the part at most 1 / NESTED_WHOLE_WIDER of its width) to
    the whole image, each once its verifier passes it. A part the fallback verifier passes, a wider part, a sure one,
    another face inside the candidate, a rejected candidate, a strip of an image, or the step turned off leave the
    detector's faces as they were."""
    import agelens.faces.detect as detect
    from agelens.faces.detect import NESTED_BELOW, Face

    an = FaceAnalyzer()

    def det(box, score):
        x1, y1, x2, y2 = box
        kp = np.array([[x1 + (x2 - x1) * a, y1 + (y2 - y1) * b] for a, b in ((.3, .4), (.7, .4), (.5, .6), (.5, .8))],
                      np.float32)
        return Face(box, score, kp, np.zeros((478, 2), np.float32), "detector")

    corner = (150.0, 10.0, 180.0, 40.0)  # a 30 px corner of a 200 px crop, black: the verifier does not pass it
    scene = {"faces": [det(corner, 0.6)], "mesh": None}
    monkeypatch.setattr(FaceAnalyzer, "propose", lambda self, rgb: [det(f.box, f.score) for f in scene["faces"]])
    monkeypatch.setattr(FaceAnalyzer, "_padded_faces", lambda self, rgb: ([], None, 0, 1.0))
    monkeypatch.setattr(FaceAnalyzer, "_with_mesh", lambda self, rgb, faces: faces)
    monkeypatch.setattr(FaceAnalyzer, "_mesh_face", lambda self, rgb, padded, p, scale=1.0: scene["mesh"])
    img = np.ascontiguousarray(astronaut[:200, :200])
    img[10:40, 150:180] = 0
    dark, yes, no = DarkVerifier(0.9), FixedVerifier(0.9), FixedVerifier(0.3)

    def found(image=img, fallback=dark, whole=yes):
        return sorted((tuple(f.box), f.detection) for f in an.find_faces(
            image, yes.scores, yes.threshold, fallback_verifier=(fallback.scores, fallback.threshold),
            whole_verifier=(whole.scores, whole.threshold)))

    whole_face, part = [((0.0, 0.0, 200.0, 200.0), "whole-image")], [(corner, "detector")]
    assert scene["faces"][0].score < NESTED_BELOW and found() == whole_face
    assert found(fallback=yes) == part  # the fallback verifier passes the part as a face: it stays
    assert found(whole=no) == part  # the whole image is not passed as a face
    mesh_box = (10.0, 5.0, 190.0, 195.0)
    scene["mesh"] = det(mesh_box, 1.0)
    scene["mesh"].detection = "mesh"
    assert found() == [(mesh_box, "mesh")]  # the mesh face first: its landmarks align the crop
    wide = (100.0, 5.0, 185.0, 90.0)  # 0.425 of the width, the black corner inside: a part of the mesh face ...
    scene["faces"] = [det(wide, 0.6)]
    assert detect.NESTED_FALLBACK_WIDER * 85 <= 180 and found() == [(mesh_box, "mesh")]
    scene["mesh"] = None  # ... but not of the whole image
    assert detect.NESTED_WHOLE_WIDER * 85 > 200 and found() == [(wide, "detector")]
    scene["faces"] = [det(corner, 0.6), det((30.0, 60.0, 140.0, 190.0), 0.9)]  # a real face beside the part
    assert found() == sorted([(corner, "detector"), ((30.0, 60.0, 140.0, 190.0), "detector")])
    scene["faces"] = [det(corner, 0.6)]
    strip = np.ascontiguousarray(img[:90])
    assert found(image=strip) == part  # a strip is no face crop
    scene["faces"] = [det(corner, 0.9)]  # a sure face: the step does not run
    assert found() == part
    scene["faces"] = [det(corner, 0.6)]
    monkeypatch.setattr(detect, "NESTED_FALLBACK_WIDER", 0.0)
    assert found() == part


def test_whole_image_fallback_only_with_a_verifier_that_accepts_it(analyzer):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (120, 110, 3), dtype=np.uint8)  # no detector or mesh finds a face in noise
    assert analyzer.find_faces(noise) == []  # no verifier: never the whole image
    assert analyzer.find_faces(noise, verify=True) == []
    no = FixedVerifier(0.2)
    assert analyzer.find_faces(noise, no.scores, no.threshold) == [] and no.seen == 1
    yes = FixedVerifier(0.8)
    (face,) = analyzer.find_faces(noise, yes.scores, yes.threshold)
    assert face.detection == "whole-image" and face.box == (0.0, 0.0, 110.0, 120.0) and face.score == pytest.approx(0.8)
    # a flat image or a long strip is never taken as a face crop, whatever the verifier says
    assert analyzer.find_faces(np.full((100, 100, 3), 90, np.uint8), yes.scores, yes.threshold) == []
    assert analyzer.find_faces(noise[:20], yes.scores, yes.threshold) == []
    # a fallback verifier (the predictor's separate face network) decides the fallback steps instead
    no = FixedVerifier(0.2)
    assert analyzer.find_faces(noise, yes.scores, yes.threshold, fallback_verifier=(no.scores, no.threshold)) == []
    assert no.seen == 1
    # a whole-image verifier (the predictor adds the band network there) decides that step alone: not the tiles
    wide, tiles = FixedVerifier(0.7, 0.6), FixedVerifier(0.2)
    (face,) = analyzer.find_faces(noise, no.scores, no.threshold, whole_verifier=(wide.scores, wide.threshold))
    assert face.detection == "whole-image" and face.score == pytest.approx(0.7) and wide.seen == 1
    assert analyzer.find_faces(noise, yes.scores, yes.threshold, tile_verifier=(tiles.scores, tiles.threshold),
                               whole_verifier=(no.scores, no.threshold)) == []


def test_padded_retry_finds_a_face_that_fills_the_frame(analyzer, astronaut):
    """A very tight crop (brows to chin) defeats the detector; inside a border it is found again."""
    tight = np.ascontiguousarray(astronaut[95:225, 170:285])
    faces = analyzer.find_faces(tight, verify=True)
    if faces:  # whichever step finds it, it must say so and lie inside the image
        assert faces[0].detection in ("detector", "padded")
        x1, y1, x2, y2 = faces[0].box
        assert 0 <= x1 < x2 <= tight.shape[1] and 0 <= y1 < y2 <= tight.shape[0]
    padded, _ = pad_border(tight)
    assert analyzer.detect(padded), "the padded image must hold a detectable face"


def test_mirror_completed_maps_points_back():
    """A point of the mirror-completed copy is (x + offset, y) on the image, on either side of the axis."""
    img = np.zeros((20, 100, 3), np.uint8)
    img[10, 30] = img[10, 70] = 255
    left, dx = mirror_completed(img, 40, "left")  # columns 0-39 and their mirror image
    assert left.shape == (20, 80, 3) and dx == 0
    assert set(np.nonzero(left[10, :, 0])[0].tolist()) == {30, 49}  # 49 = 79 - 30: the marker's reflection
    right, dx = mirror_completed(img, 40, "right")  # columns 40-99, preceded by their mirror image
    assert right.shape == (20, 120, 3) and dx == -20
    xs = np.nonzero(right[10, :, 0])[0]
    assert 90 in xs and 90 + dx == 70  # the marker right of the axis maps back to column 70


def _half_hidden(analyzer, astronaut):
    """The astronaut's face crop with her left half (the image's right, from the nose outwards) under a panel, and
    the clean crop's landmarks."""
    crop = np.ascontiguousarray(astronaut[20:320, 120:340])
    lm = analyzer.mesh(crop)
    mid = int(lm[[1, 6, 197, 195], 0].mean())
    hidden = crop.copy()
    hidden[int(lm[:, 1].min()) - 20:int(lm[:, 1].max()) + 5, mid:int(lm[:, 0].max()) + 15] = (30, 40, 50)
    return hidden, lm


def test_mirror_step_finds_a_half_hidden_face_in_image_pixels(analyzer, astronaut):
    """The visible half completed by its mirror image is a face the detector finds; it comes back on the image
    itself (box, keypoints and landmarks), says "padded", and counts only when the verifier is sure of it."""
    hidden, lm = _half_hidden(analyzer, astronaut)
    yes = FixedVerifier(0.99)
    faces = analyzer._mirrored(hidden, yes.scores, 0.5, 256)
    assert len(faces) == 1 and faces[0].detection == "padded" and faces[0].score == pytest.approx(0.99)
    f = faces[0]
    clean = (*lm.min(0), *lm.max(0))
    assert iou(f.box, clean) > 0.5
    assert f.landmarks.shape == lm.shape
    assert np.linalg.norm(f.landmarks[1] - lm[1]) < 0.1 * (clean[2] - clean[0])  # the nose tip where it is
    import cv2

    big = cv2.resize(hidden, None, fx=5, fy=5, interpolation=cv2.INTER_LINEAR)  # 1,100 × 1,500: read shrunk
    large = analyzer._mirrored(big, yes.scores, 0.5, 256)
    assert len(large) == 1 and iou(large[0].box, tuple(5 * v for v in clean)) > 0.5
    assert np.linalg.norm(large[0].landmarks[1] - 5 * lm[1]) < 0.5 * (clean[2] - clean[0])  # in the big image's pixels
    unsure = FixedVerifier(MIRROR_SURE - 0.01)  # over its own threshold, under the step's bar
    assert analyzer._mirrored(hidden, unsure.scores, 0.5, 256) == [] and unsure.seen >= 1
    grey = np.repeat(hidden.mean(2, keepdims=True).astype(np.uint8), 3, 2)  # a grey image is not looked at
    never = FixedVerifier(0.99)
    assert chroma(grey) == 0.0 and chroma(hidden) > 10
    assert analyzer._mirrored(grey, never.scores, 0.5, 256) == [] and never.seen == 0


def test_mirror_and_fill_candidates_are_read_by_both_meshes(astronaut, monkeypatch):
    """With predict's fast landmark path, each candidate of the mirror and fill steps comes twice: with the plain
    landmark model's points (no iris) and with the FaceMesh graph's (iris included), on copies, so the verifier
    can pass either; without BOTH_MESHES, once."""
    from agelens.faces import detect

    an = FaceAnalyzer(fast=None)
    if not an.fast:
        pytest.skip("the fast landmark path (ai-edge-litert) is not installed")
    found = an.detect(astronaut)
    both = an._both_meshes(astronaut, found)
    assert len(both) == 2 * len(found) >= 2 and all(f.landmarks is None for f in found)
    fast, graph = both[0], both[len(found)]
    assert np.isnan(fast.landmarks[468:]).all() and np.isfinite(graph.landmarks).all()
    width = fast.box[2] - fast.box[0]
    assert np.linalg.norm(fast.landmarks[1] - graph.landmarks[1]) < 0.1 * width  # the same nose tip
    hidden, _ = _half_hidden(an, astronaut)
    seen = {}
    for flag in (True, False):
        monkeypatch.setattr(detect, "BOTH_MESHES", flag)
        v = FixedVerifier(0.99)
        assert len(an._mirrored(hidden, v.scores, 0.5, 256)) == 1
        seen[flag] = v.seen
    assert seen[True] == 2 * seen[False] > 0
    an.close()


def test_mirror_step_runs_last_and_only_behind_a_verifier(analyzer, monkeypatch):
    """With a verifier the step is asked last (after the whole-image and tile steps) about a crop-shaped image,
    with the fallback steps' verifier, not the tile step's; without one (or without the whole-image steps) never."""
    from agelens.faces import detect

    calls = []
    monkeypatch.setattr(analyzer, "_mirrored", lambda rgb, v, t, s: calls.append(t) or [])
    monkeypatch.setattr(analyzer, "detect_tiled", lambda rgb, n, **kw: calls.append(
        f"tiles {n}" + (" robust" if kw.get("model") is not None else "")) or [])
    monkeypatch.setattr(detect, "occluded_available", lambda: True)
    img = np.random.default_rng(0).integers(0, 255, (120, 100, 3), dtype=np.uint8)
    no = FixedVerifier(0.1)
    assert analyzer.find_faces(img, no.scores, no.threshold, verify=True, tile_verifier=(no.scores, 0.7)) == []
    assert calls == ["tiles 2", "tiles 3", "tiles 2 robust", 0.5]  # the robust detector's tiles before the mirror
    calls.clear()
    assert analyzer.find_faces(img, verify=True) == [] and analyzer.find_faces(img, verify=False) == []
    assert analyzer.find_faces(img, no.scores, no.threshold, whole_image=False) == [] and calls == []


def test_padded_copy_is_capped_and_maps_back():
    """The padded step shrinks a huge image first (its padded copy at most PAD_MAX_SIDE): points map back."""
    img = np.zeros((100, 400, 3), np.uint8)
    img[58:62, 298:302] = 255  # a 4 px marker centred on (300, 60)
    padded, p, scale = pad_border_capped(img, max_side=400)
    assert scale == 0.5 and p == 100 and padded.shape == (250, 400, 3)
    ys, xs = np.nonzero(padded[..., 0] == 255)
    assert abs((xs.mean() - p) / scale - 300) <= 1 and abs((ys.mean() - p) / scale - 60) <= 1
    same, p1, s1 = pad_border_capped(img)  # small images are padded at their own size
    assert s1 == 1.0 and (same == pad_border(img)[0]).all() and p1 == 200


def test_a_panorama_strip_is_searched_without_crashing(analyzer, monkeypatch):
    """A 20 × 20,000 strip with its 50 % border was a 2.4 GB image, and mediapipe's mesh graph killed the process
    (SIGSEGV) on it: the padded copy is now capped, and the search ends with no face."""
    strip = np.full((20, 20000, 3), 120, np.uint8)
    strip[:, ::50] = 30
    no = FixedVerifier(0.1)
    assert analyzer.find_faces(strip, no.scores, no.threshold, verify=True) == []


def test_padded_step_finds_a_tight_face_on_a_shrunk_copy(astronaut, monkeypatch):
    import agelens.faces.detect as detect

    an = FaceAnalyzer(fast=None)  # the predictor's face path
    tight = np.ascontiguousarray(astronaut[95:165, 190:262])  # 70 × 72: the detector misses it, the padded step not
    full = an.find_faces(tight, verify=False)
    monkeypatch.setattr(detect, "PAD_MAX_SIDE", 100)  # shrink the 144 px padded copy to 100 px
    small = an.find_faces(tight, verify=False)
    assert [f.detection for f in full] == [f.detection for f in small] == ["padded"]
    assert np.allclose(full[0].box, small[0].box, atol=3)


@pytest.mark.skipif("faceness" not in shipped_models(), reason="no shipped face verifier")
def test_shipped_pipeline_answers_double_occluded_crops_and_rejects_non_faces(analyzer, astronaut):
    from agelens.inference.predictor import find_and_align
    from agelens.occlusion.synth import occlude

    crop = np.ascontiguousarray(astronaut[20:320, 120:340])
    lm = analyzer.mesh(crop)
    assert lm is not None
    for k, kind in enumerate(("sunglasses+mask", "eye+mouth_block")):
        occ = occlude(crop, lm, kind, np.random.default_rng(k)).image
        faces = find_and_align(occ, analyzer, 256)
        assert len(faces) >= 1 and faces[0][4] in DETECTIONS, kind
    rng = np.random.default_rng(1)
    flat = np.full((64, 64, 3), 90, np.uint8)
    ramp = np.repeat(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], 3, 2).repeat(150, 0)
    stripes = ((np.indices((160, 160)).sum(0) // 8) % 2 * 255).astype(np.uint8)[..., None].repeat(3, 2)
    for img in (flat, ramp, stripes, rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)):
        with pytest.raises(NoFaceError):
            find_and_align(np.ascontiguousarray(img), analyzer, 256)


def _small_face_scene(astronaut: np.ndarray, side: int = 50) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """scikit-image's coffee at 400 × 300 with the astronaut's head pasted at `side` px (her face about 12 px
    wide: too small for the detector on the whole image); returns the scene and the pasted square."""
    import cv2
    from skimage import data

    scene = cv2.resize(data.coffee(), (400, 300), interpolation=cv2.INTER_AREA)
    head = cv2.resize(astronaut[0:400, 60:460], (side, side), interpolation=cv2.INTER_AREA)
    scene[40:40 + side, 250:250 + side] = head
    return np.ascontiguousarray(scene), (250, 40, 250 + side, 40 + side)


def test_detect_tiled_finds_a_small_face_in_image_pixels(analyzer, astronaut):
    scene, (x1, y1, x2, y2) = _small_face_scene(astronaut)
    assert not analyzer.detect(scene), "the whole-image detector must miss the 12 px face for this test to mean much"
    faces = analyzer.detect_tiled(scene, 2)
    assert faces, "the 2 x 2 tiles must find the face"
    f = faces[0]
    cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
    assert x1 <= cx <= x2 and y1 <= cy <= y2, (f.box, (x1, y1, x2, y2))
    assert f.box[2] - f.box[0] <= 0.25 * scene.shape[1]
    assert ((f.keypoints >= [x1 - 5, y1 - 5]) & (f.keypoints <= [x2 + 5, y2 + 5])).all()
    assert not analyzer.detect_tiled(scene, 2, max_face=0.01), "max_face drops faces wider than its share"


def test_tile_step_runs_last_and_only_behind_its_verifier(analyzer, astronaut, monkeypatch):
    from agelens.faces import detect

    monkeypatch.setattr(detect, "OCCLUDED_STEP", False)  # the robust detector, before the tiles, would find it
    scene, _ = _small_face_scene(astronaut)
    no = FixedVerifier(0.0)
    assert analyzer.find_faces(scene, no.scores, no.threshold, verify=True) == []
    assert no.seen > 0
    yes = FixedVerifier(1.0)
    faces = analyzer.find_faces(scene, FixedVerifier(0.0).scores, 0.5, verify=True,
                                tile_verifier=(yes.scores, yes.threshold))
    assert faces and faces[0].detection == "detector" and yes.seen > 0
    assert analyzer.find_faces(scene, yes.scores, 0.5, verify=False, whole_image=False) == []


@pytest.mark.skipif("faceness" not in shipped_models(), reason="no shipped face verifier")
def test_shipped_pipeline_finds_a_small_face_in_a_scene_and_not_in_the_coffee(analyzer, astronaut):
    import cv2
    from skimage import data

    from agelens.inference.predictor import find_and_align

    scene, (x1, y1, x2, y2) = _small_face_scene(astronaut)
    faces = find_and_align(scene, analyzer, 256)
    box = faces[0][0]
    assert x1 - 5 <= box[0] < box[2] <= x2 + 5 and y1 - 5 <= box[1] < box[3] <= y2 + 5, box
    with pytest.raises(NoFaceError):
        find_and_align(np.ascontiguousarray(cv2.resize(data.coffee(), (400, 300))), analyzer, 256)


def test_one_person_found_twice_is_answered_once():
    """A tight face box inside a loose head box (the detector's two answers for one masked face): the one it scored
    higher stays; faces side by side, or overlapping less, all stay."""
    from agelens.faces.detect import Face, without_nested

    kp = np.zeros((4, 2), np.float32)
    tight, loose = Face((50, 50, 90, 90), 0.8, kp), Face((40, 40, 110, 120), 0.6, kp)
    beside = Face((150, 50, 190, 90), 0.55, kp)
    assert without_nested([loose, tight, beside]) == [tight, beside]
    loose.score = 0.9
    assert without_nested([tight, loose, beside]) == [loose, beside]
    half_out = Face((80, 50, 120, 90), 0.7, kp)  # three quarters of it inside the loose box (under 0.8): kept
    assert len(without_nested([loose, half_out])) == 2


def test_when_every_detection_is_vetoed_the_fallback_steps_look_once(analyzer, astronaut, monkeypatch):
    """A detection the ImageNet check vetoes is no detection: the fallback steps look (once) as on an image the
    detector finds nothing on; where they find nothing either, or are vetoed too, there is no face."""
    from agelens.inference import finding

    crop = np.ascontiguousarray(astronaut[40:300, 140:330])
    calls = []

    def veto_detector(rgb, faces, verifier=None, mirrored=None, robust=None):
        calls.append([how for _, _, _, _, how, *_ in faces])
        return [f for f in faces if f[4] != "detector"]

    monkeypatch.setattr(finding, "without_non_faces", veto_detector)
    faces = finding.find_and_align(crop, analyzer, 256, verifier=FixedVerifier(0.99), upright=False)
    assert calls[0] == ["detector"] and len(calls) == 2 and faces and all(f[4] != "detector" for f in faces)
    calls.clear()
    monkeypatch.setattr(finding, "without_non_faces", lambda rgb, faces, *a: calls.append(1) or [])
    with pytest.raises(NoFaceError):
        finding.find_and_align(crop, analyzer, 256, verifier=FixedVerifier(0.99), upright=False)
    assert len(calls) == 2  # the image as found, then its fallback steps: no third look


@pytest.mark.skipif("faceness" not in shipped_models(), reason="no shipped face verifier")
def test_a_group_photo_keeps_the_people_smaller_than_the_one_the_detector_found(analyzer, astronaut):
    """The whole-image detector finds the nearest person only; the 2 x 2 tiles find the six further back."""
    import cv2

    from agelens.inference.predictor import find_and_align

    rng = np.random.default_rng(0)
    scene = np.clip(np.full((900, 1600, 3), (120, 140, 160)) + rng.normal(0, 4, (900, 1600, 3)), 0, 255)
    scene = scene.astype(np.uint8)
    spots = [(1050, 200, 400)] + [(40 + (i % 3) * 320, 100 + (i // 3) * 380, 220) for i in range(6)]
    for x, y, s in spots:
        scene[y:y + s, x:x + s] = cv2.resize(astronaut[0:400, 60:460], (s, s), interpolation=cv2.INTER_AREA)
    assert len(analyzer.detect(scene)) == 1, "the test means something only where the detector finds one face"
    faces = find_and_align(scene, analyzer, 256)
    held = sorted(next(i for i, (x, y, s) in enumerate(spots) if x <= (b[0] + b[2]) / 2 <= x + s
                       and y <= (b[1] + b[3]) / 2 <= y + s) for b, *_ in faces)
    assert held == list(range(7)), held  # each person once


def test_a_small_face_beside_a_large_one_in_a_photo_is_found(analyzer, astronaut, monkeypatch):
    """A child by an adult close to the camera: on a 1000 px photo the detector finds the large face only, its
    smallest face is over MORE_FACES_BELOW of the image, so the tiles were never read and the small face was lost;
    in an image BESIDE_LARGE_MIN_SIDE long the tiles (cut from a halved copy) are read too; in a smaller one (a
    portrait at a web picture's size, where such a face would be under 32 px) they are not: they cost each portrait
    eight detector passes."""
    import cv2

    import agelens.faces.detect as D
    from agelens.inference.predictor import find_and_align

    head = astronaut[30:250, 130:330]
    scene = np.ascontiguousarray(cv2.resize(astronaut[300:400, 0:100], (1000, 750)))
    scene[130:614, 60:500] = cv2.resize(head, (440, 484))
    scene[300:410, 700:800] = cv2.resize(head, (100, 110), interpolation=cv2.INTER_AREA)

    def centres():
        return sorted(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b, *_ in find_and_align(scene, analyzer, 256))

    shipped = D.BESIDE_LARGE_MIN_SIDE
    found = centres()
    assert len(found) == 2, found
    assert 60 <= found[0][0] <= 500 and 700 <= found[1][0] <= 800 and 300 <= found[1][1] <= 410  # image pixels
    monkeypatch.setattr(D, "BESIDE_LARGE_MIN_SIDE", 10**9)  # the rule before: the test means something
    assert len(centres()) == 1
    monkeypatch.setattr(D, "BESIDE_LARGE_MIN_SIDE", shipped)
    portrait = np.ascontiguousarray(cv2.resize(scene, (600, 450), interpolation=cv2.INTER_AREA))
    tiled = []
    monkeypatch.setattr(analyzer, "detect_tiled", lambda *a, **k: tiled.append(1) or [])
    assert len(find_and_align(portrait, analyzer, 256)) == 1 and not tiled
    assert len(find_and_align(cv2.resize(portrait, (640, 480)), analyzer, 256)) == 1 and tiled


def test_fill_step_finds_a_face_under_a_flat_patch_on_the_filled_copy(analyzer, astronaut, monkeypatch):
    """A face crop whose middle is under one flat patch: filled in from its surroundings, the detector finds the face
    there; it comes back in the image's pixels, says "padded", is marked for the strict people veto, and counts only
    when the verifier is sure of it on the filled copy. Images without such a patch (or mostly one) are not looked
    at; the step runs after the mirror step and only where that found nothing."""
    from agelens.faces import detect

    face = np.ascontiguousarray(astronaut[50:230, 140:310])  # 180 x 170 around her face
    clean = analyzer.detect(face)[0].box
    covered = face.copy()
    covered[95:150, 55:125] = (20, 30, 90)  # nose and mouth under a flat block
    yes = FixedVerifier(0.99)
    found = analyzer._filled(covered, yes.scores, 0.5, 256)
    assert len(found) == 1 and found[0].detection == "padded" and found[0].mirrored and yes.seen >= 1
    assert iou(found[0].box, clean) > 0.5 and found[0].landmarks.shape == (478, 2)
    unsure = FixedVerifier(detect.FILL_SURE - 0.01)
    assert analyzer._filled(covered, unsure.scores, 0.5, 256) == []
    never = FixedVerifier(0.99)
    noise = np.random.default_rng(0).integers(0, 255, face.shape, dtype=np.uint8)
    mostly_flat = face.copy()
    mostly_flat[:, 20:] = 128
    assert analyzer._filled(noise, never.scores, 0.5, 256) == [] and never.seen == 0
    assert analyzer._filled(mostly_flat, never.scores, 0.5, 256) == [] and never.seen == 0
    calls = []
    monkeypatch.setattr(analyzer, "_mirrored", lambda rgb, v, t, s: calls.append("mirror") or [])
    monkeypatch.setattr(analyzer, "_filled", lambda rgb, v, t, s, robust=True: calls.append("fill") or [])
    monkeypatch.setattr(analyzer, "detect_tiled", lambda rgb, n, **kw: [])
    no = FixedVerifier(0.1)
    assert analyzer.find_faces(noise, no.scores, no.threshold, verify=True) == [] and calls == ["mirror", "fill"]


def test_a_crowd_in_a_large_photo_is_read_on_tiles_its_faces_show_on(astronaut, monkeypatch):
    """Twelve faces about 110 px wide on a 2400 x 1800 photo: the whole image and its 2 x 2 / 3 x 3 tiles show them
    under 20 px at the detector's input, and the first grid that finds any face decided (3 found); a grid sized by
    the smallest face found (`fine_grid`) finds the rest."""
    import cv2

    import agelens.faces.detect as D
    from agelens.inference.predictor import AgeEstimator

    assert D.fine_grid(900, 20) == 0 and D.fine_grid(2400, 110) == 4 and D.fine_grid(8000, 20) == D.FINE_MAX_GRID
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(90, 160, (1800, 2400, 3), dtype=np.uint8), (0, 0), 3)
    spots = []
    for i in range(3):
        for j in range(4):
            x, y = 150 + j * 560 + int(rng.integers(0, 200)), 150 + i * 560 + int(rng.integers(0, 200))
            scene[y:y + 110, x:x + 110] = cv2.resize(astronaut[30:250, 130:330], (110, 110), interpolation=cv2.INTER_AREA)
            spots.append((x, y))

    est = AgeEstimator.from_pretrained()  # its face checks: the tile steps answer only behind them

    def held():
        return {k for f in est.predict(scene) for k, (x, y) in enumerate(spots)
                if x <= (f.box[0] + f.box[2]) / 2 <= x + 110 and y <= (f.box[1] + f.box[3]) / 2 <= y + 110}

    assert len(held()) >= 10
    monkeypatch.setattr(D, "FINE_MAX_GRID", 0)  # the grids before: the test means something
    assert len(held()) <= 4


def test_a_flat_large_image_is_judged_on_a_sample_of_its_pixels():
    """The flat-image check of a 40 MP image took a float64 copy of every pixel (about 1 GB, seconds)."""
    import tracemalloc

    from agelens.faces.detect import flat_image

    big = np.full((5000, 8000, 3), 128, np.uint8)
    big[::97, ::89] = 131  # a faint pattern: still flat
    tracemalloc.start()
    assert flat_image(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * 2**20, peak
    assert not flat_image(np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8))


def test_a_mesh_of_another_face_does_not_align_this_box():
    """FaceMesh on a box's region answers the most face-like face there: a neighbour's, or the one face in a scene
    when the box is on a cup. Its landmarks count for the box only when they lie on it and span enough of it."""
    from agelens.faces.detect import MESH_MIN_WIDTH, mesh_fits_box

    def mesh(x0: float, y0: float, width: float) -> np.ndarray:  # 478 points spanning `width`, nose tip mid-face
        lm = np.stack(np.meshgrid(np.linspace(0, width, 22), np.linspace(0, width, 22)), -1).reshape(-1, 2)[:478]
        lm = np.vstack([lm, np.zeros((478 - len(lm), 2))]) + [x0, y0]
        lm[1] = [x0 + width / 2, y0 + width / 2]
        return lm.astype(np.float32)

    box = (100.0, 100.0, 200.0, 200.0)
    assert mesh_fits_box(mesh(105, 105, 90), box)
    assert not mesh_fits_box(mesh(105, 260, 90), box), "a face below the box (its nose outside it) is another's"
    assert not mesh_fits_box(mesh(140, 140, 0.9 * MESH_MIN_WIDTH * 100), box), "a face much smaller than the box"
    assert mesh_fits_box(mesh(130, 130, 1.1 * MESH_MIN_WIDTH * 100), box)


def test_a_mesh_of_another_face_becomes_a_face_of_its_own(monkeypatch):
    """Where FaceMesh on a box's region reads another face, the box keeps the detector's keypoints and the mesh's face
    is added after the faces, boxed by its landmarks and scored a hair above the box (a candidate to verify); the
    mirror and fill steps (others=False) add none."""
    from agelens.faces.detect import Face, FaceAnalyzer

    lm = np.zeros((478, 2), np.float32)
    lm[:468, 0], lm[:468, 1] = np.linspace(210, 231, 468), np.linspace(76, 101, 468)
    lm[468:] = lm[100:110]  # iris points inside the face
    lm[1] = [220, 88]  # a neighbour's face, a third of the box wide
    monkeypatch.setattr(FaceAnalyzer, "_fast_mesh", lambda self, rgb, f: None)
    monkeypatch.setattr(FaceAnalyzer, "_mesh_in_box", lambda self, rgb, box: lm.copy())
    an = FaceAnalyzer.__new__(FaceAnalyzer)
    kp = np.array([[185, 60], [210, 60], [198, 72], [198, 82]], np.float32)
    box = Face((173.0, 40.0, 226.0, 94.0), 0.7, kp.copy())
    rgb = np.zeros((200, 300, 3), np.uint8)
    out = an._with_mesh(rgb, [box])
    assert len(out) == 2 and out[0] is box and box.landmarks is None and np.array_equal(box.keypoints, kp)
    other = out[1]
    assert other.box == pytest.approx((210.0, 76.0, 231.0, 101.0)) and other.landmarks is not None
    assert other.score > 0.7 and other.score == pytest.approx(0.7) and other.detection == box.detection
    assert an._with_mesh(rgb, [Face((173.0, 40.0, 226.0, 94.0), 0.7, kp.copy())], others=False)[1:] == []


def test_one_face_boxed_twice_is_answered_once():
    """Two boxes on one face (offset, neither 80 % inside the other): the one with the mesh's landmarks stays, else
    the one scored higher, in the order found; faces side by side, of another size, or overlapping a little, all
    stay."""
    from agelens.faces.detect import Face, without_same_face

    def kp(x: float, y: float, d: float = 20.0) -> np.ndarray:
        return np.array([[x - d / 2, y], [x + d / 2, y], [x, y + d / 2], [x, y + d]], np.float32)

    a = Face((300, 154, 351, 205), 0.72, kp(325, 170))
    b = Face((291, 172, 357, 238), 0.70, kp(324, 190))  # IoU 0.32: `without_nested` keeps both
    beside = Face((360, 160, 410, 210), 0.9, kp(385, 175))
    assert without_same_face([b, a, beside]) == [a, beside]
    b.landmarks = np.zeros((478, 2), np.float32)
    assert without_same_face([b, a, beside]) == [b, beside]
    far = Face((0, 0, 40, 40), 0.5, kp(325, 171, 21))  # boxes apart, but its eyes are a's: one face
    assert without_same_face([a, far]) == [a]
    big = Face((250, 120, 400, 270), 0.8, kp(325, 190, 60))  # three times as wide: a face of another size
    assert len(without_same_face([a, big])) == 2
    # two people whose heads overlap in a selfie (IoU 0.19, one about 1.5 times the other): both stay
    woman, man = Face((52.7, 60.9, 101.8, 110.0), 0.8, kp(77, 78, 18)), Face((67.4, 45.0, 100.4, 78.0), 0.7, kp(84, 56, 13))
    assert len(without_same_face([woman, man])) == 2


def test_tiles_come_before_the_whole_image_in_a_large_photo(analyzer, astronaut, monkeypatch):
    """A scene photo with one small face: where the whole-image step's verifier passes the photo, the tiles' face is
    the answer in a photo WHOLE_AFTER_TILES_MIN_SIDE long or longer; in a smaller image (a face crop) the whole
    image still comes first."""
    import cv2

    from agelens.faces import detect

    monkeypatch.setattr(detect, "OCCLUDED_STEP", False)
    scene, (x1, y1, x2, y2) = _small_face_scene(astronaut)
    big = np.ascontiguousarray(cv2.resize(scene, (800, 600), interpolation=cv2.INTER_CUBIC))
    no, yes = FixedVerifier(0.0), FixedVerifier(1.0)
    kw = dict(verify=True, tile_verifier=(yes.scores, yes.threshold), whole_verifier=(yes.scores, yes.threshold))
    faces = analyzer.find_faces(big, no.scores, no.threshold, **kw)
    assert faces and faces[0].detection == "detector"
    cx, cy = (faces[0].box[0] + faces[0].box[2]) / 4, (faces[0].box[1] + faces[0].box[3]) / 4
    assert x1 <= cx <= x2 and y1 <= cy <= y2
    (whole,) = analyzer.find_faces(scene, no.scores, no.threshold, **kw)
    assert whole.detection == "whole-image"
    monkeypatch.setattr(detect, "WHOLE_AFTER_TILES_MIN_SIDE", 10**6)  # the order before: the test means something
    (whole,) = analyzer.find_faces(big, no.scores, no.threshold, **kw)
    assert whole.detection == "whole-image"


@pytest.mark.skipif("faceness" not in shipped_models(), reason="no shipped face verifier")
def test_one_small_face_in_a_large_photo_is_found_on_the_finest_tiles(astronaut, monkeypatch):
    """One face about 55 px wide (under 2 % of the width) on a 3000 x 2250 photo: the 2 x 2 and 3 x 3 tiles show it
    under the detector's smallest faces; the finest grid (LONE_TILES) finds it."""
    import cv2

    import agelens.faces.detect as D
    from agelens.inference.predictor import AgeEstimator

    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(90, 160, (2250, 3000, 3), dtype=np.uint8), (0, 0), 3)
    x, y, side = 2000, 562, 120
    scene[y:y + side, x:x + side] = cv2.resize(astronaut[30:250, 130:330], (side, side), interpolation=cv2.INTER_AREA)
    est = AgeEstimator.from_pretrained()
    (face,) = est.predict(scene)
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    assert x <= cx <= x + side and y <= cy <= y + side, face.box
    monkeypatch.setattr(D, "LONE_TILES", False)  # the search before: the test means something
    with pytest.raises(NoFaceError):
        est.predict(scene)


@pytest.mark.skipif("faceness" not in shipped_models(), reason="no shipped face verifier")
def test_a_face_beside_a_vetoed_cat_in_a_large_photo_is_found(astronaut, monkeypatch):
    """scikit-image's cat enlarged to 2000 x 1500 with a small human face in a corner: the detector and the padded
    step find the cat's face, the ImageNet check turns it away, and the tiles (VETOED_TILES) find the face beside it;
    the cat itself stays unanswered."""
    import cv2
    from skimage import data

    import agelens.faces.detect as D
    from agelens.inference.predictor import AgeEstimator

    scene = cv2.GaussianBlur(cv2.resize(data.chelsea(), (2000, 1500), interpolation=cv2.INTER_CUBIC), (0, 0), 3)
    x = y = 150
    scene[y:y + 200, x:x + 200] = cv2.resize(astronaut[30:250, 130:330], (200, 200), interpolation=cv2.INTER_AREA)
    est = AgeEstimator.from_pretrained()
    (face,) = est.predict(scene)
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    assert x <= cx <= x + 200 and y <= cy <= y + 200, face.box
    monkeypatch.setattr(D, "VETOED_TILES", False)  # the search before: the test means something
    with pytest.raises(NoFaceError):
        est.predict(scene)
