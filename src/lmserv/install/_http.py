"""HTTP for downloads: one GET with Range, redirects followed by hand, statuses mapped to errors.

Redirects are followed here rather than by httpx so that the rule for credentials is ours and
visible: an ``Authorization`` header is bound to the origin (scheme, host, port) it was meant
for and is dropped on any hop to another origin. ``HF_TOKEN`` is only ever meant for
huggingface.co; the hub redirects file downloads to CDN hosts that must not see it.
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from lmserv.errors import DownloadError

__all__ = ["Fetcher", "Retryable", "content_range", "origin", "token_headers"]

log = logging.getLogger(__name__)

TOKEN_HOSTS = frozenset({"huggingface.co", "hf.co"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)
_MAX_RETRY_AFTER = 120.0

Origin = tuple[str, str, int]


class Retryable(Exception):
    """A failure worth another try (5xx, 429, a dropped or stalled connection)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def origin(url: str) -> Origin:
    """(scheme, host, port) of ``url``; the unit credentials are bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def token_headers(url: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``Authorization`` from ``HF_TOKEN`` when ``url`` is on huggingface.co, else nothing."""
    env = os.environ if env is None else env
    token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN")
    host = (urlsplit(url).hostname or "").lower()
    if token and host in TOKEN_HOSTS and urlsplit(url).scheme == "https":
        return {"Authorization": f"Bearer {token}"}
    return {}


def content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """Parse ``Content-Range: bytes a-b/total`` into (a, b, total); None where unknown."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return (
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(total) if total not in (None, "*") else None,
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - time.time()
    return max(0.0, min(seconds, _MAX_RETRY_AFTER))


def _status_error(url: str, response: httpx.Response) -> Exception:
    """The exception for an unusable status: :class:`Retryable` or :class:`DownloadError`."""
    code = response.status_code
    if code in (408, 425, 429) or code >= 500:
        return Retryable(
            f"HTTP {code} from {url}", _retry_after(response.headers.get("retry-after"))
        )
    what = f"HTTP {code} {response.reason_phrase} from {url}"
    if code in (401, 403):
        host = (urlsplit(url).hostname or "").lower()
        hint = (
            "set HF_TOKEN to a Hugging Face token that may read this repository "
            "(gated models need their licence accepted on the website first)"
            if host in TOKEN_HOSTS
            else "check that the URL is public or pass the right credentials"
        )
        return DownloadError(f"{what}: access refused; {hint}")
    if code == 404:
        return DownloadError(f"{what}: no such file; check the URL, repository and file name")
    return DownloadError(f"{what}; check the URL")


@dataclass(frozen=True)
class _Auth:
    origin: Origin
    value: str


class Fetcher:
    """Range GETs of one URL over a shared connection pool (thread-safe).

    ``stall_timeout`` bounds every wait on the network (connect and each read), so a connection
    that delivers nothing for that long raises ``httpx.ReadTimeout`` and can be retried.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        stall_timeout: float = 30.0,
        connections: int = 1,
    ) -> None:
        self.url = url
        plain = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
        auth = next((v for k, v in (headers or {}).items() if k.lower() == "authorization"), None)
        if auth is None:
            auth = token_headers(url).get("Authorization")
        self._auth = _Auth(origin(url), auth) if auth else None
        self._headers = {"Accept-Encoding": "identity", "User-Agent": "lmserv"}
        self._headers.update(plain)
        self._client = httpx.Client(
            timeout=httpx.Timeout(stall_timeout),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=connections + 2, max_keepalive_connections=None),
            trust_env=True,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def get(self, start: int | None = None, end: int | None = None) -> Iterator[httpx.Response]:
        """Stream a GET of bytes ``start..end`` (inclusive; open-ended without ``end``).

        Yields a response with status 200, 206 or 416; raises :class:`Retryable` for statuses
        worth another try, :class:`DownloadError` for the rest, and ``httpx.TransportError``
        for network failures.
        """
        url = self.url
        for _hop in range(_MAX_REDIRECTS + 1):
            headers = dict(self._headers)
            if start is not None:
                headers["Range"] = f"bytes={start}-{'' if end is None else end}"
            if self._auth is not None and origin(url) == self._auth.origin:
                headers["Authorization"] = self._auth.value
            request = self._client.build_request("GET", url, headers=headers)
            response = self._client.send(request, stream=True)
            try:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    target = str(httpx.URL(url).join(response.headers["location"]))
                    if self._auth is not None and origin(target) != self._auth.origin:
                        log.debug("redirect to %s: credentials not forwarded", origin(target)[1])
                    url = target
                    continue
                if response.status_code not in (200, 206, 416):
                    raise _status_error(url, response)
                yield response
                return
            finally:
                response.close()
        raise DownloadError(
            f"more than {_MAX_REDIRECTS} redirects starting at {self.url}; check the URL"
        )
