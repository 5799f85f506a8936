"""lmserv's settings: one typed :class:`Settings`, and the folders other modules ask for.

Each setting lives in a table of the TOML config file and has one name everywhere::

    # ~/.config/lmserv/config.toml  (or the file named by $LMSERV_CONFIG)
    [server]
    port = 8081            # environment: LMSERV_SERVER_PORT=8081

The rule is ``LMSERV_<TABLE>_<KEY>`` for every setting. Precedence, lowest first: built-in
defaults < the config file < ``LMSERV_*`` environment variables < explicit arguments
(``load_settings(overrides={"server.port": 9000})``, which the CLI fills from its flags). Each
value remembers where it came from (:class:`Origin`); ``lmserv config show`` prints both.

Relative folders in the file are relative to the file's folder; ``~`` is the home folder.
Unknown tables or keys and bad values raise :class:`~lmserv.errors.ConfigError` naming the key,
the file and the line. Extra catalog entries go in ``[catalog.<name>]`` tables
(:func:`user_catalog`); the environment has no equivalent for them.

The folder functions (:func:`data_dir`, :func:`models_dir`, ...) read the same settings; the file
is parsed again only when it, or an ``LMSERV_*`` variable, changed.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import platformdirs

from lmserv._inputs import check_api_key
from lmserv.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "BuildSettings",
    "DownloadSettings",
    "ModelSettings",
    "Origin",
    "PathSettings",
    "ServerSettings",
    "Settings",
    "builds_dir",
    "cache_dir",
    "config_file",
    "data_dir",
    "expand_path",
    "get_settings",
    "load_settings",
    "models_dir",
    "user_catalog",
]

log = logging.getLogger(__name__)

_APP = "lmserv"
_ENV_PREFIX = "LMSERV_"
CONFIG_ENV = "LMSERV_CONFIG"

OriginKind = Literal["default", "file", "env", "argument"]
CudaSetting = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class Origin:
    """Where a setting's value came from: ``kind`` and a precise ``where``.

    ``where`` is ``"path/config.toml:12"`` for the file, the variable name for the environment,
    the dotted key for an argument, and a short note (or nothing) for a default.
    """

    kind: OriginKind
    where: str = ""

    def __str__(self) -> str:
        return f"{self.kind} ({self.where})" if self.where else self.kind


@dataclass(frozen=True)
class PathSettings:
    """Table ``[paths]``: where lmserv keeps its data, models, builds and cache."""

    data: Path
    models: Path
    builds: Path
    cache: Path


@dataclass(frozen=True)
class ModelSettings:
    """Table ``[models]``: ``default`` is the model used when a command is given none."""

    default: str | None


@dataclass(frozen=True)
class ServerSettings:
    """Table ``[server]``: how ``lmserv serve`` binds and protects ``llama-server``."""

    host: str
    port: int | None  # None: a free port chosen at start
    api_key: str | None


@dataclass(frozen=True)
class BuildSettings:
    """Table ``[build]``: defaults of ``lmserv build``."""

    cuda: CudaSetting
    jobs: int | None
    rpc: bool
    source: str | None


@dataclass(frozen=True)
class DownloadSettings:
    """Table ``[download]``: ``connections`` per file (``None``: the downloader chooses)."""

    connections: int | None


# --------------------------------------------------------------------------- value parsing


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


# --------------------------------------------------------------------------- the file


def config_file() -> Path:
    """The config file lmserv reads: ``$LMSERV_CONFIG``, else ``<config folder>/config.toml``."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return expand_path(explicit, what=f"${CONFIG_ENV}")
    return Path(platformdirs.user_config_dir(_APP, appauthor=False)) / "config.toml"


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?")
_KEYLINE = re.compile(r"^\s*([A-Za-z0-9_\-.\"' ]+?)\s*=")


def _dotted(text: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in text.split("."))


def _line_of(lines: list[str], dotted: str) -> int | None:
    """The 1-based line defining ``dotted`` (``table.key`` or ``table``), best effort.

    ``tomllib`` keeps no positions, so this scans for table headers and ``key =`` lines.
    """
    table = ""
    header_line = None
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("#"):
            continue
        m = _HEADER.match(line)
        if m:
            table = _dotted(m.group(1))
            if table == dotted:
                header_line = number
            continue
        m = _KEYLINE.match(line)
        if m:
            key = _dotted(m.group(1))
            full = f"{table}.{key}" if table else key
            if full == dotted or (full.startswith(dotted + ".") and header_line is None):
                return number
    return header_line


@dataclass(frozen=True)
class _FileData:
    path: Path
    exists: bool
    values: dict[str, tuple[object, int | None]]
    catalog: dict[str, dict[str, object]]


def _where(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line else str(path)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _read_file(path: Path, *, required: bool) -> _FileData:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(
                f"the config file {path} named by ${CONFIG_ENV} does not exist. Create it "
                f"(an empty file is valid) or unset {CONFIG_ENV} to use the default location."
            ) from None
        return _FileData(path, False, {}, {})
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}. Fix or remove it.") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"the config file {path} is not valid TOML: {exc}. Fix that line; "
            "see `lmserv config show` for the accepted keys."
        ) from exc
    lines = text.splitlines()
    values: dict[str, tuple[object, int | None]] = {}
    catalog: dict[str, dict[str, object]] = {}
    known_tables = sorted([*_TABLES, "catalog"])
    for table, content in data.items():
        line = _line_of(lines, table)
        if table == "catalog":
            catalog = _read_catalog(content, path, lines)
            continue
        if table not in _TABLES:
            raise ConfigError(
                f"unknown table [{table}] in the config file {_where(path, line)}. Known tables: "
                f"{', '.join(known_tables)}.{_suggest(table, known_tables)}"
            )
        if not isinstance(content, dict):
            raise ConfigError(
                f"{table!r} in the config file {_where(path, line)} must be a table "
                f"([{table}] followed by key = value lines), not {content!r}."
            )
        keys = sorted(s.key for s in _SPECS if s.table == table)
        for key, value in content.items():
            name = f"{table}.{key}"
            key_line = _line_of(lines, name) or line
            if name not in _BY_NAME:
                raise ConfigError(
                    f"unknown key {key!r} in table [{table}] of the config file "
                    f"{_where(path, key_line)}. Known keys: {', '.join(keys)}."
                    f"{_suggest(key, keys)}"
                )
            values[name] = (value, key_line)
    return _FileData(path, True, values, catalog)


def _read_catalog(content: object, path: Path, lines: list[str]) -> dict[str, dict[str, object]]:
    if not isinstance(content, dict):
        raise ConfigError(
            f"'catalog' in the config file {_where(path, _line_of(lines, 'catalog'))} must hold "
            "tables, one per model: [catalog.my-model] followed by url = ..., sha256 = ..."
        )
    entries: dict[str, dict[str, object]] = {}
    for name, entry in content.items():
        if not isinstance(entry, dict):
            where = _where(path, _line_of(lines, f"catalog.{name}"))
            raise ConfigError(
                f"catalog entry {name!r} in the config file {where} must be a table "
                f"([catalog.{name}] followed by url = ..., sha256 = ...), not {entry!r}."
            )
        entries[str(name)] = dict(entry)
    return entries


# --------------------------------------------------------------------------- Settings


@dataclass(frozen=True)
class Settings:
    """The effective settings, each with its :class:`Origin`.

    >>> s = load_settings(overrides={"server.port": 9000}, env={}, file=None)
    >>> s.server.port, str(s.origin("server.port"))
    (9000, 'argument (server.port)')
    """

    paths: PathSettings
    models: ModelSettings
    server: ServerSettings
    build: BuildSettings
    download: DownloadSettings
    catalog: Mapping[str, Mapping[str, object]]
    config_file: Path | None
    config_file_exists: bool
    origins: Mapping[str, Origin]

    def get(self, name: str) -> Any:
        """The value of dotted setting ``name`` (``"server.port"``); ``KeyError`` if unknown."""
        if name not in _BY_NAME:
            raise KeyError(name)
        table, key = name.split(".", 1)
        return getattr(getattr(self, table), key)

    def origin(self, name: str) -> Origin:
        """Where setting ``name`` came from."""
        return self.origins[name]

    def items(self) -> Iterator[tuple[str, Any, Origin]]:
        """``(name, value, origin)`` for every setting, in documentation order."""
        for spec in _SPECS:
            yield spec.name, self.get(spec.name), self.origins[spec.name]

    @staticmethod
    def names() -> list[str]:
        """Every setting's dotted name."""
        return [spec.name for spec in _SPECS]

    @staticmethod
    def env_name(name: str) -> str:
        """The environment variable of setting ``name``: ``LMSERV_<TABLE>_<KEY>``."""
        return _BY_NAME[name].env

    @staticmethod
    def help(name: str) -> str:
        """A one-line description of setting ``name``."""
        return _BY_NAME[name].help


def _parse(spec: _Spec, raw: object, *, env: bool, where: str) -> object:
    try:
        return spec.parse(raw, env)
    except _Bad as exc:
        raise ConfigError(f"bad value for {spec.name} in {where}: {exc}.") from None


def load_settings(
    overrides: Mapping[str, object] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    file: str | os.PathLike[str] | Literal["auto"] | None = "auto",
) -> Settings:
    """Resolve every setting: defaults < config file < environment < ``overrides``.

    ``overrides`` maps dotted names (``"server.port"``) to values; ``None`` values are skipped,
    so CLI flags can be passed straight through. ``env`` defaults to ``os.environ``; ``file``
    to :func:`config_file` (``None`` reads no file).

    Raises :class:`~lmserv.errors.ConfigError` for an unreadable or invalid file, an unknown
    key, or a bad value, naming the key and where it came from (file and line, variable, or
    argument).
    """
    environ = os.environ if env is None else env
    data = _FileData(Path(), False, {}, {})
    path: Path | None = None
    if file == "auto":
        explicit = environ.get(CONFIG_ENV)
        path = expand_path(explicit, what=f"${CONFIG_ENV}") if explicit else config_file()
        data = _read_file(path, required=bool(environ.get(CONFIG_ENV)))
    elif file is not None:
        path = expand_path(str(file), what="config file")
        data = _read_file(path, required=True)

    values: dict[str, object] = {}
    origins: dict[str, Origin] = {}
    for spec in _SPECS:
        if spec.name in _STATIC_DEFAULTS:
            values[spec.name] = _STATIC_DEFAULTS[spec.name]
            origins[spec.name] = Origin("default")
        if spec.name in data.values:
            raw, line = data.values[spec.name]
            where = f"the config file {_where(data.path, line)}"
            value = _parse(spec, raw, env=False, where=where)
            if isinstance(value, Path) and not value.is_absolute():
                value = data.path.parent / value  # relative to the file, not to the cwd
            values[spec.name] = value
            origins[spec.name] = Origin("file", _where(data.path, line))
        raw_env = environ.get(spec.env)
        if raw_env:  # an empty variable counts as unset, as shells make that easy to do
            values[spec.name] = _parse(spec, raw_env, env=True, where=f"${spec.env}")
            origins[spec.name] = Origin("env", spec.env)
    _warn_unknown_env(environ)

    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in _BY_NAME:
            raise ConfigError(
                f"unknown setting {name!r} passed as an argument. Known settings: "
                f"{', '.join(_BY_NAME)}.{_suggest(name, list(_BY_NAME))}"
            )
        spec = _BY_NAME[name]
        if isinstance(raw, os.PathLike):
            raw = os.fspath(raw)
        values[name] = _parse(spec, raw, env=True, where=f"the argument {name}")
        origins[name] = Origin("argument", name)

    _derive_paths(values, origins)
    return Settings(
        paths=_section(PathSettings, "paths", values),
        models=_section(ModelSettings, "models", values),
        server=_section(ServerSettings, "server", values),
        build=_section(BuildSettings, "build", values),
        download=_section(DownloadSettings, "download", values),
        catalog=MappingProxyType({k: MappingProxyType(v) for k, v in data.catalog.items()}),
        config_file=path,
        config_file_exists=data.exists,
        origins=MappingProxyType(origins),
    )


def _derive_paths(values: dict[str, object], origins: dict[str, Origin]) -> None:
    """Folders not set anywhere follow platformdirs, and models/builds follow ``paths.data``."""
    if "paths.data" not in values:
        values["paths.data"] = Path(platformdirs.user_data_dir(_APP, appauthor=False))
        origins["paths.data"] = Origin("default", "platformdirs")
    if "paths.cache" not in values:
        values["paths.cache"] = Path(platformdirs.user_cache_dir(_APP, appauthor=False))
        origins["paths.cache"] = Origin("default", "platformdirs")
    data = values["paths.data"]
    assert isinstance(data, Path)
    for key, sub in (("models", "models"), ("builds", "llama.cpp")):
        if f"paths.{key}" not in values:
            values[f"paths.{key}"] = data / sub
            origins[f"paths.{key}"] = Origin("default", f"paths.data/{sub}")


def _section(cls: Any, table: str, values: dict[str, object]) -> Any:
    return cls(**{f.name: values[f"{table}.{f.name}"] for f in fields(cls)})


def _warn_unknown_env(environ: Mapping[str, str]) -> None:
    # Not an error: other tools (and lmserv's own test suite) use LMSERV_* names too.
    known = {spec.env for spec in _SPECS}
    for var in environ:
        if var in known or not var.startswith(_ENV_PREFIX):
            continue
        table = var[len(_ENV_PREFIX) :].split("_", 1)[0].lower()
        if table in _TABLES:
            log.warning(
                "%s is not an lmserv setting and is ignored.%s",
                var,
                _suggest(var, sorted(known)),
            )


# --------------------------------------------------------------------------- cached access

_cache: tuple[tuple[object, ...], Settings] | None = None


def _fingerprint() -> tuple[object, ...]:
    path = config_file()
    try:
        st = path.stat()
        stamp: tuple[object, ...] = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = ()
    # platformdirs' answers depend on HOME / XDG_* (and APPDATA on Windows) too.
    prefixes = (_ENV_PREFIX, "XDG_", "HOME", "APPDATA", "LOCALAPPDATA", "USERPROFILE")
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(prefixes)))
    return (str(path), stamp, env)


def get_settings() -> Settings:
    """The settings from the config file and environment, parsed once per change."""
    global _cache
    key = _fingerprint()
    if _cache is None or _cache[0] != key:
        _cache = (key, load_settings())
    return _cache[1]


def data_dir() -> Path:
    """lmserv's data folder (``~/.local/share/lmserv`` on Linux; setting ``paths.data``)."""
    return get_settings().paths.data


def cache_dir() -> Path:
    """lmserv's cache folder (``~/.cache/lmserv`` on Linux; ``paths.cache``): re-fetchable files."""
    return get_settings().paths.cache


def builds_dir() -> Path:
    """Where ``lmserv build`` compiles llama.cpp by default, and where the finder looks."""
    return get_settings().paths.builds


def models_dir() -> Path:
    """Where models are downloaded by default (setting ``paths.models``)."""
    return get_settings().paths.models


def user_catalog() -> dict[str, dict[str, object]]:
    """Extra catalog entries from the user's config file (tables ``[catalog.<name>]``).

    Each value holds the keys written in the file, unchecked here (the catalog validates
    them). Empty when the file defines none.
    """
    return {name: dict(entry) for name, entry in get_settings().catalog.items()}
