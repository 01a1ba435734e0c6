"""Rich progress bars that turn themselves off when not wanted."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def track(it: Iterable[T], total: int | None = None, description: str = "", enabled: bool = True) -> Iterator[T]:
    if not enabled:
        yield from it
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # on stderr: stdout carries results (`-o /dev/stdout`, `> out.json`), which a bar would corrupt
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), transient=False, console=Console(stderr=True)) as p:
        task = p.add_task(description, total=total)
        for x in it:
            yield x
            p.advance(task)
