"""Ray engine (`predict --engine ray`, `predict_many(engine="ray")`) on a local 2-CPU Ray: same records as the local
engine, per-file errors, resume after a kill; Parquet output of the streamed sinks."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory, astronaut_path):
    """Three photos with a face (one under a non-UTF-8 name), a blank image (no face) and a corrupt file."""
    d = tmp_path_factory.mktemp("scale") / "in"
    d.mkdir()
    shutil.copy(astronaut_path, d / "a0.jpg")
    img = Image.open(astronaut_path)
    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((384, 384)).save(d / "a1.png")
    shutil.copy(astronaut_path, os.path.join(os.fsencode(d), b"caf\xe9.jpg"))
    Image.fromarray(np.full((80, 80, 3), 128, np.uint8)).save(d / "blank.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return d


@pytest.fixture(scope="module")
def estimator():
    from agelens import AgeEstimator

    return AgeEstimator.from_pretrained(backend="torch")


@pytest.fixture(scope="module")
def local_records(images, estimator):
    from agelens import predict_many

    return list(predict_many(images, estimator=estimator, batch_size=2))


def _same(a: list[dict], b: list[dict]) -> None:
    """File for file: same keys, same faces and errors, ages within 1e-3."""
    ka, kb = {r["file"]: r for r in a}, {r["file"]: r for r in b}
    assert sorted(ka) == sorted(kb) and len(a) == len(ka) and len(b) == len(kb)
    for f, ra in ka.items():
        rb = kb[f]
        assert set(ra) == set(rb) == {"file", "faces", "error"}
        assert ra["error"] == rb["error"]
        assert len(ra["faces"]) == len(rb["faces"])
        for fa, fb in zip(ra["faces"], rb["faces"]):
            assert set(fa) == set(fb)
            assert abs(fa["age"] - fb["age"]) <= 1e-3 and fa["box"] == fb["box"] and fa["model"] == fb["model"]


def test_ray_engine_matches_local_and_resumes_after_a_kill(ray_local, images, local_records, tmp_path):
    """`predict --engine ray` (predict_many(engine="ray") on the module's local 2-CPU Ray) finishes a run killed
    after one record and half of the next line: only the other files are processed, every file ends up once
    with the local engine's record (same keys, ages within 1e-3, same per-file errors)."""
    from typer.testing import CliRunner

    from agelens.cli import app

    out = tmp_path / "ages.jsonl"
    lines = [json.dumps(r) for r in local_records]
    out.write_text(lines[0] + "\n" + lines[1][:30])
    r = CliRunner().invoke(app, ["predict", str(images), "--engine", "ray", "-f", "jsonl", "-o", str(out),
                                 "--resume", "--backend", "torch", "--batch-size", "2"])
    assert r.exit_code == 1, r.output  # the blank and the broken file fail, each with its own message
    assert "1 of 5 file(s) already done" in r.output and "2 of 4 file(s) failed" in r.output, r.output
    got = [json.loads(x) for x in out.read_text().splitlines()]
    _same(got, local_records)
    errors = {os.path.basename(r["file"]): r["error"] for r in got if r["error"]}
    assert set(errors) == {"blank.png", "broken.jpg"} and "no face found" in errors["blank.png"]
    assert sum(len(r["faces"]) for r in got) >= 3
    assert any("\\xe9" in r["file"] for r in got)  # a non-UTF-8 name survives Arrow as in the local engine


def test_parquet_sink_round_trip_and_resume(images, estimator, local_records, tmp_path):
    """-f parquet: a folder of atomically written parts with the JSONL records' keys; resume reads the files done."""
    import pyarrow.parquet as pq

    from agelens.inference.stream import ParquetSink

    out = tmp_path / "ages.parquet"
    sink = ParquetSink(out, rows_per_part=2)
    for r in local_records[:3]:
        sink.write(r)
    sink.close()
    (out / ".part-00009.parquet.x.tmp").write_bytes(b"torn")  # a killed write leaves only a temp file
    sink = ParquetSink(out, resume=True, rows_per_part=2)
    assert sink.done == {r["file"] for r in local_records[:3]} and not list(out.glob(".*tmp"))
    for r in local_records[3:]:
        sink.write(r)
    sink.close()
    rows = pq.read_table(out).to_pylist()
    assert len(list(out.glob("part-*.parquet"))) == 3
    _same(rows, local_records)
    sink = ParquetSink(out)  # without resume the folder starts empty
    sink.close()
    assert not list(out.glob("part-*.parquet"))


def test_cli_predict_parquet_local(images, tmp_path):
    from typer.testing import CliRunner

    from agelens.cli import app

    r = CliRunner().invoke(app, ["predict", str(images), "-f", "parquet"])
    assert r.exit_code != 0 and "--format parquet needs --output FOLDER" in str(r.exception)
    r = CliRunner().invoke(app, ["predict", str(images), "--engine", "spark", "-f", "jsonl"])
    assert "--engine must be local or ray" in str(r.exception)


def test_ray_engine_finds_checks_and_answers_as_the_estimator_given(ray_local, images):
    """The Ray actors rebuild the caller's estimator with its settings (a route changed after loading held only
    locally), and find faces through the same pipeline (the teacher's own face head checks them, as locally)."""
    from agelens import AgeEstimator, predict_many

    est = AgeEstimator.from_pretrained(backend="torch")
    est.route = "student"
    files = [str(images / "a0.jpg"), str(images / "a1.png")]
    local = list(predict_many(files, estimator=est))
    got = list(predict_many(files, "ray", estimator=est, batch_size=2))
    _same(got, local)
    assert {f["model"] for r in got for f in r["faces"]} == {"student"}



def test_actor_spec_holds_the_device_each_actor_has(tmp_path, monkeypatch):
    """A GPU actor runs torch on CUDA whatever this machine's CPU backend was (the driver's resolved onnx-int8
    left the GPUs idle); a CPU actor runs on the CPU; an ONNX export cannot be sent to a GPU."""
    from agelens.errors import AgelensError
    from agelens.inference.ray_engine import actor_spec

    model = tmp_path / "mine.safetensors"
    model.write_bytes(b"x")
    spec = ("from_pretrained", {"name_or_path": "mine.safetensors", "device": "cuda", "backend": "onnx-int8",
                                "onnx_dir": None})
    monkeypatch.chdir(tmp_path)
    assert actor_spec(spec, 1.0)[1] == {"name_or_path": str(model), "device": "cuda", "backend": "torch",
                                        "onnx_dir": None}
    assert actor_spec(spec, 0.0)[1]["device"] == "cpu" and actor_spec(spec, 0.0)[1]["backend"] == "onnx-int8"
    with pytest.raises(AgelensError, match="from_pretrained"):
        actor_spec(("from_onnx", {"onnx_dir": str(tmp_path)}), 1.0)
    with pytest.raises(AgelensError, match="cannot travel"):
        actor_spec(None, 0.0)


def test_a_ray_session_keeps_the_callers_signal_handlers(monkeypatch):
    """ray.init puts its own SIGTERM / SIGINT handlers in place (SIGTERM then ended the CLI with a C++ stack dump,
    exit 134); the session puts the caller's back."""
    import signal

    from agelens.inference import ray_engine

    def mine(signum, frame):
        raise SystemExit(143)

    def fake_init(**kw):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    old = signal.signal(signal.SIGTERM, mine)
    try:
        with ray_engine.ray_session(num_cpus=1):
            assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, before)
