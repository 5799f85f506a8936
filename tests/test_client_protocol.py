"""The client against a stand-in llama-server that behaves as a proxy in front of one may.

llama-server closes a stream after ``data: [DONE]`` and answers a bad key with 401; a reverse
proxy may keep the connection open after the last event and refuse a request with 403. The
real server never does either, so a small real HTTP server on 127.0.0.1 does, with the event
format llama-server sends (tools/server: chat chunks, a finish chunk, a usage chunk, [DONE]).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from lmserv import AsyncClient, AuthenticationError, ChatCompletion, Client

# A timeout only so that a broken client fails instead of hanging the suite.
TIMEOUT = httpx.Timeout(10.0)
WORDS = [" three", " four", " five"]


def _chat_events() -> list[dict[str, object]]:
    base = {"id": "chatcmpl-1", "model": "counting", "object": "chat.completion.chunk"}
    events: list[dict[str, object]] = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]}
    ]
    for word in WORDS:
        delta = {"content": word}
        events.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {"prompt_tokens": 3, "completion_tokens": len(WORDS), "total_tokens": 3 + len(WORDS)}
    events.append({**base, "choices": [], "usage": usage})
    return events


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status: int | None = None  # refuse every request with this status
        self.release = threading.Event()  # held-open streams end when this is set

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Proxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.status is not None:
            message = {"code": self.server.status, "message": "denied by the proxy's policy"}
            body = json.dumps({"error": message}).encode()
            self.send_response(self.server.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in [*(json.dumps(e) for e in _chat_events()), "[DONE]"]:
            data = f"data: {event}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()
        # No final chunk, no close: the connection stays open, as behind a keep-alive proxy.
        self.server.release.wait(60)
        self.close_connection = True


@pytest.fixture
def proxy() -> Iterator[_Proxy]:
    server = _Proxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(30)


def test_a_stream_ends_at_done_even_if_the_connection_stays_open(proxy: _Proxy) -> None:
    with Client(proxy.url, timeout=TIMEOUT) as client:
        stream = client.chat_stream("one two")
        assert list(stream) == WORDS
    assert isinstance(stream.result, ChatCompletion)
    assert (stream.result.text, stream.result.finish_reason) == ("".join(WORDS), "stop")
    assert stream.result.completion_tokens == len(WORDS)


def test_an_async_stream_ends_at_done_even_if_the_connection_stays_open(proxy: _Proxy) -> None:
    async def run() -> tuple[list[str], ChatCompletion | None]:
        async with AsyncClient(proxy.url, timeout=TIMEOUT) as client:
            stream = await client.chat_stream("one two")
            return [piece async for piece in stream], stream.result

    pieces, result = asyncio.run(run())
    assert pieces == WORDS
    assert result is not None and result.text == "".join(WORDS)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_an_authentication_error(proxy: _Proxy, status: int) -> None:
    proxy.status = status
    with Client(proxy.url, api_key="wrong", timeout=TIMEOUT) as client:
        with pytest.raises(AuthenticationError, match="denied by the proxy's policy") as err:
            client.complete("one two")
        assert err.value.status_code == status
        with pytest.raises(AuthenticationError):
            client.chat_stream("one two")
