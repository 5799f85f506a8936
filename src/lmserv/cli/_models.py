"""``lmserv pull``, ``lmserv list`` and ``lmserv rm``: models in the local models folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmserv import config
from lmserv.cli._common import add_json_flag, colour, human_bytes, int_arg, print_json
from lmserv.errors import ConfigError
from lmserv.install._catalog import CatalogEntry, load_catalog
from lmserv.install._models import download_models, list_models, remove_model

__all__ = ["register"]


def _add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        # Not config.models_dir() here: building the parser must not read the settings.
        help="models folder (default: [paths] models in the config file, LMSERV_PATHS_MODELS, "
        "or ~/.local/share/lmserv/models)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pull``, ``list`` and ``rm`` to ``sub``."""
    pull = sub.add_parser(
        "pull",
        help="download models by catalog name, URL or hf://owner/repo/file.gguf",
        description="Download models, verified by SHA-256, resumable, in parallel where the "
        "server allows. NAME is a catalog name or alias (see `lmserv list`), an http(s) URL or "
        "hf://owner/repo/file.gguf; a URL may end in #sha256=<hex>. Interrupted downloads "
        "resume when the command is run again.",
    )
    pull.add_argument("names", nargs="+", metavar="NAME|URL")
    _add_dir(pull)
    pull.add_argument(
        "--connections",
        type=int_arg(1, 64),
        default=None,
        help="parallel connections per file (default: 8 for large files, 1 turns it off)",
    )
    pull.add_argument(
        "--retries",
        type=int_arg(0),
        default=5,
        help="tries after a failure without progress before giving up (default: 5)",
    )
    pull.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    pull.set_defaults(func=_pull)

    lst = sub.add_parser(
        "list",
        help="catalog models and local models (size, verified state)",
        description="Show the catalog (shipped and user entries) and the models in the models "
        "folder with their size and whether they are verified.",
    )
    _add_dir(lst)
    add_json_flag(lst)
    lst.set_defaults(func=_list)

    rm = sub.add_parser(
        "rm",
        help="delete a local model",
        description="Delete a model from the models folder (with its partial download).",
    )
    rm.add_argument("names", nargs="+", metavar="NAME")
    _add_dir(rm)
    rm.set_defaults(func=_rm)


def _pull(args: argparse.Namespace) -> int:
    progress = False if args.quiet else None
    try:
        paths = download_models(
            args.names,
            args.dir,
            progress=progress,
            connections=args.connections,
            retries=args.retries,
        )
    except ConfigError as exc:  # a malformed spec is a usage error
        print(f"lmserv pull: error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def _size(n: int | None) -> str:
    return "?" if n is None else human_bytes(n)


def _list(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    local = list_models(args.dir, catalog)
    if args.json:
        print_json(
            {
                "models_dir": str(args.dir or config.models_dir()),
                "catalog": [e.to_dict() for e in sorted(catalog.values(), key=_key)],
                "local": [m.to_dict() for m in local],
            }
        )
        return 0
    present = {m.catalog_name: m for m in local if m.catalog_name and not m.partial}
    print(colour("Catalog", "bold"))
    for entry in sorted(catalog.values(), key=_key):
        mark = ""
        if entry.name in present:
            mark = "  [verified]" if present[entry.name].verified else "  [present, unverified]"
        print(
            f"  {entry.name:<26} {_size(entry.size):>9}  {entry.license:<10} {entry.description}{mark}"
        )
    folder = args.dir or config.models_dir()
    print(colour(f"\nLocal models in {folder}", "bold"))
    if not local:
        print("  (none; `lmserv pull NAME` downloads one)")
    for model in local:
        if model.partial:
            state = colour("partial: `lmserv pull` again resumes it", "yellow")
        elif model.verified:
            state = colour("verified", "green")
        else:
            state = colour("unverified", "yellow")
        name = f" ({model.catalog_name})" if model.catalog_name else ""
        print(f"  {model.path.name}{name}  {_size(model.size)}  {state}")
    return 0


def _key(entry: CatalogEntry) -> tuple[int, int]:
    return (entry.kind == "embedding", entry.size or 0)


def _rm(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    for name in args.names:
        for path in remove_model(name, args.dir, catalog):
            print(f"removed {path}")
    return 0
