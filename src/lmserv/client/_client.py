"""HTTP client for llama-server: :class:`Client` and :class:`AsyncClient` with the same surface.

Request bodies and response parsing are I/O-free and live once (``_Base``); stream decoding and
error mapping live in :mod:`lmserv.client._responses`. The two clients only do the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

import httpx

from lmserv._inputs import check_api_key, check_base_url, check_json_text
from lmserv._types import (
    ChatArgs,
    ChatCompletion,
    Completion,
    Messages,
    SamplingArgs,
    SamplingOptions,
    chat_values,
    sampling_values,
)
from lmserv.client._responses import (
    AsyncTextStream,
    TextStream,
    _decode_body,
    _EventParser,
    _translate,
    error_from_response,
)
from lmserv.errors import ModelNotServed, ServerUnavailable

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "AsyncTextStream",
    "Client",
    "TextStream",
    "error_from_response",
]

#: Generation can take minutes on a big model; connecting to a local server cannot.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
_GET_ATTEMPTS = 3  # GETs are idempotent: retried on a refused or dropped connection only

_NATIVE = "/completion"  # llama-server's native route: prompt in, n_predict, "stop" event
_CHAT = "/v1/chat/completions"  # the OpenAI-style route: messages in, max_tokens, [DONE]
R = TypeVar("R", Completion, ChatCompletion)
_METHOD = {
    (_NATIVE, False): "complete",
    (_NATIVE, True): "stream",
    (_CHAT, False): "chat",
    (_CHAT, True): "chat_stream",
}


def _metrics(text: str) -> dict[str, float]:
    """Prometheus text to ``{name: value}``.

    >>> _metrics("# HELP x\\nllamacpp:tokens_predicted_total 9\\n")
    {'llamacpp:tokens_predicted_total': 9.0}
    """
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name.strip()] = float(value)
    return values


class _Base:
    """What both clients share: URL, headers, timeouts, request bodies, response parsing.

    Each endpoint's I/O-free halves live here: ``_X_request(...)`` gives the path and body,
    ``_X_result(data)`` parses the answer; :class:`Client` and :class:`AsyncClient` only send.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float | httpx.Timeout,
        model: str | None = None,
    ) -> None:
        self.base_url = check_base_url(base_url).rstrip("/")
        self.model = model  # sent as "model" when a request names none (the model service)
        if self.base_url.endswith("/v1"):  # people paste the OpenAI-style URL
            self.base_url = self.base_url[:-3]
        self.api_key = check_api_key(api_key) if api_key else api_key
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # -- plumbing -------------------------------------------------------------------------
    @staticmethod
    def _checked(response: httpx.Response, where: str) -> httpx.Response:
        if response.status_code >= 400:
            raise error_from_response(
                response.status_code, _decode_body(response.content), where=where
            )
        return response

    @staticmethod
    def _retry_delay(exc: ServerUnavailable, attempt: int) -> float | None:
        """Seconds to wait before GET try ``attempt + 1`` after ``exc``; ``None``: raise it.

        Only a refused or dropped connection is retried, never a timeout or an HTTP status.
        """
        if (
            attempt == _GET_ATTEMPTS - 1
            or isinstance(exc.__cause__, httpx.TimeoutException)
            or exc.status_code
        ):
            return None
        return 0.1 * 2.0**attempt

    def _routed(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """``body`` with the client's default ``model`` unless it names one (or there is none)."""
        if self.model is None or body.get("model") is not None:
            return body
        return {"model": self.model, **body}

    @staticmethod
    def _unknown_model(name: str, listing: Mapping[str, Any]) -> ModelNotServed | None:
        """The error for a 400 from the model service when ``name`` is not among its models.

        ``listing`` is its ``GET /v1/models``; only the service's entries carry ``status``, so
        a single-model llama-server (which ignores ``model``) never gets this error.
        """
        data = listing.get("data") if isinstance(listing, Mapping) else None
        rows = [row for row in data or () if isinstance(row, Mapping)]
        if not rows or not all("status" in row for row in rows):
            return None
        names = [str(row.get("id")) for row in rows]
        names += [str(a) for row in rows for a in row.get("aliases", ())]
        if name in names:
            return None
        return ModelNotServed(
            f"the model service has no model {name!r}; it serves: {', '.join(sorted(names))}. "
            "Pull it with `lmserv pull NAME` (it appears without a restart) or pick one of these",
            model=name,
            available=tuple(sorted(names)),
        )

    # -- request bodies -------------------------------------------------------------------
    def _generate_request(
        self,
        path: str,
        prompt: Messages,
        sampling: SamplingOptions | None,
        kwargs: Mapping[str, Any],
        extra_body: Mapping[str, Any] | None,
        *,
        model: str | None = None,
        stream: bool = False,
    ) -> tuple[str, dict[str, Any]]:
        """Path and body of a generation: a prompt on ``_NATIVE`` (``/completion``), or
        messages on ``_CHAT`` (a ``str`` is one user turn). Sampling options left unset are not
        sent (llama-server's defaults apply); ``extra_body`` goes in last and wins. A chat
        stream asks for the usage chunk too, unless ``extra_body`` sets ``stream_options``.
        A chat's ``tools``, ``tool_choice`` and ``response_format`` go in as given (checked).
        """
        chat = path == _CHAT
        extra = dict(extra_body or {})
        chat_fields: dict[str, Any] = {}
        if chat:
            kwargs, chat_fields = chat_values(kwargs)
        values = sampling_values(
            sampling, kwargs, f"{type(self).__name__}.{_METHOD[path, stream]}", extra=extra
        )
        body: dict[str, Any] = {"model": model} if model else {}
        if not chat:
            body["prompt"] = prompt
        elif isinstance(prompt, str):
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["messages"] = list(prompt)
        for name, value in values.items():
            if name == "max_tokens":
                body["max_tokens" if chat else "n_predict"] = value
            elif name == "stop":
                body["stop"] = list(value)
            else:
                body[name] = value
        body.update(chat_fields)
        body.update(extra)
        if stream:
            body = {**body, "stream": True}
            if chat:
                body.setdefault("stream_options", {"include_usage": True})
        return path, body

    @staticmethod
    def _completion_events() -> _EventParser[Completion]:
        return _EventParser[Completion](False, f"POST {_NATIVE}")

    @staticmethod
    def _chat_events() -> _EventParser[ChatCompletion]:
        return _EventParser[ChatCompletion](True, f"POST {_CHAT}")

    @staticmethod
    def _embed_request(
        texts: str | Sequence[str], normalize: bool, model: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        # embd_normalize: llama.cpp's code for the norm, 2 (Euclidean) or -1 (none)
        inputs = [texts] if isinstance(texts, str) else list(texts)
        body = {"input": inputs, "embd_normalize": 2 if normalize else -1}
        return "/v1/embeddings", {**body, "model": model} if model else body

    @staticmethod
    def _tokenize_requests(
        text: str | Sequence[str], add_special: bool, parse_special: bool, model: str | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """One ``/tokenize`` request per text (the route reads a list as one mixed prompt)."""
        texts = [text] if isinstance(text, str) else list(text)
        routed = {"model": model} if model else {}
        return [
            (
                "/tokenize",
                {"content": t, "add_special": add_special, "parse_special": parse_special} | routed,
            )
            for t in texts
        ]

    @staticmethod
    def _detokenize_request(
        ids: Sequence[int], model: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"tokens": list(ids)}
        return "/detokenize", {**body, "model": model} if model else body

    def _props_path(self, model: str | None) -> str:
        # autoload=false: asking about a model must not load it (or keep it from idling)
        name = model or self.model
        query = urllib.parse.urlencode({"model": name, "autoload": "false"}) if name else ""
        return f"/props?{query}" if query else "/props"

    # -- response parsing -----------------------------------------------------------------
    @staticmethod
    def _models_result(data: Mapping[str, Any]) -> list[dict[str, Any]]:
        return list(data.get("data", []))

    @staticmethod
    def _embed_result(
        data: Mapping[str, Any], texts: str | Sequence[str]
    ) -> list[float] | list[list[float]]:
        rows = sorted(data.get("data", []), key=lambda row: int(row.get("index", 0)))
        vectors = [[float(x) for x in row["embedding"]] for row in rows]
        return vectors[0] if isinstance(texts, str) else vectors

    @staticmethod
    def _tokenize_result(data: Mapping[str, Any]) -> list[int]:
        return [int(t) for t in data["tokens"]]

    @staticmethod
    def _detokenize_result(data: Mapping[str, Any]) -> str:
        return str(data["content"])


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
            base_url=self.base_url, headers=self._headers, timeout=self.timeout
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
            response = self._http.post(path, json=body)
        self._check_model(response, body)
        return self._checked(response, where).json()

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
            request = self._http.build_request("POST", path, json=body)
            response = self._http.send(request, stream=True)
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
            base_url=self.base_url, headers=self._headers, timeout=self.timeout
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
            response = await self._http.post(path, json=body)
        await self._check_model(response, body)
        return self._checked(response, where).json()

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
            request = self._http.build_request("POST", path, json=body)
            response = await self._http.send(request, stream=True)
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
