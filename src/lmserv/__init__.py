"""lmserv: from nothing to a local LLM you can call.

Public API (see README.md)::

    from lmserv.install import build_llama_cpp, download_models
    from lmserv import Llama, LlamaParams, Completion   # in-process inference (loads libllama lazily)
"""

from __future__ import annotations

from lmserv._bindings.llama import Completion, Llama
from lmserv._bindings.params import LlamaParams
from lmserv.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BinaryNotFound,
    BuildError,
    ChecksumMismatch,
    ConfigError,
    ContextOverflow,
    DownloadError,
    GPUError,
    InstallError,
    InsufficientDiskSpace,
    InvalidModelFile,
    LibraryMismatch,
    LlamaError,
    LmservError,
    ModelError,
    ModelNotFound,
    NotFoundError,
    ServerError,
    ServerStartError,
    ServerTimeout,
    ServerUnavailable,
    SourceError,
    ToolchainMissing,
    UnsafeArchive,
    WorkerError,
)

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BinaryNotFound",
    "BuildError",
    "ChecksumMismatch",
    "Completion",
    "ConfigError",
    "ContextOverflow",
    "DownloadError",
    "GPUError",
    "InstallError",
    "InsufficientDiskSpace",
    "InvalidModelFile",
    "LibraryMismatch",
    "Llama",
    "LlamaError",
    "LlamaParams",
    "LmservError",
    "ModelError",
    "ModelNotFound",
    "NotFoundError",
    "ServerError",
    "ServerStartError",
    "ServerTimeout",
    "ServerUnavailable",
    "SourceError",
    "ToolchainMissing",
    "UnsafeArchive",
    "WorkerError",
    "__version__",
]
