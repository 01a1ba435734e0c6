"""Crash safety: SIGKILL during training then --resume ends where an uninterrupted run ends, and so does SIGTERM or
Ctrl-C in the middle of an epoch (saved at that step); corrupted checkpoints and caches are caught by their
checksums with a clear error."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from agelens.errors import AgelensError
from agelens.models.checkpoint import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOG_minloglevel": "3", "TF_CPP_MIN_LOG_LEVEL": "3"}
EPOCHS = 6
# the same seed, data and code on the same CPU: metrics equal to 1e-6 (we see bit-identical weights)
TOL = 1e-6


def _args(root, tmp, name):
    return [f"data.root={root}", f"data.split_file={tmp}/split.json", f"data.cache_dir={tmp}/cache",
            "data.cache_size=48", "data.crop_size=40", "data.input_size=32", "data.num_workers=0",
            "model.backbone=resnet18", "model.pretrained=false", "train.batch_size=4", f"train.epochs={EPOCHS}",
            "train.freeze_backbone_epochs=0", "train.numerics=fp32", "train.channels_last=off",
            "train.early_stop_patience=0", f"out_dir={tmp}/runs", f"name={name}"]


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "agelens.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600, **kw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from conftest import utk_faces

    tmp = tmp_path_factory.mktemp("crash")
    d = utk_faces(tmp / "utk", 40)
    r = _cli("prepare", "--workers", "1", *_args(d, tmp, "x"))
    assert r.returncode == 0, r.stderr[-2000:]
    yield d, tmp
    shutil.rmtree(tmp, ignore_errors=True)  # ~2 GB of checkpoints: the retention policy only covers tmp_path


def _assert_same_as_straight(tmp, run, straight="straight"):
    """The run in `run` ended where the uninterrupted one did: test MAE and CMAE, every weight within TOL."""
    a = json.loads((tmp / "runs" / straight / "test" / "metrics.json").read_text())
    b = json.loads((run / "test" / "metrics.json").read_text())
    assert abs(a["mae"] - b["mae"]) <= TOL and abs(a["cmae"] - b["cmae"]) <= TOL, (a["mae"], b["mae"])
    wa = load_checkpoint(tmp / "runs" / straight / "last.pt")["model"]
    wb = load_checkpoint(run / "last.pt")["model"]
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=TOL) for k in wa)


def test_sigkill_then_resume_matches_uninterrupted(prepared):
    d, tmp = prepared
    r = _cli("train", "--quiet", *_args(d, tmp, "straight"))
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp / "runs" / "killed"
    for attempt in range(5):  # kill somewhere after the first epoch's checkpoint, before the end
        p = subprocess.Popen([sys.executable, "-m", "agelens.cli", "train", "--quiet", *_args(d, tmp, "killed")],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (run / "last.pt").exists() and p.poll() is None:
            time.sleep(0.02)
        time.sleep(random.Random(attempt).uniform(0.0, 0.5 / (attempt + 1)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        ck = load_checkpoint(run / "last.pt")  # whatever was on disk at the kill is a whole checkpoint
        if ck["epoch"] < EPOCHS - 1:
            break
    else:
        pytest.skip("training finished before the kill five times (machine too fast for this test)")
    r = _cli("train", "--quiet", "--resume", *_args(d, tmp, "killed"))
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_as_straight(tmp, run)


def _answers_ctrl_c():
    """In the child before exec: SIGINT as a terminal's foreground job has it (default action, not blocked). A
    process inherits an ignored or blocked SIGINT (a background job of a script; here, whatever earlier tests left
    in pytest's process), and Python then leaves Ctrl-C ignored, as it should."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_epoch_saves_the_step_and_resume_matches_uninterrupted(prepared, sig, code):
    d, tmp = prepared
    if not (tmp / "runs" / "straight" / "test" / "metrics.json").exists():
        assert _cli("train", "--quiet", *_args(d, tmp, "straight")).returncode == 0
    name = f"stopped_{sig.name}"
    run = tmp / "runs" / name
    finished = 0
    for _ in range(5):  # the signal as soon as a step of the second epoch is logged
        shutil.rmtree(run, ignore_errors=True)  # no earlier attempt's log
        p = subprocess.Popen([sys.executable, "-m", "agelens.cli", "train", *_args(d, tmp, name), "train.log_every=1"],
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=_answers_ctrl_c)
        log = run / "metrics.jsonl"
        while p.poll() is None and not (log.exists() and '"epoch": 1, "step"' in log.read_text()):
            time.sleep(0.005)
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        if p.returncode == 0:
            finished += 1  # it ended before the signal
            continue
        assert p.returncode == code, err[-2000:]
        ck = load_checkpoint(run / "last.pt")
        if ck.get("in_epoch"):
            break
    else:
        if finished == 5:
            pytest.skip("training finished before the signal five times (machine too fast for this test)")
        pytest.fail(f"the signal stopped the run {5 - finished} times without a mid-epoch checkpoint")
    part = ck["in_epoch"]
    assert part["epoch"] == ck["epoch"] + 1 and 0 <= part["step"] <= part["steps"]
    assert f"saved {run / 'last.pt'} at epoch {part['epoch']} step {part['step']}/" in out + err
    r = _cli("train", "--resume", *_args(d, tmp, name), "train.log_every=1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"at epoch {part['epoch']} step {part['step']}/{part['steps']}" in r.stdout + r.stderr
    _assert_same_as_straight(tmp, run)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    ends = [r["epoch"] for r in rows if "train_loss" in r]
    assert ends == list(range(EPOCHS)), ends  # each epoch's row once
    straight = [json.loads(x) for x in (tmp / "runs" / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in rows if "train_loss" in r] == pytest.approx(
        [r["train_loss"] for r in straight if "train_loss" in r], abs=1e-5)


def _train_stopped_at(d, tmp, name, call, *extra):
    """`agelens train` that sends itself SIGTERM during its `call`-th training step (train_step patched): a stop at
    a step chosen exactly, where a signal from outside lands where it may."""
    script = ("import os, signal, sys\n"
              "import agelens.train.engine as e\n"
              "real, n = e.train_step, [0]\n"
              "def step(*a, **k):\n"
              "    n[0] += 1\n"
              f"    if n[0] == {call}:\n"
              "        os.kill(os.getpid(), signal.SIGTERM)\n"
              "    return real(*a, **k)\n"
              "e.train_step = step\n"
              "from agelens.cli import main\n"
              "sys.argv = ['agelens', *sys.argv[1:]]\n"
              "main()\n")
    return subprocess.run([sys.executable, "-c", script, "train", "--quiet", *_args(d, tmp, name), *extra],
                          capture_output=True, text=True, env=ENV, timeout=600)


@pytest.mark.parametrize("extra", [(), ("train.max_steps_per_epoch=3",)], ids=["full", "max_steps"])
def test_a_stop_at_an_epochs_last_step_resumes_into_a_whole_next_epoch(prepared, extra):
    """Saved after the last step of epoch 0, the resume runs no step of it and the next epoch reads all its batches
    (before: the skip meant for epoch 0 was left set, and epoch 1 trained on nothing)."""
    d, tmp = prepared
    tag = "_".join(x.split("=")[0].split(".")[-1] for x in extra)
    straight = f"straight{tag}"
    if not (tmp / "runs" / straight / "test" / "metrics.json").exists():
        assert _cli("train", "--quiet", *_args(d, tmp, straight), *extra).returncode == 0
    rows = [json.loads(x) for x in (tmp / "runs" / straight / "metrics.jsonl").read_text().splitlines()]
    steps = next(r["steps"] for r in rows if "steps" in r)
    name = f"last_step{tag}"
    r = _train_stopped_at(d, tmp, name, steps, *extra)
    assert r.returncode == 143, r.stderr[-2000:]
    part = load_checkpoint(tmp / "runs" / name / "last.pt")["in_epoch"]
    assert (part["epoch"], part["step"], part["steps"]) == (0, steps, steps)
    r = _cli("train", "--quiet", "--resume", *_args(d, tmp, name), *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_as_straight(tmp, tmp / "runs" / name, straight)


def _flip_byte(path, frac=0.6):
    data = bytearray(path.read_bytes())
    data[int(len(data) * frac)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_checkpoint_is_caught(prepared):
    d, tmp = prepared
    src = tmp / "runs" / "straight" / "last.pt"
    if not src.exists():
        r = _cli("train", "--quiet", *_args(d, tmp, "straight"))
        assert r.returncode == 0
    bad = tmp / "corrupt.pt"
    bad.write_bytes(src.read_bytes())
    _flip_byte(bad)
    with pytest.raises(AgelensError, match="corrupt"):
        load_checkpoint(bad)
    bad.write_bytes(src.read_bytes()[:1000])
    with pytest.raises(AgelensError, match="corrupt"):
        load_checkpoint(bad)


def test_corrupt_cache_is_caught(prepared):
    import shutil

    from agelens.data.cache import FaceCache

    _, tmp = prepared
    src = next(p for p in (tmp / "cache").rglob("meta.json")).parent
    FaceCache(src)  # intact: loads
    copy = tmp / "cache_copy"
    shutil.copytree(src, copy)
    _flip_byte(copy / "images.npy", 0.7)
    with pytest.raises(AgelensError, match="checksum"):
        FaceCache(copy)


def test_a_checkpoint_that_names_python_objects_is_refused_unless_trusted(tmp_path, monkeypatch):
    import torch

    from agelens.models.checkpoint import TRUST_ENV

    ran = tmp_path / "ran"
    torch.save({"model": {}, "hook": _Touch(str(ran))}, tmp_path / "evil.pt")
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(AgelensError, match=f"beyond tensors and plain data.*{TRUST_ENV}=1"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not ran.exists()  # nothing the file names was run
    monkeypatch.setenv(TRUST_ENV, "1")
    load_checkpoint(tmp_path / "evil.pt")
    assert ran.exists()


class _Touch:
    """Unpickling this runs code: what a hostile .pt would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
