"""Prediction over many files with a choice of engine: `local` (worker processes on this machine) or `ray`
(a Ray Data pipeline on a local Ray or a cluster). Both give the same per-file records."""

from __future__ import annotations

import itertools
import os
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from ..errors import AgelensError

ENGINES = ("local", "ray")


def predict_many(source: str | Path | Iterable[str | Path], engine: str = "local", *, model: str | None = None,
                 route: str = "auto", backend: str = "auto", tta: bool | str = True, detect: bool = True,
                 workers: int | None = None, batch_size: int = 32, address: str | None = None,
                 num_cpus: int | None = None, gpus_per_worker: float = 0.0, skip: Collection[str] = (),
                 estimator=None, log=None) -> Iterator[dict]:
    """Yield {"file", "faces", "error"} for every image under `source` (files, folders, globs), as `agelens predict
    -f jsonl` writes them. Files whose record `file` is in `skip` are not processed (resume).

    engine="local": `workers` processes that each run the whole pipeline (default 0: all in this process; more
    need the `if __name__ == "__main__":` guard that Python's multiprocessing asks of scripts; `agelens predict`
    uses one per 32 files, up to one per core), records in input order.
    engine="ray": `workers` actors (default: one per CPU of the Ray), each running the whole pipeline as the local
    engine does, on the Ray at `address`, or on a local Ray with num_cpus CPUs (default: this machine's, at least
    workers); records in completion order.
    `estimator`: an already loaded AgeEstimator, run with its settings (route, realign, student_views, ...) by
    either engine; the Ray engine rebuilds it in every actor, so it must come from `from_pretrained` or
    `from_onnx`."""
    from ..parallel import start_workers_early
    from .inputs import job_files, job_windows

    if engine not in ENGINES:
        raise AgelensError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    # expanded before the models load: the whole source, or an iterator's first window (the local engine reads
    # an iterator `inputs.WINDOW` items at a time, so an endless one streams)
    if engine == "local":
        windows = job_windows(source, skip)
        files = next(windows, [])
    else:
        files = job_files(source, skip)
    if engine == "local" and workers:
        start_workers_early()  # their forkserver imports the pipeline while this process loads the models
    from .predictor import AgeEstimator

    est = estimator or AgeEstimator.from_pretrained(model, tta_flip=tta, route=route, backend=backend, log=log)
    if engine == "local":  # as `AgeEstimator.predict_many`, on the files expanded above, then the next windows
        yield from est._records(itertools.chain([files], windows), detect, workers or 0, batch_size)
        return
    from .ray_engine import ray_predict, ray_session

    with ray_session(address, num_cpus or max(os.cpu_count() or 1, workers or 1)):
        yield from ray_predict(files, est, detect=detect, workers=workers, batch_size=batch_size,
                               gpus_per_worker=gpus_per_worker)


__all__ = ["ENGINES", "predict_many"]
