"""HTTP for downloads: one GET with Range, redirects followed by hand, statuses mapped to errors.

Redirects are followed here rather than by httpx so that the rule for credentials is ours and
visible: every header the caller passes (``Authorization``, ``Cookie``, ``Proxy-Authorization``,
``X-Api-Key``, anything else) is bound to the origin (scheme, host, port) it was meant for and
is dropped on any hop to another origin; only the harmless ones in ``_SENT_EVERYWHERE`` follow
a redirect. A deny-list of credential names would miss the next ``X-Whatever-Token``.
``HF_TOKEN`` is only ever meant for huggingface.co; the hub redirects file downloads to CDN hosts
that must not see it.

Resuming needs to know that the bytes on disk and the bytes on offer are one version of the
file: :class:`Validators` (``ETag``, ``Last-Modified``) are kept with a partial download and sent
back as ``If-Range``, so a server whose file changed answers with the whole new file.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from lmserv.errors import ConfigError, DownloadError

__all__ = [
    "Fetcher",
    "Retryable",
    "Validators",
    "check_url",
    "content_range",
    "origin",
    "redact",
    "retry_after",
    "token_headers",
]

log = logging.getLogger(__name__)

TOKEN_HOSTS = frozenset({"huggingface.co", "hf.co"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)
# Caller headers that may follow a redirect to another origin; every other one stays home.
_SENT_EVERYWHERE = frozenset({"accept", "accept-language", "user-agent"})

Origin = tuple[str, str, int]


class Retryable(Exception):
    """A failure worth another try (5xx, 429, a dropped or stalled connection).

    ``retry_after`` is the server's ``Retry-After`` in seconds, uncapped (the retry policy caps
    it and says so); None when absent or unreadable.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def origin(url: str) -> Origin:
    """(scheme, host, port) of ``url``; the unit credentials are bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def check_url(url: str) -> None:
    """Raise :class:`ConfigError` unless ``url`` is a well-formed http(s) URL with a host.

    >>> check_url("http://[::1/x.gguf")
    Traceback (most recent call last):
    ...
    lmserv.errors.ConfigError: URL 'http://[::1/x.gguf' is malformed (Invalid IPv6 URL); \
write it as https://host/path/file.gguf
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port out of range or not a number
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ConfigError(
            f"URL {redact(url)!r} is malformed ({exc}); write it as https://host/path/file.gguf"
        ) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"URL {redact(url)!r} is not an http(s) URL with a host; "
            "write it as https://host/path/file.gguf"
        )


def redact(url: str) -> str:
    """``url`` without the ``user:password@`` it may carry: what logs and files may show.

    >>> redact("https://me:secret@example.com/x.gguf")
    'https://example.com/x.gguf'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.rpartition("@")[2] if "@" in url else url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@dataclass(frozen=True)
class Validators:
    """What names one version of a file on a server: its ``ETag`` and ``Last-Modified``."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, response: httpx.Response) -> Validators:
        return cls(response.headers.get("etag"), response.headers.get("last-modified"))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Validators:
        etag, modified = record.get("etag"), record.get("last_modified")
        return cls(
            etag if isinstance(etag, str) else None,
            modified if isinstance(modified, str) else None,
        )

    def to_record(self) -> dict[str, str | None]:
        return {"etag": self.etag, "last_modified": self.last_modified}

    def if_range(self) -> str | None:
        """The ``If-Range`` value: a strong ETag, else the date (RFC 9110 forbids weak tags)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def differs(self, other: Validators) -> bool:
        """Whether ``other`` is known to be another version (a validator both carry differs)."""
        if self.etag and other.etag:
            return self.etag != other.etag
        if self.last_modified and other.last_modified:
            return self.last_modified != other.last_modified
        return False


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


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay or HTTP date); None when absent or unreadable.

    A malformed value (``soon``) is treated as absent: the server's hint is advice, and the
    backoff works without it.

    >>> retry_after("3"), retry_after("soon"), retry_after("-5"), retry_after("nan")
    (3.0, None, 0.0, None)
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _status_error(url: str, response: httpx.Response) -> Exception:
    """The exception for an unusable status: :class:`Retryable` or :class:`DownloadError`."""
    code = response.status_code
    if code in (408, 425, 429) or code >= 500:
        return Retryable(
            f"HTTP {code} from {redact(url)}", retry_after(response.headers.get("retry-after"))
        )
    what = f"HTTP {code} {response.reason_phrase} from {redact(url)}"
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


class Fetcher:
    """Range GETs of one URL over a shared connection pool (thread-safe).

    ``stall_timeout`` bounds every wait on the network (connect and each read), so a connection
    that delivers nothing for that long raises ``httpx.ReadTimeout`` and can be retried.
    ``headers`` go only to the origin of ``url`` (see the module docstring). ``if_range``, once
    set, is sent as ``If-Range`` with every Range request.
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
        self.if_range: str | None = None
        given = dict(headers or {})
        if not any(k.lower() == "authorization" for k in given):
            given.update(token_headers(url))
        self._origin = origin(url)
        self._headers = {"User-Agent": "lmserv"}
        self._headers.update({k: v for k, v in given.items() if k.lower() in _SENT_EVERYWHERE})
        self._bound = {k: v for k, v in given.items() if k.lower() not in _SENT_EVERYWHERE}
        self._headers["Accept-Encoding"] = "identity"  # byte offsets must be file offsets
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
            if origin(url) == self._origin:
                headers.update(self._bound)
            if start is not None:
                headers["Range"] = f"bytes={start}-{'' if end is None else end}"
                if self.if_range:
                    headers["If-Range"] = self.if_range
            request = self._client.build_request("GET", url, headers=headers)
            response = self._client.send(request, stream=True)
            try:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    target = str(httpx.URL(url).join(response.headers["location"]))
                    if self._bound and origin(target) != self._origin:
                        log.debug("redirect to %s: headers not forwarded", origin(target)[1])
                    url = target
                    continue
                if response.status_code not in (200, 206, 416):
                    raise _status_error(url, response)
                yield response
                return
            finally:
                response.close()
        raise DownloadError(
            f"more than {_MAX_REDIRECTS} redirects starting at {redact(self.url)}; check the URL"
        )
