"""Parsing one setting's value (from the config file or an ``LMSERV_*`` variable) and the
table of every setting: its name, section, parser and default."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmserv._inputs import check_api_key
from lmserv.errors import ConfigError

_ENV_PREFIX = "LMSERV_"
CudaSetting = Literal["auto", "on", "off"]


class _Bad(Exception):
    """A value has the wrong type or range; the message says what is expected."""


def _as_str(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected a string, got {value!r}")
    return value


def expand_path(text: str, *, what: str = "path") -> Path:
    """``Path(text).expanduser()``, raising :class:`~lmserv.errors.ConfigError` (not
    ``RuntimeError``) when ``~user`` names nobody on this machine or there is no home folder.

    ``what`` names the value in the message (``"$LLAMA_BIN_DIR"``, ``"model path"``).
    """
    try:
        return Path(text).expanduser()
    except RuntimeError:
        tilde = text.replace("\\", "/").split("/", 1)[0]
        whose = f"user {tilde[1:]!r}" if len(tilde) > 1 else "the current user"
        raise ConfigError(
            f"{what} {text!r} starts with {tilde!r}, but {whose} has no home folder on this "
            "machine; write the path in full (e.g. /home/NAME/...)"
        ) from None


def _as_path(value: object) -> Path:
    text = _as_str(value).strip()
    if not text:
        raise _Bad("expected a folder path, got an empty string")
    try:
        return expand_path(text)
    except ConfigError as exc:
        raise _Bad(str(exc)) from None


def _as_optional_str(value: object) -> str | None:
    text = _as_str(value)
    return text or None


def _as_api_key(value: object) -> str | None:
    text = _as_optional_str(value)
    if text is not None:
        try:
            check_api_key(text)
        except ConfigError as exc:
            raise _Bad(str(exc)) from None
    return text


def _as_host(value: object) -> str:
    text = _as_str(value).strip()
    if not text or any(c.isspace() for c in text):
        raise _Bad(f"expected a host name or IP address, got {value!r}")
    return text


def _as_int(value: object, *, env: bool) -> int:
    if env and isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"expected a whole number, got {value!r}")
    return value


def _as_port(value: object, *, env: bool) -> int | None:
    """A TCP port; 0 (or "auto") means "any free port"."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    port = _as_int(value, env=env)
    if not 0 <= port <= 65535:
        raise _Bad(f"expected a port number from 1 to 65535 (0 or 'auto': a free one), got {port}")
    return port or None


def _as_count(value: object, *, env: bool) -> int | None:
    """A positive count; 0 (or "auto") means "let lmserv choose"."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    count = _as_int(value, env=env)
    if count < 0:
        raise _Bad(f"expected a positive number (or 0 / 'auto' for automatic), got {count}")
    return count or None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _as_bool(value: object, *, env: bool) -> bool:
    if isinstance(value, bool):
        return value
    if env and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Bad(f"expected true or false, got {value!r}")


def _as_cuda(value: object) -> CudaSetting:
    if isinstance(value, bool):
        return "on" if value else "off"
    text = _as_str(value).strip().lower()
    if text in ("auto", "on", "off"):
        return text  # type: ignore[return-value]
    raise _Bad(f"expected 'auto', 'on' or 'off', got {value!r}")


@dataclass(frozen=True)
class _Spec:
    """One setting: its table and key, how to parse a value, and its help line."""

    table: str
    key: str
    parse: Callable[[object, bool], object]
    help: str

    @property
    def name(self) -> str:
        return f"{self.table}.{self.key}"

    @property
    def env(self) -> str:
        return f"{_ENV_PREFIX}{self.table.upper()}_{self.key.upper()}"


def _plain(fn: Callable[[object], object]) -> Callable[[object, bool], object]:
    return lambda value, _env: fn(value)


def _envaware(fn: Callable[..., object]) -> Callable[[object, bool], object]:
    return lambda value, env: fn(value, env=env)


_SPECS: tuple[_Spec, ...] = (
    _Spec("paths", "data", _plain(_as_path), "lmserv's data folder"),
    _Spec("paths", "models", _plain(_as_path), "where models are downloaded"),
    _Spec("paths", "builds", _plain(_as_path), "where `lmserv build` compiles llama.cpp"),
    _Spec("paths", "cache", _plain(_as_path), "re-fetchable files (source archives)"),
    _Spec("models", "default", _plain(_as_optional_str), "model used when none is named"),
    _Spec("server", "host", _plain(_as_host), "address llama-server binds"),
    _Spec("server", "port", _envaware(_as_port), "port llama-server listens on (0: free)"),
    _Spec("server", "api_key", _plain(_as_api_key), "API key clients must send"),
    _Spec("build", "cuda", _plain(_as_cuda), "CUDA build: auto, on or off"),
    _Spec("build", "jobs", _envaware(_as_count), "parallel compile jobs (0: all cores)"),
    _Spec("build", "rpc", _envaware(_as_bool), "also build the RPC worker"),
    _Spec("build", "source", _plain(_as_optional_str), "llama.cpp source (URL, folder, pypi)"),
    _Spec("download", "connections", _envaware(_as_count), "connections per file (0: auto)"),
)
_BY_NAME = {spec.name: spec for spec in _SPECS}
_TABLES = {spec.table for spec in _SPECS}
SECRET_KEYS = frozenset({"server.api_key"})

_STATIC_DEFAULTS: dict[str, object] = {
    "models.default": None,
    "server.host": "127.0.0.1",
    "server.port": None,
    "server.api_key": None,
    "build.cuda": "auto",
    "build.jobs": None,
    "build.rpc": False,
    "build.source": None,
    "download.connections": None,
}
