"""The download folder's files, written safely: never through a planted link, no stray temps.

Everything the downloader writes in a models folder (``.part``, ``.part.json``, sidecars, temp
files) is opened here. A symbolic link another user planted at one of those names must not
redirect the write to a file of theirs choosing, so opens use ``O_NOFOLLOW`` (and a check of the
name first where the platform has no such flag). Temp files are created with ``O_EXCL`` after
removing a stale one, and removed again when writing them fails (a full disk, say).

Operating-system errors are turned into lmserv errors at one place, :func:`filesystem_error`,
so that a full disk or a read-only folder reads as what it is and what to do about it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any

from lmserv._fs import atomic_write
from lmserv._units import human_bytes
from lmserv.errors import DownloadError, InsufficientDiskSpace

__all__ = [
    "ELSEWHERE",
    "check_disk",
    "filesystem_error",
    "open_nofollow",
    "planted_link",
    "write_json",
]

ELSEWHERE = "(lmserv pull --dir DIR, or set LMSERV_PATHS_MODELS)"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_EXTRA = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
_NOT_A_FOLDER = {errno.ENOTDIR, errno.EEXIST, errno.EISDIR}
_MODES = {
    "rb": os.O_RDONLY,
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "r+b": os.O_RDWR,
    "w+b": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
}


def planted_link(path: Path) -> DownloadError:
    """The error for a symbolic link found where lmserv writes one of its own files."""
    try:
        where = f" (pointing to {os.readlink(path)})"
    except OSError:
        where = ""
    return DownloadError(
        f"{path} is a symbolic link{where}; lmserv never writes through a link at the name of "
        "one of its own files. Delete the link and run again"
    )


def open_nofollow(path: Path, mode: str, buffering: int = -1) -> IO[bytes]:
    """``open(path, mode)`` for the binary modes rb, ab, wb, r+b, w+b, refusing a symlink.

    Raises :class:`DownloadError` (via :func:`planted_link`) when ``path`` is a symbolic link.
    """
    if not _NOFOLLOW and path.is_symlink():  # pragma: no cover - Windows has no O_NOFOLLOW
        raise planted_link(path)
    try:
        fd = os.open(path, _MODES[mode] | _NOFOLLOW | _EXTRA, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise planted_link(path) from None
        raise
    return os.fdopen(fd, mode, buffering=buffering)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through :func:`lmserv._fs.atomic_write` (a fresh
    ``O_EXCL`` temp file, removed when the write fails, so a full disk leaves none behind)."""
    atomic_write(path, json.dumps(data, indent=1))


def filesystem_error(exc: OSError, folder: Path, kept: str) -> DownloadError:
    """The lmserv error for ``exc``, raised while writing a download into ``folder``.

    ``kept`` says truthfully what became of the partial file (e.g. "the partial file ... is
    kept, run the same command again to resume").
    """
    path = exc.filename or folder
    why = exc.strerror or str(exc)
    if exc.errno in _FULL:
        return InsufficientDiskSpace(
            f"the disk is full: writing {path} failed ({why}); {kept}. Free some space, or "
            f"download to another folder {ELSEWHERE}"
        )
    if exc.errno == errno.ELOOP and isinstance(exc.filename, str) and Path(path).is_symlink():
        return planted_link(Path(path))
    if exc.errno in _DENIED:
        return DownloadError(
            f"cannot write {path}: {why}. Make {folder} writable, or download to another "
            f"folder {ELSEWHERE}; {kept}"
        )
    if exc.errno in _NOT_A_FOLDER:
        return DownloadError(
            f"cannot use {folder} as the download folder: {path}: {why} (a file stands where a "
            f"folder is needed); move that file away, or download to another folder {ELSEWHERE}"
        )
    return DownloadError(f"writing {path} failed: {why}; {kept}. Check {folder} and run again")


def check_disk(folder: Path, needed: int) -> None:
    """Raise :class:`InsufficientDiskSpace` when ``folder`` has less than ``needed`` bytes free."""
    if needed <= 0:
        return
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise InsufficientDiskSpace(
            f"not enough disk space in {folder}: the download needs {human_bytes(needed)} more, "
            f"only {human_bytes(free)} is free; free some space or download to another folder "
            f"{ELSEWHERE}"
        )
