"""A stand-in for llama-server's HTTP API on 127.0.0.1, for testing the client without a build.

It is a real HTTP/1.1 server in a thread (the client's real ``httpx`` stack talks to it over a
real socket) that records every request, body included, and answers with what llama-server at
the pinned commit sends: the same JSON shapes, the same server-sent events (native
``/completion`` ends with an event whose ``stop`` is true, the ``/v1`` routes with
``data: [DONE]``, a chat stream's usage chunk has no choices), the same error object. What it
answers is scripted per route (:class:`Reply`); :class:`Faults` breaks it on purpose, one field
per fault, in the manner of ``_http_server.Faults``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ApiServer", "Faults", "Recorded", "Reply", "error_body"]


def error_body(code: int, message: str, error_type: str) -> dict[str, Any]:
    """llama-server's error object (``format_error_response``)."""
    return {"error": {"code": code, "message": message, "type": error_type}}


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a status and a JSON body, or (``events``) a stream of SSE data."""

    status: int = 200
    body: Any = None
    events: tuple[str, ...] | None = None  # each is sent as "data: <event>\n\n"


@dataclass
class Faults:
    """What to break. Counters count down as faults are served."""

    drop: int = 0  # close this many connections without answering
    drop_stream_after: int | None = None  # stream this many events, then close mid-stream
    delay: float = 0.0  # wait this long before answering
    # Answer this many requests, then drop the next request on the same connection unanswered:
    # llama-server closes its end after every streamed answer without a "Connection: close"
    # header, so a request the client sends on that kept-alive connection meanwhile is lost.
    close_after_answer: int = 0


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the decoded JSON body, or None
    peer: int = 0  # the client's port: which connection the request came on


# What the counting model answers on a real llama-server, trimmed to the fields lmserv reads.
_TIMINGS = {"prompt_n": 3, "prompt_ms": 1.5, "predicted_n": 2, "predicted_ms": 4.0, "cache_n": 0}
COMPLETION = {
    "content": " three four",
    "stop": True,
    "stop_type": "limit",
    "tokens_evaluated": 3,
    "tokens_predicted": 2,
    "model": "counting.gguf",
    "timings": _TIMINGS,
}
COMPLETION_EVENTS = (
    json.dumps({"content": " three", "stop": False}),
    json.dumps({"content": " four", "stop": False}),
    json.dumps({**COMPLETION, "content": ""}),
)
CHAT = {
    "id": "chatcmpl-1",
    "model": "counting.gguf",
    "choices": [
        {
            "index": 0,
            "finish_reason": "length",
            "message": {"role": "assistant", "content": " three four"},
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    "timings": _TIMINGS,
}
_DELTA = {"id": "chatcmpl-1", "model": "counting.gguf", "object": "chat.completion.chunk"}
CHAT_EVENTS = (
    json.dumps({**_DELTA, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
    json.dumps({**_DELTA, "choices": [{"index": 0, "delta": {"content": " three"}}]}),
    json.dumps({**_DELTA, "choices": [{"index": 0, "delta": {"content": " four"}}]}),
    json.dumps({**_DELTA, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}),
    json.dumps({**_DELTA, "choices": [], "usage": CHAT["usage"], "timings": _TIMINGS}),
    "[DONE]",
)


def _default_reply(method: str, path: str, body: Any) -> Reply:
    if method == "GET" and path == "/health":
        return Reply(body={"status": "ok"})
    if method == "GET" and path == "/props":
        return Reply(body={"total_slots": 1, "model_path": "counting.gguf"})
    if method == "GET" and path == "/v1/models":
        return Reply(body={"object": "list", "data": [{"id": "counting.gguf"}]})
    if method == "GET" and path == "/metrics":
        return Reply(body="# HELP x\nllamacpp:tokens_predicted_total 9\n")
    if method == "POST" and path == "/completion":
        streaming = isinstance(body, dict) and body.get("stream")
        return Reply(events=COMPLETION_EVENTS) if streaming else Reply(body=COMPLETION)
    if method == "POST" and path == "/v1/chat/completions":
        streaming = isinstance(body, dict) and body.get("stream")
        return Reply(events=CHAT_EVENTS) if streaming else Reply(body=CHAT)
    if method == "POST" and path == "/tokenize":
        # One id per word, as the counting model has; BOS (1) first when asked.
        words = str(body.get("content", "")).split()
        ids = [1] if body.get("add_special") else []
        return Reply(body={"tokens": ids + [10 + len(w) for w in words]})
    if method == "POST" and path == "/detokenize":
        return Reply(body={"content": " ".join(f"w{t}" for t in body.get("tokens", []))})
    if method == "POST" and path == "/v1/embeddings":
        inputs = body.get("input", [])
        rows = [{"index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(inputs)]
        return Reply(body={"object": "list", "data": list(reversed(rows))})  # order by index
    return Reply(404, error_body(404, "File Not Found", "not_found_error"))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        with owner.lock:
            owner.recorded.append(
                Recorded(method, path, dict(self.headers.items()), body, self.client_address[1])
            )
            faults = owner.faults
            drop = faults.drop > 0 or getattr(self, "_closing", False)
            if faults.drop > 0:
                faults.drop -= 1
            elif not drop and faults.close_after_answer > 0:
                faults.close_after_answer -= 1
                self._closing = True  # this connection's next request is dropped
            reply = owner.replies.get((method, path)) or _default_reply(method, path, body)
        if faults.delay:
            time.sleep(faults.delay)
        if drop:
            self.close_connection = True
            self.connection.close()
            return
        if reply.events is not None:
            self._stream(reply, faults.drop_stream_after)
            return
        payload = (
            reply.body.encode() if isinstance(reply.body, str) else json.dumps(reply.body).encode()
        )
        self.send_response(reply.status)
        kind = "text/plain" if isinstance(reply.body, str) else "application/json"
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _stream(self, reply: Reply, drop_after: int | None) -> None:
        # llama-server streams with chunked transfer encoding and closes the stream when done.
        self.send_response(reply.status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, event in enumerate(reply.events or ()):
            if drop_after is not None and i == drop_after:
                self.close_connection = True
                self.connection.close()
                return
            data = f"data: {event}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ApiServer

    def handle_error(self, request: Any, client_address: Any) -> None:  # a client that left
        pass


class ApiServer:
    """``with ApiServer() as api: Client(api.base_url)``; ``api.recorded`` holds the requests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recorded: list[Recorded] = []
        self.replies: dict[tuple[str, str], Reply] = {}
        self.faults = Faults()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def reply(self, method: str, path: str, reply: Reply) -> None:
        self.replies[method, path] = reply

    def bodies(self, path: str) -> list[Any]:
        """The JSON bodies sent to ``path``, oldest first."""
        return [r.body for r in self.recorded if r.path == path]

    def __enter__(self) -> ApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
