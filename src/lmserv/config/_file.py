"""Reading lmserv's TOML config file: where it is, and its tables checked key by key with the
line of each problem."""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from lmserv.config._values import _BY_NAME, _SPECS, _TABLES, expand_path
from lmserv.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

_APP = "lmserv"
CONFIG_ENV = "LMSERV_CONFIG"


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
    # [models.NAME] tables: name -> (the table's keys, its line); checked by the caller
    model_tables: dict[str, tuple[dict[str, object], int | None]] = field(default_factory=dict)


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
    model_tables: dict[str, tuple[dict[str, object], int | None]] = {}
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
            if table == "models" and isinstance(value, dict):  # [models.NAME]: one model's options
                model_tables[str(key)] = (dict(value), _line_of(lines, f"models.{key}"))
                continue
            name = f"{table}.{key}"
            key_line = _line_of(lines, name) or line
            if name not in _BY_NAME:
                raise ConfigError(
                    f"unknown key {key!r} in table [{table}] of the config file "
                    f"{_where(path, key_line)}. Known keys: {', '.join(keys)}."
                    f"{_suggest(key, keys)}"
                )
            values[name] = (value, key_line)
    return _FileData(path, True, values, catalog, model_tables)


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
