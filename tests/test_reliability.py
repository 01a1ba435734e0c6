"""Bad inputs through every entry point (predict, evaluate, prepare, train, the REST API): a specific message per
entry, a non-zero exit or a 4xx, never a traceback or a 500, and the good files in the same batch still done."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from agelens.models.weights import shipped_models
from badinputs import OK, make_corpus

ENV = {**os.environ, "GLOG_minloglevel": "3", "TF_CPP_MIN_LOG_LEVEL": "3"}
pytestmark = pytest.mark.skipif("teacher" not in shipped_models(), reason="no shipped weights")


def agelens(*args):
    return subprocess.run([sys.executable, "-m", "agelens.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=900, errors="replace")


def _clean(r):
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-2000:]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, astronaut_path):
    face = np.asarray(Image.open(astronaut_path).convert("RGB"))[20:320, 120:340]
    return make_corpus(tmp_path_factory.mktemp("corpus"), face)


def test_predict_answers_every_entry(corpus):
    from agelens.inference.inputs import printable

    r = agelens("predict", *[p for p, _ in corpus.values()], "-f", "json")
    _clean(r)
    bad = [k for k, (_, e) in corpus.items() if e != OK]
    assert r.returncode == 1 and f"{len(bad)} of {len(corpus)} file(s) failed" in r.stderr
    got = {x["file"]: x for x in json.loads(r.stdout)}
    for name, (p, expect) in corpus.items():
        x = got[printable(str(p))]
        if expect == OK:
            assert x["error"] is None and len(x["faces"]) == 1, (name, x)
            assert 10 < x["faces"][0]["age"] < 60, (name, x)
        else:
            assert x["faces"] == [] and expect in x["error"], (name, x)


def test_exif_orientation_is_honoured(corpus):
    from agelens.imageio import load_image

    upright, rotated = load_image(corpus["good.jpg"][0]), load_image(corpus["exif_rotated.jpg"][0])
    assert rotated.shape == upright.shape
    assert np.abs(rotated.astype(int) - upright.astype(int)).mean() < 8  # JPEG noise, not a 90° turn


def _labelled_csv(tmp_path, corpus, extra_rows=()):
    rows = [("path", "age", "gender")]
    rows += [(str(p), 30, "female") for p, _ in corpus.values()]
    rows += list(extra_rows)
    p = tmp_path / "labels.csv"
    with open(p, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        csv.writer(f).writerows(rows)
    return p


BAD_ROWS = [("x_negative.jpg", -3, "male"), ("x_old.jpg", 200, "male"), ("x_missing.jpg", 40, "male"),
            ("", 20, "male"), ("x_word.jpg", "thirty", "male")]


def test_evaluate_keeps_going_and_reports(tmp_path, corpus):
    good = corpus["good.jpg"][0]
    for name, *_ in BAD_ROWS[:2] + BAD_ROWS[4:]:
        if name:
            (tmp_path / name).write_bytes(good.read_bytes())  # the file exists: the label is what is wrong
    labels = _labelled_csv(tmp_path, corpus, BAD_ROWS)
    r = agelens("evaluate", "--dataset", "csv", "--root", labels, "--output", tmp_path / "ev", "--workers", "1",
                "--bootstrap", "0")
    _clean(r)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    ok = sum(e == OK for _, e in corpus.values())
    assert m["n"] == ok, m  # every readable face answered
    unreadable = len(corpus) - ok
    assert m["failed"] == unreadable - sum(not p.is_file() for p, _ in corpus.values())
    not_files = sum(not p.is_file() for p, _ in corpus.values())  # folder.jpg, missing.jpg: "missing file" rows
    assert f"{len(BAD_ROWS) + not_files} bad rows" in r.stdout + r.stderr, r.stdout
    text = (tmp_path / "ev" / "predictions.csv").read_text(errors="replace")
    for reason in ("cut short (truncated)", "pixel limit", "empty file", "not a recognised image format"):
        assert reason in text, reason


def test_prepare_reports_bad_rows_and_unreadable_files(tmp_path, corpus):
    labels = _labelled_csv(tmp_path, corpus, BAD_ROWS)
    args = ["data.dataset=csv", f"data.root={labels}", f"data.split_file={tmp_path}/split.json",
            f"data.cache_dir={tmp_path}/cache", "data.cache_size=64", "data.crop_size=56", "data.input_size=48",
            "data.val_frac=0.2", "data.test_frac=0.2"]
    r = agelens("prepare", "--workers", "1", *args)
    _clean(r)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "without a face" in out
    faces = sum(int(line.split(": ")[1].split()[0]) for line in out.splitlines() if " faces in " in line)
    assert faces == sum(e == OK for _, e in corpus.values()), out


@pytest.mark.parametrize("content,fragment", [
    ("file,years\na.jpg,3\n", "missing required column"),
    ("", "empty"),
])
def test_train_and_evaluate_refuse_unusable_csv(tmp_path, content, fragment):
    p = tmp_path / "labels.csv"
    p.write_text(content)
    for args in (["train", "data.dataset=csv", f"data.root={p}", f"data.split_file={tmp_path}/s.json",
                  f"data.cache_dir={tmp_path}/c"],
                 ["evaluate", "--dataset", "csv", "--root", p, "--output", tmp_path / "ev"]):
        r = agelens(*args)
        _clean(r)
        assert r.returncode == 2 and "error:" in r.stderr and fragment in r.stderr.lower(), r.stderr[-800:]
        assert not (tmp_path / "ev" / "metrics.json").exists()


def test_rest_api_answers_every_entry(corpus):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from agelens.serve.app import create_app

    with TestClient(create_app(max_pixels=40_000_000)) as client:
        for name, (p, expect) in corpus.items():
            if not p.is_file():
                continue  # folders and missing paths cannot be uploaded
            r = client.post("/v1/predict", files={"file": ("upload" + p.suffix, p.read_bytes(), "application/octet-stream")})
            assert r.status_code != 500 and "Traceback" not in r.text, (name, r.text)
            if expect == OK:
                assert r.status_code == 200 and len(r.json()["faces"]) == 1, (name, r.text)
            else:
                assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert client.get("/healthz").status_code == 200  # still up after the corpus
