"""Hub models in the models folder: pulled, verified, and found again by the name they had.

Files of ``OWNER/REPO`` go to ``<models>/hf.co/OWNER/REPO/<path in the repository>`` (a split
set stays together, as llama.cpp opens the other parts beside the first). Each pull writes a
manifest ``.<QUANT>@<REVISION>.lmserv-pull.json`` in that folder: the commit it resolved to,
the files with their size and SHA-256, the ``mmproj``. ``run``/``serve``/``rm`` find a model by
its name through these manifests, with no network; ``lmserv pull`` asks the hub again (unless
``HF_HUB_OFFLINE`` is set) and downloads only what changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lmserv.errors import ChecksumMismatch, ModelNotFound
from lmserv.install._download import download_file, is_verified, sidecar_path
from lmserv.install._files import write_json
from lmserv.install._hub import (
    QUANT_ORDER,
    HubFile,
    HubName,
    HubPlan,
    hub_token,
    is_offline,
    plan,
)

__all__ = [
    "HUB_FOLDER",
    "MANIFEST_SUFFIX",
    "HubModel",
    "find_local",
    "hub_models",
    "mmproj_for",
    "pull",
    "related_files",
    "remove_hub_model",
]

log = logging.getLogger(__name__)

HUB_FOLDER = "hf.co"
MANIFEST_SUFFIX = ".lmserv-pull.json"
_MANIFEST = MANIFEST_SUFFIX
_VERSION = 1


@dataclass(frozen=True)
class HubModel:
    """A pulled hub model: ``files[0]`` is the model llama.cpp opens, ``mmproj`` its projector."""

    name: str  # the canonical name, e.g. hf.co/owner/repo:Q4_K_M
    repo: str
    revision: str
    commit: str
    quant: str
    files: tuple[Path, ...]
    mmproj: Path | None
    size: int
    manifest: Path

    @property
    def path(self) -> Path:
        return self.files[0]

    def verified(self) -> bool:
        """Every file is there and still matches the digest the hub published (no hashing)."""
        record = _read(self.manifest) or {}
        expected = {f["path"]: f.get("sha256") for f in record.get("files", [])}
        root = self.manifest.parent
        return all(is_verified(root / rel, sha) for rel, sha in expected.items()) and bool(expected)


def _repo_folder(folder: Path, repo: str) -> Path:
    return folder / HUB_FOLDER / repo


def _manifest_path(folder: Path, name: HubName, quant: str) -> Path:
    key = quant or (name.file or "model").rsplit("/", 1)[-1]
    return _repo_folder(folder, name.repo) / (
        f".{quote(key, safe='')}@{quote(name.revision, safe='')}{_MANIFEST}"
    )


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == _VERSION else None


def _model_of(manifest: Path, record: dict[str, Any]) -> HubModel | None:
    root = manifest.parent
    try:
        files = tuple(_inside(root, str(f["path"])) for f in record["files"])
        mmproj = record.get("mmproj")
        proj = _inside(root, str(mmproj["path"])) if mmproj else None
        size = sum(int(f["size"]) for f in record["files"]) + (int(mmproj["size"]) if mmproj else 0)
        return HubModel(
            name=str(record["name"]),
            repo=str(record["repo"]),
            revision=str(record["revision"]),
            commit=str(record["commit"]),
            quant=str(record.get("quant", "")),
            files=files,
            mmproj=proj,
            size=size,
            manifest=manifest,
        )
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring the unreadable manifest %s (%s)", manifest, exc)
        return None


def _inside(root: Path, rel: str) -> Path:
    """``root / rel``, refusing a path that would leave ``root`` (a hostile listing)."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") or "\\" in p for p in parts):
        raise ValueError(f"the repository path {rel!r} is not a plain relative path")
    return root.joinpath(*parts)


def _manifests(folder: Path, repo: str | None = None) -> Iterator[Path]:
    base = folder / HUB_FOLDER
    pattern = f"*/*/.*{_MANIFEST}" if repo is None else f"{repo}/.*{_MANIFEST}"
    if base.is_dir():
        yield from sorted(base.glob(pattern))


def hub_models(folder: Path) -> list[HubModel]:
    """Every pulled hub model in ``folder`` (from the manifests; nothing hashed)."""
    found = []
    for manifest in _manifests(folder):
        record = _read(manifest)
        model = _model_of(manifest, record) if record else None
        if model is not None:
            found.append(model)
    return found


def find_local(name: HubName, folder: Path) -> HubModel | None:
    """The pulled model ``name`` stands for, if one was pulled: by file, by quantization, or
    (no quantization given) the first of the pulled ones in :data:`QUANT_ORDER`."""
    candidates = []
    for manifest in _manifests(folder, name.repo):
        record = _read(manifest)
        if not record or name.revision not in (record.get("revision"), record.get("commit")):
            continue
        model = _model_of(manifest, record)
        if model is None:
            continue
        root = _repo_folder(folder, name.repo)
        if name.file is not None:
            if name.file in {str(f.relative_to(root).as_posix()) for f in model.files}:
                return model
            continue
        if name.quant is not None:
            if model.quant.upper() == name.quant:
                return model
            continue
        candidates.append(model)
    if not candidates:
        return None
    rank = {q: i for i, q in enumerate(QUANT_ORDER)}
    return min(candidates, key=lambda m: (rank.get(m.quant, len(rank)), m.quant))


def _git_blob_oid(path: Path) -> str:
    """The git blob id of a file (``sha1("blob <size>\\0" + bytes)``): what the hub lists for a
    small file kept in git rather than LFS, so such a file is verified too."""
    hasher = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


def _fetch(
    hub_plan: HubPlan,
    file: HubFile,
    root: Path,
    *,
    token: str | None,
    hint: str,
    **options: Any,
) -> Path:
    dest = _inside(root, file.path)
    # The token is bound to the hub's origin by the downloader: the storage host the resolve
    # URL redirects to never receives it (lmserv.install._http.Fetcher).
    headers = {"Authorization": f"Bearer {token}"} if token else None
    if file.sha256 is None and dest.is_file() and not dest.is_symlink():
        # A small git file has no SHA-256 to find a held copy by: its blob id says.
        if _git_blob_oid(dest) == file.oid:
            return dest
        for stale in (dest, sidecar_path(dest)):
            stale.unlink(missing_ok=True)
    path = download_file(
        hub_plan.url(file),
        dest,
        sha256=file.sha256,
        size=file.size,
        headers=headers,
        resume_hint=hint,
        extract=False,
        **options,
    )
    if file.sha256 is None and file.oid:
        actual = _git_blob_oid(path)
        if actual != file.oid:
            for stale in (path, sidecar_path(path)):
                stale.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"{hub_plan.url(file)} downloaded to {path} has git blob id {actual}, the hub "
                f"lists {file.oid}; the bytes were deleted. Pull again; if it repeats, the "
                "file upstream is changing or HF_ENDPOINT serves other bytes",
                expected=file.oid,
                actual=actual,
            )
    return path


def pull(
    name: HubName,
    folder: Path,
    *,
    refresh: bool = True,
    progress: bool | None = None,
    connections: int | None = None,
    **options: Any,
) -> HubModel:
    """Download ``name`` into ``folder`` (verified), write its manifest, return it.

    ``refresh=False`` returns a complete, verified local copy without asking the hub (what
    ``run``/``serve`` do); ``lmserv pull`` refreshes. With ``HF_HUB_OFFLINE`` set nothing is
    requested: the local copy or :class:`ModelNotFound`. Other errors: those of
    :func:`lmserv.install._hub.plan` and :func:`~lmserv.install.download_file`.
    """
    local = find_local(name, folder)
    if local is not None and (not refresh or is_offline()) and local.verified():
        return local
    if is_offline():
        state = "is not complete" if local is not None else "has not been pulled"
        raise ModelNotFound(
            f"{name.display()} {state} in {folder}, and HF_HUB_OFFLINE is set so the hub is "
            "not asked; unset HF_HUB_OFFLINE and pull it, or use a model that is there "
            "(`lmserv list`)"
        )
    root = _repo_folder(folder, name.repo)

    def held(file: HubFile) -> bool:
        try:
            return file.sha256 is not None and is_verified(_inside(root, file.path), file.sha256)
        except ValueError:
            return False

    hub_plan = plan(name, check=held)
    token = hub_token()
    hint = f"run `lmserv pull {name.display()}` again"
    wanted = [*hub_plan.files, *([hub_plan.mmproj] if hub_plan.mmproj else [])]
    for file in wanted:
        _fetch(
            hub_plan, file, root, token=token, hint=hint, progress=progress,
            connections=connections, **options,
        )  # fmt: skip
    manifest = _manifest_path(folder, name, hub_plan.quant)
    record = {
        "version": _VERSION,
        "name": _canonical(name, hub_plan.quant),
        "repo": name.repo,
        "revision": name.revision,
        "commit": hub_plan.commit,
        "quant": hub_plan.quant,
        "endpoint": hub_plan.endpoint,
        "files": [_file_record(f) for f in hub_plan.files],
        "mmproj": _file_record(hub_plan.mmproj) if hub_plan.mmproj else None,
    }
    write_json(manifest, record)
    model = _model_of(manifest, record)
    assert model is not None
    log.info("pulled %s (%s at %s)", model.name, model.path, hub_plan.commit[:12])
    return model


def _canonical(name: HubName, quant: str) -> str:
    if name.file is not None:
        return name.display()
    return HubName(name.repo, name.revision, quant or None).display()


def _file_record(file: HubFile) -> dict[str, Any]:
    return {"path": file.path, "size": file.size, "sha256": file.sha256, "oid": file.oid}


def related_files(path: Path) -> list[Path]:
    """A model file and what the downloader keeps beside it (partial, resume record, sidecar,
    lock): what removing the model removes."""
    return [
        path,
        path.with_name(path.name + ".part"),
        path.with_name(path.name + ".part.json"),
        sidecar_path(path),
        path.with_name(f".{path.name}.lock"),
    ]


def remove_hub_model(name: HubName, folder: Path) -> list[Path]:
    """Delete a pulled model's files (those no other pull of the repository uses), its
    partial downloads and its manifest; empty folders go too. Raises :class:`ModelNotFound`."""
    model = find_local(name, folder)
    if model is None:
        raise ModelNotFound(
            f"no pulled model {name.display()} in {folder}; `lmserv list` shows what is there"
        )
    others = {
        f
        for m in hub_models(folder)
        if m.manifest != model.manifest
        for f in (*m.files, *([m.mmproj] if m.mmproj else []))
    }
    removed: list[Path] = []
    for file in (*model.files, *([model.mmproj] if model.mmproj else [])):
        if file in others:
            continue
        for path in related_files(file):
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(path)
    model.manifest.unlink()
    removed.append(model.manifest)
    _prune(model.manifest.parent, folder / HUB_FOLDER)
    return removed


def _prune(start: Path, stop: Path) -> None:
    """Remove empty folders from ``start`` up to (not including) ``stop``."""
    for root, dirs, _files in os.walk(start, topdown=False):
        for d in dirs:
            with contextlib.suppress(OSError):
                (Path(root) / d).rmdir()
    current = start
    while current != stop and stop in current.parents:
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent


def mmproj_for(model: Path, folder: Path) -> Path | None:
    """The multimodal projector pulled with ``model`` (a vision repository's ``mmproj``)."""
    try:
        resolved = model.resolve()
    except OSError:
        return None
    for hub_model in hub_models(folder):
        if hub_model.mmproj is not None and hub_model.path.resolve() == resolved:
            return hub_model.mmproj if hub_model.mmproj.is_file() else None
    return None
