"""Native libraries' start-up chatter kept off the user's terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence the C++ (absl/TFLite) start-up chatter that mediapipe and LiteRT write straight to file
    descriptor 2 ("Created TensorFlow Lite XNNPACK delegate for CPU.")."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        yield
        return
    with _LOCK:  # one redirection at a time: a second, nested in another thread, would save /dev/null as stderr
        sys.stderr.flush()
        saved = os.dup(fd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            os.close(devnull)


_LOCK = threading.RLock()
