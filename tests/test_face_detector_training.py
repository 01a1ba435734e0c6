"""The occlusion-robust face detector: the TFLite graph as torch, its distillation data and loss, the shipped copy,
and the cascade step that asks it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("tflite")
pytest.importorskip("ai_edge_litert")
skimage_data = pytest.importorskip("skimage.data")

from agelens.faces import blazeface, detect  # noqa: E402
from agelens.faces.blazeface import BlazeFace, OccludedBlazeFace, letterbox  # noqa: E402
from agelens.faces.detect import FaceAnalyzer  # noqa: E402
from agelens.train import face_detector as fd  # noqa: E402
from agelens.train.tflite_torch import TFLiteNet  # noqa: E402


@pytest.fixture(scope="module")
def net() -> TFLiteNet:
    return TFLiteNet(blazeface.model_path(0)).eval()


def test_torch_graph_matches_litert(net):
    bf = BlazeFace(0)
    for img in (skimage_data.astronaut(), skimage_data.coffee()):
        x, _ = letterbox(img, 128)
        bf.interpreter.set_tensor(bf._in, x[None])
        bf.interpreter.invoke()
        raw, logits = bf.interpreter.get_tensor(bf._boxes)[0], bf.interpreter.get_tensor(bf._scores)[0]
        with torch.no_grad():
            r, s = (o[0].numpy() for o in net(torch.from_numpy(x).permute(2, 0, 1)[None]))
        assert r.shape == raw.shape and s.shape == logits.shape
        np.testing.assert_allclose(r, raw, atol=1e-3)
        np.testing.assert_allclose(s, logits, atol=1e-3)


def test_uint8_views_are_letterbox_exactly():
    img = skimage_data.astronaut()[50:300, 100:260]
    x, _ = letterbox(img, 128)
    np.testing.assert_allclose(fd._to_u8(img).astype(np.float32) / 127.5 - 1.0, x, atol=1e-6)


def test_pairs_differ_only_where_the_occluder_is():
    rng = np.random.default_rng(0)
    img = skimage_data.astronaut()
    lm = FaceAnalyzer().mesh(img)
    assert lm is not None
    photos = [(img, lm[:, :2].astype(np.float32))]
    backgrounds = [skimage_data.coffee()]
    kinds = set()
    for _ in range(12):
        clean, occ, kind = fd.make_pair(photos, backgrounds, rng)
        assert clean.shape == occ.shape == (128, 128, 3) and clean.dtype == np.uint8
        kinds.add(kind)
        if kind in ("clean", "empty"):
            assert np.array_equal(clean, occ)
    assert kinds - {"clean", "empty"}, "some pair carries an occluder"


def test_distill_loss_is_least_at_the_teachers_answer():
    g = torch.Generator().manual_seed(0)
    t_reg, t_logit = torch.randn(2, 896, 16, generator=g) * 5, torch.randn(2, 896, generator=g) * 4
    same, _ = fd.distill_loss(t_reg, t_logit, t_reg, t_logit)
    off, parts = fd.distill_loss(t_reg + 3, t_logit - 2, t_reg, t_logit)
    assert float(off) > float(same) and parts["reg"] > 0


def test_recall_report_counts_found_and_false_alarms():
    teacher = np.array([[0.9, 0.1], [0.8, 0.0], [0.1, 0.2], [0.0, 0.1]])
    student = np.array([[0.7, 0.0], [0.2, 0.1], [0.6, 0.0], [0.1, 0.1]])
    rep = fd.recall_report(student, teacher, np.array(["mask", "mask", "empty", "empty"]))
    assert rep["mask"] == {"n": 2, "found": 0.5, "false_alarm": None}
    assert rep["empty"] == {"n": 2, "found": None, "false_alarm": 0.5}


@pytest.mark.skipif(not detect.occluded_available(), reason="the occlusion-robust detector's weights are not shipped")
def test_shipped_copy_keeps_the_originals_clean_faces():
    img = skimage_data.astronaut()
    (box, score, _), *_ = BlazeFace(0)(img)
    (rbox, rscore, _), *_ = OccludedBlazeFace()(img)
    assert detect.iou(box, rbox) > 0.8 and rscore > 0.5


def test_robust_step_answers_only_where_the_detector_steps_found_nothing(monkeypatch):
    img = skimage_data.astronaut()
    an = FaceAnalyzer(fast=True)
    real = an._raw_detections

    def fake(rgb, model):
        if model == detect.OCCLUDED:  # stands in for the robust copy: the original's answer
            return real(rgb, 0)
        return []  # the detector steps find nothing

    monkeypatch.setattr(an, "_raw_detections", fake)
    monkeypatch.setattr(detect, "occluded_available", lambda: True)
    faces = an.find_faces(img, verifier=lambda crops: np.ones(len(crops)), threshold=0.5, verify=True)
    assert len(faces) == 1 and faces[0].robust and faces[0].detection == "detector"
    monkeypatch.setattr(detect, "OCCLUDED_STEP", False)
    faces = an.find_faces(img, verifier=lambda crops: np.ones(len(crops)), threshold=0.5, verify=True)
    assert not any(f.robust for f in faces)


def test_decode_is_the_detectors_own_postprocessing():
    bf = BlazeFace(0)
    img = skimage_data.astronaut()
    x, pad = letterbox(img, 128)
    bf.interpreter.set_tensor(bf._in, x[None])
    bf.interpreter.invoke()
    raw, logits = bf.interpreter.get_tensor(bf._boxes)[0], bf.interpreter.get_tensor(bf._scores)[0, :, 0]
    faces = blazeface.decode(raw, logits, bf.cfg, pad, img.shape, 0.5, bf.anchors)
    assert [f[0] for f in faces] == [f[0] for f in bf(img)]


def test_a_vetoed_robust_face_sends_the_search_on_without_the_step(monkeypatch):
    from agelens.inference import finding

    img = skimage_data.astronaut()
    an = FaceAnalyzer(fast=True)
    real = an._raw_detections
    monkeypatch.setattr(an, "_raw_detections", lambda rgb, model: real(rgb, 0) if model == detect.OCCLUDED else [])
    monkeypatch.setattr(detect, "occluded_available", lambda: True)
    seen = []

    def veto_robust(rgb, faces, verifier=None, mirrored=None, robust=None):
        seen.append(list(robust))
        return [f for f, r in zip(faces, robust, strict=True) if not r]

    monkeypatch.setattr(finding, "without_non_faces", veto_robust)

    class Always:
        threshold = 0.5

        @staticmethod
        def scores(crops):
            return np.ones(len(crops))

    out = finding.find_and_align(img, an, 256, verifier=Always(), upright=False)
    assert seen[0] == [True] and seen[-1] == [False]  # the robust face went, then a later step's face stayed
    assert len(out) == 1 and out[0][4] in detect.DETECTIONS


def test_robust_tiles_ask_the_robust_model_and_its_bar(monkeypatch):
    img = np.zeros((300, 400, 3), np.uint8)
    an = FaceAnalyzer(fast=True)
    asked = []
    monkeypatch.setattr(an, "_raw_detections", lambda rgb, model: asked.append((model, rgb.shape[:2])) or [])
    assert an.detect_tiled(img, 2, model=detect.OCCLUDED) == []
    assert len(asked) == 4 and {m for m, _ in asked} == {detect.OCCLUDED}
    assert all(h < 300 and w < 400 for _, (h, w) in asked)  # each tile, not the image

    def verifier(crops):
        return np.ones(len(crops))

    assert FaceAnalyzer._robust_check(verifier, 0.5, None) == (verifier, detect.OCCLUDED_SURE)
    assert FaceAnalyzer._robust_check(verifier, 0.5, (verifier, 0.99)) == (verifier, 0.99)


def test_fill_step_reads_the_filled_copy_with_each_detector_in_turn(monkeypatch):
    """The fill step asks the detector, its padded copy, then the robust copy on both, until a face passes; a face
    the meshes miss counts only from the robust copy (on its own keypoints), and robust=False (the search rerun
    without the step) never asks it."""
    img = skimage_data.astronaut()[30:250, 120:330].copy()
    img[100:175, 50:160] = (20, 30, 90)  # a flat block over the nose and mouth
    an = FaceAnalyzer(fast=True)
    real = an._raw_detections
    asked = []

    def fake(rgb, model):  # only the robust copy finds the face on the filled copy
        asked.append(model)
        return real(rgb, 0) if model == detect.OCCLUDED else []

    monkeypatch.setattr(an, "_raw_detections", fake)
    monkeypatch.setattr(detect, "occluded_available", lambda: True)
    monkeypatch.setattr(an, "_with_mesh", lambda rgb, faces, graph=False, others=True: faces)  # no mesh reads any face

    def yes(crops):
        return np.ones(len(crops))

    found = an._filled(img, yes, 0.5, 256)
    assert len(found) == 1 and found[0].robust and found[0].mirrored and found[0].landmarks is None
    assert asked[-1] == detect.OCCLUDED and 0 in asked  # the plain detector was asked first
    asked.clear()
    assert an._filled(img, yes, 0.5, 256, robust=False) == [] and detect.OCCLUDED not in asked
    monkeypatch.setattr(detect, "FILL_ROBUST", False)
    assert an._filled(img, yes, 0.5, 256) == []
