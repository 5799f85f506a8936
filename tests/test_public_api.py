"""The public surface: exactly these names, each importable, and the version written once."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import lmserv

EXPECTED = {
    # results and options
    "ChatCompletion", "Completion", "Timings", "SamplingOptions", "LlamaParams", "Settings", "ServerInfo", "GPU",
    "OffloadPlan", "SplitOptions", "CatalogEntry", "LocalModel", "LlamaBuild", "ServedModel",
    "ChatArgs", "ToolCall", "json_schema_grammar",
    # what runs a model
    "LlamaServer", "Client", "AsyncClient", "TextStream", "AsyncTextStream", "Llama", "LlamaStream",
    "RpcWorker", "ModelService",
    # functions the README and docs use
    "build_llama_cpp", "download_file", "download_models", "ensure_model", "list_models",
    "remove_model", "load_catalog", "find_binary", "find_library", "detect_gpus", "plan_offload",
    "cuda_compute_capabilities", "split_options", "load_settings", "get_settings",
    "parse_endpoint", "probe_endpoint", "find_service",
    # errors
    "LmservError", "ConfigError", "InstallError", "ToolchainMissing", "SourceError", "BuildError",
    "BinaryNotFound", "LibraryMismatch", "ModelError", "ModelNotFound", "InvalidModelFile",
    "DownloadError", "GatedModel", "ChecksumMismatch", "InsufficientDiskSpace", "UnsafeArchive", "ServerError",
    "ServerStartError", "ServerTimeout", "APIError", "BadRequestError", "AuthenticationError",
    "NotFoundError", "ServerUnavailable", "LlamaError", "ContextOverflow", "APITimeoutError",
    "WorkerError", "ModelNotServed",
    "__version__",
}  # fmt: skip


def test_all_is_exactly_the_public_surface() -> None:
    assert set(lmserv.__all__) == EXPECTED
    assert len(lmserv.__all__) == len(set(lmserv.__all__)), "a name is listed twice"
    for name in lmserv.__all__:
        assert getattr(lmserv, name) is not None, name


def test_version_is_written_once() -> None:
    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M), (
        "pyproject.toml must read the version"
    )
    assert version("lmserv") == lmserv.__version__


def test_readme_shows_no_underscored_import_path() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert not re.findall(r"lmserv(?:\.\w+)*\._\w+", readme)
