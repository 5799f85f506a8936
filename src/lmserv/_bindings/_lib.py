"""Find and load ``libllama`` (with its ``libggml*``) once, lazily, on first use.

:func:`load` is the only way in: it asks the finder for ``libllama`` (``LLAMA_LIB_DIR`` first),
loads the ggml libraries beside it by full path (so a moved build folder, whose baked-in
``RUNPATH`` no longer holds, still loads its own copies), binds every declared function, checks
that the struct layouts agree with the library, routes llama.cpp's log to :mod:`logging` and
initialises the backend. Nothing happens at ``import lmserv``.

Errors: no library anywhere -> :class:`~lmserv.errors.BinaryNotFound` listing every path tried;
a library that will not load, lacks a symbol or disagrees on a struct layout ->
:class:`~lmserv.errors.LibraryMismatch`. A raw ``OSError`` from ctypes never escapes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from lmserv._bindings import _llama_h as h
from lmserv._bindings._log import LogRouter
from lmserv.errors import LibraryMismatch
from lmserv.install.finder import find_library, library_file_names

__all__ = ["Loaded", "load"]

log = logging.getLogger(__name__)

# Loaded before libllama, in this order, when present beside it. Backends (cpu, cuda, rpc, ...)
# are whatever ``libggml-*`` the build produced; libggml needs them, so they come first.
_BASE = "ggml-base"
_FRONT = "ggml"

_REBUILD_HINT = (
    "lmserv expects libllama from llama.cpp commit 0c1e570 (what `lmserv build` compiles). "
    "Rebuild with `lmserv build`, or point LLAMA_LIB_DIR at a matching build."
)


@dataclass(frozen=True)
class Loaded:
    """The loaded library: its bound functions, where it came from, and its log router."""

    lib: h.LibLlama
    path: Path
    version: str
    log_router: LogRouter


_lock = threading.Lock()
_loaded: Loaded | None = None
# Kept for the life of the process: unloading a library or collecting the log trampoline
# while C still points at it would crash.
_keep_alive: list[object] = []


def _backend_libraries(folder: Path) -> list[Path]:
    base_names = set(library_file_names(_BASE)) | set(library_file_names(_FRONT))
    found: list[Path] = []
    for pattern in library_file_names("ggml-*"):
        for candidate in sorted(folder.glob(pattern)):
            if candidate.name not in base_names and candidate.is_file():
                found.append(candidate)
    return found


def _first_existing(folder: Path, name: str) -> Path | None:
    for filename in library_file_names(name):
        if (folder / filename).is_file():
            return folder / filename
    return None


def _open(path: Path) -> ctypes.CDLL:
    folder = path.parent
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        _keep_alive.append(os.add_dll_directory(str(folder)))
    preload: list[Path] = []
    base = _first_existing(folder, _BASE)
    if base is not None:
        preload.append(base)
    preload += _backend_libraries(folder)
    front = _first_existing(folder, _FRONT)
    if front is not None:
        preload.append(front)
    problems: list[str] = []
    for dep in preload:
        try:
            _keep_alive.append(ctypes.CDLL(str(dep)))
        except OSError as exc:
            # An unneeded stray backend may fail harmlessly; if it mattered, libllama fails next.
            problems.append(f"{dep}: {exc}")
            log.debug("could not preload %s: %s", dep, exc)
    try:
        cdll = ctypes.CDLL(str(path))
    except OSError as exc:
        detail = "".join(f"\n  {p}" for p in problems)
        raise LibraryMismatch(
            f"found {path} but could not load it: {exc}{detail}\n"
            "A library it needs is missing or was built for another system. " + _REBUILD_HINT
        ) from exc
    _keep_alive.append(cdll)
    return cdll


def _check_layout(lib: h.LibLlama, path: Path, version: str) -> None:
    """Compare the C defaults with what llama.h documents, to catch a shifted struct layout."""
    mp = lib.llama_model_default_params()
    cp = lib.llama_context_default_params()
    checks = {
        "llama_model_params.n_gpu_layers == -1": mp.n_gpu_layers == -1,
        "llama_model_params.split_mode == LAYER": mp.split_mode == h.LLAMA_SPLIT_MODE_LAYER,
        "llama_model_params.vocab_only == false": mp.vocab_only is False,
        "llama_context_params.n_ctx == 512": cp.n_ctx == 512,
        "llama_context_params.n_batch == 2048": cp.n_batch == 2048,
        "llama_context_params.n_seq_max == 1": cp.n_seq_max == 1,
        "llama_context_params.type_k == F16": cp.type_k == h.GGML_TYPE_F16,
        "llama_context_params.offload_kqv == true": cp.offload_kqv is True,
        "llama_context_params.n_samplers == 0": cp.n_samplers == 0,
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise LibraryMismatch(
            f"{path} (llama.cpp {version}) does not lay out its parameter structs as lmserv "
            f"expects; these defaults read back wrong: {', '.join(failed)}. " + _REBUILD_HINT
        )


def load() -> Loaded:
    """Load ``libllama`` once per process and return it; later calls return the same object.

    Raises :class:`~lmserv.errors.BinaryNotFound` or :class:`~lmserv.errors.LibraryMismatch`.
    """
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        path = find_library("llama")
        cdll = _open(path)
        lib, missing = h.bind(cdll)
        if missing:
            raise LibraryMismatch(
                f"{path} lacks function(s) lmserv calls: {', '.join(sorted(missing))}. "
                + _REBUILD_HINT
            )
        raw_version = lib.llama_version()
        version = raw_version.decode("utf-8", "replace") if raw_version else "unknown"
        _check_layout(lib, path, version)
        router = LogRouter()
        trampoline = h.ggml_log_callback(router)
        _keep_alive.extend((router, trampoline))
        lib.llama_log_set(trampoline, None)
        lib.llama_backend_init()
        log.debug("loaded %s (llama.cpp %s)", path, version)
        _loaded = Loaded(lib=lib, path=path, version=version, log_router=router)
        return _loaded
