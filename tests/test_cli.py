import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from agelens.config import config_to_dict, load_config
from agelens.models import build_model
from agelens.models.weights import shipped_models

ENV = {**os.environ, "GLOG_minloglevel": "3", "TF_CPP_MIN_LOG_LEVEL": "3"}


def agelens(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "agelens.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    cfg = load_config(None, ["model.backbone=resnet18", "model.head=dldl", "data.crop_size=200", "data.input_size=48"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    p = tmp_path_factory.mktemp("ck") / "tiny.pt"
    torch.save({"model": model.state_dict(), "config": config_to_dict(cfg)}, p)
    return p


def _no_traceback(r):
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr


@pytest.mark.parametrize("args,fragment", [
    (["train", "-c", "nope.yaml"], "config file not found: nope.yaml"),
    (["train", "train.lr=oops"], "train.lr must be a number"),
    (["train", "train.batch_size=0"], "train.batch_size must be >= 1"),
    (["evaluate", "--root", "/no/such/dir", "--output", "/tmp/x", "--model", "/no/model.pt"], "checkpoint not found"),
    (["predict", "--model", "nosuchmodel", "x.jpg"], "neither a file nor a shipped model"),
    (["predict", "--format", "xml", "x.jpg"], "--format must be table, json, jsonl or csv"),
    (["predict", "--detector", "/no/detector.pt", "x.jpg"], "checkpoint not found"),
    (["serve", "--student", "/no/student.pt"], "checkpoint not found"),
    (["calibrate", "teacher", "-c", "x.yaml", "--part", "test"], "never on the test part"),
    (["serve", "--allow-origin", "app.example.com"], "give an origin as scheme://host[:port]"),
    (["calibrate", "teacher", "-c", "x.yaml", "--level", "1.5"], "--level must be a coverage in (0, 1)"),
])
def test_bad_input_one_line_error(args, fragment):
    r = agelens(*args)
    assert r.returncode == 2
    _no_traceback(r)
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], r.stderr


def test_predict_json_contract_and_per_file_errors(tmp_path, tiny_checkpoint, astronaut_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "blank.png")
    r = agelens("predict", astronaut_path, tmp_path / "junk.jpg", tmp_path / "blank.png", tmp_path / "missing.jpg",
                "--model", tiny_checkpoint, "--format", "json", "--save-annotated", tmp_path / "ann")
    _no_traceback(r)
    assert r.returncode == 1 and "3 of 4 file(s) failed" in r.stderr
    # the failed files are named with their reasons (before: the count alone, -q or not)
    assert f"\n  {tmp_path / 'missing.jpg'}: file not found" in r.stderr and "junk.jpg: not a recognised" in r.stderr
    out = json.loads(r.stdout)
    assert [o["file"] for o in out] == [astronaut_path, str(tmp_path / "junk.jpg"), str(tmp_path / "blank.png"),
                                        str(tmp_path / "missing.jpg")]
    face = out[0]["faces"][0]
    assert out[0]["error"] is None and len(face["box"]) == 4 and isinstance(face["age"], float)
    assert face["interval"][0] <= face["age"] <= face["interval"][1]
    assert "not a recognised image" in out[1]["error"] and "no face found" in out[2]["error"]
    assert "file not found" in out[3]["error"]
    assert len(list((tmp_path / "ann").glob("*.jpg"))) == 1


def test_predict_no_detect_csv_and_folder(tmp_path, tiny_checkpoint, astronaut_path):
    img = np.asarray(Image.open(astronaut_path))[30:300, 130:330]
    (tmp_path / "crops").mkdir()
    Image.fromarray(img).save(tmp_path / "crops" / "face.jpg")
    r = agelens("predict", tmp_path / "crops", "--no-detect", "--model", tiny_checkpoint, "--format", "csv")
    _no_traceback(r)
    assert r.returncode == 0
    rows = r.stdout.strip().splitlines()
    assert rows[0].startswith("file,face,x1") and len(rows) == 2 and ",0,0.0,0.0,200.0,270.0," in rows[1]


def test_predict_adapts_a_jobs_ages_in_every_format(tmp_path, tiny_checkpoint, astronaut_path):
    """A job of 24 faces is adapted to its own age mix (the card's `age_prior`: a training mix at 60) in json,
    stdout jsonl and a streamed --output alike; --no-adapt keeps each face's own answer, streamed."""
    from agelens.models.checkpoint import model_from_checkpoint
    from agelens.models.weights import export_weights

    model, cfg = model_from_checkpoint(tiny_checkpoint)
    mix = np.exp(-0.5 * ((np.arange(101) - 60) / 5.0) ** 2)
    w = export_weights(model, cfg, tmp_path / "w", "tiny", {"age_prior": list(mix / mix.sum()), "licence": "test"})
    img = np.asarray(Image.open(astronaut_path))
    d = tmp_path / "faces"
    d.mkdir()
    for i in range(24):  # different crops, different answers; the face whole in each (a face cut off by the edge
        # reads as occluded to the detector's stage 5 and stays out of the mix)
        Image.fromarray(img[10 + 3 * i:300 + 2 * i, 110 + 2 * i:340 + i]).save(d / f"f{i:02d}.jpg")

    def ages(text, lines=False):
        recs = [json.loads(x) for x in text.splitlines()] if lines else json.loads(text)
        return {r["file"]: r["faces"][0]["age"] for r in recs}

    base = ["predict", d, "--no-detect", "--model", w, "--workers", "0"]
    adapted = agelens(*base, "-f", "json", "--save-annotated", tmp_path / "ann")  # drawn once the ages are adapted
    raw = agelens(*base, "-f", "json", "--no-adapt")
    lines = agelens(*base, "-f", "jsonl")
    streamed = agelens(*base, "-f", "jsonl", "-o", tmp_path / "out.jsonl")
    table = agelens(*base, "-f", "csv", "-o", tmp_path / "out.csv")
    for r in (adapted, raw, lines, streamed, table):
        _no_traceback(r)
        assert r.returncode == 0, r.stderr
    assert "ages adapted to this job's age mix" in adapted.stderr and "adapted" not in raw.stderr
    a, b = ages(adapted.stdout), ages(raw.stdout)
    assert len(a) == 24 and a.keys() == b.keys() and any(abs(a[k] - b[k]) > 0.5 for k in a)
    assert ages(lines.stdout, True) == a == ages((tmp_path / "out.jsonl").read_text(), True)
    import pandas as pd

    rows = pd.read_csv(tmp_path / "out.csv")
    assert dict(zip(rows.file, rows.age, strict=True)) == pytest.approx(a)
    assert not list(tmp_path.glob(".out.jsonl*"))  # the rewrite leaves nothing beside it
    assert len(list((tmp_path / "ann").glob("*.jpg"))) == 24


def test_evaluate_contract(tmp_path, tiny_checkpoint, astronaut_path):
    img = np.asarray(Image.open(astronaut_path))[20:320, 120:340]
    d = tmp_path / "utk"
    d.mkdir()
    for i, age in enumerate([25, 38, 41, 70]):
        Image.fromarray(img).save(d / f"{age}_{i % 2}_{i}_2017010{i}.jpg.chip.jpg")
    Image.fromarray(np.full((50, 50, 3), 128, np.uint8)).save(d / "30_1_0_20170101.jpg.chip.jpg")
    r = agelens("evaluate", "--dataset", "utkface", "--root", d, "--model", tiny_checkpoint, "--output", tmp_path / "out",
                "--workers", "1", "--quiet")
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {"n", "mae", "cs5", "cmae", "acc5", "bias_score", "per_bin", "per_gender", "per_race"} <= set(m)
    assert m["n"] == 4 and m["failed"] == 1
    assert m["route"] == "teacher" and m["student"] is None  # the shipped student answered nothing: not named
    assert set(m["per_bin"]) == {"21-30", "31-40", "41-50", "61+"} and set(m["per_gender"]) == {"male", "female"}
    import pandas as pd

    table = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype={"race": str})
    failed = table[table.error.notna()]  # the face without a face: its labels kept, the reason in `error`
    assert len(failed) == 1 and failed.error.iloc[0] == "no face found" and failed.pred.isna().all()
    assert (failed.age.iloc[0], failed.gender.iloc[0], failed.race.iloc[0]) == (30, "female", "white")
    rows = table.dropna(subset=["pred"])
    assert rows.error.isna().all() and not rows.race.str.startswith("failed").any()
    hit = ((rows.interval_lo <= rows.age) & (rows.age <= rows.interval_hi)).mean()
    assert (rows.interval_lo < rows.pred).all() and (rows.pred < rows.interval_hi).all()
    assert m["interval"]["n"] == 4 and m["interval"]["coverage"] == pytest.approx(hit)


@pytest.mark.skipif(not shipped_models(), reason="no shipped weights in this checkout")
def test_shipped_model_answers_the_demo_photo():
    r = agelens("predict", "--demo", "--format", "json")
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    face = json.loads(r.stdout)[0]["faces"][0]
    # Eileen Collins, born 1956, photographed in the 1990s (NASA portrait): apparent age 30-50
    assert 25 <= face["age"] <= 55, face
    if "occlusion" in shipped_models():
        assert face["occluded"] is False and 0 <= face["occlusion_score"] < 0.5 and face["model"] == "teacher"


@pytest.mark.skipif("occlusion" not in shipped_models(), reason="no shipped occlusion detector")
def test_occluded_photo_is_flagged_and_routed(tmp_path, astronaut_path):
    """`agelens occlude` draws sunglasses + mask on the demo photo; predict (with and without detection) flags it
    and names the model that answered; evaluate --occlude 1 reports per-type MAE and routing."""
    r = agelens("occlude", astronaut_path, tmp_path / "occ", "--mix", "sunglasses+mask=1", "--workers", "1", "--quiet")
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    row = (tmp_path / "occ" / "occlusions.csv").read_text().splitlines()[1]
    assert ",ok,sunglasses+mask," in row
    occluded = tmp_path / "occ" / "astronaut.jpg"
    expected = "student" if "student" in shipped_models() else "teacher"
    for extra in ([], ["--no-detect"]):
        r = agelens("predict", occluded, "--format", "json", *extra)
        _no_traceback(r)
        face = json.loads(r.stdout)[0]["faces"][0]
        if not extra:  # whole photo, detected and aligned
            assert face["occluded"] is True and face["occlusion_score"] >= 0.5 and face["model"] == expected, face
        assert isinstance(face["occluded"], bool) and 0 <= face["occlusion_score"] <= 1
    r = agelens("predict", occluded, "--format", "json", "--route", "teacher")
    assert json.loads(r.stdout)[0]["faces"][0]["model"] == "teacher"
    img = np.asarray(Image.open(astronaut_path))[20:320, 120:340]
    d = tmp_path / "utk"
    d.mkdir()
    for i, age in enumerate([25, 38, 41, 70]):
        Image.fromarray(img).save(d / f"{age}_{i % 2}_{i}_2017010{i}.jpg.chip.jpg")
    r = agelens("evaluate", "--dataset", "utkface", "--root", d, "--output", tmp_path / "ev", "--workers", "1",
                "--occlude", "1", "--occlusion-mix", "mask=1", "--quiet")
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["per_occlusion"]["mask"]["n"] == 4 and m["occluded_share"] == 1.0
    assert (m["occlusion_mix"], m["occlusion_seed"], m["occlusion_protocol"]) == ({"mask": 1.0}, 0, "aligned-crop")
    assert m["routed_to"] == {expected: 4} and m["detector_accuracy"] == 1.0
    r = agelens("evaluate", "--dataset", "utkface", "--root", d, "--output", tmp_path / "ev2", "--occlude", "1.5")
    assert r.returncode == 2 and "--occlude must be a share" in r.stderr
    r = agelens("evaluate", "--dataset", "utkface", "--root", d, "--output", tmp_path / "ev3", "--occlusion-mix",
                "mask=1")
    assert r.returncode == 2 and "give --occlude SHARE too" in r.stderr and not (tmp_path / "ev3").exists()


EXIT_PROBE = """
import atexit, sys, threading, time
import agelens.cli as cli

def app():
    atexit.register(lambda: open(sys.argv[1], "w").write("handlers ran"))
    if sys.argv[2] == "thread":  # a non-daemon thread still working: the exit must wait for it
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
    for i in range(20000):  # more than a pipe's buffer, still buffered in sys.stdout at exit
        print(f"line {i}")
    raise SystemExit(3)

cli.app = app
cli.main()
"""


@pytest.mark.parametrize("mode", ["plain", "thread"])
def test_exit_skips_the_teardown_but_keeps_output_status_and_handlers(tmp_path, mode):
    marker = tmp_path / "marker"
    r = subprocess.run([sys.executable, "-c", EXIT_PROBE, str(marker), mode], capture_output=True, text=True,
                       env=ENV, timeout=120)
    lines = r.stdout.splitlines()
    assert r.returncode == 3, r.stderr
    assert [x for x in lines if x.startswith("line")] == [f"line {i}" for i in range(20000)]
    assert ("thread done" in lines) == (mode == "thread")
    assert marker.read_text() == "handlers ran"


def test_table_prints_file_names_as_they_are(tmp_path, tiny_checkpoint):
    (tmp_path / "x[").mkdir()
    (tmp_path / "x[" / "b].jpg").write_bytes(b"not an image")  # read as Rich markup: "[/b]" closes no tag
    (tmp_path / "[red]y.jpg").write_bytes(b"not an image")
    r = agelens("predict", "x[/b].jpg", "[red]y.jpg", "--model", tiny_checkpoint, cwd=tmp_path)
    _no_traceback(r)
    assert r.returncode == 1 and "x[/b].jpg" in r.stdout and "[red]y.jpg" in r.stdout, r.stdout


def test_control_characters_in_file_names_are_shown_not_sent_to_the_terminal(tmp_path, tiny_checkpoint,
                                                                           astronaut_path):
    """A name holding an escape sequence (one retitles the terminal, one colours it) or a newline (a spoofed row)
    is printed with those characters as \\xNN, in the table and on stderr alike."""
    import shutil

    shutil.copy(astronaut_path, tmp_path / "a\x1b]0;PWNED\x07.jpg")
    (tmp_path / "b\x1b[31m\nfake.jpg").write_bytes(b"not an image")
    r = agelens("predict", ".", "--model", tiny_checkpoint, "--no-detect", cwd=tmp_path)
    _no_traceback(r)
    assert r.returncode == 1
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\x1b" not in r.stderr, (r.stdout, r.stderr)
    assert "a\\x1b]0;PWNED\\x07.jpg" in r.stdout and "  b\\x1b[31m\\x0afake.jpg: not a recognised" in r.stderr


@pytest.mark.parametrize("args,fragment", [
    (["-f", "json", "-o", "{file}/res.json"], "a part of the path is a file"),
    (["-f", "jsonl", "-o", "{file}/res.jsonl"], "a part of the path is a file"),
    (["-f", "json", "-o", "{dir}"], "is a folder; give a file name"),
    (["--save-annotated", "{file}"], "is a file; give a folder"),
])
def test_outputs_that_cannot_be_written_are_refused_before_the_job(tmp_path, args, fragment):
    (tmp_path / "file.txt").write_text("x")
    args = [a.format(file=tmp_path / "file.txt", dir=tmp_path) for a in args]
    r = agelens("predict", "--demo", *args)
    _no_traceback(r)
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and fragment in lines[0], r.stderr


def test_json_output_through_a_symlink_writes_its_target(tmp_path, tiny_checkpoint, astronaut_path):
    target, link = tmp_path / "real.json", tmp_path / "out.json"
    link.symlink_to(target)
    r = agelens("predict", astronaut_path, "--model", tiny_checkpoint, "-f", "json", "-o", link)
    _no_traceback(r)
    assert r.returncode == 0 and link.is_symlink() and json.loads(target.read_text())[0]["file"] == astronaut_path


def test_own_model_answers_every_face_and_researcher_mistakes_are_one_line(tmp_path, tiny_checkpoint, astronaut_path,
                                                                          utk_folder):
    r = agelens("predict", astronaut_path, "--model", tiny_checkpoint, "-f", "json")
    _no_traceback(r)
    assert "answers every face (--route teacher)" in r.stderr and r.returncode == 0
    assert all(f["model"] != "student" for f in json.loads(r.stdout)[0]["faces"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  root: {utk_folder}\n  split_file: {tmp_path}/s.json\n")
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "metrics.json").write_text("{not json")
    for args, fragment in ((["evaluate", "-c", cfg, "--part", "tset", "--model", tiny_checkpoint, "-o", tmp_path / "x"],
                            "--part must be one of train, val, test, got 'tset'"),
                           (["report", tmp_path / "ev"], "metrics.json is not valid JSON")):
        r = agelens(*args)
        _no_traceback(r)
        lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert r.returncode == 2 and len(lines) == 1 and fragment in lines[0], r.stderr


def test_sigterm_ends_a_job_as_ctrl_c_does(tmp_path, tiny_checkpoint, astronaut_path):
    import shutil
    import signal

    for i in range(300):
        shutil.copy(astronaut_path, tmp_path / f"p{i:03d}.jpg")
    job = subprocess.Popen([sys.executable, "-m", "agelens.cli", "predict", str(tmp_path), "--model", str(tiny_checkpoint),
                            "-f", "jsonl", "--no-adapt", "--workers", "2"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=ENV)
    first = job.stdout.readline()  # the job is under way
    job.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 143 and "terminated" in err and "Traceback" not in err, err
    lines = [first, *out.splitlines()]
    assert 1 <= len(lines) < 300 and all(json.loads(x)["file"] for x in lines)  # whole records only


def test_predict_reads_a_list_of_files_writes_o_dash_to_stdout_and_keeps_quiet(tmp_path, tiny_checkpoint,
                                                                               astronaut_path):
    """--files-from (a file or `-`) for lists too long for the command line; `-o -` is standard output, as Unix tools
    read it (before: a file named `-`); --quiet leaves stderr to failures; names piped to `-` get a pointer."""
    import shutil

    other = tmp_path / "b.jpg"
    shutil.copy(astronaut_path, other)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{astronaut_path}\n\n{other}\n")
    base = ["predict", "--model", tiny_checkpoint, "--no-adapt", "-f", "jsonl"]
    r = agelens(*base, "--files-from", listing, "-o", "-", "--quiet", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert [json.loads(x)["file"] for x in r.stdout.splitlines()] == [str(astronaut_path), str(other)]
    assert not (tmp_path / "-").exists()
    r = subprocess.run([sys.executable, "-m", "agelens.cli", *map(str, base), "--files-from", "-"], env=ENV,
                       input=f"{astronaut_path}\n", capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 and "backend" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "agelens.cli", *map(str, base), "-"], env=ENV,
                       input=f"{astronaut_path}\n", capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "holds file names, not an image: read them with --files-from -" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "agelens.cli", *map(str, base), "-"], env=ENV,  # names of another folder
                       input="holiday/IMG_0001.JPG\n", capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "--files-from -" in r.stderr, r.stderr
    r = agelens(*base, "--files-from", tmp_path / "nope.txt")
    assert r.returncode == 2 and "--files-from" in r.stderr and "nope.txt" not in r.stdout, r.stderr
    # a list saved by Notepad (byte-order mark, CRLF) and a name that is no UTF-8, read as the command line reads it
    odd = tmp_path / "caf\udce9.jpg"  # b"caf\xe9.jpg"
    shutil.copy(astronaut_path, os.fsencode(odd))
    listing.write_bytes(b"\xef\xbb\xbf" + os.fsencode(astronaut_path) + b"\r\n" + os.fsencode(odd) + b"\r\n")
    r = agelens(*base, "--files-from", listing, "-o", "./-", "-q", cwd=tmp_path)  # `./-`: a file named -
    rows = [json.loads(x) for x in (tmp_path / "-").read_text().splitlines()]
    assert r.returncode == 0 and r.stdout == "" and [x["error"] for x in rows] == [None, None], r.stderr


def test_a_narrow_terminal_gets_a_line_per_face_not_numbers_folded_in_a_table(capsys, monkeypatch):
    from agelens import cli

    face = {"box": [178.2, 81.0, 272.4, 175.9], "age": 88.94, "interval": [76.8, 100.0], "occluded": False,
            "occlusion_score": 0.01, "model": "teacher"}
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "40")
    cli._emit([{"file": "photo.jpg", "faces": [face], "error": None},
               {"file": "x.jpg", "faces": [], "error": "x.jpg: file not found"}], "table")
    out = capsys.readouterr().out
    assert "age 88.9 (77-100)" in out.replace("\n", " ") and "x.jpg: file not found" in out and "┃" not in out


def test_a_wide_table_names_a_failed_file_once(capsys, monkeypatch):
    from agelens import cli

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "140")
    cli._emit([{"file": "coffee.jpg", "faces": [], "error": "coffee.jpg: no face found"}], "table")
    out = capsys.readouterr().out
    assert out.count("coffee.jpg") == 1 and "no face found" in out  # the file column, then the reason alone


def test_a_reader_that_goes_ends_the_job_quietly_with_141(tmp_path, tiny_checkpoint, astronaut_path):
    """`agelens predict DIR | head -1`: the closed pipe ends the job as it ends `yes | head` (128 + SIGPIPE, no
    message), not with 1, which means some files failed."""
    job = subprocess.Popen([sys.executable, "-m", "agelens.cli", "predict", str(astronaut_path), "--model",
                            str(tiny_checkpoint), "-f", "csv", "--no-adapt"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=ENV)
    job.stdout.close()  # the reader went before the first line
    err = job.stderr.read()
    assert job.wait(timeout=120) == 141 and "Traceback" not in err and "error" not in err, err
    table = subprocess.Popen([sys.executable, "-m", "agelens.cli", "predict", str(astronaut_path), "--model",
                              str(tiny_checkpoint), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    table.stdout.close()  # the table, printed by rich, which ended a closed pipe with exit 1
    assert table.wait(timeout=120) == 141, table.stderr.read()


def test_a_parquet_output_killed_between_its_final_swaps_is_resumed_from_the_cli(tmp_path, tiny_checkpoint,
                                                                                  astronaut_path):
    pytest.importorskip("pyarrow")
    import shutil

    out = tmp_path / "out"
    base = ["predict", astronaut_path, "--model", tiny_checkpoint, "-f", "parquet", "-o", out, "--no-adapt"]
    assert agelens(*base).returncode == 0
    shutil.copytree(out, tmp_path / ".out.old")  # the rewrite had moved the output aside ...
    out.rename(tmp_path / ".out.rewrite")  # ... and written the new one, not yet moved in
    r = agelens(*base, "--resume")
    _no_traceback(r)
    assert r.returncode == 0 and "1 of 1 file(s) already done" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out") or p.name == "out") == ["out"]


def test_predict_reads_an_image_piped_to_standard_input(tiny_checkpoint, astronaut_path):
    with open(astronaut_path, "rb") as f:
        r = subprocess.run([sys.executable, "-m", "agelens.cli", "predict", "-", "--model", str(tiny_checkpoint),
                            "-f", "jsonl"], stdin=f, capture_output=True, env=ENV, timeout=600)
    _no_traceback(subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode()))
    rec = json.loads(r.stdout)
    assert r.returncode == 0 and rec["file"] == "-" and rec["error"] is None and len(rec["faces"]) == 1


def test_closed_standard_streams_and_the_version(tmp_path, tiny_checkpoint, astronaut_path):
    """`2>&-`: a job that succeeds exits 0 (it exited 1, failing on its own log lines); `>&-` with results for
    stdout and `- <&-`: one line naming the closed stream, not a TypeError or AttributeError traceback."""
    args = [sys.executable, "-m", "agelens", "predict", str(astronaut_path), "--model", str(tiny_checkpoint), "-f", "csv"]
    r = subprocess.run(args, stdout=subprocess.PIPE, text=True, env=ENV, timeout=600,
                       preexec_fn=lambda: os.close(2))
    assert r.returncode == 0 and r.stdout.startswith("file,face,")
    r = subprocess.run(args, stderr=subprocess.PIPE, text=True, env=ENV, timeout=600, preexec_fn=lambda: os.close(1))
    assert r.returncode == 2 and "error: standard output is closed" in r.stderr and "Traceback" not in r.stderr
    out = tmp_path / "r.csv"  # results to a file: a closed stdout is no matter, and the file is not descriptor 1
    r = subprocess.run([*args, "-o", str(out)], stderr=subprocess.PIPE, text=True, env=ENV, timeout=600,
                       preexec_fn=lambda: os.close(1))
    assert r.returncode == 0 and out.read_text().startswith("file,face,"), r.stderr
    r = subprocess.run(args[:4] + ["-"], capture_output=True, text=True, env=ENV, timeout=600,
                       preexec_fn=lambda: os.close(0))
    assert r.returncode == 2 and "standard input is closed" in r.stderr and "Traceback" not in r.stderr
    r = agelens("--version")
    assert r.returncode == 0 and r.stdout.startswith("agelens ")


def test_predict_takes_a_student_of_ones_own(tiny_checkpoint, astronaut_path):
    r = agelens("predict", astronaut_path, "--student", tiny_checkpoint, "--route", "student", "--format", "json")
    _no_traceback(r)
    assert r.returncode == 0, r.stderr
    face = json.loads(r.stdout)[0]["faces"][0]
    assert face["model"] not in ("student", "teacher") and "tiny" in face["model"], face


@pytest.mark.parametrize("workers", ["0", "2"])
def test_annotated_images_keep_their_place_in_the_job_when_resumed(tmp_path, astronaut_path, workers):
    d = tmp_path / "cam"
    for sub in ("a", "b"):  # camera folders: the same names in each
        (d / sub).mkdir(parents=True)
        Image.open(astronaut_path).save(d / sub / "IMG_0001.JPG")
    Image.open(astronaut_path).save(d / "b" / ("x" * 240 + ".jpg"))  # a legal name too long to prefix whole
    base = ["predict", d, "--no-adapt", "--workers", workers, "-f", "jsonl", "-o", tmp_path / "o.jsonl",
            "--save-annotated", tmp_path / "ann"]
    r = agelens(*base)
    assert r.returncode == 0, r.stderr
    assert "3 of 3 file(s) answered, 3 face(s), in " in r.stderr and f"-> {tmp_path / 'o.jsonl'}" in r.stderr
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    (tmp_path / "o.jsonl").write_text(lines[0] + "\n")  # as if stopped after the first file
    first = sorted(p.name for p in (tmp_path / "ann").iterdir())
    r = agelens(*base, "--resume")
    assert r.returncode == 0, r.stderr
    again = sorted(p.name for p in (tmp_path / "ann").iterdir())
    assert again == first and len(again) == 3 and again[:2] == ["00001_IMG_0001.jpg", "00002_IMG_0001.jpg"]
    assert again[2] == "00003_" + "x" * 100 + ".jpg"
    assert "holds an earlier job's results" not in r.stderr
    r = agelens(*base)  # the same job again without --resume replaces its results, and says so
    assert r.returncode == 0 and "o.jsonl holds an earlier job's results: they are replaced" in r.stderr


def test_the_table_fits_a_narrow_terminal_and_keeps_whole_paths(monkeypatch, capsys):
    from agelens import cli

    long = "/photos/" + "holiday_" * 6 + "beach.jpg"
    rec = {"file": long, "error": None, "faces": [{"box": [178.2, 81.0, 272.4, 175.1], "age": 31.2,
                                                   "interval": [17.0, 46.0], "occluded": False,
                                                   "occlusion_score": 0.0, "model": "teacher"}]}
    monkeypatch.setenv("COLUMNS", "104")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    cli._emit([rec], "table")
    import re

    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # a terminal gets colours
    assert max(len(x) for x in out.splitlines()) <= 104 and "31.2" in out and "178,81,272,175" in out
    cells = "".join(x.split("│")[1].strip() for x in out.splitlines() if x.startswith("│"))
    assert long in cells and "…" not in out  # folded over lines, not cut


def test_developer_tools_word_their_errors_as_the_cli_does(tmp_path):
    """`python -m agelens.train.people` outside the repository (its default split file missing) ended in a
    DataError traceback; the tools now print one `error:` line and exit 2, as `agelens` does."""
    import subprocess
    import sys

    for module in ("agelens.train.people", "agelens.train.guard_bands"):
        r = subprocess.run([sys.executable, "-m", module], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stderr.startswith("error: "), (module, r.stderr[-500:])
        assert "Traceback" not in r.stderr


def test_serve_on_a_port_in_use_says_so_in_one_line_before_loading_models():
    """Before: uvicorn's log lines and exit status 3 after the models had loaded."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = agelens("serve", "--port", port, "--model", "no_such_model")  # the model would fail later, with 2 too
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: port {port} on 127.0.0.1 is in use (another service, or agelens serve already running): pick "
        "another with --port, or --port 0 for any free one"), r.stderr


def test_engine_ray_without_ray_is_said_before_the_models_load(monkeypatch, tmp_path):
    """Before: after the models had loaded, leaving an empty -o file."""
    import importlib.util

    from typer.testing import CliRunner

    from agelens import cli
    from agelens.errors import AgelensError
    from agelens.inference.predictor import AgeEstimator

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    monkeypatch.setattr(AgeEstimator, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("models loaded")))
    r = CliRunner().invoke(cli.app, ["predict", "--engine", "ray", "x.jpg", "-f", "jsonl", "-o", str(tmp_path / "o.jsonl")])
    assert isinstance(r.exception, AgelensError) and "needs Ray Data" in str(r.exception)
    assert not (tmp_path / "o.jsonl").exists()
