"""What a `predict` job is asked to read and write: files, folders and globs expanded to image files, file names
made printable, the streamed output formats. Standard library only, so a caller can size its workers (`parallel.auto_workers`) and start them
(`parallel.start_workers_early`) before it imports the pipeline."""

from __future__ import annotations

import contextlib
import functools
import glob
import itertools
import os
import re
from collections.abc import Callable
from pathlib import Path

STREAM_FORMATS = ("jsonl", "csv", "parquet")  # written one file at a time by `stream.open_sink`


def expand_inputs(paths: list[str], repeated: list[str] | None = None) -> list[str]:
    """Files as given, folders → their images (recursive, sorted; hidden files and folders, whose names start with
    a dot, left out as a glob leaves them: thumbnail caches, macOS's ._ files), globs expanded (a folder a glob
    matches is read as a folder; a file the walk reached by a link back up the tree once); unknown paths kept
    (reported). A subfolder that cannot be read is kept as an input of its own, so that it is reported. A file named
    more than once (`photos/ photos/a.jpg`, `a.jpg ./a.jpg`) comes once, where first named; the repeats go into
    `repeated` when given. (A link under another name is another input.)"""
    found = _expanded(paths)
    seen: set[str] = set()
    out = []
    for p in found:
        key = os.path.normcase(os.path.abspath(p))
        if key in seen:
            if repeated is not None:
                repeated.append(p)
            continue
        seen.add(key)
        out.append(p)
    return out


def _expanded(paths: list[str]) -> list[str]:
    from ..data.adapters import IMAGE_EXTS

    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = _images_under(p, IMAGE_EXTS)
            out += found or [p]  # an empty folder (or a folder named like an image) is reported, not skipped
        elif not os.path.exists(p) and any(c in p for c in "*?["):
            hits = _unique(sorted(glob.glob(p, recursive=True)))
            out += [f for h in hits for f in ((_images_under(h, IMAGE_EXTS) or [h]) if os.path.isdir(h) else [h])]
            out += [] if hits else [p]
        else:
            out.append(p)
    return out


def _unique(paths: list[str]) -> list[str]:
    """Paths less those that are the same file as one before them (`**` follows a link back up the tree)."""
    seen, out = set(), []
    for p in paths:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            out.append(p)
    return out


def _images_under(folder: str, exts) -> list[str]:
    """The image files under a folder, sorted, subfolders included, symlinked ones too (each real folder once, so
    a link back up the tree ends; real folders before links to them), hidden ones left out; a link to a file that
    is gone is kept, and a subfolder that cannot be read, so that they are reported."""
    found, seen = [], set()
    unreadable: list[str] = []
    for root, dirs, names in os.walk(folder, followlinks=True, onerror=lambda e: unreadable.append(e.filename)):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")),  # real folders first: a link to one is the
                         key=lambda d: (os.path.islink(os.path.join(root, d)), d))  # second name of the same files
        found += [str(Path(root) / n) for n in names if Path(n).suffix.lower() in exts and not n.startswith(".")
                  and (os.path.isfile(q := os.path.join(root, n)) or os.path.islink(q))]  # a broken link is listed:
    # it gets its own error, as does a subfolder that could not be read (the folder asked about is reported as such)
    return sorted(found) + [u for u in unreadable if u and os.path.normpath(u) != os.path.normpath(folder)]


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
        # an item that is no path (a None among them too: before, None read as "nothing wrong" and failed later)
        wrong = [] if paths is None else [p for p in paths if not isinstance(p, str | os.PathLike)][:1]
        bad = source if paths is None else (wrong[0] if wrong else None)
        if paths is None or wrong:
            raise TypeError("predict_many reads image files, folders or globs (or a list or iterator of them), got "
                            f"{'an item of type ' if paths is not None else ''}{type(bad).__name__}; for an image "
                            "in memory use predict(image)")
        paths = [os.fspath(p) for p in paths]
    return not_done(expand_inputs(paths), skip)


WINDOW = 1024  # items of an iterator expanded and answered at a time (predict_many)


def job_windows(source, skip=(), window: int | None = None):
    """`job_files` of `source` in windows: a path, or a list or other sized collection, at once; an iterator
    `window` items at a time, each window expanded and answered before the next is read, so that an endless or
    slow source (a queue, a watched folder) streams records (before: read to its end first). A file named in two
    windows is answered in each."""
    if (isinstance(source, str | os.PathLike | bytes | bytearray | memoryview) or hasattr(source, "__len__")
            or _pixels(source) or not hasattr(source, "__iter__")):
        yield job_files(source, skip)
        return
    items = iter(source)
    while chunk := list(itertools.islice(items, window or WINDOW)):
        yield job_files(chunk, skip)


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
    return [files[i] for i in remaining(files, done)]


def remaining(files: list[str], done) -> list[int]:
    """The positions in `files` of those `not_done` keeps."""
    if not done:
        return list(range(len(files)))
    seen = {_key(d) for d in done}
    return [i for i, f in enumerate(files) if _key(printable(f)) not in seen]


def in_job(files: list[str]) -> Callable[[str], bool]:
    """Whether a file named in a record (its printable name) is one of `files`, compared as resume compares them."""
    keys = {_key(printable(f)) for f in files}
    return lambda name: _key(name) in keys


def _key(name: str) -> str:
    """A file's name as resume compares it: its folder's real path (a link to the folder, `a/./b`, relative or
    absolute all agree) and its own name."""
    folder, base = os.path.split(os.path.abspath(name))
    return os.path.join(_real_folder(folder), base)


@functools.lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    """os.path.realpath of a folder, asked once per folder (an archive's files share few folders)."""
    return os.path.realpath(folder)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 control characters


def terminal_safe(text: str, lines: bool = False) -> str:
    """`printable` text with control characters (newlines, escape sequences that retitle a terminal or write its
    clipboard) shown as \\xNN: what a file name may hold and a terminal must not act on. lines=True keeps newlines
    and tabs (a message of several lines)."""
    keep = "\n\t" if lines else ""
    return _CONTROL.sub(lambda m: m.group() if m.group() in keep else f"\\x{ord(m.group()):02x}", printable(text))


def printable(text: str) -> str:
    """File names that are not valid UTF-8 (surrogate-escaped by Python) as readable, valid UTF-8:
    the undecodable bytes become \\xNN, so CSV/JSON/terminal output never breaks on them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
