"""Batch prediction on Ray Data (`agelens predict --engine ray`, `predict_many(engine="ray")`).

Pipeline: the driver lists the files → Ray tasks decode, detect and align each file (`inference.stream._detect`, one
CPU each) → a pool of model actors (CPU, or GPU with gpus_per_worker > 0) runs `inference.stream._flush` on batches of
files, i.e. `AgeEstimator.analyse_crops` + `predictions`, exactly as the local engine → the records stream back to
the driver, which writes them through the local engine's sinks (`inference.stream.open_sink`), so the output, the
per-file errors and `--resume` are the same. Records arrive in completion order, not input order.

Files and `--model` paths must be readable at the same path on every node (a shared filesystem)."""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ..errors import AgelensError

DETECT_MEMORY = 512 * 2**20  # per detection task: mediapipe's graphs + one decoded image


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise AgelensError('--engine ray needs Ray Data: pip install "agelens[ray]"') from None
    return ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Connect to the Ray cluster at `address` ("auto", "HOST:6379", "ray://HOST:10001"), or start a local Ray
    with num_cpus CPUs; a Ray already initialised in this process is used as it is and left running."""
    ray = _require_ray()
    if ray.is_initialized():
        yield
        return
    kw: dict = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            # address="local": a new Ray even when `ray start` left a cluster on this machine (use --address auto)
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **kw)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise AgelensError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _detect_row(row: dict, cache_size: int, detect: bool, cwd: str) -> dict:
    """Ray task: one file → the local engine's `_detect` tuple, pickled (crops are variable-length arrays and the
    tuple's shape belongs to serve/). Relative paths resolve against the driver's folder, as in the local engine
    (where that folder exists on the node: use absolute paths on a shared filesystem)."""
    from .stream import _detect

    if os.getcwd() != cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # the task's worker process only; the file name in the record stays as given
    path = os.fsdecode(row["path"])  # bytes column: file names that are not UTF-8 survive Arrow
    return {"item": pickle.dumps(_detect((path, cache_size, detect, False, True)), protocol=5)}


class _ModelActor:
    """One loaded AgeEstimator; each call is a batch of detected files → their JSON records."""

    def __init__(self, model: str | None, route: str, backend: str, tta: bool | str, device: str) -> None:
        from .predictor import AgeEstimator

        self.est = AgeEstimator.from_pretrained(model, device=device, tta_flip=tta, route=route, backend=backend)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .stream import _flush

        pending = [pickle.loads(b) for b in batch["item"]]
        return {"record": np.array([json.dumps(r) for r, _ in _flush(self.est, pending)], dtype=object)}


def ray_predict(files: list[str], *, model: str | None = None, route: str = "auto", backend: str = "auto",
                tta: bool | str = True, detect: bool = True, cache_size: int = 256, workers: int = 1, batch_size: int = 32,
                gpus_per_worker: float = 0.0) -> Iterator[dict]:
    """Yield one record per file ({"file", "faces", "error"}, as the local engine) from a Ray Data pipeline on
    the Ray this process is connected to (see `ray_session`). workers: model actors; each holds one CPU, or
    gpus_per_worker GPUs (then the models run on CUDA with torch)."""
    ray = _require_ray()
    if workers < 1 or batch_size < 1 or gpus_per_worker < 0:
        raise AgelensError(f"the Ray engine needs workers >= 1, batch_size >= 1 and gpus_per_worker >= 0, got "
                           f"{workers}, {batch_size} and {gpus_per_worker}")
    if not files:
        return
    if model and os.path.exists(model):  # a checkpoint or run folder: the actors may run elsewhere
        model = os.path.abspath(model)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # no per-dataset lines through our progress bar
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the caller shows one bar over files
    ctx.print_on_execution_start = False
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    per_block = max(1, min(batch_size, math.ceil(len(files) / (4 * cpus))))  # small blocks: work spreads, records stream
    ds = ray.data.from_items([{"path": os.fsencode(f)} for f in files],
                             override_num_blocks=math.ceil(len(files) / per_block))
    # detection reserves memory as well as a CPU: with the actors' resources it would be fused into the actors
    ds = ds.map(_detect_row, fn_kwargs={"cache_size": cache_size, "detect": detect, "cwd": os.getcwd()}, num_cpus=1,
                memory=DETECT_MEMORY)
    device = "cuda" if gpus_per_worker > 0 else "cpu"
    ds = ds.map_batches(_ModelActor, fn_constructor_kwargs={"model": model, "route": route, "backend": backend,
                                                            "tta": tta, "device": device},
                        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                        num_cpus=1, num_gpus=gpus_per_worker or None)
    for row in ds.iter_rows():
        yield json.loads(row["record"])
