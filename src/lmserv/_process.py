"""Process-supervision plumbing shared by :class:`~lmserv.server.LlamaServer`,
:class:`~lmserv.rpc.RpcWorker` and :class:`~lmserv.service.ModelService`.

Each runs a llama.cpp binary as a child that must never outlive Python, log to a file rather
than a pipe, and stop with SIGTERM before SIGKILL. The two classes differ in details that
matter to their binaries (which signal a dying parent sends, whether SIGPIPE stays ignored,
how long a stop may take); those are parameters here, and each class passes its own.

Everything here is private: names may change without notice.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, TypeVar

from lmserv import config
from lmserv.errors import LmservError, ServerError, ServerStartError

__all__ = [
    "LOG_KEEP",
    "Supervised",
    "free_port",
    "new_log_path",
    "parent_death_hook",
    "prune_logs",
    "read_tail",
    "spawn",
    "spawn_llama_server",
    "terminate",
]

LOG_KEEP = 20  # old log files of one kind kept in the logs folder

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_T = TypeVar("_T")


def parent_death_hook(
    death_signal: signal.Signals, *, ignore_sigpipe: bool = False
) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``death_signal`` when Python dies, or ``None``.

    Linux only (``prctl(PR_SET_PDEATHSIG)``). The signal fires when the *thread* that forked
    exits, not the process: fork only from a thread that lives as long as Python (the main
    thread, or :func:`_in_forker`'s). libc and the parent's pid are looked up before ``fork``,
    so the hook itself only calls ``prctl``; its ``getppid`` check covers a parent that died
    between ``fork`` and ``prctl`` (then nobody would signal the child). ``ignore_sigpipe``
    also sets SIGPIPE to ignored in the child, even if the parent did not ignore it.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None).prctl  # libc is already loaded into Python itself
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    signum = int(death_signal)

    def hook() -> None:
        if ignore_sigpipe:
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return hook


_forker_lock = threading.Lock()
_forker_jobs: queue.SimpleQueue[tuple[Callable[[], object], Future[object]]] | None = None


def _forker_loop(jobs: queue.SimpleQueue[tuple[Callable[[], object], Future[object]]]) -> None:
    while True:
        job, result = jobs.get()
        if result.set_running_or_notify_cancel():
            try:
                result.set_result(job())
            except BaseException as exc:  # handed to the thread that asked
                result.set_exception(exc)


def _in_forker(job: Callable[[], _T]) -> _T:
    """Run ``job`` (a ``Popen``) in one long-lived daemon thread, started on first use.

    ``PR_SET_PDEATHSIG`` follows the thread that forked: a child forked by a short-lived thread
    (a web handler, a ``ThreadPoolExecutor`` worker) would be killed when that thread ends, and
    a child forked without it would outlive a Python killed by SIGKILL (no ``atexit`` runs
    then). This thread never ends before the process does, so the signal fires exactly when
    Python dies, whichever thread asked for the child.
    """
    global _forker_jobs
    with _forker_lock:
        if _forker_jobs is None:
            _forker_jobs = queue.SimpleQueue()
            threading.Thread(
                target=_forker_loop, args=(_forker_jobs,), name="lmserv-forker", daemon=True
            ).start()
        jobs = _forker_jobs
    result: Future[object] = Future()
    jobs.put((job, result))
    return result.result()  # type: ignore[return-value]


def _forget_forker() -> None:
    # A forked child has no copy of the thread: it starts its own on first use.
    global _forker_jobs, _forker_lock
    _forker_jobs = None
    _forker_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_forker)


def spawn(
    argv: Sequence[str],
    log: IO[bytes],
    *,
    death_signal: signal.Signals,
    env: dict[str, str] | None = None,
    ignore_sigpipe: bool = False,
    windows_new_group: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (an argument list, never a shell) with stdout and stderr into ``log``.

    The log is a file, not a pipe: a busy Python process could leave a pipe full, which would
    stall the child's logging and then the child itself. On POSIX the child gets its own
    session, so Ctrl-C in a terminal reaches Python (which then stops it cleanly), not the
    child; on Linux it also gets ``death_signal`` when Python dies (:func:`parent_death_hook`),
    whichever thread calls this: off the main thread, the fork happens in a long-lived thread
    (:func:`_in_forker`), so the child neither dies with the calling thread nor outlives Python.
    On Windows ``windows_new_group`` starts it in a new process group for the same reason.

    ``ignore_sigpipe`` keeps SIGPIPE ignored in the child (Python ignores it, and an ignored
    signal stays ignored across ``exec`` when ``restore_signals`` is off): a program that
    writes to sockets with plain ``send()`` then sees a failed write instead of dying when a
    client leaves. Raises ``OSError`` when the program cannot be run.
    """
    kwargs: dict[str, object] = {}
    hook = None
    if sys.platform == "win32":
        if windows_new_group:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    else:
        kwargs["start_new_session"] = True
        hook = parent_death_hook(death_signal, ignore_sigpipe=ignore_sigpipe)
        if hook is not None:
            kwargs["preexec_fn"] = hook

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            restore_signals=not ignore_sigpipe,
            **kwargs,
        )

    if hook is not None and threading.current_thread() is not threading.main_thread():
        return _in_forker(popen)
    return popen()


def spawn_llama_server(
    argv: Sequence[str], log: IO[bytes], *, death_signal: signal.Signals, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """:func:`spawn` for llama-server (single model or router): a binary that cannot be run is
    a :class:`~lmserv.errors.ServerStartError` that says what to do."""
    try:
        return spawn(argv, log, death_signal=death_signal, env=env)
    except OSError as exc:
        raise ServerStartError(
            f"could not run {argv[0]!r}: {exc}; check that it is an executable "
            "llama-server for this machine (or rebuild with `lmserv build`)"
        ) from exc


def terminate(
    proc: subprocess.Popen[bytes],
    grace: float,
    *,
    resend_after: float | None = None,
    before_kill: Callable[[], None] | None = None,
) -> int | None:
    """Stop ``proc``: SIGTERM, then SIGKILL once ``grace`` seconds have passed; its exit code.

    ``resend_after`` sends a second SIGTERM if the process still runs after that many seconds
    (at most ``grace``), for programs whose first SIGTERM asks for a graceful stop and whose
    second forces one. ``before_kill`` runs just before the SIGKILL (to log why). A process
    that has already exited is left alone; one that vanishes meanwhile is not an error.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        remaining = grace
        if resend_after is not None:
            try:
                proc.wait(min(resend_after, grace))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            remaining = max(0.0, grace - resend_after)
        try:
            proc.wait(remaining)
        except subprocess.TimeoutExpired:
            if before_kill is not None:
                before_kill()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    return proc.returncode


def free_port(host: str) -> int:
    """A TCP port on IPv4 ``host`` that is free now (bound to port 0, then released).

    Another process may take it before the caller binds it: callers retry on that race.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def read_tail(path: Path, lines: int, *, max_bytes: int) -> str:
    """The last ``lines`` lines of the file at ``path``, from at most its last ``max_bytes``.

    Reads only the end, so a long-running child's large log costs nothing; undecodable bytes
    are replaced. A missing or unreadable file, or ``lines <= 0``, gives ``""``: this feeds
    error messages, which must not fail themselves.
    """
    if lines <= 0:
        return ""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def prune_logs(folder: Path, pattern: str, keep: int) -> None:
    """Delete the oldest files matching ``pattern`` in ``folder`` (by mtime), keeping ``keep``.

    Every start writes a new log, so without this the logs folder grows forever. A file that
    cannot be deleted is left (another process may be pruning too).
    """
    stamped: list[tuple[float, Path]] = []
    for path in folder.glob(pattern):
        with contextlib.suppress(OSError):  # already pruned by a concurrent start
            stamped.append((path.stat().st_mtime, path))
    old = [path for _, path in sorted(stamped)]
    for stale in old[: max(0, len(old) - keep)]:
        with contextlib.suppress(OSError):
            stale.unlink()


def new_log_path(prefix: str, tag: str, *, keep: int = LOG_KEEP) -> Path:
    """A fresh log path ``<cache>/logs/<prefix>-<YYYYmmdd-HHMMSS>-<tag>.log``.

    The folder is created, and older ``<prefix>-*.log`` files are pruned to the newest
    ``keep`` first (:func:`prune_logs`). ``tag`` (pid, port, a counter) keeps two starts in
    the same second apart.
    """
    folder = config.cache_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    prune_logs(folder, f"{prefix}-*.log", keep)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return folder / f"{prefix}-{stamp}-{tag}.log"


_S = TypeVar("_S", bound="Supervised")


class Supervised:
    """The surface the supervising classes share, under the same names: ``running``, ``pid``,
    ``returncode``, ``wait``, ``log_tail`` and the ``with`` statement (``start`` / ``stop``).

    A subclass implements ``start`` (which sets ``_proc`` and ``log_path``) and ``stop``, and
    names itself in ``_noun`` and the error ``wait`` raises before a start in ``_error``.
    """

    _proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _log_path_arg: Path | None = None  # the log_path= given to the constructor
    _noun: ClassVar[str] = "server"
    _error: ClassVar[type[LmservError]] = ServerError
    _tail_bytes_per_line: ClassVar[int] = 256

    def start(self: _S) -> _S:
        raise NotImplementedError

    def stop(self) -> int | None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process ended (``None`` while running or never started)."""
        return self._proc.returncode if self._proc is not None else None

    def wait(self, timeout: float | None = None) -> int:
        """Block until the process exits (e.g. ``lmserv serve`` in the foreground); its code."""
        if self._proc is None:
            raise self._error(
                f"{type(self).__name__}.wait(): the {self._noun} was never started; call start()"
            )
        return self._proc.wait(timeout)

    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines of the process's log (the whole log is at ``log_path``;
        ``""`` before the first start)."""
        if self.log_path is None:
            return ""
        return read_tail(self.log_path, lines, max_bytes=self._tail_bytes_per_line * lines)

    def _fresh_log_path(self, kind: str, tag: str) -> Path:
        """This start's log: the ``log_path=`` given, else a new file of ``kind`` in lmserv's
        logs folder (:func:`new_log_path`); its folder made, ``log_path`` set."""
        path = self._log_path_arg if self._log_path_arg is not None else new_log_path(kind, tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = path
        return path

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
