"""The I/O-free half of both clients: request bodies, routing, retries' decisions, parsing.

:class:`~lmserv.client.Client` and :class:`~lmserv.client.AsyncClient` subclass ``_Base`` and
only send; keeping this half apart keeps one copy of every body and parser for both.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from lmserv._inputs import check_api_key, check_base_url
from lmserv._net import KEEPALIVE_EXPIRY
from lmserv._types import (
    ChatCompletion,
    Completion,
    Messages,
    SamplingOptions,
    chat_values,
    sampling_values,
)
from lmserv.client._responses import (
    _decode_body,
    _EventParser,
    error_from_response,
)
from lmserv.errors import ModelNotServed, ServerUnavailable

if TYPE_CHECKING:
    pass

__all__ = ["DEFAULT_TIMEOUT", "LIMITS", "R", "_Base"]

#: Generation can take minutes on a big model; connecting to a local server cannot.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
_GET_ATTEMPTS = 3  # GETs are idempotent: retried on a refused or dropped connection only
#: The connection pool of both clients: httpx's defaults but for the expiry (see KEEPALIVE_EXPIRY).
LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_EXPIRY
)

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
