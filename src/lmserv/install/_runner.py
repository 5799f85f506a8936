"""The builder's command runner: output into the build log, a tail kept for errors, progress.

Private to :mod:`lmserv.install`: names may change without notice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

from lmserv.errors import BuildError

__all__ = ["Progress", "Runner", "default_progress"]

log = logging.getLogger("lmserv.install.llama_build")  # the builder's messages, one logger

TAIL_LINES = 40
#: ``(done, total, line)`` for each progress line of the compile.
Progress = Callable[[int, int, str], None]


class Runner:
    """Runs a command, appends its output to the log, keeps a tail, reports ``[n/N]`` progress."""

    _NINJA = re.compile(r"^\[(\d+)/(\d+)\]")
    _MAKE = re.compile(r"^\[\s*(\d+)%\]")

    def __init__(
        self, log_path: Path, progress: Progress | None, *, own_group: bool = False
    ) -> None:
        self.log_path = log_path
        self.progress = progress
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        # own_group: each command in a session of its own, so that kill() stops its children
        # too (npm runs node); for a runner in a thread, which Ctrl-C does not stop by itself.
        self._own_group = own_group and hasattr(os, "killpg")
        self._proc: subprocess.Popen[str] | None = None
        self._killed = False

    def kill(self) -> None:
        """Stop the command running now (with its children when ``own_group``), and any later
        one; called from another thread."""
        self._killed = True
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        if self._own_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()

    def run(
        self,
        cmd: list[str],
        what: str,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        captured: list[str] = []
        with self.log_path.open("a", encoding="utf-8", errors="replace") as logf:
            logf.write(f"\n$ {' '.join(cmd)}\n")
            logf.flush()
            if self._killed:
                raise BuildError(f"llama.cpp {what} was not run: the build stopped")
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=self._own_group,
            )
            self._proc = proc
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                line = line.rstrip("\n")
                self.tail.append(line)
                captured.append(line)
                self._report(line)
            code = proc.wait()
        if code != 0:
            tail = "\n".join(self.tail)
            raise BuildError(
                f"llama.cpp {what} failed (exit {code}). Full log: {self.log_path}\n"
                f"Last lines:\n{tail}",
                log_path=self.log_path,
                log_tail=tail,
            )
        return "\n".join(captured)

    def _report(self, line: str) -> None:
        if self.progress is None:
            return
        m = self._NINJA.match(line)
        if m:
            self.progress(int(m.group(1)), int(m.group(2)), line)
            return
        m = self._MAKE.match(line)
        if m:
            self.progress(int(m.group(1)), 100, line)


def default_progress() -> tuple[Progress, Callable[[], None]]:
    """A tqdm bar on a TTY; otherwise an INFO log line every 10%."""
    if sys.stderr.isatty():
        from tqdm import tqdm  # only needed for interactive builds

        bar = tqdm(total=0, unit="step", desc="compiling llama.cpp", dynamic_ncols=True)

        def on_tty(done: int, total: int, _line: str) -> None:
            if bar.total != total:
                bar.reset(total=total)
            bar.n = done
            bar.refresh()

        return on_tty, bar.close
    last = [-1]

    def on_log(done: int, total: int, _line: str) -> None:
        decile = done * 10 // max(total, 1)
        if decile != last[0]:
            last[0] = decile
            log.info("compiling llama.cpp: %d/%d steps", done, total)

    return on_log, lambda: None
