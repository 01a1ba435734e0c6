"""One backbone pass per face (guard heads on the age model), flip- and pair-consistency training and the batch engine's
worker sizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agelens.config import ModelConfig, RunConfig
from agelens.data.views import centre_views
from agelens.inference.backends.torch import TorchModel
from agelens.inference.predictor import SINGLE_VIEW, AgeEstimator, TrunkGuard
from agelens.models.inputs import to_input
from agelens.models.model import GUARDS, build_model
from agelens.numerics import Numerics
from agelens.parallel import MIN_FILES_PER_WORKER, auto_workers
from agelens.train.engine import train_step

FP32 = Numerics("cpu", "fp32", False, "test")


def _model(guards: bool = True, dropout: float = 0.0):
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="efficientnet_lite0", pretrained=False, guards=guards, dropout=dropout))


def test_guard_heads_answer_from_the_age_pass():
    m = _model().eval()
    x = torch.randn(3, 3, 64, 64)
    age, spread, probs = m.predict_guards(x, tta_flip=True)
    ref_age, ref_spread, _ = m.predict(x, True)
    assert probs.shape == (3, len(GUARDS)) and bool(((probs > 0) & (probs < 1)).all())
    assert torch.allclose(age, ref_age, atol=1e-4) and torch.allclose(spread, ref_spread, atol=1e-4)
    assert "guards" not in _model(guards=False).eval()(x)


class CountingTeacher(TorchModel):
    calls = views = 0

    def run_guards(self, views):
        type(self).calls += 1
        type(self).views += len(views)
        return super().run_guards(views)


def test_estimator_runs_the_teacher_once_per_crop_for_verifier_occlusion_and_age():
    teacher = CountingTeacher(_model(), 56, 48, "teacher", tta_flip=False, numerics=FP32,
                              guard_thresholds={"occlusion": 0.5, "face": 0.4})
    est = AgeEstimator(teacher)
    assert isinstance(est.detector, TrunkGuard) and isinstance(est.verifier, TrunkGuard)
    assert (est.detector.threshold, est.verifier.threshold) == (0.5, 0.4)
    crops = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    face = est.verifier.scores(crops)  # find_faces verifies the crops first ...
    r = est.analyse_crops(crops)  # ... then the same crops get their occlusion flag and age
    assert CountingTeacher.calls == 1
    age, _, probs = teacher.run_guards(centre_views(crops, 56, 48))
    assert np.allclose(face, probs[:, 1], atol=1e-5) and np.allclose(r["occlusion_score"], probs[:, 0], atol=1e-5)
    assert np.allclose(r["age"], age, atol=1e-3)
    other = crops.copy()
    other[0, 0, 0] ^= 1  # one changed pixel is another crop: it gets its own pass
    est.analyse_crops(other)
    assert CountingTeacher.calls == 3  # the check above, and the one new crop


class ByMean:
    """A face network whose score is a crop's mean pixel value / 255 (a stand-in for the separate networks)."""

    def __init__(self, threshold: float, scale: float = 1.0) -> None:
        self.name, self.threshold, self.scale, self.seen = "stub", threshold, scale, 0

    def scores(self, crops):
        self.seen += len(crops)
        return np.asarray(crops, np.float32).mean(axis=(1, 2, 3)) / 255.0 * self.scale


def test_photo_network_vouches_where_the_strict_one_rejects_but_not_on_tiles():
    """`faceness_photo`: a crop the separate network rejects passes when the photo network vouches for it, at
    DETECTED_THRESHOLD for the detector's own faces and at its own threshold on the fallback steps; the tile step
    (`both_scores`) keeps the strict network alone, and the photo network only sees the crops in doubt."""
    from agelens.faces.detect import DETECTED_THRESHOLD

    teacher = TorchModel(_model(), 56, 48, "teacher", tta_flip=False, numerics=FP32,
                         guard_thresholds={"occlusion": 0.5, "face": 0.4})
    strict, photo = ByMean(0.9, scale=0.25), ByMean(0.6)  # strict: at most 0.25 here; photo: mean / 255
    est = AgeEstimator(teacher, verifier=strict, photo_verifier=photo)
    v = est.verifier
    assert v.photo is photo and v.threshold == 0.9
    crops = np.stack([np.full((64, 64, 3), x, np.uint8) for x in (20, 100, 200)])  # photo: 0.08, 0.39, 0.78
    det = v.scores(crops)  # the detector step, decided at DETECTED_THRESHOLD
    assert list(det >= DETECTED_THRESHOLD) == [False, True, True] and photo.seen == 3
    assert det[1] == pytest.approx(100 / 255)  # the photo network's own score, not a made-up one
    sep = v.separate_scores(crops)  # the fallback steps, decided at the strict threshold
    assert list(sep >= v.threshold) == [False, False, True] and sep[2] == pytest.approx(0.9)
    assert not (v.both_scores(crops) >= v.threshold).any()  # tiles: the strict network alone
    alone = AgeEstimator(teacher, verifier=strict).verifier
    assert not (alone.separate_scores(crops) >= alone.threshold).any()
    assert not (alone.scores(crops) >= DETECTED_THRESHOLD).any()  # strict: 0.02, 0.10, 0.196
    seen = photo.seen
    sure = ByMean(0.01)  # a strict network that passes every crop never asks the photo network
    AgeEstimator(teacher, verifier=sure, photo_verifier=photo).verifier.separate_scores(crops)
    assert photo.seen == seen


def test_band_network_vouches_at_the_whole_image_step_only():
    """`faceness_bands`: asked only by `whole_scores` (the whole-image step), for the crops the separate networks
    reject, at its own threshold; the detector, fallback and tile steps never see it."""
    teacher = TorchModel(_model(), 56, 48, "teacher", tta_flip=False, numerics=FP32,
                         guard_thresholds={"occlusion": 0.5, "face": 0.4})
    strict, photo, bands = ByMean(0.9, scale=0.25), ByMean(0.95), ByMean(0.7)
    v = AgeEstimator(teacher, verifier=strict, photo_verifier=photo, bands_verifier=bands).verifier
    assert v.bands is bands
    crops = np.stack([np.full((64, 64, 3), x, np.uint8) for x in (100, 200)])  # bands: 0.39, 0.78
    v.scores(crops), v.separate_scores(crops), v.both_scores(crops)
    assert bands.seen == 0
    whole = v.whole_scores(crops)
    assert list(whole >= v.threshold) == [False, True] and whole[1] == pytest.approx(0.9) and bands.seen == 2
    assert np.allclose(v.whole_scores(crops), whole) and bands.seen == 2  # memoised
    assert AgeEstimator(teacher, bands_verifier=bands).verifier.bands is None  # no separate network: no bands


def test_separate_guard_asks_the_face_networks_as_predict_does_without_a_teacher():
    """`SeparateGuard` (evaluate's face preparation, detection-only workers): `faceness` decides, the photo network
    vouches at DETECTED_THRESHOLD on the detector step and at its own threshold on the fallback steps, the band
    network at the whole-image step only; the tile step keeps `faceness` alone."""
    from agelens.faces.detect import DETECTED_THRESHOLD
    from agelens.inference.finding import SeparateGuard

    face, photo, bands = ByMean(0.9, scale=0.25), ByMean(0.6), ByMean(0.7)
    v = SeparateGuard(face, photo, bands)
    assert v.est is None and v.threshold == 0.9 and v.fallback is face
    crops = np.stack([np.full((64, 64, 3), x, np.uint8) for x in (20, 100, 170, 200)])  # photo/bands: .08 .39 .67 .78
    assert list(v.scores(crops) >= DETECTED_THRESHOLD) == [False, True, True, True]
    assert list(v.separate_scores(crops) >= v.threshold) == [False, False, True, True]
    assert list(v.whole_scores(crops) >= v.threshold) == [False, False, True, True]
    assert not (v.both_scores(crops) >= v.threshold).any()
    only_bands = SeparateGuard(face, None, ByMean(0.7))
    assert list(only_bands.whole_scores(crops) >= 0.9) == [False, False, False, True]
    assert not (only_bands.separate_scores(crops) >= 0.9).any()


def test_memo_survives_repeated_crops_and_batches_larger_than_it():
    """Identical crops within a batch get one pass; a crop seen before keeps its answer even when the batch that
    repeats it evicts older entries (an evaluate batch of duplicate UTKFace photos once raised KeyError here)."""
    teacher = CountingTeacher(_model(), 56, 48, "teacher", tta_flip=False, numerics=FP32,
                              guard_thresholds={"occlusion": 0.5, "face": 0.4})
    est = AgeEstimator(teacher)
    est.MEMO_SIZE = 4
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    first = est.trunk(a)[0]
    n, seen = CountingTeacher.calls, CountingTeacher.views
    mixed = np.concatenate([b[:2], a[:1], b[2:], a[:1]])  # new crops around a known one, which also repeats
    got = est.trunk(mixed)[0]
    assert CountingTeacher.calls == n + 1 and CountingTeacher.views == seen + 5  # the five new crops, once each
    assert np.allclose(got[[2, 6]], first[0], atol=1e-5)
    assert np.allclose(est.trunk(mixed)[0], got, atol=1e-5) and CountingTeacher.calls == n + 1  # batch kept whole


def test_separate_network_reads_each_crop_once():
    """The cascade's separate network reads a crop once while it stays in the memo: the cat check's occlusion
    score and routing ask about the same faces. Scores are the network's own, in the crops' order."""
    teacher = TorchModel(_model(), 56, 48, "teacher", tta_flip=False, numerics=FP32,
                         guard_thresholds={"occlusion": 0.5, "face": 0.4})
    net = ByMean(0.5)
    est = AgeEstimator(teacher, detector=net)
    g = est.detector
    g.skip_below = -np.inf  # every crop is unsure: the separate network decides
    crops = np.stack([np.full((64, 64, 3), x, np.uint8) for x in (20, 100, 200, 100)])
    first = g.scores(crops)
    assert net.seen == 3  # the repeated crop read once
    assert first == pytest.approx(np.array([20, 100, 200, 100]) / 255)
    assert g.scores(crops[[2, 0]]) == pytest.approx(first[[2, 0]]) and net.seen == 3
    est.MEMO_SIZE = 1
    g.scores(np.stack([np.full((64, 64, 3), 7, np.uint8)]))  # a new crop evicts all but itself
    assert len(g._memo) == 1 and net.seen == 4
    assert g.scores(crops[:1]) == pytest.approx(first[:1]) and net.seen == 5


def test_selective_tta_mirrors_only_the_unsure_faces():
    """tta_spread: a crop whose single view has spread at or above it gets the full-TTA answer (both views
    averaged), the others keep the single view; only the unsure crops cost a second pass."""
    model = _model()
    kw = dict(numerics=FP32, guard_thresholds={"occlusion": 0.5, "face": 0.4})
    single = CountingTeacher(model, 56, 48, "teacher", tta_flip=False, **kw)
    both = TorchModel(model, 56, 48, "teacher", tta_flip=True, **kw)
    crops = np.random.default_rng(3).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    views = centre_views(crops, 56, 48)
    one, full = single.run_guards(views), both.run_guards(views)
    cut = float(np.sort(one[1])[3])  # the three crops with the largest spread are unsure
    est = AgeEstimator(single, tta_spread=cut)
    seen = CountingTeacher.views
    age, spread, guards = est.trunk(crops)
    unsure = one[1] >= cut
    assert CountingTeacher.views - seen == len(crops) + int(unsure.sum()) and unsure.sum() == 3
    np.testing.assert_allclose(age[unsure], full[0][unsure], atol=1e-3)
    np.testing.assert_allclose(guards[unsure], full[2][unsure], atol=1e-5)
    np.testing.assert_allclose(age[~unsure], one[0][~unsure], atol=1e-5)
    assert AgeEstimator(both, tta_spread=cut).tta_spread is None  # a two-view teacher needs no selection


class CountingStudent(TorchModel):
    views = 0

    def run(self, views):
        type(self).views += len(views)
        return super().run(views)


def test_a_single_view_student_with_a_cut_mirrors_only_its_unsure_faces():
    """The student's card cut (`tta_spread`) works as the teacher's: unsure faces get the two-view answer. A student
    that runs both views, or one loaded outside tta="auto" (from_model clears the cut), ignores it."""
    teacher = TorchModel(_model(guards=False), 56, 48, "teacher", numerics=FP32)
    model = _model(guards=False)
    crops = np.random.default_rng(4).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    views = centre_views(crops, 56, 48)
    one = TorchModel(model, 56, 48, "student", tta_flip=False, numerics=FP32).run(views)
    full = TorchModel(model, 56, 48, "student", tta_flip=True, numerics=FP32).run(views)
    cut = float(np.sort(one[1])[4])  # the two crops with the largest spread are unsure
    student = CountingStudent(model, 56, 48, "student", tta_flip=False, numerics=FP32, tta_spread=cut)
    est = AgeEstimator(teacher, student, route="student")
    est.realign, est.student_views = False, SINGLE_VIEW  # the crops as they are, one view (tests/test_realign.py)
    assert est.student_tta_spread == cut and est.tta_spread is None
    seen = CountingStudent.views
    r = est.analyse_crops(crops)
    unsure = one[1] >= cut
    assert unsure.sum() == 2 and CountingStudent.views - seen == len(crops) + 2
    np.testing.assert_allclose(r["age"][unsure], full[0][unsure], atol=1e-3)
    np.testing.assert_allclose(r["age"][~unsure], one[0][~unsure], atol=1e-5)
    assert set(r["model"]) == {"student"}
    both = TorchModel(model, 56, 48, "student", tta_flip=True, numerics=FP32, tta_spread=cut)
    assert AgeEstimator(teacher, both, route="student").student_tta_spread is None
    off = AgeEstimator.from_model(_model(guards=False), 56, 48, student=student, tta_flip=False, numerics=FP32)
    assert off.student_tta_spread is None


def test_tta_modes_are_named_and_checked():
    from agelens.errors import AgelensError
    from agelens.inference.predictor import tta_mode

    assert (tta_mode(True), tta_mode(False), tta_mode("full")) == ("auto", "none", "full")
    with pytest.raises(AgelensError, match="tta must be one of"):
        tta_mode("sometimes")


class FixedGuard:
    name, threshold = "separate", 0.7

    def __init__(self):
        self.seen = 0

    def scores(self, crops):
        self.seen += len(crops)
        return np.full(len(crops), 0.9, np.float32)


def test_cascade_sends_only_the_unsure_crops_to_the_separate_network():
    teacher = TorchModel(_model(), 56, 48, "teacher", tta_flip=False, numerics=FP32,
                         guard_thresholds={"occlusion": 0.5, "face": 0.4})
    crops = np.random.default_rng(2).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    p = teacher.run_guards(centre_views(crops, 56, 48))[2]
    cut = float(np.sort(p[:, 0])[3])  # three crops below the cut: sure clean, their head score stands
    teacher.guard_cascade = {"occlusion": {"skip_below": cut}, "face": {"skip_above": 0.0}}
    sep_occ, sep_face = FixedGuard(), FixedGuard()
    est = AgeEstimator(teacher, detector=sep_occ, verifier=sep_face)
    s = est.detector.scores(crops)
    sure = p[:, 0] < cut
    assert sep_occ.seen == int((~sure).sum()) == 3 and est.detector.threshold == 0.7
    assert np.allclose(s[sure], p[sure, 0], atol=1e-5) and np.allclose(s[~sure], 0.9)
    assert np.allclose(est.verifier.scores(crops), p[:, 1], atol=1e-5) and sep_face.seen == 0  # all sure faces


def test_flip_consistency_is_free_on_mirror_symmetric_faces_and_costs_on_others():
    m = _model(guards=False).eval()  # eval: batch norm and dropout do not depend on the batch
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rng = np.random.default_rng(0)
    half = rng.integers(0, 255, (2, 48, 24, 3), dtype=np.uint8)
    sym = torch.from_numpy(np.concatenate([half, half[:, :, ::-1]], 2).copy())
    ages = torch.tensor([20.0, 60.0])
    plain = train_step(m, m.head, opt, scaler, FP32, sym, ages)
    assert train_step(m, m.head, opt, scaler, FP32, sym, ages, flip_consistency=1.0) == pytest.approx(plain, rel=1e-4)
    odd = torch.from_numpy(rng.integers(0, 255, (2, 48, 48, 3), dtype=np.uint8))
    both = train_step(m, m.head, opt, scaler, FP32, torch.cat([odd, odd.flip(2)]), ages.repeat(2))
    assert train_step(m, m.head, opt, scaler, FP32, odd, ages, flip_consistency=1.0) > both - 1e-4


def test_pair_consistency_costs_only_when_the_two_views_disagree():
    m = _model(guards=False).eval()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.integers(0, 255, (2, 48, 48, 3), dtype=np.uint8))
    b = torch.from_numpy(rng.integers(0, 255, (2, 48, 48, 3), dtype=np.uint8))
    ages = torch.tensor([20.0, 60.0])
    plain = train_step(m, m.head, opt, scaler, FP32, a, ages)
    assert train_step(m, m.head, opt, scaler, FP32, torch.cat([a, a]), ages, pair_consistency=1.0) == \
        pytest.approx(plain, rel=1e-4)
    both = train_step(m, m.head, opt, scaler, FP32, torch.cat([a, b]), ages.repeat(2))
    assert train_step(m, m.head, opt, scaler, FP32, torch.cat([a, b]), ages, pair_consistency=1.0) > both + 1e-5
    with pytest.raises(ValueError, match="two views per label"):
        train_step(m, m.head, opt, scaler, FP32, a, ages, pair_consistency=1.0)


def test_anchored_pair_consistency_moves_only_the_second_view():
    """pair_anchor: the same loss value, but the consistency term's gradient reaches the model only through view 2;
    checked on the gradient of that term alone (the label fits cancel between the two runs)."""
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.integers(0, 255, (2, 48, 48, 3), dtype=np.uint8))
    b = torch.from_numpy(rng.integers(0, 255, (2, 48, 48, 3), dtype=np.uint8))
    ages = torch.tensor([20.0, 60.0])
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    grads, losses = {}, {}
    for anchor, weight in ((False, 0.0), (False, 1.0), (True, 1.0)):
        m = _model(guards=False).eval()
        opt = torch.optim.SGD(m.parameters(), lr=0.0)
        kw = {"pair_consistency": weight, "pair_anchor": anchor} if weight else {}
        labels = ages if weight else ages.repeat(2)  # without the term: the four views fitted to their labels alone
        losses[anchor, weight] = train_step(m, m.head, opt, scaler, FP32, torch.cat([a, b]), labels, **kw)
        grads[anchor, weight] = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
    assert losses[True, 1.0] == pytest.approx(losses[False, 1.0], rel=1e-5)
    sym, anchored = grads[False, 1.0] - grads[False, 0.0], grads[True, 1.0] - grads[False, 0.0]
    assert sym.abs().max() > 0 and anchored.abs().max() > 0
    assert not torch.allclose(sym, anchored, atol=1e-7)  # the stop-gradient drops view 1's share of the term


def test_workers_are_sized_to_the_cores_and_the_input(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1, 2, 3})
    assert auto_workers(10) == 0 and auto_workers(2 * MIN_FILES_PER_WORKER) == 2 and auto_workers(10_000) == 4
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0})
    assert auto_workers(10_000) == 0


def test_onnx_export_holds_the_guard_heads(tmp_path):
    pytest.importorskip("onnxruntime")
    from agelens.export.onnx import export_model
    from agelens.inference.backends.onnx import OnnxModel
    from agelens.models.weights import export_weights

    m = _model().eval()
    cfg = RunConfig()
    cfg.model.backbone, cfg.model.pretrained, cfg.model.guards = "efficientnet_lite0", False, True
    cfg.data.crop_size, cfg.data.input_size = 56, 48
    export_weights(m, cfg, tmp_path, "teacher", {"guard_thresholds": {"occlusion": 0.6, "face": 0.3}})
    meta = export_model(str(tmp_path / "teacher.safetensors"), tmp_path / "teacher.onnx")
    assert meta["guard_thresholds"] == {"occlusion": 0.6, "face": 0.3}
    om = OnnxModel(tmp_path / "teacher.onnx", threads=1)
    views = np.random.default_rng(1).integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)
    tm = TorchModel.load(str(tmp_path / "teacher.safetensors"), True, FP32)
    for a, b in zip(om.run_guards(views), tm.run_guards(views), strict=True):
        assert np.allclose(a, b, atol=2e-2)
    assert AgeEstimator(om).detector.threshold == 0.6


CHUNK_SCALES = (1.0, 0.6, 0.8)


def _chunk_setup(tmp_path):
    """A teacher whose untrained face head accepts every crop, and the astronaut saved at CHUNK_SCALES (its width at
    each scale is returned too)."""
    from importlib import resources

    from PIL import Image

    teacher = CountingTeacher(_model(), 224, 160, "teacher", tta_flip=False, numerics=FP32,
                              guard_thresholds={"occlusion": 0.5, "face": 0.0})
    photo = Image.open(resources.files("agelens") / "assets" / "astronaut.jpg").convert("RGB")
    files, widths = [], []
    for k, scale in enumerate(CHUNK_SCALES):
        p = tmp_path / f"face{k}.jpg"
        widths.append(int(photo.width * scale))
        photo.resize((widths[-1], int(photo.height * scale))).save(p)
        files.append(str(p))
    return teacher, AgeEstimator(teacher), files, widths


def test_batch_engine_verifies_a_chunk_of_files_in_one_teacher_pass(tmp_path):
    from agelens.inference.stream import _find, _find_chunk

    teacher, est, files, _ = _chunk_setup(tmp_path)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    files.insert(1, str(tmp_path / "bad.jpg"))
    CountingTeacher.calls = 0
    chunk = _find_chunk(est, files, True, False)
    assert CountingTeacher.calls == 1  # the three photos' faces verified from one pass
    est._memo.clear()
    for got, ref in zip(chunk, [_find(f, est.analyzer, est.cache_size, True, False, est.verifier) for f in files],
                        strict=True):
        assert got[0] == ref[0] and got[2] == ref[2] and (got[1] is None) == (ref[1] is None)
        if ref[1] is not None:
            assert [f[0] for f in got[1]] == [f[0] for f in ref[1]]
            assert all(np.array_equal(a[2], b[2]) for a, b in zip(got[1], ref[1], strict=True))
    assert chunk[1][1] is None and "bad.jpg" in chunk[1][2]
    calls, trunk = [], est.trunk

    def failing_batch(crops):  # the batched pass fails; one-file passes work
        calls.append(len(crops))
        if len(crops) > 1:
            raise RuntimeError("batch failed")
        return trunk(crops)

    est._memo.clear()
    est.trunk = failing_batch
    again = _find_chunk(est, files, True, False)
    assert calls[0] == 3 and [r[2] for r in again] == [r[2] for r in chunk]
    assert all((a[1] is None) == (b[1] is None) for a, b in zip(again, chunk, strict=True))


def test_batch_engine_keeps_a_chunk_going_when_one_file_cannot_be_aligned(tmp_path, monkeypatch):
    """A face whose alignment raises fails its own file only: the chunk's other files are verified and answered
    (the batched head start used to align every file outside the per-file error wrapper)."""
    from agelens.faces.detect import Face
    from agelens.inference.stream import _find_chunk

    _, est, files, widths = _chunk_setup(tmp_path)
    real = Face.aligned
    bad_width = widths[1]

    def aligned(self, rgb, size):
        if rgb.shape[1] == bad_width:
            raise ValueError("degenerate keypoints")
        return real(self, rgb, size)

    monkeypatch.setattr(Face, "aligned", aligned)
    got = _find_chunk(est, files, True, False)
    assert [r[1] is None for r in got] == [False, True, False]
    assert "degenerate keypoints" in got[1][2] and got[0][2] is None and got[2][2] is None



def test_output_distillation_costs_only_where_the_teacher_disagrees():
    """train.kd_weight: KL(teacher's age distribution ‖ the model's) joins the loss; a teacher that answers as the
    model does adds nothing, one that answers another age adds a positive term."""
    m = _model(guards=False).eval()
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    imgs = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (2, 48, 48, 3), dtype=np.uint8))
    ages = torch.tensor([20.0, 60.0])
    plain = train_step(m, m.head, opt, scaler, FP32, imgs, ages)
    with torch.no_grad():
        mean, std = m.mean_std
        own = m(to_input(imgs, mean, std, "cpu", False))["logits"]
    assert train_step(m, m.head, opt, scaler, FP32, imgs, ages, teacher_logits=own, kd_weight=1.0) == \
        pytest.approx(plain, abs=1e-4)
    other = torch.full_like(own, -10.0)
    other[:, 70] = 10.0  # a teacher sure of age 70 (bin 70 of the 0-100 head)
    assert train_step(m, m.head, opt, scaler, FP32, imgs, ages, teacher_logits=other, kd_weight=1.0) > plain + 1.0
    assert train_step(m, m.head, opt, scaler, FP32, imgs, ages, teacher_logits=other, kd_weight=0.0) == \
        pytest.approx(plain, abs=1e-4)


class HeadByMean:
    """A stand-in estimator whose face head (guard column 1) scores a crop's mean pixel value / 255 × scale."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def trunk(self, crops):
        p = np.asarray(crops, np.float32).mean(axis=(1, 2, 3)) / 255.0 * self.scale
        return None, None, np.stack([np.zeros_like(p), p], 1)


def test_tile_step_holds_the_head_to_its_own_bar():
    """`both_scores` (the tile step) passes a crop only when the separate network clears its threshold and the
    teacher's head its bar: `tile_head` from the card, the separate network's threshold without one."""
    crops = np.stack([np.full((8, 8, 3), x, np.uint8) for x in (200, 240, 250)])  # separate: .78 .94 .98
    fb = ByMean(0.9)
    head = HeadByMean(0.9)  # head: .71 .85 .88, below 0.9 everywhere
    assert not (TrunkGuard(head, 1, "face", 0.5, fb).both_scores(crops) >= 0.9).any()
    v = TrunkGuard(head, 1, "face", 0.5, fb, tile_head=0.86)
    got = v.both_scores(crops)
    assert list(got >= v.threshold) == [False, False, True] and got[2] == pytest.approx(250 / 255)
    # a head that clears the bar does not let a crop the separate network rejects through
    assert not (TrunkGuard(HeadByMean(1.0), 1, "face", 0.5, ByMean(0.99), tile_head=0.5).both_scores(crops)
                >= 0.99).any()
