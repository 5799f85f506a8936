"""Every error lmserv raises, in one hierarchy.

Callers can catch :class:`LmservError` for anything of ours, or the built-in that an error
resembles (``FileNotFoundError``, ``ValueError``, ``TimeoutError``, ``OSError``), because the
classes below subclass both. Each message says what failed, the value that caused it, and what
to do next.

::

    LmservError
    ├── ConfigError (ValueError)             bad config file, environment variable or argument
    ├── InstallError
    │   ├── ToolchainMissing                 cmake / compiler / nvcc / MSVC absent
    │   ├── SourceError                      llama.cpp source unavailable or at the wrong commit
    │   └── BuildError                       cmake configure or compile failed (log tail attached)
    ├── BinaryNotFound (FileNotFoundError)   a llama.cpp binary or shared library was not found
    ├── LibraryMismatch                      libllama found but unusable (ABI / symbols)
    ├── ModelError
    │   ├── ModelNotFound (KeyError,         unknown catalog name, or no model file at a path
    │   │                  FileNotFoundError)
    │   └── InvalidModelFile (ValueError)    not a GGUF file, or unreadable
    ├── DownloadError
    │   ├── ChecksumMismatch                 SHA-256 differs from the expected digest
    │   ├── InsufficientDiskSpace (OSError)
    │   ├── GatedModel (PermissionError)     a gated or private hub repository refused access
    │   └── UnsafeArchive                    an archive member would land outside its folder
    ├── ServerError
    │   ├── ServerStartError                 llama-server exited or refused to start
    │   └── ServerTimeout (TimeoutError)     llama-server did not become ready in time
    ├── APIError                             llama-server answered with an error status
    │   ├── BadRequestError                  400
    │   │   └── ModelNotServed (ModelNotFound)  the model service has no model by that name
    │   ├── AuthenticationError              401 / 403
    │   ├── NotFoundError                    404
    │   ├── ServerUnavailable                503, refused connection, or a dropped stream
    │   └── APITimeoutError (TimeoutError)   no answer within the client's timeout
    ├── LlamaError                           in-process inference (ctypes bindings)
    │   └── ContextOverflow (ValueError)     prompt longer than the context
    └── WorkerError                          an RPC worker is dead or unreachable
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BinaryNotFound",
    "BuildError",
    "ChecksumMismatch",
    "ConfigError",
    "ContextOverflow",
    "DownloadError",
    "GatedModel",
    "InstallError",
    "InsufficientDiskSpace",
    "InvalidModelFile",
    "LibraryMismatch",
    "LlamaError",
    "LmservError",
    "ModelError",
    "ModelNotFound",
    "ModelNotServed",
    "NotFoundError",
    "ServerError",
    "ServerStartError",
    "ServerTimeout",
    "ServerUnavailable",
    "SourceError",
    "ToolchainMissing",
    "UnsafeArchive",
    "WorkerError",
]


class LmservError(Exception):
    """Root of every lmserv error."""


class ConfigError(LmservError, ValueError):
    """A setting is unknown or has a bad value; the message names the key and where it came from."""


class InstallError(LmservError):
    """Getting or building llama.cpp failed."""


class ToolchainMissing(InstallError):
    """A tool the build needs (cmake, a C++ compiler, nvcc, MSVC) is not installed."""


class SourceError(InstallError):
    """The llama.cpp source could not be obtained, or is not at the expected commit."""


class BuildError(InstallError):
    """CMake configuration or compilation failed.

    ``log_path`` is the full build log and ``log_tail`` its last lines.
    """

    def __init__(self, message: str, *, log_path: object = None, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_path = log_path
        self.log_tail = log_tail


class BinaryNotFound(LmservError, FileNotFoundError):
    """A llama.cpp binary or shared library was not found in any searched place."""

    def __init__(self, message: str, *, name: str = "", searched: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.name = name
        self.searched = searched

    def __str__(self) -> str:  # FileNotFoundError would otherwise format errno-style
        return str(self.args[0]) if self.args else ""


class LibraryMismatch(LmservError):
    """``libllama`` was loaded but lacks a symbol or has an incompatible layout."""


class ModelError(LmservError):
    """A model could not be resolved or opened."""


class ModelNotFound(ModelError, KeyError, FileNotFoundError):
    """A model name is not in the catalog, or a model path has no file.

    Every entry point (``LlamaServer``, ``Llama``, ``plan_offload``, the CLI) raises this one
    for a missing model file, so ``except FileNotFoundError`` and ``except KeyError`` both work.
    """

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class InvalidModelFile(ModelError, ValueError):
    """A file is not a readable GGUF model."""


class DownloadError(LmservError):
    """A download failed after its retries."""


class ChecksumMismatch(DownloadError):
    """The downloaded bytes do not have the expected SHA-256."""

    def __init__(self, message: str, *, expected: str = "", actual: str = "") -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class InsufficientDiskSpace(DownloadError, OSError):
    """Not enough free space for a download."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class GatedModel(DownloadError, PermissionError):
    """A gated or private repository on the hub refused access: accept its licence on the
    website, then set ``HF_TOKEN`` to a token of that account."""

    def __str__(self) -> str:  # PermissionError would otherwise format errno-style
        return str(self.args[0]) if self.args else ""


class UnsafeArchive(DownloadError):
    """An archive member would be written outside the extraction folder."""


class ServerError(LmservError):
    """Running ``llama-server`` failed."""


class ServerStartError(ServerError):
    """``llama-server`` exited or could not start; carries the exit code and its last log lines."""

    def __init__(self, message: str, *, returncode: int | None = None, log_tail: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log_tail = log_tail


class ServerTimeout(ServerError, TimeoutError):
    """``llama-server`` did not become ready within the timeout."""


class APIError(LmservError):
    """``llama-server`` answered an error; ``status_code`` and the server's own ``message``."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        body: object = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self.body = body


class BadRequestError(APIError):
    """HTTP 400: the request was malformed or had bad values."""


class AuthenticationError(APIError):
    """HTTP 401/403: missing or wrong API key."""


class NotFoundError(APIError):
    """HTTP 404: the route does not exist or is disabled (e.g. ``--embeddings`` not set)."""


class ModelNotServed(BadRequestError, ModelNotFound):
    """The model service (``lmserv serve`` without a model) has no model by that name.

    ``model`` is the name asked for, ``available`` the names (and aliases) it serves.
    """

    def __init__(
        self, message: str, *, model: str = "", available: tuple[str, ...] = (), body: object = None
    ) -> None:
        super().__init__(message, status_code=400, error_type="invalid_request_error", body=body)
        self.model = model
        self.available = available


class ServerUnavailable(APIError):
    """The server is loading (503), not listening, or dropped the connection mid-response."""


class APITimeoutError(APIError, TimeoutError):
    """No answer within the client's timeout; the server may still be working on the request.

    Kept apart from :class:`ServerUnavailable` (nothing listening, a dropped connection) because
    callers handle them differently: a timeout calls for a larger ``timeout=``, not a retry.
    """

    def __str__(self) -> str:  # TimeoutError would otherwise format errno-style
        return str(self.args[0]) if self.args else ""


class LlamaError(LmservError):
    """In-process inference through ``libllama`` failed."""


class ContextOverflow(LlamaError, ValueError):
    """The prompt (plus requested tokens) does not fit the context window."""


class WorkerError(LmservError):
    """An RPC worker could not be started or reached.

    ``endpoint`` names the worker (``"host:port"``); when a worker process exited, ``returncode``
    and ``log_tail`` (its last log lines) say why.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        returncode: int | None = None,
        log_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.returncode = returncode
        self.log_tail = log_tail
