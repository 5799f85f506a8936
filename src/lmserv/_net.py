"""Host and endpoint rules shared by the serving side and the GPU/RPC planning.

They live at the bottom of the import graph so that :mod:`lmserv.gpu` can validate RPC
endpoints without importing the process supervision in :mod:`lmserv.rpc`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import httpx

from lmserv.errors import ConfigError

__all__ = [
    "KEEPALIVE_EXPIRY",
    "STALE_ATTEMPTS",
    "RequestTrace",
    "is_loopback",
    "normalize_endpoints",
    "parse_endpoint",
]

#: Seconds an idle HTTP connection to llama-server is kept for reuse. llama-server (cpp-httplib,
#: ``CPPHTTPLIB_KEEPALIVE_TIMEOUT_SECOND``) closes a connection idle for 5 s, httpx's own default
#: expiry: a request written at that moment meets the close and fails with "Server disconnected
#: without sending a response". Giving idle connections up a second earlier avoids the race.
KEEPALIVE_EXPIRY = 4.0

#: How many times a request is sent when each try met a kept-alive connection the server had
#: already closed (:class:`RequestTrace`); a try on a new connection is never repeated.
STALE_ATTEMPTS = 3


class RequestTrace:
    """What httpcore did for one request, through httpx's ``trace`` extension.

    llama-server closes the connection after every streamed response (its chunked-content
    provider returns false once done, which cpp-httplib reads as a failed write), without a
    ``Connection: close`` header, so httpx keeps the connection for the next request. That is
    every answer of the model service (the router streams what it proxies) and every stream
    of a single server. A request sent on it before the close arrives fails with "Server
    disconnected without sending a response". :meth:`stale` tells that case apart from a
    server that failed while answering: the request went out on a reused connection (no new
    one was opened for it) and no response header came back, so the server never read it and
    sending it again on a new connection is safe, even for a generation.

    Pass ``extensions={"trace": trace}`` (sync) or ``{"trace": trace.async_hook}`` (async).
    """

    def __init__(self) -> None:
        self.connected = False  # a connection was opened for this request
        self.answered = False  # response headers arrived

    def __call__(self, name: str, info: object) -> None:
        if name.startswith("connection.connect_"):
            self.connected = True
        elif name.endswith("receive_response_headers.complete"):
            self.answered = True

    async def async_hook(self, name: str, info: object) -> None:
        self(name, info)

    def send_again(self, exc: BaseException, attempt: int) -> bool:
        """Whether try ``attempt`` (from 0), which raised ``exc``, is sent again: it was
        :meth:`stale` and fewer than :data:`STALE_ATTEMPTS` tries were made."""
        return attempt < STALE_ATTEMPTS - 1 and self.stale(exc)

    def stale(self, exc: BaseException) -> bool:
        """True when ``exc`` came from a reused connection the server had closed (see above)."""
        dropped = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
        return isinstance(exc, dropped) and not self.connected and not self.answered


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split ``"host:port"`` into ``(host, port)``, as llama.cpp's ``--rpc`` reads it.

    llama.cpp splits at the *first* ``:`` and resolves the host with ``gethostbyname``, so a host
    is an IPv4 address or a name, never an IPv6 literal. Raises :class:`ConfigError` (a
    ``ValueError``) quoting the bad value and the accepted form.

    >>> parse_endpoint("192.168.1.10:50052")
    ('192.168.1.10', 50052)
    >>> parse_endpoint(" gpu-box-2:50053 ")
    ('gpu-box-2', 50053)
    """
    if not isinstance(endpoint, str):
        raise ConfigError(
            f"RPC endpoint {endpoint!r} is not a string; use 'host:port', e.g. '192.168.1.10:50052'"
        )
    text = endpoint.strip()
    form = "use 'host:port' with an IPv4 address or host name, e.g. '192.168.1.10:50052'"
    if "," in text:
        raise ConfigError(
            f"RPC endpoint {endpoint!r} holds several endpoints; pass one 'host:port' per list "
            "item, e.g. rpc=['10.0.0.2:50052', '10.0.0.3:50052']"
        )
    if text.count(":") != 1:
        why = (
            "has no ':port'" if ":" not in text else "has more than one ':' (IPv6 is not supported)"
        )
        raise ConfigError(f"RPC endpoint {endpoint!r} {why}; {form}")
    host, _, port_text = text.partition(":")
    if not host or any(c.isspace() or c in ",/[]" for c in host):
        raise ConfigError(f"RPC endpoint {endpoint!r} has a bad host {host!r}; {form}")
    if not port_text.isdigit():
        raise ConfigError(f"RPC endpoint {endpoint!r} has a bad port {port_text!r}; {form}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"RPC endpoint {endpoint!r}: port {port} is outside 1..65535; {form}")
    return host, port


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``127.x``, ``::1``, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_endpoints(rpc: str | Sequence[str] | None) -> tuple[str, ...]:
    """RPC endpoints as ``("host:port", ...)``: a list, or one comma-separated string.

    Validates the form only (no connection); raises :class:`ConfigError` quoting a bad or
    repeated endpoint.
    """
    if rpc is None:
        return ()
    items = rpc.split(",") if isinstance(rpc, str) else list(rpc)
    out: list[str] = []
    for item in items:
        host, port = parse_endpoint(item)
        text = f"{host}:{port}"
        if text in out:
            raise ConfigError(f"RPC endpoint {text!r} is listed twice; list each worker once")
        out.append(text)
    return tuple(out)
