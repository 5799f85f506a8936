"""A real HTTP/1.1 file server on 127.0.0.1 that can misbehave on purpose.

It serves byte strings (or generated content too large to hold) with Range support, keep-alive
and one thread per connection, and injects the faults downloads meet in the wild: a dropped
connection after N bytes, a server that ignores Range, 503 with Retry-After, a corrupted byte,
a per-connection rate cap, a stall, a lying size, a body that never ends, and a site that goes
down. Like real servers it sends ``ETag`` and ``Last-Modified`` (a new version with every
:meth:`FileServer.add`) and honours ``If-Range``. Every request is recorded for assertions. Also runnable on its own for the benchmarks::

    python tests/_http_server.py --virtual 2147483648 --port 0
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import hashlib
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Faults", "FileServer", "Request", "VirtualFile"]

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_BLOCK = 256 * 1024


@dataclass
class Faults:
    """What to break. Counters (``*_times``, ``fail_503``) count down as faults are served."""

    drop_after: int | None = None  # close the connection after this many body bytes ...
    drop_times: int = 1  # ... on this many responses (-1: every response)
    ignore_range: bool = False  # answer 200 with the whole file to Range requests
    fail_503: int = 0  # answer 503 this many times
    retry_after: str | None = "0"  # the Retry-After header sent with those 503s
    corrupt_at: int | None = None  # flip the byte at this file offset
    throttle: int | None = None  # bytes per second, per connection
    stall_after: int | None = None  # send this many body bytes, then go silent ...
    stall_times: int = 1  # ... on this many responses
    stall_seconds: float = 30.0
    fake_total: int | None = None  # report this size instead of the real one
    fail_after_bytes: int | None = None  # once this many body bytes went out: 500 forever
    status: int | None = None  # answer every request with this status
    gate: threading.Event | None = None  # hold every response until this is set
    endless: bool = False  # no Content-Length: the body goes on past the file until hung up ...
    endless_limit: int = 256 << 20  # ... or until this many junk bytes went out
    etag: bool = True  # send an ETag ...
    last_modified: bool = True  # ... and a Last-Modified for each version of a file
    ignore_if_range: bool = False  # answer Range with 206 even when If-Range names another version


@dataclass
class VirtualFile:
    """Content generated on the fly: ``pattern`` repeated to ``size`` bytes (nothing stored)."""

    size: int
    pattern: bytes

    def read(self, offset: int, n: int) -> bytes:
        plen = len(self.pattern)
        start = offset % plen
        out = bytearray()
        while len(out) < n:
            take = min(n - len(out), plen - start)
            out += self.pattern[start : start + take]
            start = 0
        return bytes(out)

    def sha256(self) -> str:
        h = hashlib.sha256()
        for off in range(0, self.size, 1 << 22):
            h.update(self.read(off, min(1 << 22, self.size - off)))
        return h.hexdigest()


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None
    authorization: str | None
    host: str | None
    status: int
    if_range: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # every header, names lower-cased


@dataclass
class _State:
    files: dict[str, bytes | VirtualFile] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    requests: list[Request] = field(default_factory=list)
    bytes_served: int = 0
    active: int = 0
    max_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


def _length(content: bytes | VirtualFile) -> int:
    return content.size if isinstance(content, VirtualFile) else len(content)


def _slice(content: bytes | VirtualFile, start: int, n: int) -> bytes:
    if isinstance(content, VirtualFile):
        return content.read(start, n)
    return content[start : start + n]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        st = self.server.state
        with st.lock:
            st.active += 1
            st.max_active = max(st.max_active, st.active)
        self._conn_sent = 0
        self._conn_started = time.monotonic()

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        st = self.server.state
        with st.lock:
            st.active -= 1

    def _record(self, status: int) -> None:
        st = self.server.state
        with st.lock:
            st.requests.append(
                Request(
                    self.path,
                    self.headers.get("Range"),
                    self.headers.get("Authorization"),
                    self.headers.get("Host"),
                    status,
                    self.headers.get("If-Range"),
                    {k.lower(): v for k, v in self.headers.items()},
                )
            )

    def _simple(self, status: int, headers: dict[str, str] | None = None) -> None:
        self._record(status)
        body = f"{status}\n".encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        st = self.server.state
        f = st.faults
        if self.path in st.redirects:
            self._simple(302, {"Location": st.redirects[self.path]})
            return
        with st.lock:
            fail_503 = f.fail_503 > 0
            if fail_503:
                f.fail_503 -= 1
            down = f.fail_after_bytes is not None and st.bytes_served >= f.fail_after_bytes
        if f.gate is not None:
            f.gate.wait(30)
        if f.status is not None:
            self._simple(f.status)
            return
        if fail_503:
            self._simple(503, {"Retry-After": f.retry_after} if f.retry_after is not None else {})
            return
        if down:
            self._simple(500)
            return
        content = st.files.get(self.path)
        if content is None:
            self._simple(404)
            return
        size = _length(content)
        reported = f.fake_total or size
        version = st.versions.get(self.path, 0)
        etag = f'"v{version}-{size}"'
        modified = email.utils.formatdate(1_700_000_000 + version, usegmt=True)
        match = _RANGE.match(self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        if match and if_range and not f.ignore_if_range and if_range not in (etag, modified):
            match = None  # RFC 9110: another version than the client holds, so the whole file
        start, end = 0, size - 1
        status = 200
        if match and not f.ignore_range:
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            if start >= size:
                self._simple(416, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
        self._record(status)
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        if f.etag:
            self.send_header("ETag", etag)
        if f.last_modified:
            self.send_header("Last-Modified", modified)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{reported}")
        if f.endless:
            self.send_header("Connection", "close")
            self.close_connection = True
        elif status == 206:
            self.send_header("Content-Length", str(end - start + 1))
        else:
            self.send_header("Content-Length", str(reported))
        self.end_headers()
        self._send_body(content, start, end + 1)
        if f.endless:
            self._send_forever(f.endless_limit)

    def _send_forever(self, limit: int) -> None:
        """Junk after the file, until the client hangs up (or ``limit`` bytes, a safety net)."""
        junk = b"\xee" * _BLOCK
        with contextlib.suppress(OSError):
            for _ in range(-(-limit // _BLOCK)):
                self.wfile.write(junk)
                with self.server.state.lock:
                    self.server.state.bytes_served += len(junk)

    def _take(self, attr: str) -> bool:
        st = self.server.state
        with st.lock:
            left = getattr(st.faults, attr)
            if left == 0:
                return False
            if left > 0:
                setattr(st.faults, attr, left - 1)
            return True

    def _send_body(self, content: bytes | VirtualFile, start: int, stop: int) -> None:
        st = self.server.state
        f = st.faults
        drop = f.drop_after is not None and self._take("drop_times")
        stall = f.stall_after is not None and self._take("stall_times")
        sent = 0
        pos = start
        block = _BLOCK if not f.throttle else max(1024, min(_BLOCK, f.throttle // 20))
        try:
            while pos < stop:
                n = min(block, stop - pos)
                if drop and f.drop_after is not None:
                    n = min(n, f.drop_after - sent)
                if stall and f.stall_after is not None:
                    n = min(n, f.stall_after - sent)
                if n <= 0:
                    if stall:
                        st.stop.wait(f.stall_seconds)
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                data = _slice(content, pos, n)
                if f.corrupt_at is not None and pos <= f.corrupt_at < pos + n:
                    i = f.corrupt_at - pos
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                self.wfile.write(data)
                sent += n
                pos += n
                with st.lock:
                    st.bytes_served += n
                if f.throttle:
                    self._conn_sent += n
                    ahead = self._conn_sent / f.throttle - (time.monotonic() - self._conn_started)
                    if ahead > 0 and st.stop.wait(ahead):
                        return
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    state: _State

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-response is what these tests are about


class FileServer:
    """``with FileServer() as srv: srv.add("/x", data); url = srv.url("/x")``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = _State()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.state = self.state
        self.host = host
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    # -- setup -------------------------------------------------------------------------------
    def add(self, path: str, content: bytes | VirtualFile) -> str:
        """Serve ``content`` at ``path``; adding again publishes a new version (new ETag)."""
        with self.state.lock:
            self.state.files[path] = content
            self.state.versions[path] = self.state.versions.get(path, -1) + 1
        return self.url(path)

    def redirect(self, path: str, location: str) -> str:
        self.state.redirects[path] = location
        return self.url(path)

    @property
    def faults(self) -> Faults:
        return self.state.faults

    def set_faults(self, **kwargs: Any) -> None:
        self.state.faults = Faults(**kwargs)

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    # -- observations ------------------------------------------------------------------------
    @property
    def requests(self) -> list[Request]:
        with self.state.lock:
            return list(self.state.requests)

    @property
    def bytes_served(self) -> int:
        return self.state.bytes_served

    def reset_log(self) -> None:
        """Forget requests and counts, after connections of a killed client have wound down."""
        deadline = time.monotonic() + 10
        while self.state.active and time.monotonic() < deadline:
            time.sleep(0.02)
        with self.state.lock:
            self.state.requests.clear()
            self.state.bytes_served = 0
            self.state.max_active = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FileServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.state.stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _main() -> None:  # pragma: no cover - used by benchmarks
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--file", action="append", default=[], help="PATH=LOCALFILE")
    parser.add_argument("--virtual", type=int, default=None, help="serve /virtual of this size")
    parser.add_argument("--throttle", type=int, default=None)
    args = parser.parse_args()
    with FileServer(port=args.port) as srv:
        for spec in args.file:
            path, _, local = spec.partition("=")
            with open(local, "rb") as fh:
                srv.add(path, fh.read())
        if args.virtual:
            srv.add("/virtual", VirtualFile(args.virtual, bytes(range(256)) * 4099))
        if args.throttle:
            srv.set_faults(throttle=args.throttle)
        print(srv.port, flush=True)
        stop: Callable[[], None] = threading.Event().wait
        stop()


if __name__ == "__main__":
    _main()
