"""Installing what a local LLM needs: llama.cpp binaries and GGUF models.

>>> from lmserv.install import build_llama_cpp, download_file, download_models  # doctest: +SKIP
"""

from __future__ import annotations

from lmserv.install._catalog import CatalogEntry, load_catalog
from lmserv.install._download import download_file
from lmserv.install._models import (
    LocalModel,
    download_models,
    ensure_model,
    list_models,
    remove_model,
    remove_partial,
)
from lmserv.install.finder import find_binary, find_library
from lmserv.install.llama_build import LlamaBuild, build_llama_cpp

__all__ = [
    "CatalogEntry",
    "LlamaBuild",
    "LocalModel",
    "build_llama_cpp",
    "download_file",
    "download_models",
    "ensure_model",
    "find_binary",
    "find_library",
    "list_models",
    "load_catalog",
    "remove_model",
    "remove_partial",
]
