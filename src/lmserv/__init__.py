"""lmserv: from nothing to a local LLM you can call.

Public API (see README.md)::

    from lmserv.install import build_llama_cpp, download_file, download_models, ensure_model
    from lmserv import detect_gpus, plan_offload, load_settings
    from lmserv import LlamaServer, Client, AsyncClient
    from lmserv import RpcWorker, split_options          # several machines / GPUs
    from lmserv import Llama, LlamaParams   # in-process inference (loads libllama lazily)
    from lmserv.testing import write_counting_model   # test models stay a submodule
"""

from __future__ import annotations

from lmserv._bindings.llama import Llama
from lmserv._bindings.params import LlamaParams
from lmserv._client import AsyncClient, AsyncTextStream, Client, TextStream
from lmserv._multigpu import SplitOptions, split_options
from lmserv._types import ChatCompletion, Completion, Timings
from lmserv.config import Settings, get_settings, load_settings
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
from lmserv.gpu import GPU, OffloadPlan, cuda_compute_capabilities, detect_gpus, plan_offload
from lmserv.rpc import RpcWorker, parse_endpoint, probe_endpoint
from lmserv.server import LlamaServer, ServerInfo

__version__ = "0.1.0"

from lmserv.install import (
    CatalogEntry,
    LocalModel,
    download_file,
    download_models,
    ensure_model,
)

__all__ = [
    "GPU",
    "APIError",
    "AsyncClient",
    "AsyncTextStream",
    "AuthenticationError",
    "BadRequestError",
    "BinaryNotFound",
    "BuildError",
    "CatalogEntry",
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
    "Llama",
    "LlamaError",
    "LlamaParams",
    "LlamaServer",
    "LmservError",
    "LocalModel",
    "ModelError",
    "ModelNotFound",
    "NotFoundError",
    "OffloadPlan",
    "RpcWorker",
    "ServerError",
    "ServerInfo",
    "ServerStartError",
    "ServerTimeout",
    "ServerUnavailable",
    "Settings",
    "SourceError",
    "SplitOptions",
    "TextStream",
    "Timings",
    "ToolchainMissing",
    "UnsafeArchive",
    "WorkerError",
    "__version__",
    "cuda_compute_capabilities",
    "detect_gpus",
    "download_file",
    "download_models",
    "ensure_model",
    "get_settings",
    "load_settings",
    "parse_endpoint",
    "plan_offload",
    "probe_endpoint",
    "split_options",
]
