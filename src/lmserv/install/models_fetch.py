"""The model catalog and verified downloads: names, URLs and ``hf://`` specs to local files.

The implementation lives in :mod:`lmserv.install._models` (so that running this module with
``-m`` does not find it already imported by the package). The command line is the seed
interface, kept as a thin entry point onto ``lmserv pull`` / ``list`` / ``rm``: the same
options, messages and exit codes::

    python -m lmserv.install.models_fetch NAME... --target models/   # = lmserv pull NAME... --dir
    python -m lmserv.install.models_fetch list                      # = lmserv list
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

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

_SUBCOMMANDS = ("pull", "list", "rm")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lmserv pull`` (or ``list``/``rm`` when named first) with these arguments.

    ``--target DIR`` is the seed's name for ``--dir DIR``.
    """
    from lmserv.cli import main as cli_main  # the command line sits above install/

    args = list(sys.argv[1:] if argv is None else argv)
    args = [
        "--dir" if a == "--target" else "--dir=" + a[9:] if a.startswith("--target=") else a
        for a in args
    ]
    if not args or args[0] not in _SUBCOMMANDS:
        args.insert(0, "pull")
    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
