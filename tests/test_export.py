"""ONNX export: parity with torch, int8, the torch-free runtime, and streamed/resumed batch predict."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from agelens.models.weights import resolve_model, shipped_models

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(not {"teacher", "occlusion"} <= set(shipped_models()), reason="no shipped weights")

ENV = {**os.environ, "GLOG_minloglevel": "3", "TF_CPP_MIN_LOG_LEVEL": "3"}
AGE_TOL = 1e-3  # years: fp32 onnxruntime vs fp32 torch on the same graph
PROB_TOL = 1e-4


@pytest.fixture(scope="module")
def onnx_dir():
    """The shipped models' export (made once per machine, shared with `agelens predict`)."""
    from agelens.export.shipped import ensure_export

    return ensure_export()


@pytest.fixture(scope="module")
def onnx_int8_dir(onnx_dir):
    """The same export with its int8 copies of both flavours (made the first time `--backend onnx-int8` asks for
    them: 8-bit weights for CPUs with VNNI or AMX, 7-bit for AVX2 alone)."""
    from agelens.export.shipped import ensure_export

    ensure_export(int8="int8")
    return ensure_export(int8="int8w7")


def _views(n, size, seed=0):
    from agelens.data.views import centre_crop

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (n, 256, 256, 3), dtype=np.uint8)
    return np.stack([centre_crop(b, 224, size) for b in base])


@pytest.mark.parametrize("role", ["teacher", "occlusion"])
def test_onnx_matches_torch(onnx_dir, role):
    import onnx

    from agelens.export.onnx import ExportGraph
    from agelens.inference.backends.onnx import OnnxModel

    m = OnnxModel(onnx_dir / f"{role}.onnx")
    # timm's TF-'same' padding is fixed at export and folded into the convolutions (export.onnx.fuse_pads)
    assert not [n for n in onnx.load(str(m.path)).graph.node if n.op_type == "Pad"]
    model, cfg, _ = resolve_model(role)
    assert (m.crop_size, m.input_size, m.kind) == (cfg.data.crop_size, cfg.data.input_size,
                                                   "occlusion" if role == "occlusion" else "age")
    views = _views(5, m.input_size)  # batch 5: the export was traced at batch 2, so this checks the dynamic axis
    with torch.no_grad():
        ta, ts, *guards = ExportGraph(model.float(), role == "teacher")(torch.from_numpy(views))
    oa, os_ = m.run(views)
    tol = AGE_TOL if role == "teacher" else PROB_TOL
    np.testing.assert_allclose(oa, ta.numpy(), atol=tol)
    np.testing.assert_allclose(os_, ts.numpy(), atol=tol)
    if guards:  # the shipped teacher's guard heads: occlusion and face probabilities from the same pass
        assert m.guard_thresholds and role == "teacher"
        og = m.run_guards(views)[2]
        np.testing.assert_allclose(og, torch.stack(guards, 1).numpy(), atol=PROB_TOL)


def test_int8_quantisation_keeps_metadata_and_runs(onnx_dir, tmp_path):
    from agelens.export.onnx import quantize_int8
    from agelens.inference.backends.onnx import OnnxModel

    fp32 = OnnxModel(onnx_dir / "occlusion.onnx")
    views = _views(20, fp32.input_size, seed=1)
    q = tmp_path / "occlusion.int8.onnx"
    assert quantize_int8(onnx_dir / "occlusion.onnx", q, views).startswith("static")
    assert q.stat().st_size < 0.5 * (onnx_dir / "occlusion.onnx").stat().st_size
    m8 = OnnxModel(q)
    assert m8.precision == "int8" and m8.threshold == fp32.threshold and m8.name == fp32.name
    p = m8.run(views)[0]
    assert p.shape == (20,) and np.all((p >= 0) & (p <= 1))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.pre.onnx"))
    # the recipe: ReLU6 (Clip) and residual Adds quantised with their Conv; the stem, the first block and the last
    # Conv left in fp32
    import onnx

    from agelens.export.onnx import INT8_FP32_FIRST

    nodes = onnx.load(str(q)).graph.node
    made = {o: n for n in nodes for o in n.output}
    convs = [n for n in nodes if n.op_type == "Conv"]
    quantised = [c for c in convs if made.get(c.input[1]) is not None and made[c.input[1]].op_type == "DequantizeLinear"]
    kept = convs[:INT8_FP32_FIRST] + convs[-1:]
    assert not [c for c in kept if c in quantised] and len(quantised) == len(convs) - len(kept)
    # a quantised ReLU6 is folded into its Conv's uint8 output range: Clips remain only after the fp32 Convs
    clips = [n for n in nodes if n.op_type == "Clip"]
    assert {made[c.input[0]].name for c in clips} <= {c.name for c in kept}
    assert sum(n.op_type == "Clip" for n in onnx.load(str(onnx_dir / "occlusion.onnx")).graph.node) > len(clips) + 10
    adds = [n for n in nodes if n.op_type == "Add"]
    assert adds and all(made[i].op_type == "DequantizeLinear" for a in adds for i in a.input)


def test_onnx_backend_runs_without_torch(onnx_dir, astronaut_path):
    """A process where `import torch` fails still predicts the demo photo from the export."""
    code = textwrap.dedent(f"""
        import importlib.abc, json, sys
        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "timm"):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        from agelens import AgeEstimator
        est = AgeEstimator.from_pretrained(backend="onnx", onnx_dir={str(onnx_dir)!r})
        faces = [f.to_dict() for f in est.predict({astronaut_path!r})]
        assert "torch" not in sys.modules
        print(json.dumps(faces))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    face = json.loads(r.stdout.splitlines()[-1])[0]
    assert 25 <= face["age"] <= 55 and face["backend"] == "onnx-fp32" and face["model"] == "teacher"


def test_onnx_and_torch_backends_agree_on_a_photo(onnx_dir, astronaut_path):
    from agelens import AgeEstimator

    a = AgeEstimator.from_pretrained(backend="torch").predict(astronaut_path)[0]
    b = AgeEstimator.from_pretrained(backend="onnx", onnx_dir=onnx_dir).predict(astronaut_path)[0]
    assert abs(a.age - b.age) < 0.05 and a.model == b.model and a.extra["backend"] == "torch-fp32"


def test_bad_backend_and_missing_export(tmp_path):
    from agelens import AgeEstimator
    from agelens.errors import AgelensError

    with pytest.raises(AgelensError, match="backend must be one of"):
        AgeEstimator.from_pretrained(backend="tpu")
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(AgelensError, match="holds no agelens ONNX export"):
        AgeEstimator.from_pretrained(backend="onnx", onnx_dir=tmp_path)


def test_auto_backend_falls_back_to_torch_when_no_export_can_be_made(tmp_path, monkeypatch, astronaut_path):
    """`predict photo.jpg` must work offline even where the one-off ONNX export cannot be written (read-only
    cache folder): auto says why and answers with torch; an explicit backend=onnx still fails loudly."""
    from agelens import AgeEstimator
    from agelens.errors import AgelensError

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("AGELENS_ONNX_DIR", str(blocker / "onnx"))  # under a file: cannot be created
    said = []
    est = AgeEstimator.from_pretrained(backend="auto", log=said.append)
    assert est.backend == "torch-fp32" and any("could not be used" in m for m in said), said
    face = est.predict(astronaut_path)[0]
    assert face.extra["backend"] == "torch-fp32" and 10 < face.age < 60
    with pytest.raises((AgelensError, OSError)):
        AgeEstimator.from_pretrained(backend="onnx")


def test_naming_the_shipped_models_keeps_the_default_backend(onnx_dir):
    """from_pretrained("teacher") is the default model: it ran on torch ("models other than the shipped ones"), and
    backend="onnx" with it was refused."""
    from agelens import AgeEstimator

    said = []
    est = AgeEstimator.from_pretrained("teacher", student="student", detector="occlusion", log=said.append)
    assert est.backend == AgeEstimator.from_pretrained().backend != "torch-fp32", said
    assert AgeEstimator.from_pretrained("teacher", backend="onnx").backend == "onnx-fp32"


def test_a_run_folder_named_like_a_shipped_model_is_the_users(tmp_path, monkeypatch):
    """./teacher (a user's run folder) is read first by resolve_model: it is a model of the user's, so the ONNX
    backend refuses it and auto picks torch, rather than running the shipped export in its place."""
    from agelens import AgeEstimator
    from agelens.errors import AgelensError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher").mkdir()
    with pytest.raises(AgelensError, match="the ONNX backend runs the shipped models"):
        AgeEstimator.from_pretrained("teacher", backend="onnx")


def test_no_tta_runs_the_single_view_graphs(onnx_dir, astronaut_path):
    """--no-tta runs the exported single-view graphs (half the work), as torch does without TTA."""
    from agelens import AgeEstimator

    est = AgeEstimator.from_pretrained(tta_flip=False, backend="onnx")
    assert est.backend == "onnx-fp32" and not est.tta_flip and est.teacher.path.name == "teacher.notta.onnx"
    ref = AgeEstimator.from_pretrained(backend="torch", tta_flip=False)
    assert est.predict(astronaut_path)[0].age == pytest.approx(ref.predict(astronaut_path)[0].age, abs=0.05)
    assert est.predict(astronaut_path)[0].age != AgeEstimator.from_pretrained().predict(astronaut_path)[0].age
    from agelens.utils import int8_flavor

    int8 = AgeEstimator.from_pretrained(backend="onnx-int8", tta_flip=False)  # this CPU's int8 single views
    assert int8.backend == "onnx-int8" and int8.teacher.path.name == f"teacher.notta.{int8_flavor() or 'int8'}.onnx"


def test_rarely_needed_models_load_on_first_use(onnx_dir, tmp_path):
    """The student and the face network (occluded faces, fallbacks) take their metadata from the export's
    manifest and make their session when first asked, answering as an eagerly loaded graph does."""
    import shutil

    from agelens.errors import CheckpointError
    from agelens.inference.backends.onnx import OnnxModel, load_onnx_models
    from agelens.inference.predictor import AgeEstimator

    models = load_onnx_models(onnx_dir)
    assert models["teacher"]._session is not None
    student, face = models["student"], models["faceness"]
    assert student._session is None and face._session is None
    assert student.meta["name"] == "student" and face.kind == "occlusion" and face.threshold == OnnxModel(
        onnx_dir / "faceness.onnx").threshold
    views = _views(3, student.input_size, seed=2)
    np.testing.assert_allclose(student.run(views)[0], OnnxModel(student.path).run(views)[0], atol=1e-5)
    assert student._session is not None and face._session is None
    assert load_onnx_models(onnx_dir, tta="none")["student"].tta_flip is False
    if "faceness_photo" in models:  # the photo face network: lazy and one thread too, and the verifier's second
        photo = models["faceness_photo"]
        assert photo._session is None and photo.threshold == OnnxModel(onnx_dir / "faceness_photo.onnx").threshold
        est = AgeEstimator.from_onnx(onnx_dir)
        assert est.verifier.photo.path.name == "faceness_photo.onnx" and est.verifier.fallback.path.name == (
            "faceness.onnx")
    if "faceness_bands" in models:  # the band network: lazy, asked by the verifier at the whole-image step only
        bands = models["faceness_bands"]
        assert bands._session is None and bands.threshold == OnnxModel(onnx_dir / "faceness_bands.onnx").threshold
        assert AgeEstimator.from_onnx(onnx_dir).verifier.bands.path.name == "faceness_bands.onnx"
    broken = tmp_path / "export"  # a corrupt graph still fails with the file's name, when it is first used
    shutil.copytree(onnx_dir, broken)
    (broken / "faceness.onnx").write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="faceness.onnx"):
        load_onnx_models(broken)["faceness"].scores(np.zeros((1, 256, 256, 3), np.uint8))


def test_auto_tta_takes_a_single_view_graph_where_the_card_gives_a_cut(onnx_dir, tmp_path):
    """tta="auto": an age model whose card gives `tta_spread` runs its single-view graph (the estimator mirrors the
    unsure faces); "full" and "none" never select per face."""
    import json
    import shutil

    from agelens.inference.backends.onnx import load_onnx_models

    d = tmp_path / "export"
    shutil.copytree(onnx_dir, d)
    manifest = json.loads((d / "manifest.json").read_text())
    for cut, graph in ((None, "student.onnx"), (5.0, "student.notta.onnx")):
        manifest["models"]["student"]["tta_spread"] = cut
        (d / "manifest.json").write_text(json.dumps(manifest))
        student = load_onnx_models(d)["student"]
        assert (student.path.name, student.tta_spread, student.tta_flip) == (graph, cut, cut is None)
    assert load_onnx_models(d, tta="full")["student"].path.name == "student.onnx"
    for mode in ("full", "none"):
        assert load_onnx_models(d, tta=mode)["student"].tta_spread is None
    teacher = load_onnx_models(d)["teacher"]  # the shipped teacher's card gives a cut and it has guard heads
    assert teacher.path.name == "teacher.notta.onnx" and teacher.tta_spread == manifest["models"]["teacher"]["tta_spread"]


def _agelens(*args):
    return subprocess.run([sys.executable, "-m", "agelens.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600)


def test_predict_streams_jsonl_and_resumes(tmp_path, astronaut_path, onnx_dir):
    """Streamed JSONL: a killed run leaves whole lines plus maybe a torn one; --resume drops the torn line,
    skips answered files and finishes with one line per file, identical to an uninterrupted run."""
    import shutil

    d = tmp_path / "in"
    d.mkdir()
    for k in range(3):
        shutil.copy(astronaut_path, d / f"p{k}.jpg")
    (d / "bad.jpg").write_bytes(b"\xff\xd8\xff broken")
    full = tmp_path / "full.jsonl"
    r = _agelens("predict", d, "-f", "jsonl", "-o", full, "--workers", "1", "--batch-size", "2")
    assert r.returncode == 1 and "1 of 4 file(s) failed" in r.stderr and "Traceback" not in r.stderr
    lines = full.read_text().splitlines()
    assert [json.loads(x)["file"] for x in lines] == sorted(str(p) for p in d.iterdir())
    part = tmp_path / "part.jsonl"
    part.write_text(lines[0] + "\n" + lines[1][:25])  # killed while writing the second line
    r = _agelens("predict", d, "-f", "jsonl", "-o", part, "--resume")
    assert "1 of 4 file(s) already done" in r.stderr, r.stderr
    resumed = [json.loads(x) for x in part.read_text().splitlines()]
    expect = [json.loads(x) for x in lines]
    assert [x["file"] for x in resumed] == [x["file"] for x in expect]
    for a, b in zip(resumed, expect):
        assert [f["age"] for f in a["faces"]] == pytest.approx([f["age"] for f in b["faces"]], abs=0.02)
        assert (a["error"] is None) == (b["error"] is None)
    r = _agelens("predict", d, "-f", "table", "-o", part)
    assert r.returncode == 2 and "--output needs --format json, jsonl or csv" in r.stderr
    r = _agelens("predict", d / "p0.jpg", "-o", tmp_path / "ages.txt")
    assert r.returncode == 2 and "give --format json, jsonl, csv or parquet (its name has no such ext" in r.stderr
    r = _agelens("predict", d / "p0.jpg", "-o", tmp_path / "ages.csv")  # no -f: the extension's format
    assert r.returncode == 0 and (tmp_path / "ages.csv").read_text().startswith("file,face,x1"), r.stderr
    r = _agelens("predict", d, "-f", "jsonl", "-o", part, "--resume")  # nothing left: the failure is still said
    assert r.returncode == 1 and "4 of 4 file(s) already done, 1 of them failed" in r.stderr, r.stderr
    assert "1 of 4 file(s) failed (1 in an earlier run: --resume --retry-failed" in r.stderr
    assert "predicting" not in r.stderr and "the ages this run added" not in r.stderr
    r = _agelens("predict", d, "-f", "jsonl", "-o", part, "--retry-failed")
    assert r.returncode == 2 and "--retry-failed goes with --resume" in r.stderr
    shutil.copy(astronaut_path, d / "bad.jpg")  # the broken file mended: answered again, in place of its error
    r = _agelens("predict", d, "-f", "jsonl", "-o", part, "--resume", "--retry-failed")
    assert r.returncode == 0 and "3 of 4 file(s) already done; 1 failed before and is tried again" in r.stderr, r.stderr
    again = {x["file"]: x for x in map(json.loads, part.read_text().splitlines())}
    assert len(again) == 4 and again[str(d / "bad.jpg")]["error"] is None
    assert [f["age"] for f in again[str(d / "bad.jpg")]["faces"]] == pytest.approx(
        [f["age"] for f in again[str(d / "p0.jpg")]["faces"]], abs=0.02)


def test_int8_auto_tta_takes_the_int8_single_view_graph(onnx_int8_dir, tmp_path):
    """precision int8: teacher.notta.int8.onnx in tta "auto" (selective flip-TTA on int8) and "none"; without it the
    two-view teacher.int8.onnx with the mirror on every face; fp32 where a graph has no int8 copy (the student)."""
    import shutil

    from agelens.inference.backends.onnx import load_onnx_models

    d = tmp_path / "export"
    shutil.copytree(onnx_int8_dir, d)
    models = load_onnx_models(d, "int8")
    m = models["teacher"]
    assert m.path.name == "teacher.notta.int8.onnx" and m.precision == "int8" and not m.tta_flip
    assert m.tta_spread is not None
    assert load_onnx_models(d, "int8", tta="none")["teacher"].path.name == "teacher.notta.int8.onnx"
    s = models["student"]  # the student stays fp32 under every int8 flavour (utils.INT8_FLAVORS), selective TTA kept
    assert s.path.name == "student.notta.onnx" and s.precision == "fp32" and s.tta_spread is not None
    assert models["occlusion"].path.name == "occlusion.int8.onnx" and models["faceness"].precision == "fp32"
    assert load_onnx_models(d, "int8", tta="full")["teacher"].path.name == "teacher.int8.onnx"
    (d / "teacher.notta.int8.onnx").unlink()
    models = load_onnx_models(d, "int8")
    assert models["teacher"].path.name == "teacher.int8.onnx" and models["teacher"].tta_spread is None
    assert load_onnx_models(d, "int8", tta="none")["teacher"].path.name == "teacher.notta.onnx"


def test_int8_flavours_per_cpu(onnx_int8_dir, tmp_path):
    """AVX2 without VNNI runs the 7-bit-weight copies (<graph>.int8w7.onnx: 8-bit products saturate there); an
    export without them falls back on the 8-bit copies; other precisions are refused by name."""
    import shutil

    from agelens.errors import CheckpointError
    from agelens.inference.backends.onnx import load_onnx_models
    from agelens.utils import int8_flavor

    assert int8_flavor({"avx2", "avx512_vnni"}) == "int8" and int8_flavor({"amx_int8"}) == "int8"
    assert int8_flavor({"avx2", "fma"}) == "int8w7" and int8_flavor({"sse4_2"}) is None
    d = tmp_path / "export"
    shutil.copytree(onnx_int8_dir, d)
    models = load_onnx_models(d, "int8w7")
    assert models["teacher"].path.name == "teacher.notta.int8w7.onnx" and models["teacher"].precision == "int8"
    assert models["occlusion"].path.name == "occlusion.int8w7.onnx"
    assert models["student"].path.name == "student.notta.onnx"  # the student stays fp32 there
    assert load_onnx_models(d, "int8")["student"].precision == "fp32"  # and on VNNI / AMX CPUs too
    views = _views(4, 160)
    w7, w8 = models["teacher"].run(views)[0], load_onnx_models(d, "int8")["teacher"].run(views)[0]
    assert not np.array_equal(w7, w8)  # another graph, not the 8-bit one renamed
    m = json.loads((d / "manifest.json").read_text())
    for entry in m["models"].values():  # an export made before the 7-bit flavour: its 8-bit copies run
        entry.pop("int8w7_tried", None)
    (d / "manifest.json").write_text(json.dumps(m))
    assert load_onnx_models(d, "int8w7")["teacher"].path.name == "teacher.notta.int8.onnx"
    with pytest.raises(CheckpointError, match="precision"):
        load_onnx_models(d, "int4")


def test_shipped_int8_ranges_match_this_export(onnx_int8_dir):
    """The int8 copies made on request quantise the teacher's graphs and the occlusion detector from the ranges
    shipped with the weights (their tensor names come from the torch exporter: a mismatch leaves them fp32); the
    student stays fp32 under every flavour (`utils.INT8_FLAVORS`), its copies tried and not made."""
    d = onnx_int8_dir
    manifest = json.loads((d / "manifest.json").read_text())["models"]
    assert (d / "teacher.int8.onnx").is_file() and (d / "teacher.notta.int8.onnx").is_file()
    assert manifest["teacher"]["int8_method"].endswith("(saved ranges)")
    assert manifest["teacher"]["int8w7_method"].endswith("-w7 (saved ranges)")
    assert (d / "teacher.notta.int8w7.onnx").is_file() and not list(d.glob("student*.int8*.onnx"))
    assert manifest["student"]["int8_tried"] and manifest["student"]["int8w7_tried"]
    assert (d / "occlusion.int8.onnx").is_file() and (d / "occlusion.int8w7.onnx").is_file()


def test_int8_copies_are_made_once_when_first_asked_for(onnx_dir, tmp_path):
    """The first-use export is fp32 only; `add_shipped_int8` (what `--backend onnx-int8` triggers through
    `ensure_export(int8=True)`) quantises from the shipped ranges and records it, once."""
    import shutil

    from agelens.export.onnx import add_shipped_int8

    m = json.loads((onnx_dir / "manifest.json").read_text())
    entry = {k: v for k, v in m["models"]["occlusion"].items() if not k.startswith("int8")}
    d = tmp_path / "export"
    d.mkdir()
    shutil.copy(onnx_dir / "occlusion.onnx", d)
    (d / "manifest.json").write_text(json.dumps({**m, "models": {"occlusion": entry}}))
    add_shipped_int8(d, log=lambda *_: None)
    got = json.loads((d / "manifest.json").read_text())["models"]["occlusion"]
    assert got["int8"] == "occlusion.int8.onnx" and got["int8_tried"] and got["int8_method"].endswith("ranges)")
    stamp = (d / "occlusion.int8.onnx").stat().st_mtime_ns
    add_shipped_int8(d, log=lambda *_: None)
    assert (d / "occlusion.int8.onnx").stat().st_mtime_ns == stamp
    assert not (d / "occlusion.int8w7.onnx").exists()  # one flavour asked for, one made
    add_shipped_int8(d, log=lambda *_: None, flavor="int8w7")
    got = json.loads((d / "manifest.json").read_text())["models"]["occlusion"]
    assert got["int8w7"] == "occlusion.int8w7.onnx" and got["int8w7_tried"] and got["int8"] == "occlusion.int8.onnx"


def test_int8w7_keeps_8_bit_weights_only_in_depthwise_convolutions(onnx_dir, tmp_path):
    """The AVX2 flavour: 7-bit weights where onnxruntime's u8s8 GEMM would saturate (dense and pointwise Conv),
    8-bit in depthwise Conv (its kernel widens to int16 first), with ranges measured afresh or read back, or
    with faces and no ranges file."""
    import onnx
    from onnx import numpy_helper

    from agelens.export.onnx import quantize_int8
    from agelens.inference.backends.onnx import OnnxModel

    def widest(path):  # (largest |weight| of a depthwise Conv, of any other quantised Conv)
        g = onnx.load(str(path)).graph
        init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        made_by = {o: n for n in g.node for o in n.output}
        out = {True: 0, False: 0}
        for n in g.node:
            dq = made_by.get(n.input[1]) if n.op_type == "Conv" else None
            if dq is not None and dq.op_type == "DequantizeLinear":
                depthwise = any(a.name == "group" and a.i > 1 for a in n.attribute)
                out[depthwise] = max(out[depthwise], int(np.abs(init[dq.input[0]].astype(int)).max()))
        return out[True], out[False]

    src = onnx_dir / "occlusion.onnx"
    views = _views(20, OnnxModel(src).input_size, seed=4)
    ranges = tmp_path / "occlusion.int8-ranges.json"
    made = [quantize_int8(src, tmp_path / "a.onnx", views, ranges, reduce_range=True),
            quantize_int8(src, tmp_path / "b.onnx", None, ranges, reduce_range=True),
            quantize_int8(src, tmp_path / "c.onnx", views, None, reduce_range=True)]
    assert all(m.endswith("-w7") or m.endswith("-w7 (saved ranges)") for m in made)
    for k in "abc":
        depthwise, dense = widest(tmp_path / f"{k}.onnx")
        assert dense <= 64 < depthwise <= 127, k
    assert widest(tmp_path / "a.onnx") == widest(tmp_path / "b.onnx")
    np.testing.assert_array_equal(*(OnnxModel(tmp_path / f"{k}.onnx").run(views)[0] for k in "ab"))
    eight = tmp_path / "eight.onnx"
    quantize_int8(src, eight, None, ranges)
    assert widest(eight)[1] > 64  # the 8-bit flavour: every quantised Conv
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.pre.onnx"))


def test_int8_ranges_round_trip_and_mismatch(onnx_dir, tmp_path):
    """Ranges saved while calibrating reproduce the same int8 graph without any faces; ranges naming tensors the
    graph lacks are refused with a clear error, and nothing is left behind."""
    from agelens.errors import CheckpointError
    from agelens.export.onnx import quantize_int8
    from agelens.inference.backends.onnx import OnnxModel

    src = onnx_dir / "occlusion.onnx"
    views = _views(20, OnnxModel(src).input_size, seed=2)
    ranges = tmp_path / "occlusion.int8-ranges.json"
    quantize_int8(src, tmp_path / "a.int8.onnx", views, ranges)
    assert ranges.is_file()
    assert quantize_int8(src, tmp_path / "b.int8.onnx", None, ranges).endswith("(saved ranges)")
    a, b = (OnnxModel(tmp_path / f"{k}.int8.onnx").run(views)[0] for k in "ab")
    np.testing.assert_array_equal(a, b)
    bad = json.loads(ranges.read_text())
    bad["data"] = {k.replace("/model/", "/other/"): v for k, v in bad["data"].items()}
    ranges.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="do not match this export"):
        quantize_int8(src, tmp_path / "c.int8.onnx", None, ranges)
    assert not (tmp_path / "c.int8.onnx").exists() and not list(tmp_path.glob("*.pre.onnx"))


def test_int8_recalibration_cut_short_keeps_the_old_ranges(onnx_dir, tmp_path):
    """Calibrating afresh writes the new ranges only once the int8 graph is done: a calibration that fails (here
    faces of the wrong size) leaves the ranges file as it was and no side file behind."""
    from agelens.export.onnx import quantize_int8
    from agelens.inference.backends.onnx import OnnxModel

    src = onnx_dir / "occlusion.onnx"
    ranges = tmp_path / "occlusion.int8-ranges.json"
    ranges.write_text('{"data": {}}')
    wrong = _views(4, OnnxModel(src).input_size + 8, seed=3)
    with pytest.raises(Exception):  # noqa: B017 (onnxruntime's own error for the wrong input shape)
        quantize_int8(src, tmp_path / "a.int8.onnx", wrong, ranges)
    assert ranges.read_text() == '{"data": {}}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occlusion.int8-ranges.json"]
    quantize_int8(src, tmp_path / "a.int8.onnx", _views(20, OnnxModel(src).input_size, seed=2), ranges)
    assert json.loads(ranges.read_text())["data"] and not (tmp_path / "occlusion.int8-ranges.json.new").exists()


def test_auto_backend_takes_int8_only_where_the_cpu_pays_for_it():
    """int8 runs 1.4x faster on CPUs with VNNI or AMX and about 1.25x on AVX2 alone (7-bit weights, 8-bit in
    depthwise Conv) at the same overall MAE (within 0.05); elsewhere auto stays on fp32."""
    from agelens.inference.predictor import choose_backend

    backend, why = choose_backend(flags={"avx2", "avx512_vnni"})
    assert backend == "onnx-int8" and "VNNI" in why and "7-bit" not in why and "--backend onnx" in why
    assert choose_backend(flags={"amx_int8"})[0] == "onnx-int8"
    backend, why = choose_backend(flags={"avx2", "fma"})
    assert backend == "onnx-int8" and "7-bit" in why and "--backend onnx" in why
    backend, why = choose_backend(flags={"sse4_2"})
    assert backend == "onnx" and "AVX2" in why
    assert choose_backend(custom=True, flags={"avx512_vnni"})[0] == "torch"


def test_shipped_ranges_are_used_only_with_the_weights_they_were_calibrated_on(tmp_path, monkeypatch):
    """New weights with the old ranges file would quantise silently wrong: the card names the weights' SHA-256."""
    import agelens.export.onnx as ex
    from agelens.utils import sha256_file

    monkeypatch.setattr(ex, "weights_dir", lambda: tmp_path)
    (tmp_path / "teacher.safetensors").write_bytes(b"weights v1")
    ranges = tmp_path / "teacher.notta.int8-ranges.json"
    ranges.write_text("{}")
    card = {"int8_ranges": {"weights_sha256": sha256_file(tmp_path / "teacher.safetensors")}}
    (tmp_path / "teacher.json").write_text(json.dumps(card))
    said = []
    assert ex._ranges_fit(ranges, "teacher", said.append) and not said
    (tmp_path / "teacher.safetensors").write_bytes(b"weights v2")
    assert not ex._ranges_fit(ranges, "teacher", said.append) and "other weights" in said[0]
    assert not ex._ranges_fit(tmp_path / "student.int8-ranges.json", "student", said.append)


def test_quantising_processes_each_have_their_own_scratch_graph(onnx_dir, tmp_path, monkeypatch):
    """First runs started together quantise the same graph into the same cache: a shared `<graph>.pre.onnx` beside
    the output was read half-written or deleted under one of them (a crash, or a silent fall-back to torch)."""
    import onnxruntime.quantization.shape_inference as si

    from agelens.export.onnx import quantize_int8

    seen = []
    real = si.quant_pre_process
    monkeypatch.setattr(si, "quant_pre_process", lambda a, b, **kw: seen.append(b) or real(a, b, **kw))
    out = tmp_path / "same.int8.onnx"
    for _ in range(2):
        quantize_int8(onnx_dir / "occlusion.onnx", out, None, None)
    assert len(set(seen)) == 2 and all(os.path.dirname(p) != str(tmp_path) for p in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.int8.onnx"]


def _tiny_pt(path, *overrides):
    import torch

    from agelens.config import config_to_dict, load_config
    from agelens.models import build_model

    cfg = load_config(None, ["model.backbone=resnet18", "data.crop_size=200", "data.input_size=48", *overrides])
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": build_model(cfg.model).state_dict(), "config": config_to_dict(cfg)}, path)
    return str(path)


def test_an_export_is_made_whole_or_not_at_all_and_each_role_checked(tmp_path, monkeypatch):
    """An export into a folder holding an earlier one replaces it whole (before: its int8 copies stayed and were
    run); one cut short leaves the earlier one as it was; a folder of other files is refused; each role's model must
    be of its kind (before: a detector exported as the teacher, its probability read as an age); dynamic int8
    graphs run (before: every image failed); the loader runs only the int8 copies the manifest names."""
    from agelens import AgeEstimator
    from agelens.errors import AgelensError, CheckpointError
    from agelens.export.onnx import export_all
    from agelens.export.shipped import ensure_export
    from agelens.inference.backends.onnx import OnnxModel, load_onnx_models
    from agelens.occlusion.detector import OcclusionDetector

    quiet = lambda *_: None  # noqa: E731
    age = _tiny_pt(tmp_path / "age" / "tiny.pt", "model.head=dldl")
    _tiny_pt(tmp_path / "det" / "best.pt", "model.head=binary", "train.task=occlusion", "occlusion.enabled=true")
    (tmp_path / "det" / "test").mkdir()
    (tmp_path / "det" / "test" / "metrics.json").write_text(json.dumps({"threshold": 0.55}))
    d = tmp_path / "exp"
    export_all(d, {"teacher": age}, int8="dynamic", log=quiet)
    views = _views(2, 48)
    assert OnnxModel(d / "teacher.int8.onnx").run(views)[0].shape == (2,)
    export_all(d, {"teacher": age, "occlusion": str(tmp_path / "det")}, int8="none", log=quiet)
    assert not (d / "teacher.int8.onnx").exists() and (d / "occlusion.onnx").is_file()
    assert OnnxModel(d / "occlusion.onnx").threshold == 0.55  # the run's own threshold (before: 0.5)
    notes: list[str] = []  # int8 asked of an export without int8 graphs: fp32 runs, and the user is told why
    assert AgeEstimator.from_pretrained(backend="onnx-int8", onnx_dir=d, log=notes.append).backend == "onnx-fp32"
    assert any("graphs for this CPU" in n and "its fp32 graphs run" in n for n in notes), notes

    def cut(_):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        export_all(d, {"teacher": age}, int8="none", log=quiet, also=cut)
    assert (d / "occlusion.onnx").is_file() and not list(tmp_path.glob(".exp.*"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(AgelensError, match="holds other files"):
        export_all(mine, {"teacher": age}, int8="none", log=quiet)
    with pytest.raises(AgelensError, match="cannot be the teacher: it is a binary crop classifier"):
        export_all(tmp_path / "r1", {"teacher": str(tmp_path / "det")}, int8="none", log=quiet)
    import agelens.export.onnx as onnx_export

    with monkeypatch.context() as m:  # every role is checked before any model is exported
        m.setattr(onnx_export, "export_model", lambda *a, **k: pytest.fail("a model was exported first"))
        with pytest.raises(AgelensError, match="cannot be the occlusion: it is an age model"):
            export_all(tmp_path / "r2", {"teacher": age, "occlusion": age}, int8="none", log=quiet)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
    # a graph named as an int8 copy that the manifest does not list is not run
    import shutil

    for flavor in ("int8", "int8w7"):
        shutil.copy(d / "teacher.onnx", d / f"teacher.{flavor}.onnx")
        assert load_onnx_models(d, flavor)["teacher"].precision == "fp32"
    with pytest.raises(CheckpointError, match="no such folder"):  # before: a mistyped folder got a new export
        ensure_export(tmp_path / "exp_typo")
    with pytest.raises(AgelensError, match="onnx_dir runs the models of that export"):
        AgeEstimator.from_pretrained(age, backend="onnx", onnx_dir=d)
    with pytest.raises(CheckpointError, match="not an occlusion detector: a binary classifier trained for"):
        OcclusionDetector.from_pretrained("faceness", task="occlusion")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert OnnxModel(d / "teacher.onnx")._options.intra_op_num_threads == 1


def test_predict_runs_an_export_named_on_the_command_line(onnx_dir, astronaut_path):
    """`agelens predict --onnx-dir DIR` runs that export (before: no such option; only $AGELENS_ONNX_DIR, which
    treated a custom export as the shipped one); torch cannot run it."""
    from typer.testing import CliRunner

    from agelens.cli import app

    r = CliRunner().invoke(app, ["predict", str(astronaut_path), "--onnx-dir", str(onnx_dir), "-f", "json",
                                 "--workers", "0"])
    assert r.exit_code == 0, r.output
    faces = json.loads(r.stdout[r.stdout.index("["):])[0]["faces"]
    assert faces and faces[0]["backend"].startswith("onnx")
    r = CliRunner().invoke(app, ["predict", str(astronaut_path), "--onnx-dir", str(onnx_dir), "--backend", "torch"])
    assert r.exit_code != 0 and "--onnx-dir runs an ONNX export" in str(r.exception)


def test_exported_weights_carry_every_test_part_the_run_measured(tmp_path):
    """A student's card held its clean test metrics only, not test_occluded/ (the faces it is for), nor a run's
    extra datasets' test parts."""
    import json

    from typer.testing import CliRunner

    from agelens.cli import app

    run = tmp_path / "run"
    _tiny_pt(run / "best.pt", "model.head=dldl")
    for part, mae in (("test", 5.0), ("test_occluded", 7.5), ("test_aaf", 6.0)):
        (run / part).mkdir()
        (run / part / "metrics.json").write_text(json.dumps({"mae": mae}))
    r = CliRunner().invoke(app, ["export", "weights", str(run), "--name", "mine", "--output", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "w" / "mine.json").read_text())
    assert card["test_metrics"] == {"mae": 5.0}
    assert card["more_test_metrics"] == {"test_aaf": {"mae": 6.0}, "test_occluded": {"mae": 7.5}}
