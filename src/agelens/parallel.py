"""Worker processes that may die: an order-keeping parallel map that survives a native crash in a worker.

`multiprocessing.Pool` waits forever for the task of a worker that died (SIGSEGV or abort inside a native library:
mediapipe, LiteRT, onnxruntime, an image codec), so one bad file could hang a whole batch. `crash_safe_map` runs
the same jobs on a `ProcessPoolExecutor` (processes forked from a forkserver: `worker_context`), which notices
the death; the jobs that were in flight run again one item per job, and the item that kills its worker again is
reported through `on_crash`."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterator

from .errors import AgelensError

AHEAD = 4  # jobs in flight per worker process
CRASHED = ("the worker process died on this file (a crash inside a native library); the other files were answered "
           "in fresh processes")  # the error an input that kills its worker twice reports
# what a forkserver imports once, before it forks the workers (a missing one is skipped): the parent's own script
# first, so the workers do not each import it again
PRELOAD = ["__main__", "numpy", "cv2", "onnxruntime", "PIL.Image", "agelens.inference.stream",
           "agelens.inference.predictor", "agelens.inference.backends.onnx", "agelens.faces.detect"]


def worker_context() -> mp.context.BaseContext:
    """The start method of the worker processes: a forkserver that has imported the pipeline's modules once
    (`PRELOAD`), so each worker is forked ready instead of starting Python and importing numpy, OpenCV and
    onnxruntime on its own; spawn where there is no forkserver (Windows). Never plain fork: a parent that has run the
    models holds threads (mediapipe, torch, onnxruntime) a forked child would inherit mid-work; the forkserver
    only imports."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # read when the server starts: once per process
    return ctx


MIN_FILES_PER_WORKER = 32  # files per worker process that repay its start-up


def auto_workers(n_files: int) -> int:
    """Worker processes for n_files: one per core when there are enough files to repay their start-up (imports and
    model sessions: 0.3-0.4 s for two workers on 2 cores, docs/inference_benchmark.md), else 0 (everything in this
    process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores < 2 or n_files < MIN_FILES_PER_WORKER * 2 else min(cores, n_files // MIN_FILES_PER_WORKER)


def start_workers_early() -> None:
    """Start the forkserver the worker processes will come from (`worker_context`) now, so that it imports the
    pipeline (`PRELOAD`) on another core while this process imports and loads its own models, instead of after.
    Does nothing where workers are spawned, or when the server is already running."""
    ctx = worker_context()
    if ctx.get_start_method() == "forkserver":
        import signal
        from multiprocessing import forkserver

        # Ctrl-C while the server imports would print its traceback; with SIGINT blocked it starts, and the server
        # and its workers keep it blocked (the parent alone answers Ctrl-C: it ends the workers, `_end_pool`)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            forkserver.ensure_running()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


ORPHAN_CHECK_S = 1.0  # how often a worker looks whether the process it works for is still there


def _watch_parent(parent: int) -> None:
    """Ends this worker once `parent` (the process it works for) is gone. Its task queue never reaches end-of-file
    (a worker holds the queue's write end too), so after a kill -9 or an out-of-memory kill of the parent nothing
    else would end it; the forkserver then ends with its last worker."""
    while True:
        time.sleep(ORPHAN_CHECK_S)
        try:
            os.kill(parent, 0)
        except (ProcessLookupError, PermissionError):  # gone (or its number is another user's process now)
            os._exit(1)
        try:  # a killed parent nobody has reaped yet (no init in a container) still answers os.kill: a zombie
            if open(f"/proc/{parent}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":  # noqa: SIM115
                os._exit(1)
        except (OSError, IndexError):  # no /proc (macOS): os.kill above decides alone
            pass


def _start_worker(parent: int, init: Callable | None, initargs: tuple) -> None:
    """A worker process's initializer: Ctrl-C ignored (the terminal sends it to every process of the job; the parent
    ends the workers, `_end_pool`), the orphan watch (POSIX; Windows' os.kill would end the parent), then
    the user's plugins (`registry.load_plugins`), then `init(*initargs)`."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.name == "posix":
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="agelens-parent-watch").start()
    from .registry import load_plugins

    load_plugins()  # the user's components (AGELENS_PLUGINS), before the models are built
    if init is not None:
        init(*initargs)


def _pool(workers: int, ctx, init, initargs: tuple):
    """A ProcessPoolExecutor whose workers run `init(*initargs)` and end themselves when this process is gone."""
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker, initargs=(os.getpid(), init, initargs))


def _end_pool(ex, kill: bool) -> None:
    """Shut a pool down: waiting for its workers where the stream ran to its end, else (a worker died, Ctrl-C,
    SIGTERM, a closed pipe, a caller that stopped reading) killing them first, so nothing waits on work no one will
    read (before, a second Ctrl-C landed in that wait and hung the job, and stopping it took 6-12 s)."""
    if kill:  # the survivors go too: a pipe a dying worker left half-written must not hold the pool open
        for proc in list((getattr(ex, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                proc.kill()
    ex.shutdown(wait=not kill, cancel_futures=True)


def _each(fn: Callable, job: tuple) -> list:
    inputs, *rest = job
    return [fn((x, *rest)) for x in inputs]


def per_input(fn: Callable) -> Callable:
    """A job runner for `crash_safe_map` from a per-input function: job (inputs, *rest) → [fn((x, *rest)) for x
    in inputs] (picklable when fn is a module-level function)."""
    return functools.partial(_each, fn)


def crash_safe_map(run, jobs: list[tuple], workers: int, on_crash: Callable, init=None, initargs: tuple = ()
                   ) -> Iterator:
    """The results of `run(job)` (a list, one result per input) for each job (a tuple whose first item is its list
    of inputs: files, records), in order, from `workers` spawned processes (`init(*initargs)` in each). A worker
    that dies neither hangs nor ends the stream: the jobs in flight run again one input per job, and an input that
    kills its worker again gets `on_crash(input)` as its result; the rest continue in fresh processes."""
    from collections import deque
    from concurrent.futures.process import BrokenProcessPool

    ctx = worker_context()
    done = 0
    while done < len(jobs):
        ex = _pool(workers, ctx, init, initargs)
        inflight: deque = deque()
        sent, broken, ended = done, False, False
        try:
            while done < len(jobs):
                try:  # submitting to a pool whose worker just died raises too
                    while sent < len(jobs) and len(inflight) < AHEAD * workers:
                        inflight.append(ex.submit(run, jobs[sent]))
                        sent += 1
                    records = inflight.popleft().result()
                except BrokenProcessPool:
                    broken = True
                    break
                yield from records
                done += 1
            ended = not broken
        finally:
            _end_pool(ex, kill=not ended)
        if broken:
            yield from _one_input_each(run, jobs[done:sent], init, initargs, ctx, on_crash)
            done = sent


MAX_FRESH_DEATHS = 5  # fresh worker processes dying on their first input in a row: they cannot run here at all


def _one_input_each(run, jobs: list[tuple], init, initargs: tuple, ctx, on_crash) -> Iterator:
    """`run` on each input of `jobs` alone, in one worker process, started again after an input that kills it.
    Raises AgelensError when MAX_FRESH_DEATHS fresh processes in a row die on their first input: then no input is
    to blame (the workers cannot start: a script run from standard input, a library that fails to load)."""
    from concurrent.futures.process import BrokenProcessPool

    ex, answered, fresh_deaths, ended = None, 0, 0, False
    try:
        for job in jobs:
            for f in job[0]:
                if ex is None:
                    ex, answered = _pool(1, ctx, init, initargs), 0
                try:
                    records = ex.submit(run, ([f], *job[1:])).result()
                    answered, fresh_deaths = answered + 1, 0
                except BrokenProcessPool:
                    ex.shutdown(wait=False)
                    ex = None
                    fresh_deaths = fresh_deaths + 1 if answered == 0 else 1
                    if fresh_deaths >= MAX_FRESH_DEATHS:
                        raise AgelensError(f"worker processes die before answering anything ({fresh_deaths} in a "
                                           "row): they cannot run here (run with 0 workers to see why; a script that starts workers needs "
                                           "Python's `if __name__ == \"__main__\":` guard around its work)") from None
                    records = [on_crash(f)]
                yield from records
        ended = True
    finally:
        if ex is not None:
            _end_pool(ex, kill=not ended)
