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
One model's serving options go in a ``[models.<name>]`` table (:class:`ModelOptions`); the
model service (``lmserv serve`` without a model) applies them.
Unknown tables or keys and bad values raise :class:`~lmserv.errors.ConfigError` naming the key,
the file and the line. Extra catalog entries go in ``[catalog.<name>]`` tables
(:func:`user_catalog`); the environment has no equivalent for them.

The folder functions (:func:`data_dir`, :func:`models_dir`, ...) read the same settings; the file
is parsed again only when it, or an ``LMSERV_*`` variable, changed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import platformdirs

from lmserv.config._file import (
    _APP,
    CONFIG_ENV,
    _FileData,
    _read_file,
    _suggest,
    _where,
    config_file,
)
from lmserv.config._values import (
    _BY_NAME,
    _ENV_PREFIX,
    _SPECS,
    _STATIC_DEFAULTS,
    _TABLES,
    SECRET_KEYS,
    CudaSetting,
    _Bad,
    _Spec,
    expand_path,
)
from lmserv.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "SECRET_KEYS",
    "BuildSettings",
    "DownloadSettings",
    "ModelOptions",
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
    "state_dir",
    "user_catalog",
]

log = logging.getLogger(__name__)


OriginKind = Literal["default", "file", "env", "argument"]


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
class ModelOptions:
    """Table ``[models.<name>]``: how the model service runs one model.

    ``None`` leaves llama-server's default. ``n_gpu_layers`` is a number, ``"auto"`` or
    ``"all"``; ``extra_args`` are further llama-server flags (``["--pooling", "mean"]``).

    ::

        [models.my-embedder]
        ctx_size = 2048
        extra_args = ["--embeddings", "--pooling", "mean"]
    """

    ctx_size: int | None = None
    n_gpu_layers: int | str | None = None
    parallel: int | None = None
    extra_args: tuple[str, ...] = ()


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
    model_options: Mapping[str, ModelOptions] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, name: str) -> Any:
        """The value of dotted setting ``name`` (``"server.port"``); :class:`ConfigError` if unknown."""
        if name not in _BY_NAME:
            raise ConfigError(
                f"no setting {name!r}; `lmserv config show` lists them (e.g. 'server.port')"
            )
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
        model_options=MappingProxyType(
            {
                name: _model_options(name, table, data.path, line)
                for name, (table, line) in data.model_tables.items()
            }
        ),
    )


def _model_options(
    name: str, table: Mapping[str, object], path: Path, line: int | None
) -> ModelOptions:
    """One ``[models.<name>]`` table, checked key by key."""
    where = f"[models.{name}] of the config file {_where(path, line)}"
    known = [f.name for f in fields(ModelOptions)]
    for key in table:
        if key not in known:
            raise ConfigError(
                f"unknown key {key!r} in {where}. Known keys: {', '.join(known)}."
                f"{_suggest(key, known)}"
            )
    values: dict[str, Any] = {}
    for key in ("ctx_size", "parallel"):
        value = table.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise ConfigError(
                f"bad value for {key} in {where}: expected a whole number, got {value!r}."
            )
        values[key] = value
    ngl = table.get("n_gpu_layers")
    if ngl is not None and not (
        (isinstance(ngl, int) and not isinstance(ngl, bool) and ngl >= 0) or ngl in ("auto", "all")
    ):
        raise ConfigError(
            f"bad value for n_gpu_layers in {where}: expected a number, 'auto' or 'all', got {ngl!r}."
        )
    extra = table.get("extra_args", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise ConfigError(
            f"bad value for extra_args in {where}: expected a list of strings such as "
            f'["--pooling", "mean"], got {extra!r}.'
        )
    return ModelOptions(n_gpu_layers=ngl, extra_args=tuple(extra), **values)


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


def state_dir() -> Path:
    """Where running lmserv processes leave state for each other (``~/.local/state/lmserv``).

    Follows platformdirs (``$XDG_STATE_HOME`` on Linux). The model service keeps its state
    file and generated presets here, in owner-only files.
    """
    return Path(platformdirs.user_state_dir(_APP, appauthor=False))


def user_catalog() -> dict[str, dict[str, object]]:
    """Extra catalog entries from the user's config file (tables ``[catalog.<name>]``).

    Each value holds the keys written in the file, unchecked here (the catalog validates
    them). Empty when the file defines none.
    """
    return {name: dict(entry) for name, entry in get_settings().catalog.items()}
