"""llama.cpp's log lines, routed to Python :mod:`logging` (logger ``lmserv.llama_cpp``).

llama.cpp hands its log callback fragments (a line may arrive in pieces, continued with
``GGML_LOG_LEVEL_CONT``); :class:`LogRouter` joins them into whole lines before logging. The
logger has a ``NullHandler``, so nothing reaches stderr unless the application configures
logging (``logging.basicConfig(level=logging.INFO)`` shows the model-loading chatter).

The router also remembers the last warning/error lines, so an exception raised after a failed
C call can quote llama.cpp's own explanation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator

from lmserv._bindings import _llama_h as h

__all__ = ["LOGGER_NAME", "LogRouter", "capture_stderr"]

LOGGER_NAME = "lmserv.llama_cpp"
_logger = logging.getLogger(LOGGER_NAME)
_logger.addHandler(logging.NullHandler())

_LEVELS = {
    h.GGML_LOG_LEVEL_NONE: logging.INFO,
    h.GGML_LOG_LEVEL_DEBUG: logging.DEBUG,
    h.GGML_LOG_LEVEL_INFO: logging.INFO,
    h.GGML_LOG_LEVEL_WARN: logging.WARNING,
    h.GGML_LOG_LEVEL_ERROR: logging.ERROR,
}


class LogRouter:
    """Callable installed (through a ctypes trampoline) as llama.cpp's log callback."""

    def __init__(self, logger: logging.Logger = _logger) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._level = logging.INFO
        self._serial = 0
        self._problems: deque[tuple[int, str]] = deque(maxlen=32)

    def __call__(self, level: int, text: bytes | None, _user_data: object) -> None:
        # Runs inside C: it must never raise.
        try:
            self._receive(level, text.decode("utf-8", "replace") if text else "")
        except Exception:  # pragma: no cover - defensive
            pass

    def _receive(self, level: int, text: str) -> None:
        with self._lock:
            if level != h.GGML_LOG_LEVEL_CONT:
                if self._parts:  # a line that never got its newline
                    self._emit_locked()
                self._level = _LEVELS.get(level, logging.INFO)
            self._parts.append(text)
            if text.endswith("\n"):
                self._emit_locked()

    def _emit_locked(self) -> None:
        line = "".join(self._parts).rstrip("\n")
        self._parts.clear()
        if not line:
            return
        if self._level >= logging.WARNING:
            self._serial += 1
            self._problems.append((self._serial, line.strip()))
        if self._logger.isEnabledFor(self._level):
            self._logger.log(self._level, "%s", line)

    def mark(self) -> int:
        """A position; :meth:`problems_since` returns the warnings/errors logged after it."""
        with self._lock:
            return self._serial

    def problems_since(self, mark: int) -> list[str]:
        """Warning and error lines llama.cpp logged after ``mark`` (at most the last 32)."""
        with self._lock:
            if self._parts and self._level >= logging.WARNING:
                self._emit_locked()
            return [line for serial, line in self._problems if serial > mark]


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def capture_stderr() -> Iterator[list[str]]:
    """Catch what C code writes to file descriptor 2 meanwhile; the list holds its lines after.

    For the few llama.cpp messages that bypass its log callback (the grammar parser's error goes
    to ``fprintf(stderr, ...)``): they are logged here instead of reaching the terminal. Keep the
    ``with`` block to one short C call: the whole process's stderr is redirected while it runs.
    Captures take turns (two at once in two threads would each restore the other's sink).
    """
    lines: list[str] = []
    sys.stderr.flush()
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            lines += [line.strip() for line in text.splitlines() if line.strip()]
            for line in lines:
                _logger.warning("%s", line)
