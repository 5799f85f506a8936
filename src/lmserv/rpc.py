"""llama.cpp RPC workers: start and supervise ``ggml-rpc-server``, check endpoints.

A worker exposes the devices of one machine (its GPUs, or its CPU when it has none) to a
``llama-server`` started elsewhere with ``--rpc host:port,...``; the model is then spread over
the workers' devices. lmserv does not implement any of this itself: it runs llama.cpp's own
``ggml-rpc-server`` (built by ``build_llama_cpp(..., rpc=True)`` / ``lmserv build --rpc``).

Security: the RPC protocol has **no authentication and no encryption**. Anyone who can reach a
worker's port can run code on its devices and read its memory. Keep workers on loopback (the
default) or on a trusted private network; binding anything else logs a prominent warning.

Facts about ``ggml-rpc-server`` at the pinned commit (``tools/rpc/rpc-server.cpp`` and
``ggml/src/ggml-rpc/transport.cpp``) that shape this module:

- Flags: ``-H/--host`` (an IPv4 literal: it is passed to ``inet_addr``, so no names and no
  IPv6), ``-p/--port`` (1..65535, no ``0``), ``-c/--cache``, ``-t/--threads``,
  ``-d/--device dev1,dev2``. An unknown flag prints the usage and exits **0**.
- If the port cannot be bound it prints ``Failed to create server socket`` and exits **0**, so
  "the process ended before its port accepted connections" is the failure signal, not the code.
- It serves one client at a time (listen backlog 1); a TCP connect that is then closed is
  harmless to it, but a client that leaves while it writes an answer kills it with SIGPIPE
  unless SIGPIPE is ignored, which :class:`RpcWorker` arranges.
- A ``llama-server --rpc`` whose worker is down aborts at argument parsing
  (``Failed to connect to host:port`` and a backtrace); an unroutable host makes it wait for the
  system's TCP connect timeout. :func:`check_endpoints` turns both into a clear error first.

Example::

    with RpcWorker(port=None) as a, RpcWorker(port=None) as b:
        with LlamaServer("model.gguf", rpc=[a.endpoint, b.endpoint], n_gpu_layers="all") as srv:
            print(srv.client().complete("one two", max_tokens=8).text)
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmserv._net import is_loopback, normalize_endpoints, parse_endpoint
from lmserv._process import Supervised, free_port, spawn, terminate
from lmserv.errors import ConfigError, WorkerError
from lmserv.install.finder import find_binary

__all__ = [
    "DEFAULT_RPC_PORT",
    "SECURITY_WARNING",
    "RpcWorker",
    "check_endpoints",
    "is_loopback",
    "parse_endpoint",
    "probe_endpoint",
]

logger = logging.getLogger(__name__)

DEFAULT_RPC_PORT = 50052
RPC_BINARY = "ggml-rpc-server"

SECURITY_WARNING = (
    "the llama.cpp RPC protocol has NO authentication and NO encryption: anyone who can reach "
    "{endpoint} can use this machine's devices and read their memory. Run workers only on a "
    "trusted private network (or keep the default 127.0.0.1 and tunnel over SSH)."
)

_START_TIMEOUT = 30.0
_STOP_GRACE = 5.0
_PORT_RETRIES = 3


# --------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------


# How to probe a worker without harming it. ggml-rpc-server serves one client at a time
# (listen backlog 1) and writes with plain send(): a client that sends a request and leaves
# before the answer kills the worker with SIGPIPE when the answer is written (seen at the pinned
# commit: a queued probe that timed out and closed took the worker down later). So the probe
# sends nothing: it connects and half-closes. A free worker accepts, reads end-of-stream where
# it expects the HELLO command, and closes without writing; the probe sees that close. A busy
# worker leaves the connection queued, so no close arrives within the timeout; when it gets to
# the connection later, it reads end-of-stream and drops it, again without writing.


def _probe(sock: socket.socket) -> None:
    sock.shutdown(socket.SHUT_WR)
    try:
        data = sock.recv(64)
    except ConnectionResetError:
        return  # closed by the worker, abortively: it was free
    if data:
        raise ValueError(f"it sent {len(data)} bytes unasked, which ggml-rpc-server never does")


def probe_endpoint(endpoint: str, *, timeout: float = 2.0) -> None:
    """Check that a ``ggml-rpc-server`` at ``endpoint`` is free to serve now.

    Connects, half-closes and waits up to ``timeout`` seconds for the worker to close the
    connection, which is what a free worker does with a client that sends nothing; it never
    sends anything itself (see the comment above for why). Raises :class:`WorkerError` naming
    the worker when nothing accepts the connection, when the connection stays unanswered (a
    worker serves one client at a time, so it is busy with another ``llama-server``, or the
    port is another program's), or when the other side sends data (not a ``ggml-rpc-server``).
    """
    host, port = parse_endpoint(endpoint)
    name = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        what = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise WorkerError(
            f"RPC worker {name} is not reachable ({what}, timeout {timeout:g}s). Start it "
            f"on that machine with `lmserv worker --host <its address> --port {port}` (or "
            "RpcWorker), check the address and any firewall, or remove it from rpc=[...].",
            endpoint=name,
        ) from exc
    with sock:
        try:
            _probe(sock)
        except TimeoutError as exc:
            raise WorkerError(
                f"RPC worker {name} accepted the connection but did not take it up within "
                f"{timeout:g}s. A worker serves one client at a time: it is probably in use by "
                "another llama-server (stop that one, or start another worker); or the port "
                "belongs to a program that is not ggml-rpc-server.",
                endpoint=name,
            ) from exc
        except (OSError, ValueError) as exc:
            raise WorkerError(
                f"RPC worker {name} does not behave like ggml-rpc-server ({exc}); check that "
                "the port is the worker's.",
                endpoint=name,
            ) from exc


def check_endpoints(endpoints: Iterable[str], *, timeout: float = 2.0) -> list[str]:
    """Validate and probe every RPC endpoint; return them normalised as ``"host:port"``.

    Raises :class:`ConfigError` for a malformed or repeated endpoint and :class:`WorkerError`
    naming the first worker that does not answer within ``timeout`` seconds (see
    :func:`probe_endpoint`).
    """
    normalised = list(normalize_endpoints(list(endpoints)))
    for text in normalised:
        probe_endpoint(text, timeout=timeout)
    return normalised


# --------------------------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------------------------


def _bind_problem(host: str, port: int | None) -> str | None:
    """Why ``ggml-rpc-server`` could not bind ``host:port`` (``port=None``: any port), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option as ggml-rpc-server, so a port in TIME_WAIT counts as free as it does for it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port or 0))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    "the port is already in use (another worker?). Stop that process, or choose "
                    "another port (port=None picks a free one)"
                )
            return (
                f"the address cannot be bound ({exc.strerror or exc}); use 127.0.0.1, 0.0.0.0 "
                "or one of this machine's own IPv4 addresses"
            )
    return None


def _connect_host(host: str) -> str:
    """Where to connect to reach a server bound to ``host`` (a wildcard bind is reached locally)."""
    return "127.0.0.1" if host == "0.0.0.0" else host


# --------------------------------------------------------------------------------------------
# RpcWorker
# --------------------------------------------------------------------------------------------

# Workers still running when the interpreter exits are stopped: the safety net where the
# parent-death signal does not exist (macOS, Windows) or the caller forgot ``stop()``.
_LIVE: weakref.WeakSet[RpcWorker] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for worker in list(_LIVE):
        with contextlib.suppress(Exception):
            worker.stop(timeout=2.0)


class RpcWorker(Supervised):
    """One supervised ``ggml-rpc-server`` process.

    ``host`` must be an IPv4 address (``ggml-rpc-server`` does not resolve names); the default
    ``127.0.0.1`` is only reachable from this machine. ``port=None`` picks a free port (retried if
    another process takes it first). ``cache`` enables the worker's local tensor cache
    (``$LLAMA_CACHE/rpc`` or ``~/.cache/llama.cpp/rpc``), which makes later loads of the same
    model much faster. ``threads`` sets its CPU threads; ``device`` restricts the exposed devices
    (e.g. ``"CUDA0"`` or ``["CUDA0", "CUDA1"]``). ``binary`` overrides where ``ggml-rpc-server``
    is found. ``log_path`` receives the worker's stdout and stderr (default: a new file in
    lmserv's cache folder, ``logs/rpc-worker-*.log``, of which the newest 20 are kept).

    ``start()`` returns once the port accepts TCP connections and raises :class:`WorkerError`
    (with ``returncode`` and ``log_tail``) as soon as the process exits instead; ``stop()`` sends
    SIGTERM, then SIGKILL after ``stop_timeout`` seconds. On Linux the worker also gets SIGTERM if
    the Python process dies. Bad arguments raise :class:`ConfigError` at construction.

    Its lifecycle is :class:`~lmserv.LlamaServer`'s: ``start()``, ``stop(timeout)``, ``wait()``,
    ``running``, ``pid``, ``port``, ``returncode``, ``command()``, ``log_path``, ``log_tail()``
    and ``with``; ``stop(grace=...)`` is the deprecated old spelling of ``stop(timeout=...)``.
    """

    _noun = "worker"
    _error = WorkerError

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = DEFAULT_RPC_PORT,
        *,
        cache: bool = False,
        threads: int | None = None,
        device: str | Sequence[str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = _START_TIMEOUT,
        stop_timeout: float = _STOP_GRACE,
    ) -> None:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(
                f"RPC worker host {host!r} is not an IPv4 address; ggml-rpc-server binds only IPv4 "
                "literals: use '127.0.0.1' (this machine only), this machine's LAN address, or "
                "'0.0.0.0' (all interfaces)"
            ) from None
        if port is not None and (isinstance(port, bool) or not 1 <= int(port) <= 65535):
            raise ConfigError(
                f"RPC worker port {port!r} is outside 1..65535; pass a port such as "
                f"{DEFAULT_RPC_PORT}, or port=None for a free one"
            )
        if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
            raise ConfigError(f"RPC worker threads={threads!r} must be a positive integer")
        devices = [device] if isinstance(device, str) else list(device or [])
        for name in devices:
            if not name or any(c.isspace() or c in ",/" for c in name):
                raise ConfigError(
                    f"RPC worker device {name!r} is not a device name; use names such as 'CUDA0' "
                    "(list them with `llama-server --list-devices`)"
                )
        self.host = host
        self._requested_port = None if port is None else int(port)
        self._port = self._requested_port
        self.cache = cache
        self.threads = None if threads is None else int(threads)
        self.devices = tuple(devices)
        self._binary = Path(binary) if binary is not None else None
        self._log_path_arg = Path(log_path) if log_path is not None else None
        self.log_path: Path | None = self._log_path_arg
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- description -------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The port in use (chosen at ``start()`` when ``port=None`` was given)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """``"host:port"`` for ``--rpc`` / ``LlamaServer(rpc=[...])``; a wildcard host is
        reported as ``127.0.0.1`` (other machines must use this machine's address)."""
        if self._port is None:
            raise WorkerError("RpcWorker.endpoint: the worker was given port=None and not started")
        return f"{_connect_host(self.host)}:{self._port}"

    def command(self, port: int | None = None) -> list[str]:
        """The argument list that starts this worker (no shell involved)."""
        binary = self._binary if self._binary is not None else find_binary(RPC_BINARY)
        port = port if port is not None else self._port
        args = [str(binary), "--host", self.host, "--port", str(port or DEFAULT_RPC_PORT)]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        if self.devices:
            args += ["--device", ",".join(self.devices)]
        if self.cache:
            args.append("--cache")
        return args

    def exposed_devices(self, timeout: float = 2.0) -> list[str]:
        """The devices the running worker exposes, as its log lists them (``"CPU: ... (N MiB, ...)"``).

        ``ggml-rpc-server`` writes that list to a buffered stdout that is flushed when its first
        client connects (the readiness probe does), so this waits up to ``timeout`` seconds for
        it; ``[]`` if it never appears.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_tail(200)
            lines = text.splitlines()
            if "Devices:" in lines and any(line.strip().startswith("transport") for line in lines):
                start = lines.index("Devices:") + 1
                found = []
                for line in lines[start:]:
                    if line.strip().startswith("transport") or not line.startswith("  "):
                        break
                    found.append(line.strip())
                return found
            if time.monotonic() > deadline or not self.running:
                return []
            time.sleep(0.05)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RpcWorker(host={self.host!r}, port={self._port!r}, {state})"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> RpcWorker:
        """Start the worker and wait until its port accepts connections; return ``self``.

        Raises :class:`WorkerError` if it exits first (with its exit code and log tail), does
        not listen within ``start_timeout``, or the requested port is already taken;
        :class:`~lmserv.errors.BinaryNotFound` if ``ggml-rpc-server`` is not built.
        """
        with self._lock:
            if self.running:
                return self
            if not is_loopback(self.host):
                logger.warning(
                    "RPC worker binding %s:%s. SECURITY WARNING: %s",
                    self.host,
                    self._requested_port or "(free port)",
                    SECURITY_WARNING.format(
                        endpoint=f"{self.host}:{self._requested_port or '<port>'}"
                    ),
                )
            tries = _PORT_RETRIES if self._requested_port is None else 1
            for attempt in range(1, tries + 1):
                problem = _bind_problem(self.host, self._requested_port)
                if problem is not None:
                    where = f"{self.host}:{self._requested_port or '<free port>'}"
                    raise WorkerError(
                        f"cannot start RPC worker on {where}: {problem}.", endpoint=where
                    )
                port = self._requested_port or free_port(self.host)
                try:
                    self._launch(port)
                    return self
                except WorkerError as exc:
                    lost_race = "Failed to create server socket" in exc.log_tail
                    if not (lost_race and attempt < tries):
                        raise
                    logger.info("RPC worker port %s was taken meanwhile; retrying", port)
            raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self, port: int) -> None:
        args = self.command(port)
        # Beside llama-server's logs; only the newest few are kept.
        self._fresh_log_path("rpc-worker", f"{port}-{os.getpid()}")
        assert self.log_path is not None
        logger.info("starting RPC worker: %s (log %s)", args, self.log_path)
        with self.log_path.open("wb") as log:
            # SIGTERM when Python dies (no orphans). Keep SIGPIPE ignored: ggml-rpc-server writes
            # with plain send(), so a llama-server killed while the worker answers it would
            # otherwise kill the worker too; with SIGPIPE ignored the write fails, the worker
            # drops that client and serves the next. On Windows the worker has never had a
            # process group of its own (llama-server has); windows_new_group=False keeps that.
            self._proc = spawn(
                args,
                log,
                death_signal=signal.SIGTERM,
                ignore_sigpipe=True,
                windows_new_group=False,
            )
        self._port = port
        _LIVE.add(self)
        try:
            self._wait_ready(port)
        except BaseException:
            self._terminate()
            raise

    def _wait_ready(self, port: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        target = (_connect_host(self.host), port)
        delay = 0.005
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                raise WorkerError(
                    f"RPC worker {self.host}:{port} exited with code {code} before accepting "
                    f"connections. Last log lines:\n{tail or '(empty log)'}\n"
                    f"Full log: {self.log_path}",
                    endpoint=f"{self.host}:{port}",
                    returncode=code,
                    log_tail=tail,
                )
            try:
                # Ready means it takes up a connection, not merely that the port is open.
                with socket.create_connection(target, timeout=2.0) as sock:
                    _probe(sock)
            except (OSError, ValueError):
                pass
            else:
                if self._proc.poll() is None:
                    logger.info("RPC worker ready at %s:%s (pid %s)", self.host, port, self.pid)
                    return
            if time.monotonic() > deadline:
                tail = self.log_tail()
                raise WorkerError(
                    f"RPC worker {self.host}:{port} did not accept connections within "
                    f"{self.start_timeout:g}s (waiting for its TCP port to listen). Last log "
                    f"lines:\n{tail or '(empty log)'}\nFull log: {self.log_path}",
                    endpoint=f"{self.host}:{port}",
                    log_tail=tail,
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def stop(self, timeout: float | None = None, *, grace: float | None = None) -> int | None:
        """Stop the worker: SIGTERM, then SIGKILL after ``timeout`` seconds (``stop_timeout``
        by default). Safe to call twice.

        Returns the exit code (``None`` if it was never started).
        """
        if grace is not None:
            warnings.warn(
                "RpcWorker.stop(grace=...) is deprecated; use stop(timeout=...)",
                DeprecationWarning,
                stacklevel=2,
            )
            timeout = grace if timeout is None else timeout
        with self._lock:
            return self._terminate(timeout)

    def _terminate(self, timeout: float | None = None) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        return terminate(
            proc,
            self.stop_timeout if timeout is None else timeout,
            before_kill=lambda: logger.warning(
                "RPC worker pid %s ignored SIGTERM; killing it", proc.pid
            ),
        )
