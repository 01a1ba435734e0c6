"""What a `predict` job is asked to read and write: files, folders and globs expanded to image files, file names
made printable, the streamed output formats. Standard library only, so a caller can size its workers (`parallel.auto_workers`) and start them
(`parallel.start_workers_early`) before it imports the pipeline."""

from __future__ import annotations

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
            found = sorted(str(q) for q in Path(p).rglob("*") if q.suffix.lower() in IMAGE_EXTS and q.is_file())
            out += found or [p]  # an empty folder (or a folder named like an image) is reported, not skipped
        elif not os.path.exists(p) and any(c in p for c in "*?["):
            hits = sorted(glob.glob(p, recursive=True))
            out += hits if hits else [p]
        else:
            out.append(p)
    return out


def job_files(source, skip=()) -> list[str]:
    """The image files of a job's `source` (a file, folder or glob, or a list or iterator of them), expanded
    (`expand_inputs`), less those whose printable name is in `skip` (already answered: resume)."""
    paths = [str(source)] if isinstance(source, str | Path) else [str(p) for p in source]
    return [f for f in expand_inputs(paths) if printable(f) not in skip]


def printable(text: str) -> str:
    """File names that are not valid UTF-8 (surrogate-escaped by Python) as readable, valid UTF-8:
    the undecodable bytes become \\xNN, so CSV/JSON/terminal output never breaks on them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
