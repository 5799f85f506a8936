"""The model service: one endpoint for every local model, loaded on demand, unloaded when idle.

:class:`ModelService` runs llama-server's own router mode (no model, ``--models-preset``) over
lmserv's models folder: a request names its model (``"model"`` in the body, as with OpenAI's
API) and the router starts an instance for it on first use, keeps at most ``max_models``
loaded (evicting the least recently used), and each instance frees its model after
``keep_alive`` idle seconds (``--sleep-idle-seconds``; the instance wakes on the next request).
No proxy or scheduler of lmserv's own sits in the request path.

Names: catalog models by catalog name and aliases, any other ``.gguf`` by its file stem
(:mod:`lmserv._service_preset`). A watcher thread rebuilds the preset and asks the router to
reload it when the folder changes, so a pulled or removed model appears or disappears without
a restart; it also follows the router's log (for ``echo`` and each model's last request).

Security: the API key reaches llama-server in ``LLAMA_API_KEY``; the router does not pass the
option to its instances, but they inherit its environment, so every instance checks the key
too, and the router forwards the caller's ``Authorization`` header to them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from lmserv import config
from lmserv._process import Supervised, free_port, spawn_llama_server, terminate
from lmserv._server_info import _serves_page
from lmserv._service_preset import folder_snapshot, parse_keep_alive, preset_models, render_preset
from lmserv._service_state import (
    ServiceLock,
    ServiceState,
    private_dir,
    read_state,
    remove_state,
    write_private,
    write_state,
)
from lmserv.client._client import DEFAULT_TIMEOUT, Client
from lmserv.errors import (
    BinaryNotFound,
    ModelNotServed,
    ServerError,
    ServerStartError,
    ServerTimeout,
)
from lmserv.install._catalog import load_catalog
from lmserv.install.finder import find_binary
from lmserv.rpc import is_loopback

__all__ = ["ModelService", "ServedModel", "ServiceState", "find_service", "served_models"]

log = logging.getLogger(__name__)

_PROXYING = re.compile(r"proxying request to model (\S+) on port")
_BIND_FAILED = re.compile(r"couldn't bind|address already in use", re.IGNORECASE)
_HOLDS_MEMORY = ("loaded", "loading")


@dataclass(frozen=True)
class ServedModel:
    """One model of the service and its state now.

    ``state`` is the router's: ``"loaded"``, ``"loading"``, ``"sleeping"`` (idle: the instance
    freed the model and reloads it on the next request), ``"unloaded"`` or ``"failed"`` (its
    instance exited with an error). ``size`` is the bytes of its weights and ``n_ctx`` its
    context, both known while loaded. ``unload_in`` is about how many seconds until the idle
    unload (``None``: never, or not known).
    """

    name: str
    state: str
    aliases: tuple[str, ...] = ()
    size: int | None = None
    n_ctx: int | None = None
    unload_in: float | None = None

    @property
    def holds_memory(self) -> bool:
        """Whether the model occupies memory now (what ``lmserv ps`` lists)."""
        return self.state in _HOLDS_MEMORY

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "aliases": list(self.aliases),
            "size": self.size,
            "n_ctx": self.n_ctx,
            "unload_in": self.unload_in,
        }


def _row_state(row: Mapping[str, Any]) -> str:
    status = row.get("status")
    if not isinstance(status, Mapping):
        return "unknown"
    if status.get("failed"):
        return "failed"
    return str(status.get("value", "unknown"))


def served_models(
    client: Client,
    *,
    keep_alive: int = -1,
    last_used: Mapping[str, float] | None = None,
) -> list[ServedModel]:
    """The models ``client``'s service offers, with state; context and size of loaded ones.

    ``keep_alive`` (seconds, ``-1`` never) and ``last_used`` (name -> ``time.time()`` of its
    last request) give ``unload_in``; the service's state file carries both.
    """
    now = time.time()
    found = []
    for row in client.models():
        name = str(row.get("id", ""))
        state = _row_state(row)
        size = n_ctx = unload_in = None
        if state in _HOLDS_MEMORY:
            meta = row.get("meta")  # the instance's own /v1/models entry, once it is up
            if isinstance(meta, Mapping):
                size = meta.get("size") if isinstance(meta.get("size"), int) else None
                n_ctx = meta.get("n_ctx") if isinstance(meta.get("n_ctx"), int) else None
            used = (last_used or {}).get(name)
            if keep_alive >= 0 and used is not None:
                unload_in = max(0.0, used + keep_alive - now)
        aliases = tuple(str(a) for a in row.get("aliases", ()) or ())
        found.append(ServedModel(name, state, aliases, size, n_ctx, unload_in))
    return found


def find_service(models_dir: str | os.PathLike[str] | None = None) -> ServiceState | None:
    """The model service running over ``models_dir`` (default: lmserv's models folder), if any.

    Read from its state file (owner-only; ignored when owned by someone else, or when its
    process is gone). The state carries ``url``, ``pid``, ``keep_alive`` and the API key.
    """
    folder = Path(models_dir).expanduser() if models_dir is not None else config.models_dir()
    return read_state(folder)


def _http_status(url: str, api_key: str | None) -> int:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.get(url, headers=headers, timeout=5.0).status_code


class ModelService(Supervised):
    """llama-server's router over a models folder, supervised like :class:`~lmserv.LlamaServer`.

    >>> with ModelService() as service:                                  # doctest: +SKIP
    ...     print(service.client(model="gemma3-270m").chat("Hi", max_tokens=8).text)

    ``models_dir`` defaults to lmserv's models folder. ``max_models`` caps the models loaded at
    once (``None``: llama-server's default, 4; ``0``: no cap). ``keep_alive`` is how long an
    idle model stays loaded (``"5m"``, ``"30s"``, ``0`` after each request, ``-1`` never; see
    :func:`~lmserv._service_preset.parse_keep_alive`). ``port=None`` picks a free port.
    ``ui=False`` turns off the chat page at ``/`` (``--no-ui``); whether the service serves it
    (the build has one) is :attr:`has_page`, known once started. ``echo`` receives each line
    llama-server logs (the CLI prints them to stderr); the full
    log is at :attr:`log_path`. ``state_file`` announces the service to other lmserv commands
    (``lmserv run NAME``, ``ps``, ``stop``); then a second service over the same folder refuses
    to start. Per-model options: the catalog and the config file's ``[models.NAME]`` tables.

    Raises :class:`~lmserv.errors.BinaryNotFound`, :class:`ServerStartError` (llama-server
    exited, or a service already runs over the folder), :class:`ServerTimeout`.
    """

    _noun = "service"

    def __init__(
        self,
        models_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        api_key: str | None = None,
        max_models: int | None = None,
        keep_alive: str | float | None = "5m",
        binary: str | os.PathLike[str] | None = None,
        extra_args: tuple[str, ...] = (),
        ui: bool = True,
        log_path: str | os.PathLike[str] | None = None,
        echo: Callable[[str], None] | None = None,
        state_file: bool = True,
        start_timeout: float = 60.0,
        stop_timeout: float = 20.0,
        watch_interval: float = 0.5,
    ) -> None:
        self.models_dir = (
            config.expand_path(os.fspath(models_dir), what="models_dir")
            if models_dir is not None
            else config.models_dir()
        )
        self.host = host
        self.port = port
        self.api_key = api_key
        self.max_models = max_models
        self.keep_alive = parse_keep_alive(keep_alive)
        self.binary = Path(binary) if binary is not None else None
        self.extra_args = tuple(extra_args)
        self.ui = ui
        self.has_page = False
        self.echo = echo
        self.state_file = state_file
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.watch_interval = watch_interval
        self._log_path_arg = Path(log_path) if log_path is not None else None
        self.log_path: Path | None = None
        self.preset_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._url: str | None = None
        self._lock = threading.Lock()
        self._service_lock: ServiceLock | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._last_used: dict[str, float] = {}
        self._snapshot: tuple[tuple[str, int, int], ...] = ()
        self._preset_text = ""
        self._log_offset = 0
        self._partial = b""

    # -- arguments ------------------------------------------------------------------------
    def args(self, port: int | None = None) -> list[str]:
        """Deprecated name of :meth:`command` (``LlamaServer`` and ``RpcWorker`` say command)."""
        warnings.warn(
            "ModelService.args() is deprecated; use command()", DeprecationWarning, stacklevel=2
        )
        return self.command(port)

    def command(self, port: int | None = None) -> list[str]:
        """The command line :meth:`start` runs (binary resolved; the preset path once started)."""
        binary = self.binary or find_binary("llama-server")
        if not binary.is_file():
            raise BinaryNotFound(
                f"llama-server binary {str(binary)!r} (given as binary=) does not exist; "
                "omit binary= to use the one `lmserv build` made",
                name="llama-server",
                searched=(str(binary),),
            )
        preset = self.preset_path or Path("<preset>")
        argv = [str(binary), "--models-preset", str(preset), "--host", self.host]
        argv += ["--port", str(port if port is not None else self.port or 0)]
        if self.max_models is not None:
            argv += ["--models-max", str(self.max_models)]
        if self.keep_alive >= 0:  # instances inherit the router's flags
            argv += ["--sleep-idle-seconds", str(self.keep_alive)]
        if not self.ui:
            argv += ["--no-ui"]
        return [*argv, "--metrics", *self.extra_args]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("LLAMA_API_KEY", None)
        # The router also lists llama.cpp's own download cache; point it at an empty folder so
        # the service offers exactly the models folder.
        assert self.preset_path is not None
        env["LLAMA_CACHE"] = str(self.preset_path.parent / "no-cache")
        if self.api_key:
            env["LLAMA_API_KEY"] = self.api_key  # not on the command line; instances inherit it
        return env

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the running service; raises :class:`ServerError` before."""
        if self._url is None:
            raise ServerError("ModelService has no URL yet: call start() (or use `with`) first")
        return self._url

    def client(
        self, model: str | None = None, *, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT
    ) -> Client:
        """A :class:`~lmserv.client.Client` for this service (its key), ``model`` by default."""
        return Client(self.base_url, api_key=self.api_key, timeout=timeout, model=model)

    def start(self) -> ModelService:
        """Write the preset, start the router, wait until it answers; return ``self``."""
        with self._lock:
            if self.running:
                return self
            self.models_dir.mkdir(parents=True, exist_ok=True)
            if self.state_file:
                lock = ServiceLock(self.models_dir)
                if not lock.acquire():
                    raise self._already_running()
                self._service_lock = lock
            try:
                if not (self.host == "" or is_loopback(self.host)) and not self.api_key:
                    log.warning(
                        "the model service will listen on %s without an API key: anyone who "
                        "can reach this host can use every model; pass api_key=... "
                        "(or `--api-key`)",
                        self.host,
                    )
                self.preset_path = private_dir(self.models_dir) / "models.ini"
                self.refresh(reload=False)
                self._launch_and_wait()
                self.has_page = _serves_page(self.base_url)
                self._announce()
                self._stop.clear()
                self._watcher = threading.Thread(
                    target=self._watch, name="lmserv-service-watch", daemon=True
                )
                self._watcher.start()
            except BaseException:
                self._terminate()
                raise
        return self

    def _already_running(self) -> ServerStartError:
        state = read_state(self.models_dir)
        where = f" at {state.url} (pid {state.pid})" if state else ""
        return ServerStartError(
            f"a model service for {self.models_dir} is already running{where}; use it "
            "(`lmserv ps`, `lmserv run NAME`), or stop it before starting another"
        )

    def _launch_and_wait(self) -> None:
        for attempt in range(3):
            port = self.port or free_port(self.host if is_loopback(self.host) else "0.0.0.0")
            argv = self.command(port)
            log.info("starting %s", " ".join(argv))
            self._open_log()
            assert self.log_path is not None
            with self.log_path.open("ab") as out:
                self._proc = spawn_llama_server(
                    argv, out, death_signal=signal.SIGTERM, env=self._env()
                )
            atexit.register(self._terminate)
            host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
            self._url = f"http://{host}:{port}"
            try:
                self._wait_ready()
                return
            except ServerStartError:
                retry = self.port is None and attempt < 2 and _BIND_FAILED.search(self.log_tail(5))
                self._terminate_process()
                if not retry:
                    raise

    def _open_log(self) -> None:
        self._fresh_log_path("lmserv-service", f"{os.getpid()}").write_bytes(b"")
        self._log_offset = 0
        self._partial = b""

    def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.start_timeout
        last: object = None
        while True:
            if (code := proc.poll()) is not None:
                tail = self.log_tail(15)
                raise ServerStartError(
                    f"llama-server (model service over {self.models_dir}) exited with code "
                    f"{code} while starting; last log lines ({self.log_path}):\n{tail}",
                    returncode=code,
                    log_tail=tail,
                )
            try:
                last = _http_status(f"{self.base_url}/health", None)
                if last == 200:
                    return
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ServerTimeout(
                    f"the model service at {self.base_url} did not answer /health within "
                    f"{self.start_timeout:.0f}s (last answer: {last}); last log lines:\n"
                    f"{self.log_tail(20)}"
                )
            time.sleep(0.01)

    def _announce(self) -> None:
        if not self.state_file or self._proc is None:
            return
        write_state(
            self.models_dir,
            ServiceState(
                url=self.base_url,
                pid=os.getpid(),
                models_dir=str(self.models_dir),
                keep_alive=self.keep_alive,
                log_path=str(self.log_path or ""),
                api_key=self.api_key,
                last_used=dict(self._last_used),
            ),
        )

    def stop(self) -> int | None:
        """Stop the router and every instance it started; remove the state file.

        Returns the router's exit code (``None`` if it was never started). Safe to call twice.
        """
        with self._lock:
            return self._terminate()

    def _terminate(self) -> int | None:
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)
        self._watcher = None
        code = self._terminate_process()
        if self.state_file:
            remove_state(self.models_dir, os.getpid())
        if self._service_lock is not None:
            self._service_lock.release()
            self._service_lock = None
        return code

    def _terminate_process(self) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        with contextlib.suppress(Exception):
            atexit.unregister(self._terminate)
        # The router stops its instances on SIGTERM (each gets an exit command; one that
        # lingers is killed after its stop timeout); an instance whose router died sees EOF
        # on stdin and exits. The instances share the router's process group (it was started
        # in a new session), so whatever is left of that group is killed at the end.
        code = terminate(proc, self.stop_timeout)
        if hasattr(os, "killpg"):
            deadline = time.monotonic() + 5.0
            with contextlib.suppress(ProcessLookupError, PermissionError):
                while time.monotonic() < deadline:
                    os.killpg(proc.pid, 0)
                    time.sleep(0.05)
                log.warning("model service: killing instances left after the router stopped")
                os.killpg(proc.pid, signal.SIGKILL)
        self._url = None
        return code

    # -- models ---------------------------------------------------------------------------
    def refresh(self, *, reload: bool = True) -> bool:
        """Rebuild the preset from the models folder; if it changed, have the router reload it.

        The watcher calls this when the folder changes; call it after adding a model to skip
        the wait. Returns whether the preset changed. A loaded model whose file or options
        changed is unloaded by the router; one that is gone disappears.
        """
        assert self.preset_path is not None, "refresh() needs start() first"
        self._snapshot = folder_snapshot(self.models_dir)
        models = preset_models(self.models_dir, load_catalog(), config.get_settings().model_options)
        text = render_preset(models)
        if text == self._preset_text:
            return False
        write_private(self.preset_path, text)
        self._preset_text = text
        log.info("model service: %d models: %s", len(models), ", ".join(m.name for m in models))
        if reload and self._url is not None:
            status = _http_status(f"{self._url}/models?reload=1", self.api_key)
            if status != 200:
                log.warning("model service: the router answered %s to a reload", status)
        return True

    def models(self) -> list[ServedModel]:
        """Every model the service offers, with its state (see :class:`ServedModel`)."""
        with self.client() as client:
            return served_models(
                client, keep_alive=self.keep_alive, last_used=dict(self._last_used)
            )

    def _find(self, name: str) -> ServedModel:
        models = self.models()
        for model in models:
            if name == model.name or name in model.aliases:
                return model
        names = sorted({n for m in models for n in (m.name, *m.aliases)})
        raise ModelNotServed(
            f"the model service has no model {name!r}; it serves: {', '.join(names)}",
            model=name,
            available=tuple(names),
        )

    def load(self, name: str, *, timeout: float | None = None) -> ServedModel:
        """Load model ``name`` (or alias) now and wait until it is ready; its state.

        Raises :class:`~lmserv.errors.ModelNotServed` for an unknown name,
        :class:`ServerStartError` when its instance fails, :class:`ServerTimeout`.
        """
        model = self._find(name)
        if model.state in ("loaded", "sleeping"):
            return model
        if model.state != "loading":
            with self.client() as client:
                client.load(model.name)
        deadline = time.monotonic() + (timeout if timeout is not None else self.start_timeout)
        while True:
            model = self._find(model.name)
            if model.state == "loaded":
                return model
            if model.state == "failed":
                raise ServerStartError(
                    f"model {name!r} failed to load in the model service; last log "
                    f"lines ({self.log_path}):\n{self.log_tail(15)}"
                )
            if time.monotonic() > deadline:
                raise ServerTimeout(f"model {name!r} was not loaded within the timeout")
            time.sleep(0.02)

    def unload(self, name: str, *, timeout: float = 30.0) -> bool:
        """Unload model ``name`` (or alias) now and wait until its instance is gone (at most
        ``timeout`` seconds); ``False`` if it was not loaded."""
        model = self._find(name)
        if model.state not in ("loaded", "loading", "sleeping"):
            return False
        with self.client() as client:
            client.unload(model.name)
        # The router answers before its instance has exited; callers (`lmserv stop`, then
        # `lmserv ps`) expect the memory to be free when this returns.
        deadline = time.monotonic() + timeout
        while self._find(model.name).state != "unloaded" and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    # -- the watcher ----------------------------------------------------------------------
    def _watch(self) -> None:
        next_scan = 0.0
        while not self._stop.wait(self.watch_interval):
            try:
                if self._follow_log():
                    self._announce()
                if time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + 1.0
                    if folder_snapshot(self.models_dir) != self._snapshot:
                        self.refresh()
            except Exception as exc:  # the watcher must outlive one bad pass
                log.warning("model service watcher: %s: %s", type(exc).__name__, exc)

    def _follow_log(self) -> bool:
        """Read new log lines (echo them, note each model's last request); True if one came."""
        if self.log_path is None:
            return False
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_offset)
            data = fh.read()
        self._log_offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        used = False
        for raw in lines:
            line = raw.decode(errors="replace")
            if self.echo is not None:
                self.echo(line)
            if m := _PROXYING.search(line):
                self._last_used[m.group(1)] = time.time()
                used = True
        return used

    def __repr__(self) -> str:
        state = f"running at {self._url}" if self.running and self._url else "stopped"
        return f"ModelService({str(self.models_dir)!r}, {state})"
