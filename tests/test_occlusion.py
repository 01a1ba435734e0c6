"""Occlusion synthesis: area bounds over many random draws, every style, determinism, clear failures, the mix,
the dataset hook, the detector head/metrics and `agelens occlude`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from agelens.occlusion.synth import (
    BOUNDS,
    MASK_STYLES,
    OCCLUSION_TYPES,
    PARTS,
    SUNGLASS_STYLES,
    OcclusionError,
    OcclusionMix,
    occlude,
    styles_for,
)


def mean_landmarks() -> np.ndarray:
    return np.load(str(resources.files("agelens") / "assets" / "mean_landmarks_256.npy"))


def random_face(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A textured 256² image and the median UTKFace landmarks under a random similarity transform + noise."""
    lm = mean_landmarks().astype(np.float64)
    ang, s = np.deg2rad(rng.uniform(-15, 15)), rng.uniform(0.75, 1.05)
    c = lm.mean(0)
    R = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) * s
    lm = (lm - c) @ R.T + c + rng.uniform(-10, 10, 2) + rng.normal(0, 1.0, lm.shape)
    img = np.clip(rng.normal(150, 30, (256, 256, 3)), 0, 255).astype(np.uint8)
    return img, lm.astype(np.float32)


def test_area_bounds_hold_over_many_random_draws():
    rng = np.random.default_rng(0)
    mix = OcclusionMix()
    n, inside = 240, 0
    for _ in range(n):
        img, lm = random_face(rng)
        kind = mix.sample(rng)
        o = occlude(img, lm, kind, rng)
        assert set(o.parts) == set(PARTS[kind])
        ok = all(BOUNDS[p][0] <= f <= BOUNDS[p][1] for p, f in o.parts.items())
        inside += ok
        assert o.image.shape == img.shape and o.image.dtype == np.uint8
        assert 0 < o.fraction <= 1
    assert inside / n >= 0.99


@pytest.mark.parametrize("kind", ["sunglasses", "mask"])
def test_every_style_draws_inside_bounds_and_changes_the_face(kind):
    rng = np.random.default_rng(1)
    img, lm = random_face(rng)
    styles = SUNGLASS_STYLES if kind == "sunglasses" else MASK_STYLES
    assert len(styles) >= 10
    part = PARTS[kind][0]
    for st in styles:
        o = occlude(img, lm, kind, rng, style=st)
        assert BOUNDS[part][0] <= o.parts[part] <= BOUNDS[part][1], st
        changed = np.abs(o.image.astype(int) - img.astype(int)).sum(2) > 30
        assert changed.mean() > 0.05, st
        # anti-aliased: some coverage values strictly between 0 and 1 along the edges
        assert ((o.alpha > 0.05) & (o.alpha < 0.95)).sum() > 20, st


def test_occluders_sit_where_they_belong():
    rng = np.random.default_rng(2)
    img, lm = random_face(rng)
    eyes_y = lm[[468, 473], 1].mean()
    mouth_y = lm[[13, 14], 1].mean()
    for kind, y in (("sunglasses", eyes_y), ("eye_block", eyes_y), ("mask", mouth_y), ("mouth_block", mouth_y)):
        o = occlude(img, lm, kind, rng)
        ys = np.nonzero(o.alpha > 0.5)[0]
        assert abs(np.median(ys) - y) < 40, kind
        if kind in ("sunglasses", "eye_block"):
            assert o.alpha[int(mouth_y), int(lm[13, 0])] < 0.5  # the mouth stays visible
        else:
            assert o.alpha[int(eyes_y), int(lm[468, 0])] < 0.5  # the eyes stay visible


def test_seeded_and_reproducible():
    img, lm = random_face(np.random.default_rng(3))
    a = occlude(img, lm, "sunglasses+mask", np.random.default_rng(7))
    b = occlude(img, lm, "sunglasses+mask", np.random.default_rng(7))
    c = occlude(img, lm, "sunglasses+mask", np.random.default_rng(8))
    assert a.style == b.style and np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_missing_or_degenerate_landmarks_raise_a_clear_error():
    img = np.zeros((256, 256, 3), np.uint8)
    with pytest.raises(OcclusionError, match="no landmarks"):
        occlude(img, np.full((478, 2), np.nan, np.float32), "mask", np.random.default_rng(0))
    with pytest.raises(OcclusionError, match="too small"):
        occlude(img, mean_landmarks() * 0.02, "mask", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown occlusion type"):
        occlude(img, mean_landmarks(), "no_such_type", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown style"):
        occlude(img, mean_landmarks(), "mask", np.random.default_rng(0), style="nope")


def test_mix_follows_its_probabilities_and_validates():
    rng = np.random.default_rng(0)
    mix = OcclusionMix(clean_fraction=0.25)
    draws = [mix.sample(rng) for _ in range(4000)]
    assert abs(draws.count(None) / 4000 - 0.25) < 0.03
    assert abs(draws.count("sunglasses+mask") / 4000 - 0.75 * 0.20) < 0.03
    only = OcclusionMix({"mask": 1.0})
    assert {only.sample(rng) for _ in range(50)} == {"mask"}
    for bad in ({"no_such_type": 1.0}, {"mask": -1.0}, {"mask": 0.0}):
        with pytest.raises(ValueError):
            OcclusionMix(bad)
    with pytest.raises(ValueError, match="clean_fraction"):
        OcclusionMix(clean_fraction=1.5)
    assert len(styles_for("sunglasses+mask")) == len(SUNGLASS_STYLES) * len(MASK_STYLES)
    assert set(OCCLUSION_TYPES) == set(PARTS)


class _FakeCache:
    def __init__(self, n: int = 6) -> None:
        rng = np.random.default_rng(0)
        faces = [random_face(rng) for _ in range(n)]
        self.images = np.stack([f[0] for f in faces])
        self.landmarks = np.stack([f[1] for f in faces])
        self.landmarks[1] = np.nan  # one face without landmarks
        self.ages = np.arange(n, dtype=np.float32) + 20
        self.size = 256

    def __len__(self) -> int:
        return len(self.images)


def test_dataset_occludes_labels_and_pairs():
    from agelens.data.dataset import CachedFaceDataset

    cache = _FakeCache()
    mix = OcclusionMix({"eye_block": 1.0})
    ds = CachedFaceDataset(cache, False, 224, 64, occlusion=mix, target="occluded")
    labels = [float(ds[k][1]) for k in range(len(ds))]
    assert labels[1] == 0.0 and sum(labels) == len(ds) - 1  # no landmarks → stays clean, labelled clean
    a, b = ds[0][0], ds[0][0]
    assert torch.equal(a, b)  # evaluation occluders are fixed per image
    tr = CachedFaceDataset(cache, True, 224, 64, occlusion=mix, pair=True, seed=3)
    clean, occ, age, i = tr[0]
    assert clean.shape == occ.shape == (64, 64, 3) and float(age) == 20
    diff = (clean.int() - occ.int()).abs().sum(-1) > 0
    assert 0.03 < diff.float().mean() < 0.6  # same crop: only the occluder differs
    with pytest.raises(ValueError):
        CachedFaceDataset(cache, False, 224, 64, target="gender")


def test_binary_head_and_detector_metrics():
    from agelens.evaluate.detector import best_threshold, binary_metrics
    from agelens.models.heads import build_head

    head = build_head("binary", 8, 0, 100)
    out = head(torch.randn(4, 8))
    loss = head.loss(out, torch.tensor([0, 1, 1, 0]))
    assert loss.ndim == 0 and loss.item() > 0
    p, spread = head.decode(out)
    assert ((p >= 0) & (p <= 1)).all() and (spread == 0).all()
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.6])
    labels = np.array([0, 0, 1, 1, 0])
    m = binary_metrics(scores, labels, 0.5)
    assert m["tp"] == 2 and m["fp"] == 1 and m["tn"] == 2 and m["fn"] == 0
    assert m["accuracy"] == pytest.approx(0.8) and m["recall"] == 1.0 and m["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["roc_auc"] == pytest.approx(1.0)
    assert 0.6 < best_threshold(scores, labels) <= 0.8
    assert repr(best_threshold(np.array([0.1, 0.485, 0.495, 0.8]), np.array([0, 0, 1, 1]))) == "0.49"  # as written


def test_occlude_folder_writes_copies_and_csv(tmp_path, monkeypatch):
    """The folder tool with landmarks supplied by a stub analyzer (no mediapipe in this unit test)."""
    import csv

    from PIL import Image

    from agelens.occlusion import tool

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(5):
        Image.fromarray(random_face(rng)[0]).save(src / ("sub" if k % 2 else ".") / f"f{k}.jpg")
    (src / "notes.txt").write_text("not an image")

    class Face:
        box = (0.0, 0.0, 256.0, 256.0)
        landmarks = mean_landmarks()

    class Stub:
        def find_faces(self, rgb):
            return [] if rgb.mean() < 0 else [Face()]

    monkeypatch.setattr(tool, "_init_worker", lambda: setattr(tool, "_analyzer", Stub()))
    s = tool.occlude_folder(src, tmp_path / "out", OcclusionMix(clean_fraction=0.2), seed=1, workers=1,
                            progress=False)
    rows = list(csv.DictReader((tmp_path / "out" / "occlusions.csv").read_text().splitlines()))
    assert len(rows) == 5 and s["images"] == 5
    assert (tmp_path / "out" / "sub" / "f1.jpg").is_file()
    for r in rows:
        assert r["status"] in ("ok", "clean")
        if r["status"] == "ok":
            assert r["type"] in OCCLUSION_TYPES and r["style"] and 0 < float(r["area_fraction"]) < 1
    assert s["inside_bounds_share"] == 1.0
    newer = {**dict.fromkeys(tool.CSV_FIELDS, ""), "status": "ok", "type": "hand"}  # no part fractions: not counted
    assert tool.summarise([newer])["inside_bounds_share"] is None
    assert tool.summarise([newer, *rows])["inside_bounds_share"] == s["inside_bounds_share"]
    from agelens.errors import AgelensError

    with pytest.raises(AgelensError, match="inside"):
        tool.occlude_folder(src, src / "out", OcclusionMix(), workers=1, progress=False)
    with pytest.raises(AgelensError, match="not found"):
        tool.occlude_folder(tmp_path / "missing", tmp_path / "o2", OcclusionMix(), workers=1, progress=False)

    # an earlier run's folder is refused, or cleared with overwrite (its outputs only)
    (tmp_path / "out" / "mine.txt").write_text("the user's own file")
    with pytest.raises(AgelensError, match="holds an earlier run"):
        tool.occlude_folder(src, tmp_path / "out", OcclusionMix(), seed=1, workers=1, progress=False, limit=2)
    tool.occlude_folder(src, tmp_path / "out", OcclusionMix(), seed=1, workers=1, progress=False, limit=2,
                        overwrite=True)
    again = list(csv.DictReader((tmp_path / "out" / "occlusions.csv").read_text().splitlines()))
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.jpg"))
    assert len(again) == 2 and written == ["f0.jpg", "f2.jpg"] and (tmp_path / "out" / "mine.txt").is_file()

    # each image's occluder follows its own path: a file added in front changes no other image's draw
    def drawn(folder):
        rows = csv.DictReader((folder / "occlusions.csv").read_text().splitlines())
        return {Path(r["file"]).name: (r["type"], r["style"]) for r in rows}

    mix = OcclusionMix(clean_fraction=0.3)
    tool.occlude_folder(src, tmp_path / "a", mix, seed=3, workers=1, progress=False)
    Image.fromarray(random_face(rng)[0]).save(src / "a0.gif")  # sorts first; GIF is written as PNG
    Image.fromarray(random_face(rng)[0]).save(src / "z.tif")
    tool.occlude_folder(src, tmp_path / "b", mix, seed=3, workers=1, progress=False)
    a, b = drawn(tmp_path / "a"), drawn(tmp_path / "b")
    assert all(b[k] == v for k, v in a.items()) and len(b) == len(a) + 2
    assert (tmp_path / "b" / "a0.gif.png").read_bytes()[:4] == b"\x89PNG"
    assert Image.open(tmp_path / "b" / "z.tif").format == "TIFF"


def test_alignment_modules_start_as_identity():
    from agelens.models.align import build_adapters

    x = torch.randn(2, 24, 8, 8)
    for kind in ("residual", "concat"):
        ad = build_adapters(kind, (24, 40, 112, 320))
        assert torch.allclose(ad[0](x), x) and torch.allclose(ad[0](x, torch.randn_like(x)), x)
    assert build_adapters("none", (24,)) is None
    with pytest.raises(ValueError):
        build_adapters("attention", (24,))


def _kd_config(tmp_path, name: str, stages: list[int], steps: int = 1):
    """A tiny stage-wise distillation config (resnet18 student with residual adapters, 64 px, fp32)."""
    from agelens.config import RunConfig

    cfg = RunConfig(name=name, out_dir=str(tmp_path))
    cfg.model.backbone, cfg.model.pretrained, cfg.model.align = "resnet18", False, "residual"
    cfg.data.crop_size, cfg.data.input_size = 224, 64
    cfg.train.batch_size, cfg.train.max_steps_per_epoch, cfg.train.numerics, cfg.train.tta_flip = 4, steps, "fp32", False
    cfg.distill.stages, cfg.distill.stage_epochs = stages, 1
    cfg.occlusion.enabled = True
    return cfg


def _kd_teacher(path, model: dict | None = None, data: dict | None = None):
    """A resnet18 teacher checkpoint at path (its model and data config changed by `model` / `data`): the model."""
    from agelens.config import RunConfig, config_to_dict
    from agelens.models import build_model
    from agelens.models.checkpoint import save_checkpoint

    tcfg = RunConfig()
    tcfg.model.backbone, tcfg.model.pretrained = "resnet18", False
    for section, changes in ((tcfg.model, model), (tcfg.data, data)):
        for k, v in (changes or {}).items():
            setattr(section, k, v)
    teacher = build_model(tcfg.model)
    save_checkpoint(path, {"model": teacher.state_dict(), "config": config_to_dict(tcfg)})
    return teacher


def test_stagewise_distillation_trains_only_the_current_stage(tmp_path):
    """Stage 2 only: stage-2 weights (and its adapter) move, every other weight stays; stages.pt is written and
    the student starts as the teacher (identity adapters)."""
    from agelens.train.distill import distill_stages, student_from_teacher

    cfg = _kd_config(tmp_path, "kd", [2], steps=2)
    cfg.distill.stage_lrs = [1e-3, 1e-2, 1e-3, 1e-3]
    teacher = _kd_teacher(tmp_path / "teacher.pt")
    cfg.distill.teacher = str(tmp_path / "teacher.pt")
    student0 = student_from_teacher(cfg, teacher.eval())
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(student0.eval()(x)["embedding"], teacher(x)["embedding"], atol=1e-5)
    guarded = _kd_teacher(tmp_path / "guarded.pt")  # a teacher with guard heads (the shipped one) seeds a plain one
    guarded.load_state_dict(teacher.state_dict())
    guarded.guards = torch.nn.Linear(8, 2)
    assert student_from_teacher(cfg, guarded.eval()).guards is None
    before = {k: v.clone() for k, v in student0.state_dict().items()}
    res = distill_stages(cfg, _FakeCache(8), _FakeCache(4), log=lambda *_: None)
    assert (tmp_path / "kd" / "stages.pt").is_file() and res["stages"][0]["stage"] == 2
    after = torch.load(tmp_path / "kd" / "stages.pt", weights_only=True)["model"]
    # adapters are freshly initialised per build, so compare the teacher-derived weights, and check that the
    # other adapters' zero-initialised output convs were never trained
    moved = {k for k, v in after.items() if v.is_floating_point() and ".adapters." not in f".{k}"
             and not torch.equal(v, before[k])}
    assert moved and all(k.startswith("backbone.stages.1.") for k in moved), sorted(moved)[:5]
    for j in (0, 2, 3):
        assert not after[f"backbone.adapters.{j}.body.6.weight"].any()
    assert after["backbone.adapters.1.body.6.weight"].any()
    # a resume with other settings is refused (before: the stages left ran with the new teacher or rates)
    from agelens.errors import ConfigError

    assert (tmp_path / "kd" / "stages_last.pt").is_file()
    cfg.distill.stage_lrs = [1e-3, 5e-3, 1e-3, 1e-3]
    with pytest.raises(ConfigError, match=r"was distilled with other settings \(distill.stage_lrs"):
        distill_stages(cfg, _FakeCache(8), _FakeCache(4), resume=True, log=lambda *_: None)


def test_stagewise_distillation_can_continue_from_an_earlier_student(tmp_path):
    """distill.student_init: the stage-wise phase starts from an earlier student (adapters included), not from the
    teacher; a student of another architecture is refused by name."""
    from agelens.config import RunConfig, config_to_dict
    from agelens.errors import CheckpointError
    from agelens.models import build_model
    from agelens.models.checkpoint import save_checkpoint
    from agelens.train.distill import distill_stages, student_to_continue

    cfg = _kd_config(tmp_path, "kd2", [3], steps=2)
    _kd_teacher(tmp_path / "teacher.pt")
    earlier = build_model(cfg.model)
    with torch.no_grad():
        for p in earlier.parameters():
            p.add_(0.01 * torch.randn_like(p))  # an earlier student: neither the teacher nor fresh adapters
    save_checkpoint(tmp_path / "earlier.pt", {"model": earlier.state_dict(), "config": config_to_dict(cfg)})
    cont = student_to_continue(cfg, str(tmp_path / "earlier.pt"))
    assert all(torch.equal(a, b) for a, b in zip(cont.state_dict().values(), earlier.state_dict().values()))
    cfg.distill.teacher, cfg.distill.student_init = str(tmp_path / "teacher.pt"), str(tmp_path / "earlier.pt")
    distill_stages(cfg, _FakeCache(8), _FakeCache(4), log=lambda *_: None)
    after = torch.load(tmp_path / "kd2" / "stages.pt", weights_only=True)["model"]
    before = earlier.state_dict()
    # stages other than 3 keep the earlier student's weights, adapters included
    assert torch.equal(after["backbone.adapters.0.body.6.weight"], before["backbone.adapters.0.body.6.weight"])
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("backbone.stages.2."))
    other = RunConfig()
    other.model.backbone, other.model.pretrained, other.model.align = "resnet18", False, "none"
    save_checkpoint(tmp_path / "plain.pt", {"model": build_model(other.model).state_dict(),
                                            "config": config_to_dict(other)})
    with pytest.raises(CheckpointError, match="align"):
        student_to_continue(cfg, str(tmp_path / "plain.pt"))


def test_distillation_refuses_a_teacher_that_cannot_teach_and_replaces_an_earlier_run(tmp_path):
    """A teacher with another head, age range or task was loaded into the student with a raw size-mismatch
    traceback (and a run folder made first); stages out of order ran as given; a fresh run under an earlier one's
    name kept its stages.pt and best.pt, so a --resume after an early kill skipped to the earlier fine-tuning."""
    from agelens.errors import CheckpointError, ConfigError
    from agelens.train.distill import distill_stages

    cfg = _kd_config(tmp_path, "kd3", [4])
    for name, change in (("coral", {"head": "coral"}), ("old", {"max_age": 80}), ("bin", {"head": "binary"})):
        _kd_teacher(tmp_path / f"{name}.pt", change)
    cfg.distill.teacher = str(tmp_path / "coral.pt")
    with pytest.raises(CheckpointError, match=r"does not fit the student.*model.head: 'dldl' \(student\) vs 'coral'"):
        distill_stages(cfg, _FakeCache(8), _FakeCache(4), log=lambda *_: None)
    assert not (tmp_path / "kd3").exists()  # refused before the run folder is made
    cfg.distill.teacher = str(tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"model.max_age: 100 \(student\) vs 80 \(teacher\)"):
        distill_stages(cfg, _FakeCache(8), _FakeCache(4), log=lambda *_: None)
    cfg.distill.teacher = str(tmp_path / "bin.pt")
    with pytest.raises(CheckpointError, match="the teacher must be an age model"):
        distill_stages(cfg, _FakeCache(8), _FakeCache(4), log=lambda *_: None)
    for stages in ([4, 1], [2, 2], []):
        cfg.distill.stages = stages
        with pytest.raises(ConfigError, match="in increasing order, each once"):
            cfg.validate()
    cfg.distill.stages = [4]
    _kd_teacher(tmp_path / "teacher.pt", data={"input_size": 112})
    cfg.distill.teacher = str(tmp_path / "teacher.pt")
    run = tmp_path / "kd3"
    run.mkdir()
    for f in ("stages.pt", "best.pt", "last.pt"):  # an earlier run's, finished
        (run / f).write_bytes(b"earlier")
    (run / "test").mkdir()
    logged: list[str] = []
    distill_stages(cfg, _FakeCache(8), _FakeCache(4), log=logged.append)
    assert any("holds an earlier run (stages.pt, best.pt, last.pt)" in m and "test/ go" in m for m in logged), logged
    assert any("the teacher was trained on 224 px crops read at 112 px and reads 224 px crops at 64 px" in m
               for m in logged), logged
    assert not (run / "best.pt").exists() and not (run / "test").exists()
    assert (run / "stages.pt").read_bytes() != b"earlier"


def test_detector_metrics_say_where_the_threshold_came_from_and_what_they_measured(tmp_path):
    """The detector's test/metrics.json named no run, split or part nor how its threshold was chosen, and its clean
    row held precision, recall and F1 of 0 (there is nothing occluded among clean faces to find)."""
    import json

    from agelens.config import RunConfig
    from agelens.evaluate.detector import evaluate_detector
    from agelens.models import build_model
    from agelens.numerics import Numerics

    cfg = RunConfig()
    cfg.model.backbone, cfg.model.pretrained, cfg.model.head = "resnet18", False, "binary"
    cfg.data.crop_size, cfg.data.input_size = 224, 64
    cfg.train.task, cfg.occlusion.enabled, cfg.train.tta_flip = "occlusion", True, False
    model = build_model(cfg.model).eval()
    out = evaluate_detector(model, _FakeCache(4), _FakeCache(4), cfg, Numerics("cpu", "fp32", False, "test"),
                            tmp_path, extra={"run": "runs/det", "split": "s.json", "part": "test"})
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == json.loads(json.dumps(out))
    assert (written["run"], written["split"], written["part"]) == ("runs/det", "s.json", "test")
    assert written["threshold_from"].startswith("chosen on the validation part")
    assert set(written["clean"]) == {"n", "accuracy", "specificity"} and written["clean"]["n"] == 4
    given = evaluate_detector(model, None, _FakeCache(4), cfg, Numerics("cpu", "fp32", False, "test"), threshold=0.3)
    assert given["threshold"] == 0.3 and given["threshold_from"] == "given"


def test_a_resumed_distillation_keeps_the_numerics_it_started_with(tmp_path, monkeypatch):
    """With train.numerics auto, each resume probed again (fp32, bf16, fp32 across one run and its resumes under
    load); the stages' checkpoint now carries the numerics chosen, and a resume refused for other settings is
    refused before the probe."""
    import agelens.train.distill as distill
    from agelens.errors import ConfigError
    from agelens.models.checkpoint import load_checkpoint, save_checkpoint
    from agelens.numerics import Numerics

    cfg = _kd_config(tmp_path, "kd4", [3, 4])
    cfg.train.numerics = "auto"
    _kd_teacher(tmp_path / "t.pt")
    cfg.distill.teacher = str(tmp_path / "t.pt")
    probed = []
    monkeypatch.setattr(distill, "choose_numerics", lambda *a, **k: probed.append(1) or Numerics("cpu", "fp32", False,
                                                                                                  "the probe"))
    distill.distill_stages(cfg, _FakeCache(8), _FakeCache(4), log=lambda *_: None)
    ck_path = tmp_path / "kd4" / "stages_last.pt"
    ck = load_checkpoint(ck_path)
    assert ck["numerics"]["reason"] == "the probe" and len(probed) == 1
    ck["done"], ck["history"] = ck["done"][:1], ck["history"][:1]  # as if killed after stage 3
    save_checkpoint(ck_path, ck)
    logged: list[str] = []
    distill.distill_stages(cfg, _FakeCache(8), _FakeCache(4), resume=True, log=logged.append)
    assert len(probed) == 1 and any("as the distillation started" in m for m in logged), logged
    cfg.distill.stage_lrs = [1e-3, 1e-3, 2e-3, 1e-3]
    with pytest.raises(ConfigError, match="distilled with other settings"):
        distill.distill_stages(cfg, _FakeCache(8), _FakeCache(4), resume=True, log=lambda *_: None)
    assert len(probed) == 1  # refused before any probe
