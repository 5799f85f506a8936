"""lmserv: from nothing to a local LLM you can call.

Public API (see README.md)::

    from lmserv import build_llama_cpp, download_file, download_models, ensure_model
    from lmserv import find_binary, find_library, list_models, remove_model
    from lmserv import detect_gpus, plan_offload, load_settings
    from lmserv import LlamaServer, Client, AsyncClient
    from lmserv import ModelService                      # every local model from one endpoint
    from lmserv import RpcWorker, split_options          # several machines / GPUs
    from lmserv import Llama, LlamaParams   # in-process inference (loads libllama lazily)
    from lmserv import SamplingOptions      # what Client, AsyncClient and Llama generate with
    from lmserv import ToolCall, json_schema_grammar   # structured output and tool calls
    from lmserv.testing import write_counting_model   # test models stay a submodule
"""

from __future__ import annotations

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

from lmserv._bindings._stream import LlamaStream
from lmserv._bindings.llama import Llama
from lmserv._bindings.params import LlamaParams
from lmserv._grammar import json_schema_grammar
from lmserv._types import ChatArgs, ChatCompletion, Completion, SamplingOptions, Timings, ToolCall
from lmserv.client._client import AsyncClient, AsyncTextStream, Client, TextStream
from lmserv.config import Settings, get_settings, load_settings
from lmserv.errors import (
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BinaryNotFound,
    BuildError,
    ChecksumMismatch,
    ConfigError,
    ContextOverflow,
    DownloadError,
    GatedModel,
    InstallError,
    InsufficientDiskSpace,
    InvalidModelFile,
    LibraryMismatch,
    LlamaError,
    LmservError,
    ModelError,
    ModelNotFound,
    ModelNotServed,
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
from lmserv.gpu import (
    GPU,
    OffloadPlan,
    SplitOptions,
    cuda_compute_capabilities,
    detect_gpus,
    plan_offload,
    split_options,
)
from lmserv.install import (
    CatalogEntry,
    LlamaBuild,
    LocalModel,
    build_llama_cpp,
    download_file,
    download_models,
    ensure_model,
    find_binary,
    find_library,
    list_models,
    load_catalog,
    remove_model,
)
from lmserv.rpc import RpcWorker, parse_endpoint, probe_endpoint
from lmserv.server import LlamaServer, ServerInfo
from lmserv.service import ModelService, ServedModel, find_service

__all__ = [
    "GPU",
    "APIError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncTextStream",
    "AuthenticationError",
    "BadRequestError",
    "BinaryNotFound",
    "BuildError",
    "CatalogEntry",
    "ChatArgs",
    "ChatCompletion",
    "ChecksumMismatch",
    "Client",
    "Completion",
    "ConfigError",
    "ContextOverflow",
    "DownloadError",
    "GatedModel",
    "InstallError",
    "InsufficientDiskSpace",
    "InvalidModelFile",
    "LibraryMismatch",
    "Llama",
    "LlamaBuild",
    "LlamaError",
    "LlamaParams",
    "LlamaServer",
    "LlamaStream",
    "LmservError",
    "LocalModel",
    "ModelError",
    "ModelNotFound",
    "ModelNotServed",
    "ModelService",
    "NotFoundError",
    "OffloadPlan",
    "RpcWorker",
    "SamplingOptions",
    "ServedModel",
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
    "ToolCall",
    "ToolchainMissing",
    "UnsafeArchive",
    "WorkerError",
    "__version__",
    "build_llama_cpp",
    "cuda_compute_capabilities",
    "detect_gpus",
    "download_file",
    "download_models",
    "ensure_model",
    "find_binary",
    "find_library",
    "find_service",
    "get_settings",
    "json_schema_grammar",
    "list_models",
    "load_catalog",
    "load_settings",
    "parse_endpoint",
    "plan_offload",
    "probe_endpoint",
    "remove_model",
    "split_options",
]
