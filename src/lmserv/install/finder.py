"""Where llama.cpp binaries and shared libraries are found.

Search order, first hit wins:

1. ``LLAMA_BIN_DIR`` (binaries) / ``LLAMA_LIB_DIR`` (libraries; ``LLAMA_BIN_DIR`` after it,
   because a shared build puts ``libllama`` beside the binaries);
2. lmserv's own build folder (where ``lmserv build`` puts its output), CUDA build before CPU;
3. ``PATH`` (binaries) or the dynamic loader's path (``LD_LIBRARY_PATH`` / ``DYLD_LIBRARY_PATH``);
4. known build folders: ``./llama.cpp/build/bin``, ``./build/bin``, ``~/llama.cpp/build/bin``.

A miss raises :class:`~lmserv.errors.BinaryNotFound` listing every place looked at.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from lmserv import config
from lmserv.errors import BinaryNotFound

__all__ = [
    "binary_search_dirs",
    "find_binary",
    "find_library",
    "library_file_names",
    "shared_build_dir",
]

_BUILD_FLAVOURS = ("build-cuda", "build-cpu")


def _exe(name: str, platform: str) -> str:
    return name + ".exe" if platform == "win32" and not name.endswith(".exe") else name


def library_file_names(name: str, platform: str | None = None) -> list[str]:
    """File names a shared library ``name`` (e.g. ``"llama"``) has on ``platform``.

    >>> library_file_names("llama", "linux")
    ['libllama.so']
    >>> library_file_names("ggml", "win32")
    ['ggml.dll', 'libggml.dll']
    """
    platform = platform or sys.platform
    if platform == "win32":
        return [f"{name}.dll", f"lib{name}.dll"]
    if platform == "darwin":
        return [f"lib{name}.dylib"]
    return [f"lib{name}.so"]


def shared_build_dir() -> Path:
    """Where the shared build lives: ``<paths.cache>/llama.cpp`` (``~/.cache/lmserv/llama.cpp``).

    In the cache, because it is re-made from the cached sdist whenever it is missing. The demo,
    the tests and the benchmarks build there (:func:`lmserv.install.llama_build.build_shared`).
    """
    return config.cache_dir() / "llama.cpp"


def _own_build_dirs() -> list[Path]:
    # `lmserv build`'s default folder first, then the shared build (what the demo made).
    roots = [config.builds_dir(), shared_build_dir()]
    return [root / flavour / "bin" for root in roots for flavour in _BUILD_FLAVOURS]


def _known_build_dirs() -> list[Path]:
    cwd = Path.cwd()
    return [
        cwd / "llama.cpp" / "build" / "bin",
        cwd / "build" / "bin",
        Path.home() / "llama.cpp" / "build" / "bin",
    ]


def _env_dir(var: str) -> list[tuple[str, Path]]:
    value = os.environ.get(var)
    return [(f"${var}", config.expand_path(value, what=f"${var}"))] if value else []


def binary_search_dirs() -> list[tuple[str, Path]]:
    """The folders :func:`find_binary` tries before and after ``PATH``, labelled, in order."""
    places = _env_dir("LLAMA_BIN_DIR")
    places += [("lmserv build folder", d) for d in _own_build_dirs()]
    return places


def find_binary(name: str, *, platform: str | None = None) -> Path:
    """Return the path of llama.cpp binary ``name`` (e.g. ``"llama-server"``).

    Raises :class:`BinaryNotFound` naming every place searched and how to build.
    """
    platform = platform or sys.platform
    filename = _exe(name, platform)
    searched: list[str] = []
    for label, folder in binary_search_dirs():
        candidate = folder / filename
        searched.append(f"{label}: {candidate}")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(filename)
    searched.append("PATH")
    if on_path:
        return Path(on_path)
    for folder in _known_build_dirs():
        candidate = folder / filename
        searched.append(f"known build folder: {candidate}")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BinaryNotFound(
        f"llama.cpp binary {filename!r} was not found. Looked in:\n  "
        + "\n  ".join(searched)
        + "\nBuild it with `lmserv build` (or `lmserv build --rpc` for ggml-rpc-server), "
        "or point LLAMA_BIN_DIR at a folder that has it.",
        name=name,
        searched=tuple(searched),
    )


def find_library(name: str, *, platform: str | None = None) -> Path:
    """Return the path of shared library ``name`` (``"llama"`` finds ``libllama.so``).

    Raises :class:`BinaryNotFound` naming every place searched and how to build.
    """
    platform = platform or sys.platform
    filenames = library_file_names(name, platform)
    places = _env_dir("LLAMA_LIB_DIR") + _env_dir("LLAMA_BIN_DIR")
    places += [("lmserv build folder", d) for d in _own_build_dirs()]
    loader_var = {"darwin": "DYLD_LIBRARY_PATH", "win32": "PATH"}.get(platform, "LD_LIBRARY_PATH")
    for entry in os.environ.get(loader_var, "").split(os.pathsep):
        if entry:
            places.append((f"${loader_var}", Path(entry)))
    places += [("known build folder", d) for d in _known_build_dirs()]
    searched: list[str] = []
    for label, folder in places:
        for filename in filenames:
            candidate = folder / filename
            searched.append(f"{label}: {candidate}")
            if candidate.is_file():
                return candidate
    raise BinaryNotFound(
        f"shared library {filenames[0]!r} was not found. Looked in:\n  "
        + "\n  ".join(searched)
        + "\nBuild llama.cpp with `lmserv build` (it builds the shared libraries), "
        "or point LLAMA_LIB_DIR at the folder holding them.",
        name=name,
        searched=tuple(searched),
    )
