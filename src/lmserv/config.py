"""Where lmserv keeps things.

Folders follow platformdirs so they land where each OS expects. Each can be overridden with
``LMSERV_PATHS_<KEY>`` (the same rule as every setting: table ``[paths]``, key ``models``).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["builds_dir", "cache_dir", "data_dir", "models_dir", "user_catalog"]

_APP = "lmserv"


def _env_path(key: str) -> Path | None:
    value = os.environ.get(f"LMSERV_PATHS_{key.upper()}")
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """lmserv's data folder (``~/.local/share/lmserv`` on Linux)."""
    return _env_path("data") or Path(platformdirs.user_data_dir(_APP, appauthor=False))


def cache_dir() -> Path:
    """lmserv's cache folder (``~/.cache/lmserv`` on Linux): sdists and other re-fetchable files."""
    return _env_path("cache") or Path(platformdirs.user_cache_dir(_APP, appauthor=False))


def builds_dir() -> Path:
    """Where ``lmserv build`` compiles llama.cpp by default, and where the finder looks."""
    return _env_path("builds") or data_dir() / "llama.cpp"


def models_dir() -> Path:
    """Where models are downloaded by default."""
    return _env_path("models") or data_dir() / "models"


def user_catalog() -> dict[str, dict[str, object]]:
    """Extra catalog entries from the user's config file (table ``[catalog.<name>]``).

    Each value has the same keys as an entry of the shipped catalog. Empty until a config
    file defines some.
    """
    return {}
