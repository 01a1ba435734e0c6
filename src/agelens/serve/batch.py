"""Batch inference over many files: decode + detect + align in worker processes, the age models in the main
process on batches of faces from several files, results streamed in input order to a JSONL/CSV sink that
resumes after an interruption (files already answered are skipped; a torn last line is dropped)."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import AgelensError

CSV_COLUMNS = ["file", "face", "x1", "y1", "x2", "y2", "age", "low", "high", "occluded", "occlusion_score",
               "model", "error"]

_worker_analyzer = None


def printable(text: str) -> str:
    """File names that are not valid UTF-8 (surrogate-escaped by Python) as readable, valid UTF-8:
    the undecodable bytes become \\xNN, so CSV/JSON/terminal output never breaks on them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _detect(job: tuple[str, int, bool, bool]) -> tuple[str, list | None, str | None, np.ndarray | None, float]:
    """Worker: one file → (file, faces, error, rgb if asked, detect seconds). Never raises for a bad file."""
    global _worker_analyzer
    from ..faces.detect import FaceAnalyzer
    from ..imageio import load_image
    from .predictor import check_rgb, find_and_align

    path, cache_size, detect, keep_rgb = job
    t0 = time.perf_counter()
    try:
        if _worker_analyzer is None:
            _worker_analyzer = FaceAnalyzer()
        rgb = check_rgb(load_image(path))
        faces = find_and_align(rgb, _worker_analyzer, cache_size, detect)
        return path, faces, None, rgb if keep_rgb else None, time.perf_counter() - t0
    except AgelensError as e:
        msg = str(e)
        return path, None, msg if path in msg else f"{path}: {msg}", None, time.perf_counter() - t0
    except Exception as e:  # anything else one file triggers (OS errors, odd arrays, the face detector):
        # reported for that file, the batch goes on
        return path, None, f"{path}: {type(e).__name__}: {e}", None, time.perf_counter() - t0


def predict_stream(est, files: list[str], detect: bool = True, workers: int = 0, batch_size: int = 32,
                   keep_rgb: bool = False) -> Iterator[tuple[dict, np.ndarray | None]]:
    """Yield ({"file", "faces", "error"}, rgb or None) per file, in input order.

    workers > 0: that many processes decode and detect while the main process runs the models; faces of
    consecutive files are batched (up to batch_size) through `est.analyse_crops`."""
    jobs = [(f, est.cache_size, detect, keep_rgb) for f in files]
    if workers > 0:
        ctx = mp.get_context("spawn")  # mediapipe and torch threads do not survive fork
        pool = ctx.Pool(workers)
        detected: Iterable = pool.imap(_detect, jobs, chunksize=2)
    else:
        pool = None
        detected = map(_detect, jobs)
    pending: list = []
    n_faces = 0
    try:
        for item in detected:
            pending.append(item)
            n_faces += len(item[1] or [])
            if n_faces >= batch_size:
                yield from _flush(est, pending)
                pending, n_faces = [], 0
        yield from _flush(est, pending)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _flush(est, pending: list) -> Iterator[tuple[dict, np.ndarray | None]]:
    crops = [f[2] for _, faces, _, _, _ in pending for f in (faces or [])]
    t0 = time.perf_counter()
    r = est.analyse_crops(np.stack(crops)) if crops else None
    per_face_ms = 1000 * (time.perf_counter() - t0) / max(1, len(crops))
    k = 0
    for path, faces, error, rgb, det_s in pending:
        if error is not None:
            yield {"file": printable(path), "faces": [], "error": printable(error)}, None
            continue
        sub = {key: v[k:k + len(faces)] for key, v in r.items()}
        k += len(faces)
        timing = {"detect_ms": round(1000 * det_s, 1), "model_ms": round(per_face_ms * len(faces), 1)}
        yield {"file": printable(path), "faces": [p.to_dict() for p in est.predictions(faces, sub, timing)],
               "error": None}, rgb


def csv_rows(result: dict) -> list[list]:
    rows = [[result["file"], i, *f["box"], f["age"], *f["interval"], f["occluded"], f["occlusion_score"],
             f["model"], ""] for i, f in enumerate(result["faces"])]
    if result["error"]:
        rows.append([result["file"], *[""] * (len(CSV_COLUMNS) - 2), result["error"]])
    return rows


class StreamSink:
    """Append-only JSONL or CSV results file. resume=True keeps what is there (minus a torn last line) and
    reports the files already answered; otherwise the file starts empty."""

    def __init__(self, path: str | Path, fmt: str, resume: bool = False) -> None:
        if fmt not in ("jsonl", "csv"):
            raise AgelensError(f"streamed output needs --format jsonl or csv, got {fmt!r}")
        self.path, self.fmt = Path(path), fmt
        if self.path.is_dir():
            raise AgelensError(f"--output {self.path} is a folder; give a file name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        if resume and self.path.is_file():
            self._recover()
        else:
            self.path.write_text(",".join(CSV_COLUMNS) + "\n" if fmt == "csv" else "")
        self._f = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (kept open, closed by close())

    def _recover(self) -> None:
        data = self.path.read_bytes()
        keep = data[:data.rfind(b"\n") + 1]  # a line cut by a kill is dropped (and redone)
        if len(keep) != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(len(keep))
        text = keep.decode("utf-8", errors="replace")
        if self.fmt == "jsonl":
            for line in text.splitlines():
                try:
                    self.done.add(json.loads(line)["file"])
                except (ValueError, KeyError, TypeError) as e:
                    raise AgelensError(f"cannot resume {self.path}: not an agelens JSONL line: {line[:80]!r}") from e
        else:
            rows = list(csv.reader(io.StringIO(text)))
            if not rows:
                self.path.write_text(",".join(CSV_COLUMNS) + "\n")
            elif rows[0] != CSV_COLUMNS:
                raise AgelensError(f"cannot resume {self.path}: its header is not agelens predict's CSV header")
            self.done = {row[0] for row in rows[1:] if row}

    def write(self, result: dict) -> None:
        """One file's result as whole line(s), flushed to disk before the next file."""
        if self.fmt == "jsonl":
            text = json.dumps(result) + "\n"
        else:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(csv_rows(result))
            text = buf.getvalue()
        self._f.write(text)
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()
