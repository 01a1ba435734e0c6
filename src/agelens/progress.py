"""Rich progress bars that turn themselves off when not wanted."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


LOG_EVERY_S = 30.0  # where stderr is no terminal (a log file under nohup, cron, SLURM): a plain line this often


def track(it: Iterable[T], total: int | None = None, description: str = "", enabled: bool = True) -> Iterator[T]:
    """`it`, with a progress bar on stderr; where stderr is no terminal, a plain line every LOG_EVERY_S seconds and
    one at the end instead (a bar is drawn there only once it is done)."""
    if not enabled:
        yield from it
        return
    import sys

    if not sys.stderr.isatty():
        yield from _logged(it, total, description)
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


def _logged(it: Iterable[T], total: int | None, description: str) -> Iterator[T]:
    """`it`, saying on stderr every LOG_EVERY_S seconds and at the end how far it has come."""
    import sys
    import time

    def say(n: int, t: float, final: bool = False) -> None:
        rate = n / t if t > 0 else 0.0
        left = f", about {(total - n) / rate:.0f} s left" if total and rate > 0 and not final else ""
        print(f"{description}: {n}{f'/{total}' if total else ''} in {t:.0f} s ({rate:.1f}/s{left})",
              file=sys.stderr, flush=True)

    t0 = last = time.monotonic()
    n = 0
    for x in it:
        yield x
        n += 1
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            say(n, now - t0)
            last = now
    say(n, time.monotonic() - t0, final=True)
