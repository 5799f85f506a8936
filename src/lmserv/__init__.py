"""lmserv: from nothing to a local LLM you can call.

Public API (see README.md)::

    from lmserv.install import build_llama_cpp, download_models
    from lmserv import LlamaServer, Client, AsyncClient
    from lmserv.testing import write_counting_model   # test models stay a submodule
"""

from __future__ import annotations

from lmserv._client import AsyncClient, AsyncTextStream, Client, TextStream
from lmserv._multigpu import SplitOptions, split_options
from lmserv._types import ChatCompletion, Completion, Timings
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
from lmserv.server import LlamaServer, ServerInfo

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncTextStream",
    "AuthenticationError",
    "BadRequestError",
    "BinaryNotFound",
    "BuildError",
    "ChatCompletion",
    "ChecksumMismatch",
    "Client",
    "Completion",
    "ConfigError",
    "ContextOverflow",
    "DownloadError",
    "GPUError",
    "InstallError",
    "InsufficientDiskSpace",
    "InvalidModelFile",
    "LibraryMismatch",
    "LlamaError",
    "LlamaServer",
    "LmservError",
    "ModelError",
    "ModelNotFound",
    "NotFoundError",
    "RpcWorker",
    "ServerError",
    "ServerInfo",
    "ServerStartError",
    "ServerTimeout",
    "ServerUnavailable",
    "SourceError",
    "SplitOptions",
    "TextStream",
    "Timings",
    "ToolchainMissing",
    "UnsafeArchive",
    "WorkerError",
    "__version__",
    "parse_endpoint",
    "probe_endpoint",
    "split_options",
]
