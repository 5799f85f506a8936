"""Safe extraction of ``.tar.gz`` and ``.tar.zst`` archives.

Every member is checked before it is written: an absolute name, a ``..`` component, a link whose
target lies outside the folder, or anything but a file, folder or link raises
:class:`~lmserv.errors.UnsafeArchive`. Extraction goes to a temporary folder beside the target
and is renamed into place only when the whole archive was read, so a refused or broken archive
leaves nothing behind.

A link is judged twice: as its member arrives, and again against the final tree. The second
check is the one that counts for chains: ``a -> sub/b/..`` is harmless while ``sub/b`` does not
exist, and leaves the folder once a later member makes ``sub/b`` a link to ``..``.
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
            stem = archive.name[: -len(suffix)]
            if stem in ("", ".", ".."):
                raise ConfigError(
                    f"cannot extract {archive.name!r}: without {archive.name[len(stem) :]!r} "
                    f"its name is {stem!r}, which cannot name a folder; use a URL whose file "
                    "name has a stem, e.g. https://host/path/model.tar.gz"
                )
            return archive.with_name(stem)
    raise ConfigError(
        f"{archive} is not a .tar.gz or .tar.zst archive; name it so, or pass extract=False"
    )


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _refusal(archive: Path, member: str, why: str) -> UnsafeArchive:
    return UnsafeArchive(
        f"refusing to extract {archive.name}: member {member!r} {why}; "
        "the archive is not safe to unpack, nothing was extracted"
    )


def _check_final_links(root: str, archive: Path) -> None:
    """Every link in the extracted tree must resolve inside it, now that all links exist."""
    real_root = os.path.realpath(root)
    for folder, dirs, files in os.walk(root):  # does not descend into linked folders
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            if os.path.islink(path) and not _inside(real_root, os.path.realpath(path)):
                member = os.path.relpath(path, root).replace(os.sep, "/")
                raise _refusal(
                    archive, member, f"links to {os.readlink(path)!r}, outside the target folder"
                )


def _check_member(member: tarfile.TarInfo, root: str, archive: Path) -> None:
    name = member.name.replace("\\", "/")

    def refuse(why: str) -> UnsafeArchive:
        return _refusal(archive, member.name, why)

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
    if tmp.is_symlink():  # never extract through a link planted at our temp name
        tmp.unlink()
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
        _check_final_links(root, archive)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(tmp, target)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DownloadError(
            f"cannot extract {archive}: {exc}; the archive is damaged or truncated"
        ) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("zstandard"):
            raise DownloadError(f"cannot decompress {archive}: {exc}") from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
