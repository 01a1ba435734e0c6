"""Batch prediction on Ray Data (`agelens predict --engine ray`, `predict_many(engine="ray")`).

Pipeline: the driver lists the files → a pool of actors (one CPU each, or GPUs with gpus_per_worker > 0), each the
driver's estimator rebuilt from its `spec` with its `settings()`, runs the local engine's whole pipeline on batches of
files (`inference.stream.answer_files`: decode, detect, verify with the teacher's own heads, align, the
models), so every face is found, checked and answered as the local engine does → the records stream back to the
driver, which writes them through the local engine's sinks (`inference.stream.open_sink`), so the output, the
per-file errors and `--resume` are the same. Records arrive in completion order, not input order. (Until
2026-12-05 detection ran in separate Ray tasks that checked faces with the separate face networks alone, and
about 2 in 75 crowd photos got a face more or less than the local engine gave them.)

Files and `--model` paths must be readable at the same path on every node (a shared filesystem)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ..errors import AgelensError


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise AgelensError('engine="ray" (--engine ray) needs Ray Data: pip install "agelens[ray]"') from None
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
    import signal

    held = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}  # ray.init puts its own in place
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            # address="local": a new Ray even when `ray start` left a cluster on this machine (use --address auto)
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **kw)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise AgelensError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}") from None
    for sig, handler in held.items():  # the caller's: the CLI ends on SIGTERM with 143 and its files closed whole
        if handler is not None:
            with contextlib.suppress(ValueError, TypeError, OSError):  # not the main thread
                signal.signal(sig, handler)
    try:
        yield
    finally:
        ray.shutdown()


class _PipelineActor:
    """One estimator rebuilt from the driver's (class, spec, settings); each call is a batch of files → their JSON
    records, through the local engine's pipeline. Relative paths resolve against the driver's folder, as in the
    local engine (where that folder exists on the node: use absolute paths on a shared filesystem)."""

    def __init__(self, cls: type, spec: tuple[str, dict], settings: dict, detect: bool, cwd: str) -> None:
        from .stream import rebuild

        self.est = rebuild(cls, spec, settings)
        self.detect, self.cwd = detect, cwd

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .stream import answer_files

        if os.getcwd() != self.cwd and os.path.isdir(self.cwd):
            os.chdir(self.cwd)  # this actor's process only; the file name in the record stays as given
        files = [os.fsdecode(p) for p in batch["path"]]  # bytes column: file names that are not UTF-8 survive Arrow
        out = [json.dumps(r) for r in answer_files(self.est, files, self.detect)]
        return {"record": np.array(out, dtype=object)}


def actor_spec(spec: tuple[str, dict] | None, gpus_per_worker: float) -> tuple[str, dict]:
    """The estimator spec each actor rebuilds: file paths made absolute (the actors may run elsewhere), the shipped
    export of this machine's cache left for each node to find or make, and the device the actor holds: CUDA with
    torch where it holds GPUs (the driver's resolved backend is this machine's CPU choice), else the CPU."""
    if spec is None:
        raise AgelensError("the Ray engine rebuilds the estimator on every node: load it with "
                           "AgeEstimator.from_pretrained or from_onnx (one built from objects in memory cannot travel)")
    build, kwargs = spec[0], dict(spec[1])
    from ..export.shipped import default_onnx_dir

    if kwargs.get("onnx_dir") and os.path.abspath(kwargs["onnx_dir"]) == os.path.abspath(default_onnx_dir()):
        kwargs["onnx_dir"] = None  # the shipped weights' export in this machine's cache: each node has or makes its own
    for key in ("name_or_path", "student", "detector", "onnx_dir"):
        if kwargs.get(key) and os.path.exists(kwargs[key]):
            kwargs[key] = os.path.abspath(kwargs[key])
    if gpus_per_worker > 0:
        if build != "from_pretrained":
            raise AgelensError("--gpus-per-worker runs the models with torch on CUDA: load the estimator with "
                               "AgeEstimator.from_pretrained, not from an ONNX export")
        kwargs.update(device="cuda", backend="torch")
    elif build == "from_pretrained":
        kwargs["device"] = "cpu"
    return build, kwargs


def ray_predict(files: list[str], est, *, detect: bool = True, workers: int | None = None, batch_size: int = 32,
                gpus_per_worker: float = 0.0) -> Iterator[dict]:
    """Yield one record per file ({"file", "faces", "error"}, as the local engine) from a Ray Data pipeline on
    the Ray this process is connected to (see `ray_session`). est: the estimator to run, rebuilt in every actor
    from its `spec` (made by `from_pretrained` / `from_onnx`) with its current `settings()`. workers: actors (None:
    one per CPU of the cluster); each holds one CPU, or gpus_per_worker GPUs (then the models run on CUDA)."""
    ray = _require_ray()
    if (workers is not None and workers < 1) or batch_size < 1 or gpus_per_worker < 0:
        raise AgelensError(f"the Ray engine needs workers >= 1, batch_size >= 1 and gpus_per_worker >= 0, got "
                           f"{workers}, {batch_size} and {gpus_per_worker}")
    spec = actor_spec(getattr(est, "spec", None), gpus_per_worker)
    if not files:
        return
    from ..faces import animal

    animal.ensure_export()  # the cat check, made once here rather than by every actor of a fresh machine at once
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # no per-dataset lines through our progress bar
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the caller shows one bar over files
    ctx.print_on_execution_start = False
    res = ray.cluster_resources()
    per_block = max(1, min(batch_size, math.ceil(len(files) / (4 * max(1, int(res.get("CPU", 1)))))))
    n_blocks = math.ceil(len(files) / per_block)
    if workers:
        n_actors = workers
    elif gpus_per_worker > 0:  # as many as the GPUs hold
        n_actors = max(1, int(res.get("GPU", 0) // gpus_per_worker))
    else:  # one per CPU, no more than there are blocks (each actor loads every model)
        n_actors = max(1, min(int(res.get("CPU", 1)), n_blocks))
    ds = ray.data.from_items([{"path": os.fsencode(f)} for f in files], override_num_blocks=n_blocks)
    ds = ds.map_batches(_PipelineActor, fn_constructor_kwargs={
        "cls": type(est), "spec": spec, "settings": est.settings(), "detect": detect, "cwd": os.getcwd()},
        batch_size=per_block, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=1,
        num_gpus=gpus_per_worker or None)
    for row in ds.iter_rows():
        yield json.loads(row["record"])
