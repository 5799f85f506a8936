"""Safe extraction of ``.tar.gz`` and ``.tar.zst`` archives.

Every member is checked before it is written: an absolute name, a ``..`` component, a link whose
target lies outside the folder, or anything but a file, folder or link raises
:class:`~lmserv.errors.UnsafeArchive`. Extraction goes to a temporary folder beside the target
and is renamed into place only when the whole archive was read, so a refused or broken archive
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO

from lmserv.errors import ConfigError, DownloadError, UnsafeArchive

__all__ = ["archive_kind", "extract_archive", "extraction_target"]

_SUFFIXES = {".tar.gz": "gz", ".tgz": "gz", ".tar.zst": "zst", ".tar.zstd": "zst", ".tzst": "zst"}


def archive_kind(name: str) -> str | None:
    """``"gz"`` or ``"zst"`` when ``name`` is an archive we extract, else None."""
    lower = name.lower()
    return next((kind for suffix, kind in _SUFFIXES.items() if lower.endswith(suffix)), None)


def extraction_target(archive: Path) -> Path:
    """The folder an archive is extracted into: its name without the archive suffix."""
    lower = archive.name.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix):
            return archive.with_name(archive.name[: -len(suffix)])
    raise ConfigError(
        f"{archive} is not a .tar.gz or .tar.zst archive; name it so, or pass extract=False"
    )


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _check_member(member: tarfile.TarInfo, root: str, archive: Path) -> None:
    name = member.name.replace("\\", "/")

    def refuse(why: str) -> UnsafeArchive:
        return UnsafeArchive(
            f"refusing to extract {archive.name}: member {member.name!r} {why}; "
            "the archive is not safe to unpack, nothing was extracted"
        )

    if name.startswith("/") or PureWindowsPath(member.name).drive:
        raise refuse("has an absolute path")
    if ".." in PurePosixPath(name).parts:
        raise refuse("contains '..'")
    dest = os.path.normpath(os.path.join(root, name))
    if not _inside(root, dest):
        raise refuse("would land outside the target folder")
    # A link extracted earlier must not carry later members out of the folder.
    parent = os.path.realpath(os.path.dirname(dest))
    if not _inside(os.path.realpath(root), parent):
        raise refuse("would be written through a link that leaves the target folder")
    if member.issym() or member.islnk():
        link = member.linkname.replace("\\", "/")
        if link.startswith("/") or PureWindowsPath(member.linkname).drive:
            raise refuse(f"links to the absolute path {member.linkname!r}")
        base = os.path.dirname(dest) if member.issym() else root
        target = os.path.join(base, link)
        # Lexically and through links already extracted (``a -> .`` then ``b -> a/..``).
        real_root = os.path.realpath(root)
        if not _inside(root, os.path.normpath(target)) or not _inside(
            real_root, os.path.realpath(target)
        ):
            raise refuse(f"links to {member.linkname!r}, outside the target folder")
    elif not (member.isfile() or member.isdir()):
        raise refuse("is a device, FIFO or other special file")


@contextlib.contextmanager
def _open(archive: Path, kind: str) -> Iterator[tarfile.TarFile]:
    if kind != "zst":  # gzip, and any tarball tarfile recognises (xz, bz2, uncompressed)
        with tarfile.open(archive, mode="r|*") as tar:
            yield tar
        return
    import zstandard

    with open(archive, "rb") as raw:
        reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(raw)
        with reader, tarfile.open(fileobj=reader, mode="r|") as tar:
            yield tar


def extract_archive(archive: Path, target: Path | None = None) -> Path:
    """Extract ``archive`` into ``target`` (default: :func:`extraction_target`) and return it.

    An existing ``target`` is replaced only after the whole archive extracted cleanly. Raises
    :class:`UnsafeArchive` for a member that would land outside ``target``, and
    :class:`DownloadError` for a corrupt archive. With an explicit ``target``, any tarball
    ``tarfile`` reads (``.tar.xz``, ``.tar.bz2``, plain ``.tar``) is accepted too.
    """
    kind = archive_kind(archive.name)
    if kind is None and target is not None and tarfile.is_tarfile(archive):
        kind = "tar"
    if kind is None:
        raise ConfigError(
            f"{archive} is not a .tar.gz or .tar.zst archive; name it so, or pass extract=False"
        )
    target = target or extraction_target(archive)
    tmp = target.with_name(f".{target.name}.extracting-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    root = os.path.abspath(tmp)
    try:
        with _open(archive, kind) as tar:
            for member in tar:
                _check_member(member, root, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, root, filter="data")
                else:  # pragma: no cover - Python < 3.10.12 has no filters; checked above
                    tar.extract(member, root)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(tmp, target)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DownloadError(
            f"cannot extract {archive}: {exc}; delete it and download it again"
        ) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("zstandard"):
            raise DownloadError(f"cannot decompress {archive}: {exc}") from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
