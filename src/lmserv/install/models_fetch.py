"""The model catalog and verified downloads (placeholder until the model-fetching issue)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["download_models"]


def download_models(names: list[str], target_dir: str | os.PathLike[str]) -> list[Path]:
    """Download catalog models ``names`` into ``target_dir``; not implemented yet."""
    raise NotImplementedError("download_models arrives with the model-fetching issue")
