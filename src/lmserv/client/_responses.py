"""The response side of the HTTP client: llama-server's errors and streamed events.

Everything that turns what comes back (a status and a body, a stream of server-sent events, an
``httpx`` exception) into lmserv's results and exceptions lives here, once, for both clients:
``error_from_response`` is the single place a status becomes an exception, and ``_translate``
the single boundary where ``httpx`` errors become :class:`~lmserv.errors.ServerUnavailable`
or :class:`~lmserv.errors.APITimeoutError`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Generic, TypeVar

import httpx

from lmserv._types import ChatCompletion, Completion, ToolCall
from lmserv.errors import (
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    ServerUnavailable,
)

__all__ = ["AsyncTextStream", "TextStream", "error_from_response"]


_STATUS_ERRORS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    503: ServerUnavailable,
}

R = TypeVar("R", Completion, ChatCompletion)


def error_from_response(status: int, body: object, *, where: str = "") -> APIError:
    """The one place an HTTP error status and llama-server's body become an exception.

    ``body`` is the decoded JSON (``{"error": {"code", "message", "type"}}``), raw text, or
    ``None``. The class follows the status (400, 401/403, 404, 503; anything else
    :class:`APIError`); the message quotes the server's own words.

    >>> e = error_from_response(401, {"error": {"code": 401, "message": "Invalid API Key",
    ...                                         "type": "authentication_error"}})
    >>> type(e).__name__, e.status_code, e.error_type
    ('AuthenticationError', 401, 'authentication_error')
    """
    message, error_type = "", None
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            message = str(err.get("message", ""))
            error_type = str(err["type"]) if err.get("type") else None
        else:
            message = str(err)
    elif isinstance(body, str | bytes):
        message = body.decode(errors="replace") if isinstance(body, bytes) else body
    message = message.strip() or "(no message)"
    cls = _STATUS_ERRORS.get(status, APIError)
    text = f"llama-server answered {status}{' to ' + where if where else ''}: {message}"
    if cls is AuthenticationError:
        text += " (pass the server's key as api_key=..., the key given to `lmserv serve --api-key`)"
    return cls(text, status_code=status, error_type=error_type, body=body)


def _decode_body(content: bytes) -> object:
    try:
        return json.loads(content)
    except ValueError:
        return content.decode(errors="replace")


@contextlib.contextmanager
def _translate(base_url: str, where: str, timeout: httpx.Timeout) -> Iterator[None]:
    """Turn httpx's transport errors into :class:`ServerUnavailable` (nothing listening, a
    dropped connection) or :class:`APITimeoutError` (no answer in time), each with a next step."""
    try:
        yield
    except httpx.ConnectError as exc:
        raise ServerUnavailable(
            f"could not connect to llama-server at {base_url} ({exc}): is the server running? "
            "start it with `lmserv serve MODEL` or LlamaServer(MODEL).start()"
        ) from exc
    except httpx.TimeoutException as exc:
        raise APITimeoutError(
            f"{where} on {base_url} timed out ({type(exc).__name__}, timeouts {timeout}); "
            "pass a larger timeout= to the client if the model is slow"
        ) from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise ServerUnavailable(
            f"the connection to llama-server at {base_url} dropped during {where} ({exc}); "
            "the server may have crashed or been stopped: check its log (LlamaServer.log_tail())"
        ) from exc


class _EventParser(Generic[R]):
    """Decodes one stream's server-sent events into text chunks and a final result (no I/O).

    Native ``/completion`` ends with an event whose ``stop`` is true (no ``[DONE]``); the
    ``/v1`` routes end with ``data: [DONE]``. An error mid-stream arrives as
    ``data: {"error": ...}``.

    A chat's deltas may also carry ``reasoning_content`` pieces and ``tool_calls`` pieces; the
    latter are assembled as llama-server sends them (``server_chat_msg_diff_to_json_oaicompat``):
    each names its call by ``index``, the first for a call brings ``id``, ``type`` and
    ``function.name``, later ones append to ``function.arguments``.
    """

    def __init__(self, chat: bool, where: str) -> None:
        self.chat = chat
        self.where = where
        self.parts: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, dict[str, str]] = {}
        self.last: Mapping[str, Any] | None = None
        self.done = False

    def _tool_call_delta(self, delta: Mapping[str, Any]) -> None:
        index = delta.get("index")
        if not isinstance(index, int):
            index = len(self.calls)
        call = self.calls.setdefault(index, {"id": "", "type": "function", "name": "", "args": ""})
        if delta.get("id"):
            call["id"] = str(delta["id"])
        if delta.get("type"):
            call["type"] = str(delta["type"])
        function = delta.get("function") or {}
        if function.get("name"):
            call["name"] += str(function["name"])
        if function.get("arguments"):
            call["args"] += str(function["arguments"])

    def feed(self, line: str) -> str | None:
        """Take one line; return the text it carries, or ``None`` for no text."""
        if not line.startswith("data:"):
            return None  # blank separators, comments, "event:" lines
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return None
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise APIError(
                f"llama-server sent an unreadable event during {self.where}: {payload[:200]!r}"
            ) from exc
        if not isinstance(event, Mapping):
            return None
        if "error" in event:
            err = event["error"]
            code = err.get("code") if isinstance(err, Mapping) else None
            raise error_from_response(
                int(code) if isinstance(code, int) else 500, event, where=self.where
            )
        if self.chat:
            choices = event.get("choices") or []
            text = None
            for choice in choices:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    text = str(delta["content"])
                if delta.get("reasoning_content"):
                    self.reasoning.append(str(delta["reasoning_content"]))
                for call in delta.get("tool_calls") or ():
                    self._tool_call_delta(call)
                if choice.get("finish_reason"):
                    self.last = event
            if not choices and self.last is not None:  # the usage chunk after the finish one
                extra = {k: event[k] for k in ("usage", "timings") if k in event}
                self.last = {**self.last, **extra}
        else:
            text = str(event.get("content") or "") or None
            if event.get("stop"):
                self.last = event
                self.done = True
        if text:
            self.parts.append(text)
        return text

    def result(self) -> Any:
        if self.last is None:
            raise ServerUnavailable(
                f"the stream of {self.where} ended before its final event; llama-server may "
                "have been stopped mid-answer: check its log (LlamaServer.log_tail())"
            )
        joined = "".join(self.parts)
        if self.chat:
            calls = [
                ToolCall(id=c["id"], name=c["name"], arguments=c["args"], type=c["type"])
                for _, c in sorted(self.calls.items())
            ]
            return ChatCompletion.from_json(
                self.last, text=joined, reasoning="".join(self.reasoning), tool_calls=calls
            )
        return Completion.from_json(self.last, text=joined)


class _StreamBase(Generic[R]):
    """What both stream classes share: the open response, its parser, and ``result``."""

    def __init__(
        self,
        response: httpx.Response,
        parser: _EventParser[R],
        base_url: str,
        timeout: httpx.Timeout,
    ) -> None:
        self._response = response
        self._parser: _EventParser[R] = parser
        self._base_url = base_url
        self._timeout = timeout
        self.result: R | None = None


class TextStream(_StreamBase[R]):
    """Text chunks of a streamed answer, as they arrive; ``result`` once it is consumed.

    Iterate it (once); ``"".join(chunks)`` equals ``result.text``. Use it as a context manager
    or call :meth:`close` to stop early and free the connection. A dropped connection raises
    :class:`~lmserv.errors.ServerUnavailable`; an error event raises the matching
    :class:`~lmserv.errors.APIError`.
    """

    def __iter__(self) -> Iterator[str]:
        try:
            with _translate(self._base_url, self._parser.where, self._timeout):
                for line in self._response.iter_lines():
                    text = self._parser.feed(line)
                    if text:
                        yield text
                    if self._parser.done:
                        break
            self.result = self._parser.result()
        finally:
            self._response.close()

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> TextStream[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTextStream(_StreamBase[R]):
    """The async twin of :class:`TextStream`: ``async for chunk in stream``; ``aclose()``."""

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            with _translate(self._base_url, self._parser.where, self._timeout):
                async for line in self._response.aiter_lines():
                    text = self._parser.feed(line)
                    if text:
                        yield text
                    if self._parser.done:
                        break
            self.result = self._parser.result()
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()

    async def __aenter__(self) -> AsyncTextStream[R]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
