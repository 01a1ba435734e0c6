"""Batch inference over many files: decode + detect + align in worker processes, the age models in the main
process on batches of faces from several files, results streamed in input order to a JSONL/CSV/Parquet sink that
resumes after an interruption (files already answered are skipped; a torn last line is dropped). The Ray engine
(`agelens.inference.ray_engine`) runs the same `_detect` and `_flush` on a cluster and writes through the same sinks."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import AgelensError
from ..faces import animal
from ..parallel import CRASHED, auto_workers, crash_safe_map, per_input
from ..utils import atomic_write_text, exclusive_lock, release_lock
from .inputs import printable

CSV_COLUMNS = ["file", "face", "x1", "y1", "x2", "y2", "age", "low", "high", "occluded", "occlusion_score",
               "model", "detection", "error"]

_worker_analyzer = None


def _detect(job: tuple[str, int, bool, bool]) -> tuple[str, list | None, str | None, np.ndarray | None, float]:
    """Detection worker: one file → (file, faces, error, None: workers send no image, detect seconds). Never raises
    for a bad file. job: (path, cache_size, detect, upright)."""
    global _worker_analyzer
    from ..faces.detect import FaceAnalyzer

    if _worker_analyzer is None:
        _worker_analyzer = FaceAnalyzer(fast=None)  # as AgeEstimator.analyzer
    path, cache_size, detect, upright = job
    return _find(path, _worker_analyzer, cache_size, detect, False, upright=upright)


def _turns_upright(est) -> bool:
    """Whether the estimator looks at turned photos upright (`AgeEstimator.upright`; an estimator-like object
    without the attribute: yes, the default)."""
    return getattr(est, "upright", True)


def _crash_error(path: str) -> str:
    """The error of a file its worker process died on."""
    return f"{path}: {CRASHED}"


def _error(path: str, e: Exception) -> str:
    """What one file's failure reads as: the error, naming the file."""
    if isinstance(e, AgelensError):
        return str(e) if path in str(e) else f"{path}: {e}"
    return f"{path}: {type(e).__name__}: {e}"  # OS errors, odd arrays, the face detector: that file only


def _attempt(path: str, fn):
    """(fn(), None, seconds), or (None, the error named for `path`, seconds): a file's failure stays with it."""
    t0 = time.perf_counter()
    try:
        return fn(), None, time.perf_counter() - t0
    except Exception as e:  # reported for that file, the batch goes on
        return None, _error(path, e), time.perf_counter() - t0


def decode_file(path: str, reduce: bool = True) -> tuple[np.ndarray, float]:
    """(RGB, scale): a large JPEG decoded at the size the faces need (`imageio.decode_reduced`) unless
    reduce=False (the image is kept to draw on): then whole, or reduced all the same where whole it would be over
    the pixel limit (a 108 MP phone JPEG is answered, and drawn on at that size, rather than refused)."""
    from ..imageio import decode_whole, load_reduced, read_file
    from .finding import check_rgb

    rgb, scale = load_reduced(path) if reduce else decode_whole(read_file(path), path)
    return check_rgb(rgb), scale


def _find(path: str, analyzer, cache_size: int, detect: bool, keep_rgb: bool, verifier="shipped",
          upright: bool = True) -> tuple[str, list | None, str | None, np.ndarray | None, float]:
    from .finding import find_and_align, in_file_pixels

    def run():
        rgb, scale = decode_file(path)
        return rgb, scale, in_file_pixels(find_and_align(rgb, analyzer, cache_size, detect, verifier, upright=upright),
                                          scale)

    got, err, dt = _attempt(path, run)
    kept = None
    if got and keep_rgb:
        kept, dt2 = _whole(path, got[0], got[1])
        dt += dt2
    return path, got and got[2], err, kept, dt


def _whole(path: str, rgb: np.ndarray, scale: float) -> tuple[np.ndarray | None, float]:
    """(the image to draw on (`keep_rgb`), seconds): the decode the faces were found on where it is the whole
    image, else the file decoded again whole (None if that fails: the file is answered, not drawn). The faces are
    always found on `decode_file`'s reduced decode, so keeping the image to draw on does not change them."""
    if scale == 1.0:
        return rgb, 0.0
    kept, _, dt = _attempt(path, lambda: decode_file(path, reduce=False)[0])
    return kept, dt


def _find_chunk(est, files: list[str], detect: bool, keep_rgb: bool
                ) -> list[tuple[str, list | None, str | None, np.ndarray | None, float]]:
    """`_find` for consecutive files, with the teacher's verification pass batched over them: where the face
    verifier is the teacher's own head (`TrunkGuard`), every file's detector faces are proposed first and their
    crops go through the teacher in one batch (`AgeEstimator.trunk` keeps the result), so verifying each file, and
    then its age, read that pass instead of a one-face pass each (batch 1: 5.9 ms a face, batch 4+: 4.8-5.1 on one
    thread)."""
    verifier = _verifier(est)
    if not detect or not hasattr(verifier, "head_scores"):
        return [_find(f, est.analyzer, est.cache_size, detect, keep_rgb, verifier, _turns_upright(est))
                for f in files]
    from .finding import find_and_align, in_file_pixels

    def propose(f):
        rgb, scale = decode_file(f)
        return rgb, est.analyzer.propose(rgb), scale

    # (path, (rgb, proposals, scale), error, seconds)
    loaded = [(f, *_attempt(f, lambda f=f: propose(f))) for f in files]
    crops = []
    for _, got, _, _ in loaded:
        if got:
            # a file whose faces cannot be aligned is left out of the batch; its own pass below reports the error
            with contextlib.suppress(Exception):
                crops += [p.aligned(got[0], est.cache_size)[0] for p in got[1]]
    if crops:
        # a head start only: if the batch fails, each file's own verification below runs the pass again and
        # reports its error for that file alone
        with contextlib.suppress(Exception):
            est.trunk(np.stack(crops))
    out = []
    for f, got, err, dt in loaded:
        faces = None
        if err is None:
            rgb, props, scale = got
            faces, err, dt2 = _attempt(f, lambda rgb=rgb, props=props, scale=scale: in_file_pixels(find_and_align(
                rgb, est.analyzer, est.cache_size, True, verifier, proposed=props, upright=_turns_upright(est)),
                scale))
            dt += dt2
        kept = None
        if err is None and keep_rgb:
            kept, dt2 = _whole(f, got[0], got[2])
            dt += dt2
        out.append((f, faces, err, kept, dt))
    return out


_worker_est = None  # pipeline workers: the estimator this process rebuilt from the main process's spec
_worker_error: str | None = None
CHUNK = 8  # consecutive files whose faces are verified and estimated in one model batch


def built(cls: type, spec: tuple[str, dict], settings: dict | None = None, **more):
    """An estimator built from its spec (`AgeEstimator.spec`: the classmethod and its arguments, plus `more`) with
    the `settings()` of the one it copies: what `AgeEstimator` pickles as."""
    build, kwargs = spec
    est = getattr(cls, build)(**kwargs, **more)
    if settings:
        est.apply_settings(settings)
    return est


def rebuild(cls: type, spec: tuple[str, dict], settings: dict | None = None):
    """The caller's estimator in a worker process or Ray actor: `cls` (the caller's AgeEstimator class, passed in
    so this module needs no import of it) `built` with one thread per model, OpenCV's warps and resizes on one
    thread too (the workers share the cores), and the caller's `settings()`."""
    import cv2

    cv2.setNumThreads(1)
    return built(cls, spec, settings, threads=1)


def _init_pipeline(cls: type, spec: tuple[str, dict]) -> None:
    """Pipeline worker start-up: `rebuild` (the settings come with each chunk)."""
    global _worker_est, _worker_error
    try:
        _worker_est = rebuild(cls, spec)
    except Exception as e:  # raised per chunk in the main process: a failing initializer would respawn forever
        _worker_error = f"a worker could not load the models: {type(e).__name__}: {e}"


def answer_files(est, files: list[str], detect: bool) -> list[dict]:
    """The records of `files` in order, CHUNK files at a time through the whole pipeline (decode, detect, align,
    then the models on each chunk's faces as one batch), without images: what a pipeline worker or a Ray actor
    sends back."""
    return [r for i in range(0, len(files), CHUNK)
            for r, _ in _flush(est, _find_chunk(est, files[i:i + CHUNK], detect, False))]


def _pipeline(job: tuple[list[str], bool, dict]) -> list[tuple[dict, None]]:
    """Pipeline worker: `answer_files` of a chunk. job: (files, detect, the calling estimator's `settings()`)."""
    if _worker_est is None:
        raise AgelensError(_worker_error or "pipeline worker not initialised")
    files, detect, settings = job
    _worker_est.apply_settings(settings)
    return [(r, None) for r in answer_files(_worker_est, files, detect)]


def _verifier(est):
    """The estimator's face verifier, or the shipped one (as the detection workers use) when it has none."""
    return est.verifier if getattr(est, "verifier", None) is not None else "shipped"


def predict_stream(est, files: list[str], detect: bool = True, workers: int | None = None, batch_size: int = 32,
                   keep_rgb: bool = False) -> Iterator[tuple[dict, np.ndarray | None]]:
    """Yield ({"file", "faces", "error"}, rgb or None) per file, in input order.

    workers > 0 (None: `auto_workers`, one per core for big enough inputs): for an estimator built by
    `from_pretrained` / `from_onnx` (it has a `spec`), that many processes each run the whole pipeline (decode,
    detect, align, the models with one thread) on chunks of consecutive files; for one built from objects in
    memory they decode and detect while this process runs the models on batches of up to batch_size faces.
    workers = 0: everything here, faces of consecutive files batched through `est.analyse_crops`. keep_rgb: each
    file's decoded image comes with its record, in this process only (workers send records alone: an image is a
    big message, and a worker killed while sending one left the pool waiting for the rest; decode the file again)."""
    if workers is None:
        workers = auto_workers(len(files))
    if workers > 0:
        animal.ensure_export()  # made once here, not by every worker on a first run
    if workers > 0 and getattr(est, "spec", None) is not None:
        yield from _pipeline_stream(est, files, detect, workers, batch_size)
        return
    if workers > 0:
        jobs = [(files[i:i + 2], est.cache_size, detect, _turns_upright(est))
                for i in range(0, len(files), 2)]
        detected: Iterator = crash_safe_map(per_input(_detect), jobs, workers,
                                            lambda f: (f, None, _crash_error(f), None, 0.0))
    else:
        detected = (r for i in range(0, len(files), CHUNK) for r in _find_chunk(est, files[i:i + CHUNK], detect,
                                                                                 keep_rgb))
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
        detected.close()  # the workers, if any, are shut down


def _pipeline_stream(est, files: list[str], detect: bool, workers: int, batch_size: int
                     ) -> Iterator[tuple[dict, np.ndarray | None]]:
    # chunks small enough to keep every worker busy to the end, at most batch_size files (one model batch) each
    chunk = max(1, min(batch_size, CHUNK, len(files) // (4 * workers)))
    settings = est.settings()  # what the caller changed after loading (realign, student_views, ...) holds there too
    jobs = [(files[i:i + chunk], detect, settings) for i in range(0, len(files), chunk)]
    yield from crash_safe_map(_pipeline, jobs, workers, _crashed, _init_pipeline, (type(est), est.spec))


def _crashed(path: str) -> tuple[dict, None]:
    """The record of a file its worker process died on."""
    return {"file": printable(path), "faces": [], "error": printable(_crash_error(path))}, None


def _flush(est, pending: list) -> Iterator[tuple[dict, np.ndarray | None]]:
    faces_all = [f for _, faces, _, _, _ in pending for f in (faces or [])]
    t0 = time.perf_counter()
    r = est.analyse_faces(faces_all) if faces_all else None
    per_face_ms = 1000 * (time.perf_counter() - t0) / max(1, len(faces_all))
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
             f["model"], f.get("detection", ""), ""] for i, f in enumerate(result["faces"])]
    if result["error"]:
        rows.append([result["file"], *[""] * (len(CSV_COLUMNS) - 2), result["error"]])
    return rows


def hold_output(path: Path) -> int | None:
    """An exclusive lock on a job's output (`utils.exclusive_lock`), held until `utils.release_lock`: AgelensError where
    another job holds it (two jobs appending to one file interleave and duplicate records). None where there is
    nothing to lock (a pipe or terminal) or no flock (Windows)."""
    if path.exists() and not path.is_file():
        return None
    return exclusive_lock(path, f"{path} is being written by another agelens job: wait for it to end, or give this "
                                "job another --output")


class StreamSink:
    """Append-only JSONL or CSV results file. resume=True keeps what is there (minus a torn last line) and reports
    the files already answered, less a CSV's last file, whose rows may be cut between two of its faces: if the job
    answers it again, its earlier rows go first. `retry` (with resume) also takes out the records of the files that
    failed (an `error`) and that retry(file) picks, which then count as not done (`retried`). Otherwise the file
    starts empty."""

    def __init__(self, path: str | Path, fmt: str, resume: bool = False,
                 retry: Callable[[str], bool] | None = None) -> None:
        if fmt not in ("jsonl", "csv"):
            raise AgelensError(f"streamed output needs --format jsonl or csv, got {fmt!r}")
        self.path, self.fmt = Path(path), fmt
        if self.path.is_dir():
            raise AgelensError(f"--output {self.path} is a folder; give a file name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._held = hold_output(self.path)  # before anything there is read or cut
        self.done: set[str] = set()
        self.retried: set[str] = set()  # files whose failed records `retry` took out
        self.failed_done: set[str] = set()  # files done whose records keep an error (not retried)
        self._redo: str | None = None  # a resumed CSV's last file, whose rows may be cut short
        if resume and self.path.is_file():
            self._recover(retry)
        else:
            self.path.write_text(",".join(CSV_COLUMNS) + "\n" if fmt == "csv" else "")
        self._f = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (kept open, closed by close())
        self._synced = time.monotonic()
        # a pipe or terminal (-o /dev/stdout) cannot be synced: fsync fails there with "Invalid argument"
        self._disk = stat.S_ISREG(os.fstat(self._f.fileno()).st_mode)

    def _sync(self) -> None:
        if self._disk:
            os.fsync(self._f.fileno())
        self._synced = time.monotonic()

    def _recover(self, retry: Callable[[str], bool] | None = None) -> None:
        data = self.path.read_bytes()
        keep = data[:data.rfind(b"\n") + 1]  # a line cut by a kill is dropped (and redone)
        if len(keep) != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(len(keep))
        text = keep.decode("utf-8", errors="replace")
        if self.fmt == "jsonl":
            kept = []
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                    name = rec["file"]
                except (ValueError, KeyError, TypeError) as e:
                    raise AgelensError(f"cannot resume {self.path}: not an agelens JSONL line: {line[:80]!r}") from e
                if retry is not None and rec.get("error") and retry(name):
                    self.retried.add(name)
                else:
                    self.done.add(name)
                    kept.append(line + "\n")
                    if isinstance(rec, dict) and rec.get("error"):
                        self.failed_done.add(name)
            if self.retried:
                self._replace("".join(kept))
        else:
            rows = list(csv.reader(io.StringIO(text)))
            if not rows:
                self.path.write_text(",".join(CSV_COLUMNS) + "\n")
            elif rows[0] != CSV_COLUMNS:
                raise AgelensError(f"cannot resume {self.path}: its header is not agelens predict's CSV header")
            body = [row for row in rows[1:] if row]
            err = CSV_COLUMNS.index("error")
            if retry is not None:
                self.retried = {row[0] for row in body if len(row) > err and row[err] and retry(row[0])}
                if self.retried:
                    body = [row for row in body if row[0] not in self.retried]
                    buf = io.StringIO()
                    csv.writer(buf, lineterminator="\n").writerows([rows[0], *body])
                    self._replace(buf.getvalue())
            # a file's faces are several rows, and a cut may fall between them: the last file counts as not done,
            # and if this job answers it again its earlier rows are dropped first (`write`)
            self._redo = body[-1][0] if body else None
            self.done = {row[0] for row in body if row[0] != self._redo}
            self.failed_done = {row[0] for row in body if len(row) > err and row[err] and row[0] in self.done}

    def _replace(self, text: str) -> None:
        """The file replaced by `text` (atomically), the lock moved onto the new file."""
        atomic_write_text(self.path, text, follow_links=True)
        held = hold_output(self.path)  # the lock goes with the file that replaced the locked one
        release_lock(self._held)
        self._held = held

    FSYNC_S = 1.0  # seconds between syncs to the disk

    def write(self, result: dict) -> None:
        """One file's result as whole line(s), handed to the OS before the next file (a killed process loses
        nothing), synced to the disk by the first write FSYNC_S seconds after the last sync and at close (a power
        cut loses the lines since the last sync, which --resume redoes; a sync per line cost 0.5 ms here, more on
        slow or network disks)."""
        if self._redo is not None and result["file"] == self._redo:
            self._drop_rows(self._redo)
        if self.fmt == "jsonl":
            text = json.dumps(result) + "\n"
        else:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(csv_rows(result))
            text = buf.getvalue()
        self._f.write(text)
        self._f.flush()
        if time.monotonic() - self._synced >= self.FSYNC_S:
            self._sync()

    def _drop_rows(self, name: str) -> None:
        """The rows of file `name` taken out of the CSV (atomically), before the file is answered again."""
        self._f.close()
        with open(self.path, encoding="utf-8", newline="") as f:
            rows = [row for row in csv.reader(f) if row]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([rows[0], *(row for row in rows[1:] if row[0] != name)])
        self._replace(buf.getvalue())
        self._f = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (kept open, closed by close())
        self._redo = None

    def close(self) -> None:
        try:
            self._f.flush()
            self._sync()
            self._f.close()
        finally:
            release_lock(self._held)


class ParquetSink:
    """Parquet results: OUT is a folder of `part-NNNNN.parquet` files (read it whole with `pandas.read_parquet(OUT)`
    or `pyarrow.parquet.read_table(OUT)`), one row per input file with the JSONL record's keys (`file`, `faces` as a
    list of structs, `error`). Records are buffered and each part is written atomically (temp file + rename) every
    `rows_per_part` records or `flush_s` seconds, so a kill loses at most the unwritten buffer, which a resume redoes.
    resume=True reads the `file` column of the parts there (with `retry`: a part holding records with an `error`
    whose file retry(file) picks is rewritten without them, and those files count as not done); otherwise earlier
    parts are removed."""

    def __init__(self, path: str | Path, resume: bool = False, rows_per_part: int = 1000, flush_s: float = 30.0,
                 retry: Callable[[str], bool] | None = None) -> None:
        import pyarrow.parquet as pq

        self.path, self.rows_per_part, self.flush_s = Path(path), rows_per_part, flush_s
        if self.path.is_file():
            raise AgelensError(f"--output {self.path} is a file; Parquet output is a folder of part files")
        self.path.mkdir(parents=True, exist_ok=True)
        self._held = hold_output(self.path / ".agelens.lock")  # a hidden file: Parquet readers skip it
        for stray in self.path.glob(".part-*.tmp"):  # temp files of a killed run
            stray.unlink()
        self.done: set[str] = set()
        self.retried: set[str] = set()
        self.failed_done: set[str] = set()  # files done whose records keep an error (not retried)
        self.schema = None  # the faces' struct type, fixed by the first part that has a face
        parts = sorted(self.path.glob("part-*.parquet"))
        if not resume:
            for q in parts:
                q.unlink()
            parts = []
        for q in parts:
            try:
                t = pq.read_table(q)
            except Exception as e:  # pyarrow raises several types for a file that is not Parquet
                raise AgelensError(f"cannot resume {self.path}: {q.name} is not a readable Parquet file ({e})") from None
            if "file" not in t.column_names or "faces" not in t.column_names:
                raise AgelensError(f"cannot resume {self.path}: {q.name} has no file/faces columns")
            files = t.column("file").to_pylist()
            errors = t.column("error").to_pylist() if "error" in t.column_names else [None] * len(files)
            if retry is not None:
                again = [bool(e) and retry(f) for f, e in zip(files, errors, strict=True)]
                if any(again):
                    t = self._without(q, t, again)
                    self.retried.update(f for f, a in zip(files, again, strict=True) if a)
                    files = [f for f, a in zip(files, again, strict=True) if not a]
                    errors = [e for e, a in zip(errors, again, strict=True) if not a]
            self.done.update(files)
            self.failed_done.update(f for f, e in zip(files, errors, strict=True) if e)
            if self.schema is None and not _null_faces(t.schema):
                self.schema = t.schema
        self._next = 1 + max((int(q.stem.split("-")[1]) for q in parts), default=-1)
        self._buf: list[dict] = []
        self._t0 = time.monotonic()

    @staticmethod
    def _without(part: Path, t, drop: list[bool]):
        """Part `part` (table t) without the rows `drop` marks (failed records retried): rewritten atomically,
        removed when none is left."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..utils import atomic_write

        t = t.filter(pa.array([not d for d in drop]))
        if t.num_rows:
            atomic_write(part, lambda tmp: pq.write_table(t, tmp))
        else:
            part.unlink()
        return t

    def write(self, result: dict) -> None:
        self._buf.append(result)
        if len(self._buf) >= self.rows_per_part or time.monotonic() - self._t0 >= self.flush_s:
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Write the buffer as one part; until some record has a face its type is unknown, so a part of face-less
        records only is held back (written at the end if no face ever comes)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..utils import atomic_write

        if not self._buf:
            return
        table = pa.Table.from_pylist(self._buf)
        for col in ("file", "error"):  # an all-None error column would otherwise be typed null
            table = table.set_column(table.schema.get_field_index(col), col, table[col].cast(pa.string()))
        if _null_faces(table.schema):
            if self.schema is None and not final:
                return
            if self.schema is not None:
                table = table.cast(self.schema)
        elif self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema:
            try:
                table = table.cast(self.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
                raise AgelensError(f"{self.path}: this run's records do not match the schema of the parts already "
                                   f"there ({e}); write to a new folder") from None
        name = self.path / f"part-{self._next:05d}.parquet"
        atomic_write(name, lambda tmp: pq.write_table(table, tmp))
        self._next += 1
        self._buf, self._t0 = [], time.monotonic()

    def close(self) -> None:
        try:
            self.flush(final=True)
        finally:
            release_lock(self._held)


def _null_faces(schema) -> bool:
    """True when the faces column's element type could not be inferred (no record of the part had a face)."""
    import pyarrow as pa

    t = schema.field("faces").type
    return pa.types.is_list(t) and pa.types.is_null(t.value_type)


def rewrite_output(path: str | Path, fmt: str, records: list[dict]) -> None:
    """Replace a streamed --output (a JSONL or CSV file, or a Parquet folder) with `records`: written beside it
    first, then swapped in, so a kill leaves the old output or the new one."""
    import shutil

    path = Path(os.path.realpath(path))  # a symlinked output: its target is rewritten, the link stays
    tmp = path.with_name(f".{path.name}.rewrite")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    sink = open_sink(tmp, fmt)
    try:
        for r in records:
            sink.write(r)
    finally:
        sink.close()
    if fmt != "parquet":
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old")
    if old.is_dir():
        shutil.rmtree(old)
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def finish_rewrite(path: str | Path) -> None:
    """Puts right what a kill during `rewrite_output` left beside `path`: a Parquet folder moved aside (.NAME.old)
    before the rewritten one (.NAME.rewrite, complete by then) took its place is replaced by the rewritten one; an
    unfinished rewrite, or the old folder of a finished one, is removed."""
    import shutil

    path = Path(os.path.realpath(path))
    tmp, old = path.with_name(f".{path.name}.rewrite"), path.with_name(f".{path.name}.old")
    missing = not path.exists() or (path.is_dir() and not any(path.iterdir()))  # an empty folder made since
    if missing and old.is_dir():
        if path.is_dir():
            path.rmdir()
        os.replace(tmp if tmp.is_dir() else old, path)
    for stale in (tmp, old):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        elif stale.exists():
            stale.unlink()


def open_sink(path: str | Path, fmt: str, resume: bool = False, retry: Callable[[str], bool] | None = None
              ) -> StreamSink | ParquetSink:
    """The streamed, resumable sink for --format jsonl, csv (a file) or parquet (a folder of parts); `retry` (with
    resume): the records of the files that failed and that retry(file) picks are taken out, so that the job
    answers those files again."""
    finish_rewrite(path)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise AgelensError("--format parquet needs pyarrow: pip install pyarrow (or \"agelens[ray]\")") from None
        return ParquetSink(path, resume, retry=retry)
    return StreamSink(path, fmt, resume, retry)
