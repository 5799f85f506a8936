"""lmserv: from nothing to a local LLM you can call.

Public API (see README.md)::

    from lmserv.install import build_llama_cpp, download_file, download_models, ensure_model
"""

from __future__ import annotations

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

from lmserv.install import (
    CatalogEntry,
    LocalModel,
    download_file,
    download_models,
    ensure_model,
)

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BinaryNotFound",
    "BuildError",
    "CatalogEntry",
    "ChecksumMismatch",
    "ConfigError",
    "ContextOverflow",
    "DownloadError",
    "GPUError",
    "InstallError",
    "InsufficientDiskSpace",
    "InvalidModelFile",
    "LibraryMismatch",
    "LlamaError",
    "LmservError",
    "LocalModel",
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
    "download_file",
    "download_models",
    "ensure_model",
]
