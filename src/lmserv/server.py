"""Run and supervise one ``llama-server`` process.

:class:`LlamaServer` starts the real binary with an argument list (never a shell), waits until
it answers ``/health`` with 200, and stops it with SIGTERM, then SIGKILL after a grace period.
The process cannot outlive Python: on Linux it gets a parent-death signal, elsewhere an
``atexit`` handler stops it. Its log (stdout and stderr) goes to a file; :meth:`log_tail`
returns recent lines and :attr:`LlamaServer.info` what the server actually did (layers
offloaded to which device, context size, slots, build).

llama-server runs at its default log level: its debug level (``-lv 4``) would log libllama's
load report but also every request, at a cost of a few percent in throughput. What that report
said is read elsewhere while the model loads (:mod:`lmserv._server_facts`: the GGUF header, the
build's backends, the GPUs present).

Facts about llama-server this relies on (pinned commit, ``tools/server``): with ``--port 0``
it binds a free port and logs ``listening on http://HOST:PORT``; every path answers 503 until
the model is loaded; a bad model path exits with code 1 after ``failed to open GGUF file``.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO

import httpx

from lmserv._fs import require_model_file
from lmserv._inputs import check_api_key
from lmserv._process import Supervised, spawn_llama_server, terminate
from lmserv._server_facts import LaunchFacts
from lmserv._server_info import (
    ServerInfo,
    _build_from_props,
    _http_get,
    _parse_info,
    _serves_page,
    _with_facts,
)
from lmserv.client._client import DEFAULT_TIMEOUT, Client
from lmserv.errors import (
    BinaryNotFound,
    ConfigError,
    ServerError,
    ServerStartError,
    ServerTimeout,
    WorkerError,
)
from lmserv.gpu._split import SplitOptions, llama_server_args, normalize_endpoints
from lmserv.install.finder import find_binary
from lmserv.rpc import check_endpoints, is_loopback

__all__ = ["LlamaServer", "ServerInfo"]

log = logging.getLogger(__name__)

_LISTENING = re.compile(r"listening on (https?://\S+)")
_SERIAL = itertools.count()


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


def _is_loopback(host: str) -> bool:
    # llama-server also listens on a unix socket when the host ends in ".sock": local only.
    return host == "" or host.endswith(".sock") or is_loopback(host)


class LlamaServer(Supervised):
    """One supervised ``llama-server`` serving ``model``.

    >>> with LlamaServer("model.gguf") as server:          # doctest: +SKIP
    ...     print(server.client().complete("Hello", max_tokens=8).text)

    Arguments map to llama-server's flags; ``None`` leaves llama-server's own default:
    ``n_ctx`` (``-c``, the context llama.cpp allocates, as ``Llama(n_ctx=...)``; the slots share
    it; default from the model), ``n_gpu_layers`` (``-ngl``; ``"auto"`` lets llama.cpp fit as
    many layers as free memory allows, ``"all"`` or a number), ``parallel`` (``-np``; default
    4 slots sharing one KV cache), ``api_key``, ``rpc`` (``host:port`` workers; each is probed
    before start, and a dead one raises :class:`~lmserv.errors.WorkerError` naming it).
    Multi-GPU: a :class:`~lmserv.SplitOptions` as ``split=`` (as ``Llama`` takes it), or its
    fields as keywords: ``split_mode`` (``"layer"``, ``"tensor"``, ``"none"``),
    ``tensor_split`` (shares per device), ``main_gpu``, ``devices`` (names such as ``"CUDA0"``
    or GPU indices); validated before start, see ``docs/distributed.md``. ``extra_args`` are appended verbatim (e.g. ``("--embeddings", "--pooling",
    "mean")``). ``ui=False`` turns off the chat page at ``/`` (``--no-ui``); whether the
    build has one is :attr:`ServerInfo.ui`. ``port=None`` lets the OS pick a free port (``--port 0``), so two servers never
    race for one. ``binary`` defaults to the finder's ``llama-server``. ``mmproj`` is a vision
    model's multimodal projector (``--mmproj``; a hub pull of a vision repository brings it).

    Its lifecycle is :class:`~lmserv.RpcWorker`'s: ``start()``, ``stop(timeout)``, ``wait()``,
    ``running``, ``pid``, ``port``, ``returncode``, ``command()``, ``log_path``, ``log_tail()``
    and ``with``. ``ctx_size=`` and ``args()`` are the deprecated old names of ``n_ctx=`` and
    ``command()``.

    Raises :class:`~lmserv.errors.BinaryNotFound` (no binary), :class:`ServerStartError`
    (the process exited: exit code and its last log lines attached), or :class:`ServerTimeout`.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_ctx: int | None = None,
        n_gpu_layers: int | str = "auto",
        parallel: int | None = None,
        api_key: str | None = None,
        rpc: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        binary: str | os.PathLike[str] | None = None,
        metrics: bool = True,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 600.0,
        stop_timeout: float = 10.0,
        # multi-GPU (issue 7)
        split_mode: str | None = None,
        tensor_split: str | Sequence[float] | None = None,
        main_gpu: int | None = None,
        devices: str | Sequence[str | int] | None = None,
        split: SplitOptions | None = None,
        ctx_size: int | None = None,
        ui: bool = True,
        mmproj: str | os.PathLike[str] | None = None,
    ) -> None:
        if ctx_size is not None:
            _deprecated("LlamaServer(ctx_size=...)", "n_ctx=")
            if n_ctx is not None and n_ctx != ctx_size:
                raise ConfigError(
                    f"n_ctx={n_ctx} and ctx_size={ctx_size} disagree; pass n_ctx only"
                )
            n_ctx = ctx_size
        if split is not None:
            if any(v is not None for v in (split_mode, tensor_split, main_gpu, devices)):
                raise ConfigError(
                    "pass the multi-GPU options either as split=SplitOptions(...) or as "
                    "split_mode/tensor_split/main_gpu/devices keywords, not both"
                )
            split_mode, tensor_split = split.split_mode, split.tensor_split
            main_gpu, devices = split.main_gpu, split.devices
        self.model = Path(model)
        self.mmproj = Path(mmproj) if mmproj is not None else None
        self.host = host
        self._requested_port = port
        self.n_ctx = n_ctx
        self.n_gpu_layers = n_gpu_layers
        self.parallel = parallel
        self.api_key = check_api_key(api_key) if api_key else api_key
        self.rpc = normalize_endpoints(rpc)  # ConfigError for a malformed "host:port"
        self.split_mode = split_mode
        self.tensor_split = tensor_split
        self.main_gpu = main_gpu
        self.devices = devices
        self.extra_args = tuple(str(a) for a in extra_args)
        self.binary = Path(binary) if binary is not None else None
        self.metrics = metrics
        self.ui = ui
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._log_path_arg = Path(log_path) if log_path is not None else None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._startup: list[str] = []
        self._log_offset = 0
        self._partial = b""
        self._url: str | None = None
        self._info: ServerInfo | None = None
        self._facts: LaunchFacts | None = None
        self._lock = threading.Lock()

    # -- arguments ------------------------------------------------------------------------
    @property
    def ctx_size(self) -> int | None:
        """Deprecated: the old name of :attr:`n_ctx`."""
        _deprecated("LlamaServer.ctx_size", "n_ctx")
        return self.n_ctx

    def args(self) -> list[str]:
        """Deprecated: the old name of :meth:`command`."""
        _deprecated("LlamaServer.args()", "command()")
        return self.command()

    def command(self) -> list[str]:
        """The argument list that :meth:`start` runs (binary resolved; no shell involved)."""
        binary = self.binary or find_binary("llama-server")
        if not binary.is_file():
            raise BinaryNotFound(
                f"llama-server binary {str(binary)!r} (given as binary=) does not exist; "
                "omit binary= to use the one `lmserv build` made",
                name="llama-server",
                searched=(str(binary),),
            )
        argv = [str(binary), "-m", str(self.model), "--host", self.host]
        if self.mmproj is not None:
            argv += ["--mmproj", str(self.mmproj)]
        port = self._requested_port
        argv += ["--port", str(port if port is not None else 0)]
        if self.n_ctx is not None:
            argv += ["-c", str(self.n_ctx)]
        if self.n_gpu_layers != "auto":
            argv += ["-ngl", str(self.n_gpu_layers)]
        if self.parallel is not None:
            argv += ["-np", str(self.parallel)]
        argv += self._distributed_args()
        if self.metrics:
            argv += ["--metrics"]
        if not self.ui:
            argv += ["--no-ui"]
        argv += list(self.extra_args)
        return argv

    def _distributed_args(self) -> list[str]:
        """``--rpc`` and the multi-GPU flags, validated (issue 7; lmserv.gpu._split)."""
        return llama_server_args(
            self.model,
            rpc=self.rpc,
            split_mode=self.split_mode,
            tensor_split=self.tensor_split,
            main_gpu=self.main_gpu,
            devices=self.devices,
            extra_args=self.extra_args,
            ctx_size=self.n_ctx,
            parallel=self.parallel,
        )

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.api_key:
            env["LLAMA_API_KEY"] = self.api_key  # not on the command line, where `ps` shows it
        return env

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def port(self) -> int | None:
        """The port in use once started (chosen by the OS when ``port=None`` was given);
        before that, the one asked for."""
        if self._url is not None:
            return urllib.parse.urlsplit(self._url).port
        return self._requested_port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the running server; raises :class:`ServerError` before start."""
        if self._url is None:
            raise ServerError("LlamaServer has no URL yet: call start() (or use `with`) first")
        return self._url

    @property
    def info(self) -> ServerInfo:
        """What the started server did (see :class:`ServerInfo`); after :meth:`start`."""
        if self._info is None:
            raise ServerError("LlamaServer.info is known after start(): call start() first")
        return self._info

    def client(self, *, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT) -> Client:
        """A :class:`~lmserv.client.Client` bound to this server (and its api key)."""
        return Client(self.base_url, api_key=self.api_key, timeout=timeout)

    def start(self) -> LlamaServer:
        """Start llama-server and wait until ``/health`` answers 200; return ``self``.

        Fails fast with :class:`ServerStartError` if the process exits while loading, and with
        :class:`ServerTimeout` after ``start_timeout`` seconds; either way nothing is left running.
        A missing model file is :class:`~lmserv.errors.ModelNotFound`, before anything starts.
        """
        with self._lock:
            if self.running:
                return self
            if not _is_loopback(self.host) and not self.api_key:
                log.warning(
                    "llama-server will listen on %s without an API key: anyone who can reach "
                    "this host can use it; pass api_key=... (or `--api-key`)",
                    self.host,
                )
            require_model_file(self.model)  # the same error as Llama and plan_offload
            argv = self.command()
            check_endpoints(self.rpc)  # a dead worker: WorkerError naming it, not an abort/hang
            self._launch(argv)
            try:
                self._wait_ready()
            except ServerStartError as exc:
                self._terminate()
                if self.rpc:  # a worker that died after the probe aborts llama-server
                    try:
                        check_endpoints(self.rpc, timeout=1.0)
                    except WorkerError as dead:
                        raise WorkerError(
                            f"{dead} llama-server stopped with code {exc.returncode} "
                            "while using it.",
                            endpoint=dead.endpoint,
                            returncode=exc.returncode,
                            log_tail=exc.log_tail,
                        ) from exc
                raise
            except BaseException:
                self._terminate()
                raise
        return self

    def _open_log(self) -> IO[bytes]:
        return self._fresh_log_path("llama-server", f"{os.getpid()}-{next(_SERIAL)}").open("wb")

    def _launch(self, argv: list[str]) -> None:
        self._startup = []
        self._log_offset = 0
        self._partial = b""
        self._url = None
        self._info = None
        log.info("starting %s", " ".join(argv))
        with self._open_log() as out:
            # Linux: SIGKILL if Python dies (RpcWorker asks for SIGTERM); atexit covers the rest.
            self._proc = spawn_llama_server(argv, out, death_signal=signal.SIGKILL, env=self._env())
        atexit.register(self._terminate)
        self._facts = LaunchFacts(self.model, Path(argv[0]))  # while the model loads

    def _read_startup(self) -> bool:
        """Read new complete log lines; return True once the listening line was seen."""
        assert self.log_path is not None
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            data = f.read()
        self._log_offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            self._startup.append(line)
            if m := _LISTENING.search(line):
                self._url = m.group(1).rstrip("/")
                return True
        return False

    def _start_error(self, returncode: int) -> ServerStartError:
        tail = self.log_tail(15)
        errors = [line for line in tail.splitlines() if " E " in line or "error" in line.lower()]
        reason = errors[0].strip() if errors else "(no error line in its log)"
        how = f"exited with code {returncode}"
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            how = f"was killed by {name}"
            if name == "SIGILL":
                reason = (
                    "illegal instruction: this llama.cpp build uses CPU instructions the "
                    "machine does not run (rebuild without GGML_NATIVE, or try another quant)"
                )
        return ServerStartError(
            f"llama-server {how} while starting with model "
            f"{str(self.model)!r}: {reason}\nlast log lines ({self.log_path}):\n{tail}",
            returncode=returncode,
            log_tail=tail,
        )

    def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.start_timeout
        # 1) the listening line (with --port 0 it carries the real port)
        while not self._read_startup():
            time.sleep(0.001)  # a file read per ms is cheap; coarser polling shows as start latency
            if (code := proc.poll()) is not None:
                raise self._start_error(code)
            if time.monotonic() > deadline:
                raise ServerTimeout(
                    f"llama-server (pid {proc.pid}) did not log 'listening on ...' within "
                    f"{self.start_timeout:.0f}s while loading {str(self.model)!r}; last log lines:\n"
                    f"{self.log_tail(20)}\npass a larger start_timeout= for big models"
                )
        # 2) /health 200 (503 means the model is still loading; /health needs no api key)
        status: object = None
        while True:
            if (code := proc.poll()) is not None:
                raise self._start_error(code)
            try:
                status = _http_get(self.base_url, "/health")
                if status == 200:
                    break
            except (OSError, ValueError) as exc:
                status = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ServerTimeout(
                    f"llama-server at {self.base_url} did not answer /health with 200 within "
                    f"{self.start_timeout:.0f}s (last answer: {status}); last log lines:\n"
                    f"{self.log_tail(20)}"
                )
            time.sleep(0.01)
        info = _parse_info(self._startup, self.base_url, proc.pid, str(self.model))
        if self._facts is not None:
            info = _with_facts(info, self._facts.result(), self.n_gpu_layers)
        if not info.build:
            info = replace(info, build=_build_from_props(self.base_url, self.api_key))
        self._info = info
        if info.chat_template_fallback:
            log.warning(
                "%s has no chat template: llama-server formats chat requests with ChatML, as "
                "Llama does (a base model may answer them poorly); use completions, or pass "
                "extra_args=('--chat-template', NAME)",
                self.model.name,
            )
        self._info = replace(self._info, ui=_serves_page(self.base_url))
        log.info("llama-server ready at %s: %s", self.base_url, self._info.summary())
        if self._info.gpu_unused:
            log.warning(
                "llama-server found a GPU (%s) but put no model weights on it: is this a CPU "
                "build, or n_gpu_layers=0? see LlamaServer.log_path=%s",
                ", ".join(self._info.devices),
                self.log_path,
            )

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop the server (SIGTERM, again after 1 s, SIGKILL after ``timeout`` seconds,
        ``stop_timeout`` by default).

        Returns its exit code: 0 for a graceful stop, 1 when the second SIGTERM was needed.

        Safe to call twice and on a server that was never started (returns ``None``).
        """
        with self._lock:
            return self._terminate(timeout)

    def _terminate(self, timeout: float | None = None) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        with contextlib.suppress(Exception):
            atexit.unregister(self._terminate)

        grace = self.stop_timeout if timeout is None else timeout

        def before_kill() -> None:
            log.warning(
                "llama-server (pid %d) ignored SIGTERM for %.0fs; killing it", proc.pid, grace
            )

        # resend_after: seen under load at 0c1e570 (not reproduced since), a server stopped
        # right after start ignored its first SIGTERM. A second one makes llama-server's
        # handler call exit(1) at once (tools/server/server.cpp, signal_handler).
        code = terminate(proc, grace, resend_after=1.0, before_kill=before_kill)
        self._url = None
        return code

    def __repr__(self) -> str:
        state = f"running at {self._url}" if self.running and self._url else "stopped"
        return f"LlamaServer({str(self.model)!r}, {state})"
