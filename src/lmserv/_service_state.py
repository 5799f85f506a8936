"""How lmserv commands find the running model service: a state file per models folder.

``lmserv serve`` (no model) writes ``<state dir>/service-<id>.json`` once the service answers,
and removes it on exit; ``<id>`` is a digest of the models folder's resolved path, so each
folder has at most one service. The file holds the URL, the pid and, because ``run``, ``ps``
and ``stop`` need it, the API key: it is created owner-only (0600, in a 0700 folder) and a file
owned by anyone else is ignored, so a planted file can neither read a key nor redirect one.
A lock file held while the service runs tells a second ``serve`` that one is already up.

Everything here is private: names may change without notice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from lmserv import config

__all__ = [
    "ServiceLock",
    "ServiceState",
    "private_dir",
    "read_state",
    "remove_state",
    "write_state",
]


@dataclass(frozen=True)
class ServiceState:
    """What a running model service tells other lmserv processes.

    ``keep_alive`` is in seconds (``-1``: never unload); ``last_used`` maps a model name to
    the time (``time.time()``) its last request arrived.
    """

    url: str
    pid: int
    models_dir: str
    keep_alive: int
    log_path: str = ""
    api_key: str | None = None
    last_used: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "last_used": dict(self.last_used)}, indent=1)


def _service_id(folder: Path) -> str:
    return hashlib.sha256(str(folder.expanduser().resolve()).encode()).hexdigest()[:16]


def _state_dir() -> Path:
    folder = config.state_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def state_path(folder: Path) -> Path:
    """The state file of the service over models folder ``folder``."""
    return config.state_dir() / f"service-{_service_id(folder)}.json"


def private_dir(folder: Path) -> Path:
    """An owner-only folder for the service over ``folder`` (its generated preset)."""
    path = _state_dir() / f"service-{_service_id(folder)}"
    path.mkdir(exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, in a new owner-only file.

    The temporary file is created exclusively and then renamed over ``path``: a symlink
    planted at ``path`` is replaced, never followed.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:  # mkstemp: mode 0600, O_EXCL
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_state(folder: Path, state: ServiceState) -> Path:
    """Write ``state`` as the state file of ``folder``'s service; return its path."""
    _state_dir()
    path = state_path(folder)
    write_private(path, state.to_json())
    return path


def remove_state(folder: Path, pid: int) -> None:
    """Remove ``folder``'s state file if it is the one process ``pid`` wrote."""
    path = state_path(folder)
    current = _load(path)
    if current is not None and current.pid == pid:
        with contextlib.suppress(OSError):
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _load(path: Path) -> ServiceState | None:
    try:
        with path.open("rb") as fh:
            st = os.fstat(fh.fileno())
            if hasattr(os, "getuid") and st.st_uid != os.getuid():
                return None  # not ours: never trust (or send a key to) what it says
            data: Any = json.loads(fh.read())
        return ServiceState(
            url=str(data["url"]),
            pid=int(data["pid"]),
            models_dir=str(data["models_dir"]),
            keep_alive=int(data["keep_alive"]),
            log_path=str(data.get("log_path", "")),
            api_key=data.get("api_key") or None,
            last_used={str(k): float(v) for k, v in dict(data.get("last_used", {})).items()},
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_state(folder: Path) -> ServiceState | None:
    """The state of the service over ``folder`` if its process is alive, else ``None``."""
    state = _load(state_path(folder))
    if state is None or not _alive(state.pid):
        return None
    return state


class ServiceLock:
    """An exclusive lock on ``folder``'s service, held while it runs (``flock``; released by
    the kernel if the process dies). Where ``fcntl`` is missing it always succeeds."""

    def __init__(self, folder: Path) -> None:
        self.path = _state_dir() / f"service-{_service_id(folder)}.lock"
        self._fh: IO[bytes] | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; ``False`` when another process holds it."""
        if sys.platform == "win32":  # pragma: no cover - no flock there
            return True
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        fh = os.fdopen(fd, "r+b")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor drops the flock
            self._fh = None
