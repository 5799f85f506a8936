"""The model catalog and verified downloads: names, URLs and ``hf://`` specs to local files.

The implementation lives in :mod:`lmserv.install._models` (so that running this module with
``-m`` does not find it already imported by the package). Command line, the seed interface::

    python -m lmserv.install.models_fetch NAME... --target models/
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from lmserv.errors import LmservError
from lmserv.install._catalog import CatalogEntry, load_catalog
from lmserv.install._models import (
    LocalModel,
    download_models,
    ensure_model,
    list_models,
    remove_model,
)

__all__ = [
    "CatalogEntry",
    "LocalModel",
    "download_models",
    "ensure_model",
    "list_models",
    "load_catalog",
    "main",
    "remove_model",
]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lmserv.install.models_fetch NAME... --target DIR``: download and print paths."""
    parser = argparse.ArgumentParser(
        prog="python -m lmserv.install.models_fetch",
        description="Download catalog models (or URLs / hf:// specs), verified.",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help="catalog name, URL or hf:// spec")
    parser.add_argument("--target", type=Path, default=None, help="folder for the models")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = download_models(args.names, args.target, progress=False if args.quiet else None)
    except LmservError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
