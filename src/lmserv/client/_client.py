"""HTTP client for llama-server: :class:`Client` and :class:`AsyncClient` with the same surface.

Request bodies and response parsing are I/O-free and live once (``_Base``); stream decoding and
error mapping live in :mod:`lmserv.client._responses`. The two clients only do the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

import httpx

from lmserv._inputs import check_json_text
from lmserv._net import STALE_ATTEMPTS, RequestTrace
from lmserv._types import (
    ChatArgs,
    ChatCompletion,
    Completion,
    Messages,
    SamplingArgs,
    SamplingOptions,
)
from lmserv.client._base import (
    _CHAT,
    _GET_ATTEMPTS,
    _NATIVE,
    DEFAULT_TIMEOUT,
    LIMITS,
    R,
    _Base,
    _metrics,
)
from lmserv.client._responses import (
    AsyncTextStream,
    TextStream,
    _EventParser,
    _translate,
    error_from_response,
)
from lmserv.errors import ServerUnavailable

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "AsyncTextStream",
    "Client",
    "TextStream",
    "error_from_response",
]


class Client(_Base):
    """Synchronous client for one llama-server; one pooled connection set per client.

    >>> with Client("http://127.0.0.1:8080") as client:        # doctest: +SKIP
    ...     print(client.complete("one two", temperature=0).text)

    Every method raises :class:`~lmserv.errors.APIError` subclasses: the status's class with
    the server's message, or :class:`~lmserv.errors.ServerUnavailable` when the server is not
    reachable, still loading, or drops the connection. Generation takes its sampling options as
    a :class:`~lmserv.SamplingOptions` and/or the same-named keywords (a keyword wins); options
    left unset take llama-server's defaults. ``model`` names the model of every request that
    names none (``model=`` on a call wins): one client talks to any model of the model service
    (``lmserv serve`` without a model), which answers an unknown name with
    :class:`~lmserv.errors.ModelNotServed` listing the names it has; a single-model server
    ignores it. ``extra_body`` goes into the request body as is
    (llama-server's own fields, e.g. ``{"n_probs": 3}``).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        model: str | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, model=model)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=self.timeout, limits=LIMITS
        )

    # -- plumbing -------------------------------------------------------------------------
    def _get(self, path: str) -> httpx.Response:
        where = f"GET {path}"
        for attempt in range(_GET_ATTEMPTS):
            try:
                with _translate(self.base_url, where, self.timeout):
                    return self._checked(self._http.get(path), where)
            except ServerUnavailable as exc:
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        where = f"POST {path}"
        body = self._routed(body)
        check_json_text(body, where)
        with _translate(self.base_url, where, self.timeout):
            response = self._send("POST", path, body, stream=False)
        self._check_model(response, body)
        return self._checked(response, where).json()

    def _send(
        self, method: str, path: str, body: Mapping[str, Any], *, stream: bool
    ) -> httpx.Response:
        """Send, again on a new connection if the kept-alive one was stale (RequestTrace)."""
        for attempt in range(STALE_ATTEMPTS):
            trace = RequestTrace()
            request = self._http.build_request(method, path, json=body, extensions={"trace": trace})
            try:
                return self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if not trace.send_again(exc, attempt):
                    raise
                log.debug(
                    "%s %s met a closed kept-alive connection; sending it again", method, path
                )
        raise AssertionError("unreachable")

    def _check_model(self, response: httpx.Response, body: Mapping[str, Any]) -> None:
        """Raise :class:`ModelNotServed` when the service refused an unknown model."""
        if response.status_code in (400, 404) and body.get("model") is not None:
            listing: Any = {}
            with contextlib.suppress(Exception):  # no listing: the plain 400 is raised instead
                listing = self._http.get("/v1/models").json()
            error = self._unknown_model(str(body["model"]), listing)
            if error is not None:
                raise error

    def _open_stream(
        self, path: str, body: Mapping[str, Any], parser: _EventParser[R]
    ) -> TextStream[R]:
        where = f"POST {path}"
        body = self._routed(body)
        check_json_text(body, where)
        with _translate(self.base_url, where, self.timeout):
            response = self._send("POST", path, body, stream=True)
            if response.status_code >= 400:
                response.read()
                response.close()
                self._check_model(response, body)
                self._checked(response, where)
        return TextStream(response, parser, self.base_url, self.timeout)

    # -- endpoints ------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``GET /health``: ``{"status": "ok"}``; raises ``ServerUnavailable`` while loading."""
        return dict(self._get("/health").json())

    def props(self, *, model: str | None = None) -> dict[str, Any]:
        """``GET /props``: the server's settings (``total_slots``, ``model_path``, ...).

        From the model service, the settings of loaded model ``model`` (default: the client's
        ``model``); asking does not load it.
        """
        return dict(self._get(self._props_path(model)).json())

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the loaded model(s), OpenAI style.

        The model service lists every model it can serve, each with ``status.value``
        (``"loaded"``, ``"loading"``, ``"sleeping"``, ``"unloaded"``) and its ``aliases``.
        """
        return self._models_result(self._get("/v1/models").json())

    def load(self, name: str) -> None:
        """Model service: start loading model ``name`` now (``POST /models/load``).

        Returns once its instance is starting; requests for it wait until it is ready
        (:meth:`lmserv.service.ModelService.load` waits too). Raises
        :class:`~lmserv.errors.ModelNotServed` for an unknown name and
        :class:`~lmserv.errors.BadRequestError` when it is already loaded.
        """
        self._post("/models/load", {"model": name})

    def unload(self, name: str) -> None:
        """Model service: unload model ``name`` now (``POST /models/unload``).

        Raises :class:`~lmserv.errors.BadRequestError` when it is not loaded.
        """
        self._post("/models/unload", {"model": name})

    def metrics(self) -> dict[str, float]:
        """``GET /metrics`` parsed to ``{name: value}`` (the server needs ``--metrics``)."""
        return _metrics(self._get("/metrics").text)

    def complete(
        self,
        prompt: str,
        sampling: SamplingOptions | None = None,
        *,
        extra_body: Mapping[str, Any] | None = None,
        model: str | None = None,
        **kwargs: Unpack[SamplingArgs],
    ) -> Completion:
        """Complete ``prompt`` on native ``POST /completion``.

        ``grammar=`` (GBNF) and ``json_schema=`` constrain the text (llama-server's native
        fields; a grammar or schema it cannot use is its :class:`~lmserv.errors.BadRequestError`).
        """
        request = self._generate_request(_NATIVE, prompt, sampling, kwargs, extra_body, model=model)
        return Completion.from_json(self._post(*request))

    def stream(
        self,
        prompt: str,
        sampling: SamplingOptions | None = None,
        *,
        extra_body: Mapping[str, Any] | None = None,
        model: str | None = None,
        **kwargs: Unpack[SamplingArgs],
    ) -> TextStream[Completion]:
        """Like :meth:`complete`, yielding text chunks as they arrive (``.result`` at the end)."""
        request = self._generate_request(
            _NATIVE, prompt, sampling, kwargs, extra_body, model=model, stream=True
        )
        return self._open_stream(*request, self._completion_events())

    def chat(
        self,
        messages: Messages,
        sampling: SamplingOptions | None = None,
        *,
        extra_body: Mapping[str, Any] | None = None,
        model: str | None = None,
        **kwargs: Unpack[ChatArgs],
    ) -> ChatCompletion:
        """Answer a conversation on ``POST /v1/chat/completions`` (a ``str`` is one user turn).

        Besides the sampling options it takes ``tools``, ``tool_choice`` and ``response_format``
        (see :class:`~lmserv.ChatArgs`); the calls the model makes come back in
        ``tool_calls``.
        """
        request = self._generate_request(_CHAT, messages, sampling, kwargs, extra_body, model=model)
        return ChatCompletion.from_json(self._post(*request))

    def chat_stream(
        self,
        messages: Messages,
        sampling: SamplingOptions | None = None,
        *,
        extra_body: Mapping[str, Any] | None = None,
        model: str | None = None,
        **kwargs: Unpack[ChatArgs],
    ) -> TextStream[ChatCompletion]:
        """Like :meth:`chat`, yielding text chunks as they arrive (``.result`` at the end, with
        the tool calls and reasoning the deltas carried assembled)."""
        request = self._generate_request(
            _CHAT, messages, sampling, kwargs, extra_body, model=model, stream=True
        )
        return self._open_stream(*request, self._chat_events())

    # A str is also a Sequence[str]: the first matching overload wins, which is the intent.
    @overload
    def embed(  # type: ignore[overload-overlap]
        self, texts: str, *, normalize: bool = True, model: str | None = None
    ) -> list[float]: ...
    @overload
    def embed(
        self, texts: Sequence[str], *, normalize: bool = True, model: str | None = None
    ) -> list[list[float]]: ...
    def embed(
        self, texts: str | Sequence[str], *, normalize: bool = True, model: str | None = None
    ) -> list[float] | list[list[float]]:
        """The embedding of a text (a ``str`` gives one vector, a list one vector per text),
        L2-normalised unless ``normalize=False``, on ``POST /v1/embeddings``.

        The server must run with ``--embeddings`` and a pooling type (``--pooling mean``
        for models without one); otherwise this raises the server's error.
        """
        return self._embed_result(self._post(*self._embed_request(texts, normalize, model)), texts)

    @overload
    def tokenize(  # type: ignore[overload-overlap]
        self,
        text: str,
        *,
        add_special: bool = False,
        parse_special: bool = True,
        model: str | None = None,
    ) -> list[int]: ...
    @overload
    def tokenize(
        self,
        text: Sequence[str],
        *,
        add_special: bool = False,
        parse_special: bool = True,
        model: str | None = None,
    ) -> list[list[int]]: ...
    def tokenize(
        self,
        text: str | Sequence[str],
        *,
        add_special: bool = False,
        parse_special: bool = True,
        model: str | None = None,
    ) -> list[int] | list[list[int]]:
        """Token ids of ``text`` (a list gives one list of ids per text).

        ``add_special`` adds the start token (BOS) as a prompt gets it; ``parse_special`` reads
        control-token text such as ``<|im_start|>`` as those tokens, as prompts are read.
        """
        requests = self._tokenize_requests(text, add_special, parse_special, model)
        ids = [self._tokenize_result(self._post(*request)) for request in requests]
        return ids[0] if isinstance(text, str) else ids

    def detokenize(self, ids: Sequence[int], *, model: str | None = None) -> str:
        """The text of token ``ids``."""
        return self._detokenize_result(self._post(*self._detokenize_request(ids, model)))

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: same methods, awaited; ``aclose()``.

    ``await client.stream(...)`` returns an :class:`AsyncTextStream` (errors in the request
    raise at the ``await``); iterate it with ``async for``.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        model: str | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, model=model)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=self.timeout, limits=LIMITS
        )

    async def _get(self, path: str) -> httpx.Response:
        where = f"GET {path}"
        for attempt in range(_GET_ATTEMPTS):
            try:
                with _translate(self.base_url, where, self.timeout):
                    return self._checked(await self._http.get(path), where)
            except ServerUnavailable as exc:
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        where = f"POST {path}"
        body = self._routed(body)
        check_json_text(body, where)
        with _translate(self.base_url, where, self.timeout):
            response = await self._send("POST", path, body, stream=False)
        await self._check_model(response, body)
        return self._checked(response, where).json()

    async def _send(
        self, method: str, path: str, body: Mapping[str, Any], *, stream: bool
    ) -> httpx.Response:
        """See :meth:`Client._send`."""
        for attempt in range(STALE_ATTEMPTS):
            trace = RequestTrace()
            hook = {"trace": trace.async_hook}
            request = self._http.build_request(method, path, json=body, extensions=hook)
            try:
                return await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if not trace.send_again(exc, attempt):
                    raise
                log.debug(
                    "%s %s met a closed kept-alive connection; sending it again", method, path
                )
        raise AssertionError("unreachable")

    async def _check_model(self, response: httpx.Response, body: Mapping[str, Any]) -> None:
        """See :meth:`Client._check_model`."""
        if response.status_code in (400, 404) and body.get("model") is not None:
            listing: Any = {}
            with contextlib.suppress(Exception):
                listing = (await self._http.get("/v1/models")).json()
            error = self._unknown_model(str(body["model"]), listing)
            if error is not None:
                raise error

    async def _open_stream(
        self, path: str, body: Mapping[str, Any], parser: _EventParser[R]
    ) -> AsyncTextStream[R]:
        where = f"POST {path}"
        body = self._routed(body)
        check_json_text(body, where)
        with _translate(self.base_url, where, self.timeout):
            response = await self._send("POST", path, body, stream=True)
            if response.status_code >= 400:
                await response.aread()
                await response.aclose()
                await self._check_model(response, body)
                self._checked(response, where)
        return AsyncTextStream(response, parser, self.base_url, self.timeout)

    async def health(self) -> dict[str, Any]:
        """See :meth:`Client.health`."""
        return dict((await self._get("/health")).json())

    async def props(self, *, model: str | None = None) -> dict[str, Any]:
        """See :meth:`Client.props`."""
        return dict((await self._get(self._props_path(model))).json())

    async def models(self) -> list[dict[str, Any]]:
        """See :meth:`Client.models`."""
        return self._models_result((await self._get("/v1/models")).json())

    async def load(self, name: str) -> None:
        """See :meth:`Client.load`."""
        await self._post("/models/load", {"model": name})

    async def unload(self, name: str) -> None:
        """See :meth:`Client.unload`."""
        await self._post("/models/unload", {"model": name})

    async def metrics(self) -> dict[str, float]:
        """See :meth:`Client.metrics`."""
        return _metrics((await self._get("/metrics")).text)

    async def complete(
        self,
        prompt: str,
        sampling: SamplingOptions | None = None,
        *,
        extra_body: Mapping[str, Any] | None = None,
        model: str | None = None,
        **kwargs: Unpack[SamplingArgs],
    ) -> Completion:
        """See :meth:`Client.complete`."""
        request = self._generate_request(_NATIVE, prompt, sampling, kwargs, extra_body, model=model)
        return Completion.from_json(await self._post(*request))

    async def stream(
        self,
        prompt: str,
        sampling: SamplingOptions | None = None,
        *,
        extra_body: Mapping[str, Any] | None = None,
        model: str | None = None,
        **kwargs: Unpack[SamplingArgs],
    ) -> AsyncTextStream[Completion]:
        """See :meth:`Client.stream`."""
        request = self._generate_request(
            _NATIVE, prompt, sampling, kwargs, extra_body, model=model, stream=True
        )
        return await self._open_stream(*request, self._completion_events())

    async def chat(
        self,
        messages: Messages,
        sampling: SamplingOptions | None = None,
        *,
        extra_body: Mapping[str, Any] | None = None,
        model: str | None = None,
        **kwargs: Unpack[ChatArgs],
    ) -> ChatCompletion:
        """See :meth:`Client.chat`."""
        request = self._generate_request(_CHAT, messages, sampling, kwargs, extra_body, model=model)
        return ChatCompletion.from_json(await self._post(*request))

    async def chat_stream(
        self,
        messages: Messages,
        sampling: SamplingOptions | None = None,
        *,
        extra_body: Mapping[str, Any] | None = None,
        model: str | None = None,
        **kwargs: Unpack[ChatArgs],
    ) -> AsyncTextStream[ChatCompletion]:
        """See :meth:`Client.chat_stream`."""
        request = self._generate_request(
            _CHAT, messages, sampling, kwargs, extra_body, model=model, stream=True
        )
        return await self._open_stream(*request, self._chat_events())

    @overload
    async def embed(  # type: ignore[overload-overlap]
        self, texts: str, *, normalize: bool = True, model: str | None = None
    ) -> list[float]: ...
    @overload
    async def embed(
        self, texts: Sequence[str], *, normalize: bool = True, model: str | None = None
    ) -> list[list[float]]: ...
    async def embed(
        self, texts: str | Sequence[str], *, normalize: bool = True, model: str | None = None
    ) -> list[float] | list[list[float]]:
        """See :meth:`Client.embed`."""
        data = await self._post(*self._embed_request(texts, normalize, model))
        return self._embed_result(data, texts)

    @overload
    async def tokenize(  # type: ignore[overload-overlap]
        self,
        text: str,
        *,
        add_special: bool = False,
        parse_special: bool = True,
        model: str | None = None,
    ) -> list[int]: ...
    @overload
    async def tokenize(
        self,
        text: Sequence[str],
        *,
        add_special: bool = False,
        parse_special: bool = True,
        model: str | None = None,
    ) -> list[list[int]]: ...
    async def tokenize(
        self,
        text: str | Sequence[str],
        *,
        add_special: bool = False,
        parse_special: bool = True,
        model: str | None = None,
    ) -> list[int] | list[list[int]]:
        """See :meth:`Client.tokenize`."""
        requests = self._tokenize_requests(text, add_special, parse_special, model)
        ids = [self._tokenize_result(await self._post(*request)) for request in requests]
        return ids[0] if isinstance(text, str) else ids

    async def detokenize(self, ids: Sequence[int], *, model: str | None = None) -> str:
        """See :meth:`Client.detokenize`."""
        return self._detokenize_result(await self._post(*self._detokenize_request(ids, model)))

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
