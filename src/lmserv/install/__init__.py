"""Installing what a local LLM needs: llama.cpp binaries and GGUF models.

>>> from lmserv.install import build_llama_cpp, download_models  # doctest: +SKIP
"""

from __future__ import annotations

from lmserv.install.llama_build import LlamaBuild, build_llama_cpp
from lmserv.install.models_fetch import download_models

__all__ = ["LlamaBuild", "build_llama_cpp", "download_models"]
