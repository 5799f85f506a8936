"""Checks on values a user hands us that must leave Python intact: text, URLs, API keys.

Each raises :class:`~lmserv.errors.ConfigError` naming the value (never a credential) and the
accepted form, where the value comes in, instead of a ``UnicodeEncodeError`` or an httpx error
from deep inside a request.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from lmserv.errors import ConfigError

__all__ = ["check_api_key", "check_base_url", "check_json_text", "check_text"]


def check_text(text: str, what: str) -> str:
    """``text`` if it encodes as UTF-8 (what llama.cpp and JSON bodies need), else a ConfigError.

    Python lets a ``str`` hold what UTF-8 cannot: bytes that were not UTF-8 arrive from argv or
    a file as surrogate escapes (``'\\udcff'`` for byte 0xFF), and JSON may carry a lone
    surrogate. ``what`` names the text in the message ("the prompt", "message 2").

    >>> check_text("café", "the prompt")
    'café'
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        if 0xDC80 <= ord(char) <= 0xDCFF:  # how Python's surrogateescape keeps a bad byte
            found = f"the byte 0x{ord(char) - 0xDC00:02X}, which is not UTF-8,"
        else:
            found = f"a lone surrogate U+{ord(char):04X}"
        raise ConfigError(
            f"{what} has {found} at character {exc.start + 1}; pass UTF-8 text (convert the "
            "input with e.g. `iconv -t UTF-8`, or fix the terminal's encoding)"
        ) from None
    return text


def check_api_key(key: str) -> str:
    """``key`` if an HTTP ``Authorization`` header can carry it, else a ConfigError.

    A header value is printable ASCII: a line break would end the header early (httpx refuses
    it; a server could read the rest as another header) and a non-ASCII character has no agreed
    encoding. The message names the character and its position, never the key itself.
    """
    for i, char in enumerate(key):
        if " " <= char <= "~":
            continue
        if char in "\r\n":
            kind = "a line break"
        elif char < " " or char == "\x7f":
            kind = f"the control character {char!r}"
        else:
            kind = f"the non-ASCII character {char!r}"
        raise ConfigError(
            f"the API key has {kind} at position {i + 1}; it is sent in an HTTP header, which "
            "carries only printable ASCII: use letters, digits and punctuation"
        )
    return key


def check_base_url(url: str) -> str:
    """``url`` if it is an ``http://`` or ``https://`` URL with a host, else a ConfigError.

    Checked when a client is made, so a typo fails at once with the value and the accepted
    form, not at the first request inside httpx.

    >>> check_base_url("http://127.0.0.1:8080")
    'http://127.0.0.1:8080'
    """
    try:
        parsed = httpx.URL(url)
        ok = parsed.scheme in ("http", "https") and bool(parsed.host)
    except (httpx.InvalidURL, TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(
            f"server URL {url!r} is not an http:// or https:// URL with a host; "
            "pass one such as 'http://127.0.0.1:8080'"
        )
    return url


def check_json_text(value: object, where: str, path: str = "") -> None:
    """Every string in ``value`` (a JSON request body) passes :func:`check_text`.

    The message names the request and the field (``POST /completion: prompt``,
    ``messages[1].content``), so the caller knows which of its texts was bad.
    """
    if isinstance(value, str):
        check_text(value, f"{where}: {path or 'the body'}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_json_text(item, where, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_json_text(item, where, f"{path}[{i}]")
