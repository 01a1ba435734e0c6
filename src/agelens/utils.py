"""Small shared helpers: atomic writes, seeding, JSON, CPU flags."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write(path: str | Path, writer: Callable[[str], None], follow_links: bool = False) -> None:
    """Call writer(tmp_path) then rename onto path, so readers never see a half-written file. A device, pipe or
    socket (`/dev/stdout`) is written in place, having no file to swap. A symlink is replaced by the new file, or
    with follow_links=True (a user's `-o` output) followed: its target is replaced and the link stays (not the
    default: a link into a content-addressed store, as DVC's or the Hugging Face cache's, points at a shared
    object)."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode  # follows links
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(p))
    if mode is not None and not stat.S_ISREG(mode):
        writer(str(p))
        return
    if follow_links:
        p = Path(os.path.realpath(p))
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        writer(tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def staging_dir(target: Path, tag: str = "") -> Path:
    """A new hidden folder beside `target` (`.NAME.TAGxxxx`) to build it in and then swap in, readable as any folder
    made here (mkdtemp makes it 0700)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{tag}", dir=target.parent))
    mask = os.umask(0)
    os.umask(mask)
    tmp.chmod(0o777 & ~mask)
    return tmp


def exclusive_lock(path: str | Path, busy: str, error: type[Exception] | None = None, mode: int = 0o666) -> int | None:
    """An exclusive, non-blocking flock on `path` (a regular file, created where missing), held by the returned
    descriptor until `release_lock`: `error(busy)` (AgelensError by default) where another process holds it. None
    where there is no flock (Windows). The output sinks of predict and a training run's folder lock this way."""
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        if error is None:
            from .errors import AgelensError as error
        raise error(busy) from None
    return fd


def release_lock(fd: int | None) -> None:
    """Lets go of an `exclusive_lock` (None: nothing held)."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def run_tool(main) -> None:
    """A `python -m agelens.train.X` tool's main(): an AgelensError (a file not there, a bad argument) as one
    `error:` line and exit status 2, as the CLI words it, not a traceback."""
    import sys

    from .errors import AgelensError

    try:
        main()
    except AgelensError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def atomic_write_text(path: str | Path, text: str, follow_links: bool = False) -> None:
    """UTF-8; file names that are not UTF-8 (surrogate-escaped) are written back as their original bytes."""
    atomic_write(path, lambda t: Path(t).write_text(text, encoding="utf-8", errors="surrogateescape"), follow_links)


def atomic_write_npz(path: str | Path, /, **arrays: Any) -> None:
    """np.savez of the arrays, written atomically."""
    import io

    def write(tmp: str) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        Path(tmp).write_bytes(buf.getvalue())

    atomic_write(path, write)


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Standard JSON (NaN and infinities written as null, which every parser reads), atomically."""
    atomic_write_text(path, json.dumps(finite_json(obj), indent=indent, sort_keys=False, default=_json_default,
                                       allow_nan=False) + "\n")


def json_indent(text: str, default: int = 2) -> int:
    """The indentation a JSON text was written with (its first indented line's), so that a file updated in place
    keeps its layout and its diff shows only what changed; `default` for a one-line text."""
    for line in text.splitlines()[1:]:
        if line.strip():
            return (len(line) - len(line.lstrip(" "))) or default
    return default


def finite_json(obj: Any) -> Any:
    """obj with every NaN or infinite float (numpy's too, in arrays as well) replaced by None: JSON has no NaN."""
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_json(obj.tolist())
    return obj


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.floating):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def crc32_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """CRC-32 of a file as 8 hex digits (≈1 GB/s: cheap enough to verify multi-GB caches on every load)."""
    import zlib

    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def cpu_session(path: str | Path, threads: int = 1) -> tuple:
    """(onnxruntime CPU session with `threads` intra-op threads and one inter-op thread, its input's name): for the
    small classifiers beside the models (faces.orientation, faces.animal)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name


def weights_dir() -> Path:
    """The package's shipped-weights folder (torch-free, so the onnxruntime backend can use it)."""
    from importlib import resources

    return Path(str(resources.files("agelens") / "weights"))


# the roles of the shipped models
SHIPPED = ("teacher", "student", "occlusion", "faceness", "faceness_photo", "faceness_bands")


def role_fits(role: str, kind: str, task: str | None) -> bool:
    """Whether an exported model of `kind` ("age", or "occlusion" for any binary crop classifier) trained for
    train.task `task` can serve as `role`: the age models are age models, the occlusion detector a binary model
    trained on occlusion (not a face verifier), the face networks binary ones."""
    if role in ("teacher", "student"):
        return kind == "age"
    return kind == "occlusion" and (role != "occlusion" or task in (None, "occlusion"))


def shipped_models() -> list[str]:
    """Names of the shipped models: NAME.json + NAME.safetensors pairs in weights_dir()."""
    d = weights_dir()
    return sorted(p.stem for p in d.glob("*.json") if (d / f"{p.stem}.safetensors").is_file()) if d.is_dir() else []


INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # CPUs whose int8 dot products make int8 graphs pay
INT8_W7_FLAGS = ("avx2",)  # CPUs whose int8 graphs keep 7-bit weights (the "int8w7" flavour below)
# int8 flavours: file suffix → (7-bit weights, roles left in fp32). On AVX2 without VNNI onnxruntime sums uint8 x
# int8 products pairwise in int16, which saturates with 8-bit weights: on the shipped teacher's single view (600
# cached validation faces, AMD EPYC AVX2) ages moved 0.69 years per face from fp32 with 8-bit weights, 0.53 with
# 7-bit ones (onnxruntime's reduce_range); end to end on 400 UTKFace / 300 All-Age-Faces test photos MAE +0.090 /
# +0.011 with 8-bit weights, -0.028 / -0.027 with 7-bit ones (`benchmarks/int8_e2e.py`). The student stays fp32
# there: its 7-bit copy cost the newer occluder families 0.20 years end to end (5.116 → 5.313, combinations
# +0.08 to +0.59; `benchmarks/occlusion_e2e.py`), fp32 0.06 (5.173, the occlusion flags of int8). Since 2026-12-04 it
# stays fp32 with VNNI / AMX too: its 8-bit copy cost the newer occluder kinds 0.16 years end to end (test photos of
# both datasets, `benchmarks/interval_e2e.py --seed 3`: 5.84 fp32, 6.00 int8; paper types 6.32 / 6.33) for 10.7 % of
# predict's time on real masked photos, where it answers nearly every face, and 1.0 % on clean ones
# (`benchmarks/ab_predict.py`, docs/inference_levers.md). `int8_flavor` picks the flavour per CPU.
INT8_FLAVORS: dict[str, tuple[bool, tuple[str, ...]]] = {"int8": (False, ("student",)), "int8w7": (True, ("student",))}


def int8_flavor(flags: set[str] | None = None) -> str | None:
    """The int8 graphs this CPU runs well (`INT8_FLAVORS`): "int8" (8-bit weights) with VNNI or AMX, "int8w7"
    (7-bit weights) with AVX2 alone, else None (int8 not measured on such a CPU). flags: the CPU's (default:
    /proc/cpuinfo)."""
    flags = cpu_flags() if flags is None else flags
    if set(INT8_FLAGS) & flags:
        return "int8"
    return "int8w7" if set(INT8_W7_FLAGS) & flags else None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"
