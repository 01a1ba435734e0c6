"""What a `predict` job is asked to read and write: files, folders and globs expanded to image files, file names
made printable, the streamed output formats. Standard library only, so a caller can size its workers (`parallel.auto_workers`) and start them
(`parallel.start_workers_early`) before it imports the pipeline."""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path

STREAM_FORMATS = ("jsonl", "csv", "parquet")  # written one file at a time by `stream.open_sink`


def expand_inputs(paths: list[str]) -> list[str]:
    """Files as given, folders → their images (recursive, sorted), globs expanded; unknown paths kept (reported)."""
    from ..data.adapters import IMAGE_EXTS

    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = _images_under(p, IMAGE_EXTS)
            out += found or [p]  # an empty folder (or a folder named like an image) is reported, not skipped
        elif not os.path.exists(p) and any(c in p for c in "*?["):
            hits = sorted(glob.glob(p, recursive=True))
            out += hits if hits else [p]
        else:
            out.append(p)
    return out


def _images_under(folder: str, exts) -> list[str]:
    """The image files under a folder, sorted, subfolders included, symlinked ones too (each real folder once, so
    a link back up the tree ends); a link to a file that is gone is kept, so that it is reported."""
    found, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        found += [str(Path(root) / n) for n in names if Path(n).suffix.lower() in exts  # a broken link is listed:
                  and (os.path.isfile(q := os.path.join(root, n)) or os.path.islink(q))]  # it gets its own error
    return sorted(found)


def job_files(source, skip=()) -> list[str]:
    """The image files of a job's `source` (a file, folder or glob, or a list or iterator of them), expanded
    (`expand_inputs`), less those whose printable name is in `skip` (already answered: resume)."""
    if isinstance(source, str | os.PathLike):
        paths = [os.fspath(source)]
    else:
        paths = None
        if not isinstance(source, bytes | bytearray | memoryview) and not _pixels(source):
            with contextlib.suppress(TypeError):  # not iterable: a Pillow image, a number
                paths = list(source)
        bad = source if paths is None else next((p for p in paths if not isinstance(p, str | os.PathLike)), None)
        if paths is None or bad is not None:
            raise TypeError("predict_many reads image files, folders or globs (or a list or iterator of them), got "
                            f"{'an item of type ' if paths is not None else ''}{type(bad).__name__}; for an image "
                            "in memory use predict(image)")
        paths = [os.fspath(p) for p in paths]
    return not_done(expand_inputs(paths), skip)


def _pixels(source) -> bool:
    """Whether `source` is an array of pixels: a NumPy-like array other than a 1-D array of strings (the paths of
    a DataFrame column, `df["path"].values`, are a list of files)."""
    if not hasattr(source, "__array_interface__"):
        return False
    return getattr(source, "ndim", 0) != 1 or getattr(getattr(source, "dtype", None), "kind", "") not in "UO"


def not_done(files: list[str], done) -> list[str]:
    """`files` less those already answered: whose record name (`printable`) is in `done`, compared as absolute
    paths from this working directory, so a job resumed with its folder spelled another way (relative, absolute,
    `a/./b`) skips the same files."""
    if not done:
        return list(files)
    seen = {_key(d) for d in done}
    return [f for f in files if _key(printable(f)) not in seen]


def _key(name: str) -> str:
    return os.path.normpath(os.path.abspath(name))


def printable(text: str) -> str:
    """File names that are not valid UTF-8 (surrogate-escaped by Python) as readable, valid UTF-8:
    the undecodable bytes become \\xNN, so CSV/JSON/terminal output never breaks on them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
