"""lmserv: from nothing to a local LLM you can call.

Public API (see README.md)::

    from lmserv.install import build_llama_cpp, download_models
"""

from __future__ import annotations

from lmserv._multigpu import SplitOptions, split_options
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
from lmserv.rpc import RpcWorker, parse_endpoint, probe_endpoint

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BinaryNotFound",
    "BuildError",
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
    "ModelError",
    "ModelNotFound",
    "NotFoundError",
    "RpcWorker",
    "ServerError",
    "ServerStartError",
    "ServerTimeout",
    "ServerUnavailable",
    "SourceError",
    "SplitOptions",
    "ToolchainMissing",
    "UnsafeArchive",
    "WorkerError",
    "__version__",
    "parse_endpoint",
    "probe_endpoint",
    "split_options",
]
