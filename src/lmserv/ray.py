"""Replicas of a model on a Ray cluster, behind Ray Serve's HTTP proxy.

:func:`deployment` returns a Ray Serve application. Each replica supervises one
:class:`~lmserv.server.LlamaServer` on the node Ray placed it on and passes the OpenAI routes
through to it: the request body goes to llama-server unchanged and its answer (a JSON body, or
an event stream for ``"stream": true``) comes back unchanged, so nothing of the API is written
again here. Ray Serve does the rest: spreading requests over replicas, scaling, and replacing
a replica whose health check fails; this module's check fails as soon as its llama-server has
exited, and Ray then starts a new replica (and with it a new llama-server).

>>> from lmserv.ray import deployment, run                       # doctest: +SKIP
>>> run(deployment("qwen2.5-0.5b-instruct", num_replicas=2))  # doctest: +SKIP

Then POST to ``:8000/v1/...``. (:func:`run` is :func:`ray.serve.run` that raises a replica's own error, such as
:class:`~lmserv.errors.ModelNotFound`, rather than Serve's "Deploying application failed".)

Needs the ``ray`` extra (``pip install 'lmserv[ray]'``), and on every node of the cluster
lmserv and a llama.cpp build (``lmserv build``, or ``LLAMA_BIN_DIR``). Importing this module
without Ray raises :class:`ImportError` saying what to install.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from lmserv import errors
from lmserv._net import KEEPALIVE_EXPIRY, STALE_ATTEMPTS, RequestTrace
from lmserv.errors import ConfigError, LmservError, ServerError, ServerStartError
from lmserv.install import ensure_model
from lmserv.server import LlamaServer

try:  # absolute imports: this is the top-level ``ray`` package, not this module
    from ray import serve
    from ray.serve import Application
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"lmserv.ray needs Ray Serve, which is not installed ({exc}); "
        "install it with: pip install 'lmserv[ray]'"
    ) from exc

__all__ = ["REPLICA_HEADER", "ROUTES", "LlamaReplica", "deployment", "run"]

log = logging.getLogger(__name__)

#: The routes a replica passes through to llama-server, with their methods: the OpenAI ones
#: (also without ``/v1``, as llama-server accepts them), the native completion and tokenizer
#: routes :class:`~lmserv.client.Client` uses, and ``/health``. Anything else (``/slots``,
#: ``POST /props``, ``/metrics`` of one replica among several) answers 404.
ROUTES: Mapping[str, frozenset[str]] = {
    **{
        prefix + route: frozenset({"POST"})
        for prefix in ("/v1", "")
        for route in ("/completions", "/chat/completions", "/embeddings")
    },
    "/v1/models": frozenset({"GET"}),
    "/models": frozenset({"GET"}),
    "/completion": frozenset({"POST"}),
    "/tokenize": frozenset({"POST"}),
    "/detokenize": frozenset({"POST"}),
    "/health": frozenset({"GET"}),
}

# Generation can take minutes; a connection to a local llama-server that takes seconds is dead.
_UPSTREAM_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
_HEALTH_TIMEOUT = 10.0
# Hop-by-hop headers and those Starlette computes itself for the body it sends.
_DROP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "date", "server"}
)
_DEFAULT_SLOTS = 4  # llama-server's -np default
#: Response header naming the replica that answered: ``<node>/<llama-server pid>``.
REPLICA_HEADER = "x-lmserv-replica"


def _on_node(exc: LmservError, node: str) -> LmservError:
    """``exc`` (same type and attributes) with the node named: on a cluster, *where* a model or
    a binary is missing is half the answer."""
    named = copy.copy(exc)
    named.args = (f"replica on node {node!r}: {exc}", *exc.args[1:])
    return named


def _error(status: int, message: str, kind: str) -> JSONResponse:
    """An error in the OpenAI shape llama-server itself answers with."""
    return JSONResponse(
        {"error": {"code": status, "message": message, "type": kind}}, status_code=status
    )


def _headers(items: Any) -> dict[str, str]:
    return {k: v for k, v in items if k.lower() not in _DROP_HEADERS}


class LlamaReplica:
    """One Ray Serve replica: a supervised llama-server and a pass-through to it.

    Not used directly: :func:`deployment` wraps it. ``model`` is resolved on the replica's node
    with :func:`~lmserv.install.ensure_model` (a path, a catalog name fetched and verified
    there, or a URL); ``server_options`` are :class:`~lmserv.server.LlamaServer`'s keyword
    arguments. Raises :class:`~lmserv.errors.ModelNotFound` or
    :class:`~lmserv.errors.BinaryNotFound` naming the node, which Ray Serve reports as the
    deployment's failure.
    """

    def __init__(self, model: str, server_options: Mapping[str, Any]) -> None:
        node = socket.gethostname()
        try:
            path = ensure_model(model)
            self._server = LlamaServer(path, **server_options)
            self._server.start()
        except LmservError as exc:
            raise _on_node(exc, node) from None  # Ray shows the whole chain: keep it short
        log.info("replica on %s serves %s from %s", node, path, self._server.base_url)
        self._base_url = self._server.base_url
        # Which replica answered, for people reading logs and for tests: node/llama-server pid.
        self._replica_id = f"{node}/{self._server.pid}"
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            timeout=_UPSTREAM_TIMEOUT,
            # Serve caps requests in flight per replica (max_ongoing_requests); no second cap.
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=64,
                keepalive_expiry=KEEPALIVE_EXPIRY,  # below llama-server's 5 s (see there)
            ),
        )

    @property
    def server(self) -> LlamaServer:
        """The supervised llama-server (its ``pid``, ``log_path``, ``info``)."""
        return self._server

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        root = request.scope.get("root_path", "")
        if root and (path == root or path.startswith(root.rstrip("/") + "/")):
            path = path[len(root.rstrip("/")) :] or "/"  # an application under a route prefix
        methods = ROUTES.get(path)
        if methods is None:
            return _error(
                404,
                f"no route {path!r} here; this server passes on {', '.join(sorted(ROUTES))}",
                "not_found_error",
            )
        if request.method not in methods:
            return _error(
                405,
                f"{request.method} {path} is not allowed; use {', '.join(sorted(methods))}",
                "invalid_request_error",
            )
        try:
            answer = await self._send(
                request.method,
                path,
                params=request.url.query,
                headers=_headers(request.headers.items()),
                content=await request.body(),
            )
        except httpx.TransportError as exc:
            # The health check will fail too, and Ray replaces this replica: a retry succeeds.
            return _error(
                503,
                f"llama-server of this replica ({self._base_url}) did not answer: "
                f"{type(exc).__name__}: {exc}; retry, the replica is being replaced",
                "unavailable_error",
            )
        headers = _headers(answer.headers.items())
        headers[REPLICA_HEADER] = self._replica_id
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(
                _relay(answer), status_code=answer.status_code, headers=headers
            )
        try:
            body = await answer.aread()
        finally:
            await answer.aclose()
        return Response(body, status_code=answer.status_code, headers=headers)

    async def _send(self, method: str, path: str, **options: Any) -> httpx.Response:
        """Send upstream (the response streamed), again on a new connection if the kept-alive
        one was stale: llama-server closes the connection after each stream without saying so
        (see lmserv._net.RequestTrace); without this the next request could fail and the health
        check report a live server as dead."""
        for attempt in range(STALE_ATTEMPTS):
            trace = RequestTrace()
            options["extensions"] = {"trace": trace.async_hook}
            upstream = self._client.build_request(method, path, **options)
            try:
                return await self._client.send(upstream, stream=True)
            except httpx.TransportError as exc:
                if not trace.send_again(exc, attempt):
                    raise
        raise AssertionError("unreachable")

    async def check_health(self) -> None:
        """Raise when llama-server has exited or stopped answering, so Ray replaces us."""
        if not self._server.running:
            code = self._server.wait(timeout=0)
            raise ServerError(
                f"llama-server (pid {self._server.pid}) serving {str(self._server.model)!r} "
                f"exited with code {code}; Ray Serve replaces this replica. Last log lines "
                f"({self._server.log_path}):\n{self._server.log_tail(10)}"
            )
        try:
            answer = await self._send("GET", "/health", timeout=_HEALTH_TIMEOUT)
            try:
                await answer.aread()
            finally:
                await answer.aclose()
        except httpx.TransportError as exc:
            raise ServerError(
                f"llama-server at {self._base_url} did not answer /health within "
                f"{_HEALTH_TIMEOUT:.0f}s ({type(exc).__name__}: {exc}); Ray Serve replaces "
                "this replica"
            ) from exc
        if answer.status_code != 200:
            raise ServerError(
                f"llama-server at {self._base_url} answered /health with "
                f"{answer.status_code}: {answer.text[:200]}; Ray Serve replaces this replica"
            )

    def __del__(self) -> None:
        # Ray Serve calls __del__ when it stops a replica gracefully: stop llama-server with it.
        server = getattr(self, "_server", None)
        if server is not None:
            server.stop()


async def _relay(answer: httpx.Response) -> AsyncIterator[bytes]:
    """The event stream's bytes as they arrive. A client that leaves cancels this; closing the
    upstream response then drops the connection, which tells llama-server to stop generating."""
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    finally:
        await answer.aclose()


def deployment(
    model: str | os.PathLike[str],
    *,
    num_replicas: int = 1,
    autoscaling_config: Mapping[str, Any] | None = None,
    ray_actor_options: Mapping[str, Any] | None = None,
    **server_options: Any,
) -> Application:
    """A Ray Serve application of replicas of ``model``, for :func:`ray.serve.run`.

    ``model`` is resolved on each replica's node (:func:`~lmserv.install.ensure_model`: a path
    that exists there, or a catalog name or URL fetched and verified there). ``num_replicas``
    is a fixed count; ``autoscaling_config`` (Ray Serve's, e.g. ``{"min_replicas": 1,
    "max_replicas": 4, "target_ongoing_requests": 2}``) replaces it. ``ray_actor_options`` are
    each replica's resources (default ``{"num_cpus": 1}``; e.g. ``{"num_gpus": 1}`` for one GPU
    per replica) and ``runtime_env``. ``server_options`` are
    :class:`~lmserv.server.LlamaServer`'s (``n_ctx``, ``n_gpu_layers``, ``parallel``,
    ``api_key``, ``extra_args``, ...); ``host`` and ``port`` are not, as llama-server only
    listens on 127.0.0.1 of its node and clients use Serve's proxy.

    Each replica takes at most ``parallel`` (default 4) requests at once, so requests wait in
    Serve, which sends them to a replica with a free slot, rather than in one busy llama-server.

    Raises :class:`~lmserv.errors.ConfigError` for options that cannot work (checked here,
    before anything starts on the cluster).
    """
    for key in ("host", "port"):
        if key in server_options:
            raise ConfigError(
                f"deployment() got {key}={server_options[key]!r}: each replica's llama-server "
                "listens on 127.0.0.1 of its node on a free port; set Serve's address with "
                "serve.start(http_options={'host': ..., 'port': ...}) (or `lmserv serve --ray "
                "--host/--port`)"
            )
    if num_replicas < 1:
        raise ConfigError(f"num_replicas={num_replicas!r}: give 1 or more")
    LlamaServer(os.fspath(model), **server_options)  # TypeError/ConfigError here, not per replica
    slots = server_options.get("parallel") or _DEFAULT_SLOTS
    options: dict[str, Any] = {
        "name": "lmserv",
        "ray_actor_options": dict(ray_actor_options or {"num_cpus": 1}),
        "max_ongoing_requests": slots,
        # The check is a process poll and one local GET: cheap, so notice a dead server soon.
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 30.0,
    }
    if autoscaling_config is not None:
        options["autoscaling_config"] = dict(autoscaling_config)
    else:
        options["num_replicas"] = num_replicas
    return serve.deployment(**options)(LlamaReplica).bind(os.fspath(model), dict(server_options))


# The last line of a replica's traceback in Serve's status message, when it is one of ours.
_OUR_ERROR = re.compile(r"^lmserv\.errors\.(\w+): (.*)", re.MULTILINE)


def run(app: Application, *, name: str = "lmserv", route_prefix: str = "/") -> None:
    """:func:`ray.serve.run` that says why replicas failed, as the error they raised.

    Serve reports a replica that cannot start as ``RuntimeError: Deploying application ...
    failed``, with the replica's traceback only in :func:`ray.serve.status`. This raises that
    error again on the caller's side instead: :class:`~lmserv.errors.ModelNotFound` for a model
    missing on the replica's node, :class:`~lmserv.errors.BinaryNotFound` for a missing
    llama.cpp build, :class:`~lmserv.errors.ServerStartError` for llama-server failing to start
    (and for anything else, with Serve's report). Needs ``ray.init`` and ``serve.start`` first
    when Serve's address matters; returns once every replica is up.
    """
    try:
        serve.run(app, name=name, route_prefix=route_prefix)
    except RuntimeError as exc:
        raise _replica_error(name, str(exc)) from None


def _replica_error(name: str, fallback: str) -> LmservError:
    status = serve.status().applications.get(name)
    reports = [d.message for d in status.deployments.values()] if status else []
    for report in reports:
        found = list(_OUR_ERROR.finditer(report))
        if found:
            kind, first = found[-1].group(1), found[-1].group(2)
            rest = report[found[-1].end() :].split("\n\x1b", 1)[0].rstrip()  # Ray's own lines
            cls = getattr(errors, kind, None)
            if isinstance(cls, type) and issubclass(cls, LmservError):
                return cls(f"Ray Serve application {name!r}: {first}{rest}")
    details = "\n".join(reports) or fallback
    return ServerStartError(f"Ray Serve could not start application {name!r}: {details}")
