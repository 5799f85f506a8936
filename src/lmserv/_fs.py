"""File-system helpers every writer shares: atomic replacement and the model-file check.

They sit at the bottom of the import graph (only :mod:`lmserv.errors` below them) so that the
installer, the GPU planner, the server and the bindings all use the same rules.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lmserv.errors import InvalidModelFile, ModelNotFound

__all__ = ["atomic_path", "atomic_write", "require_model_file"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh temporary file beside ``path``; renamed onto ``path`` when the block succeeds.

    Readers see the old file or the new one, never half of one; on an error the temporary file
    is removed and ``path`` is untouched. The temporary name is unpredictable and created with
    ``O_EXCL`` (:func:`tempfile.mkstemp`), so a symlink planted where a fixed ``path.tmp`` would
    be is never followed; ``os.replace`` replaces a link at ``path`` itself, not its target.
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        fh.write(raw)


def require_model_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path` if it is a file; the one check every entry point makes.

    Raises :class:`~lmserv.errors.ModelNotFound` (a ``FileNotFoundError`` too) when nothing is
    there, and :class:`~lmserv.errors.InvalidModelFile` when it is not a file (a folder).
    """
    try:
        p = Path(path).expanduser()
    except RuntimeError:  # ~user naming nobody here
        p = Path(path)
    if not p.exists():
        raise ModelNotFound(
            f"model file {str(p)!r} does not exist; check the path, or give a catalog name "
            "(`lmserv list`), a URL or hf://owner/repo/file.gguf (`lmserv pull NAME` fetches it)"
        )
    if not p.is_file():
        raise InvalidModelFile(f"model path {str(p)!r} is not a file; pass a .gguf file")
    return p
