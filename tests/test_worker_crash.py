"""A worker process that dies on a file (a native crash) neither hangs the batch engine nor ends its stream."""

from __future__ import annotations

import os
import signal

import pytest

from agelens.inference.stream import _crashed
from agelens.parallel import CRASHED, crash_safe_map


def crash_or_answer(job: tuple) -> list:
    """A stand-in for the pipeline worker: a file named crash* kills its process as a segfault would."""
    for f in job[0]:
        if os.path.basename(f).startswith("crash"):
            os.kill(os.getpid(), signal.SIGSEGV)
    return [({"file": f, "faces": [], "error": None}, None) for f in job[0]]


@pytest.fixture
def deadline():
    """Fail instead of hanging (multiprocessing.Pool waits forever for a dead worker's task)."""
    def boom(*_):
        raise TimeoutError("the stream hung")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_file_that_kills_its_worker_gets_an_error_and_the_rest_are_answered_in_order(deadline):
    files = [f"f{i}.jpg" for i in range(20)]
    files[7] = "crash7.jpg"
    files[16] = "crash16.jpg"
    jobs = [(files[i:i + 3], True) for i in range(0, len(files), 3)]
    out = list(crash_safe_map(crash_or_answer, jobs, 2, _crashed))
    assert [r["file"] for r, _ in out] == files
    errors = {r["file"]: r["error"] for r, _ in out}
    # worded as every other error record: the file, then the cause (as the detection workers' path words it)
    assert errors.pop("crash7.jpg") == f"crash7.jpg: {CRASHED}" and errors.pop("crash16.jpg") == f"crash16.jpg: {CRASHED}"
    assert set(errors.values()) == {None}
    # the detection workers' stream (estimators built from objects in memory) makes its own items for such a file
    out = list(crash_safe_map(crash_or_answer, jobs, 2, lambda f: ("crashed", f)))
    assert [x for x in out if x[0] == "crashed"] == [("crashed", "crash7.jpg"), ("crashed", "crash16.jpg")]
    assert len(out) == len(files)


def raise_on_bad(job: tuple) -> list:
    if "bad.jpg" in job[0]:
        raise ValueError("models could not load")  # as `_pipeline` raises when its initializer failed
    return [({"file": f, "faces": [], "error": None}, None) for f in job[0]]


def test_an_exception_in_a_worker_reaches_the_caller_as_before(deadline):
    got = []
    with pytest.raises(ValueError, match="models could not load"):
        for r, _ in crash_safe_map(raise_on_bad, [(["a.jpg"],), (["b.jpg"],), (["bad.jpg"],), (["c.jpg"],)], 2, _crashed):
            got.append(r["file"])
    assert got == ["a.jpg", "b.jpg"]


def test_detection_workers_give_the_same_answers_as_this_process(tmp_path, deadline):
    """An estimator without a spec (built from objects in memory) runs the models here and lets the workers decode
    and detect, through the same crash-safe map."""
    from importlib import resources

    from PIL import Image

    from agelens import AgeEstimator
    from agelens.inference.stream import predict_stream

    photo = Image.open(resources.files("agelens") / "assets" / "astronaut.jpg").convert("RGB")
    files = []
    for k, scale in enumerate((1.0, 0.7, 0.5)):
        files.append(str(tmp_path / f"a{k}.jpg"))
        photo.resize((int(photo.width * scale), int(photo.height * scale))).save(files[-1])
    files.insert(1, str(tmp_path / "missing.jpg"))
    est = AgeEstimator.from_pretrained()
    est.spec = None  # as if built from models in memory
    here = [r for r, _ in predict_stream(est, files, workers=0)]
    there = [r for r, _ in predict_stream(est, files, workers=2)]
    assert [r["file"] for r in there] == files and there[1]["error"] and not there[0]["error"]
    assert [[f["age"] for f in r["faces"]] for r in here] == [[f["age"] for f in r["faces"]] for r in there]


def die_at_start() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def test_workers_that_cannot_start_end_the_run_with_an_error_not_a_crash_per_file(deadline):
    """When every fresh worker dies before answering (here its initializer), no file is to blame: after
    MAX_FRESH_DEATHS in a row the run stops with an error instead of spawning a process per file."""
    from agelens.errors import AgelensError
    from agelens.parallel import MAX_FRESH_DEATHS

    jobs = [([f"f{i}.jpg" for i in range(k, k + 4)], True) for k in range(0, 40, 4)]
    got = []
    with pytest.raises(AgelensError, match="cannot run here"):
        for r, _ in crash_safe_map(crash_or_answer, jobs, 2, _crashed, die_at_start):
            got.append(r)
    assert len(got) == MAX_FRESH_DEATHS - 1  # the first ones were reported before the pattern was clear


def worker_modules(job: tuple) -> list:
    """A job that reports whether the pipeline's modules were already imported when the worker started it."""
    import sys

    return [("agelens.inference.stream" in sys.modules and "onnxruntime" in sys.modules, os.getpid())
            for _ in job[0]]


def test_workers_come_from_a_forkserver_that_imported_the_pipeline(deadline):
    import multiprocessing as mp

    from agelens.parallel import worker_context

    if "forkserver" not in mp.get_all_start_methods():
        pytest.skip("no forkserver on this platform (spawn is used)")
    assert worker_context().get_start_method() == "forkserver"
    out = list(crash_safe_map(worker_modules, [(["a"],), (["b"],)], 2, lambda f: None))
    assert [ready for ready, _ in out] == [True, True]  # imported before the job ran: preloaded, forked ready
    assert os.getpid() not in {pid for _, pid in out}


def test_workers_started_early_come_from_the_server_already_running(deadline):
    import multiprocessing as mp
    from multiprocessing import forkserver

    from agelens.parallel import start_workers_early

    if "forkserver" not in mp.get_all_start_methods():
        pytest.skip("no forkserver on this platform (spawn is used)")
    start_workers_early()
    server = forkserver._forkserver._forkserver_pid
    assert server is not None
    start_workers_early()  # a second call keeps the same server
    assert forkserver._forkserver._forkserver_pid == server
    out = list(crash_safe_map(worker_modules, [(["a"],), (["b"],)], 2, lambda f: None))
    assert [ready for ready, _ in out] == [True, True]
    assert forkserver._forkserver._forkserver_pid == server  # the workers came from it, not a new one


def test_sizing_and_starting_workers_needs_no_pipeline_import():
    """`predict` sizes its workers and starts their forkserver before it imports numpy, OpenCV or the models."""
    import subprocess
    import sys

    code = ("import sys; import agelens.inference.inputs, agelens.parallel; "
            "print(sorted(m for m in ('numpy', 'cv2', 'onnxruntime', 'agelens.inference.predictor') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def slow_pid(job: tuple) -> list:
    """A job whose first input answers at once with the worker's pid and whose others take a minute each."""
    import time

    if job[0][0] != "first":
        time.sleep(60)
    return [(os.getpid(), signal.getsignal(signal.SIGINT) == signal.SIG_IGN) for _ in job[0]]


def test_a_stream_ended_early_kills_its_workers_instead_of_waiting_for_them(deadline):
    """A caller that stops reading (Ctrl-C, SIGTERM, a closed pipe) ends the workers at once: before, the pool waited
    for the jobs in flight (6-12 s for `kill PID`; a second Ctrl-C landed in that wait and hung the job)."""
    import time

    stream = crash_safe_map(slow_pid, [(["first"],), (["a"],), (["b"],), (["c"],)], 2, lambda f: None)
    pid, ignores_ctrl_c = next(stream)
    assert ignores_ctrl_c  # the terminal's Ctrl-C reaches every process of the job: only this one answers it
    t0 = time.monotonic()
    stream.close()
    assert time.monotonic() - t0 < 30  # not the minute of the jobs in flight
    for _ in range(100):  # reaped by the forkserver that forked it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"worker {pid} still runs")
