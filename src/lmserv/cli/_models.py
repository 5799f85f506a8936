"""``lmserv pull``, ``lmserv list`` and ``lmserv rm``: models in the local models folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmserv import config
from lmserv.cli._common import add_json_flag, colour, human_bytes, int_arg, print_json
from lmserv.errors import ConfigError
from lmserv.install._catalog import CatalogEntry, load_catalog
from lmserv.install._models import download_models, list_models, remove_model, remove_partial

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
        help="download models by catalog name, hub name (hf.co/OWNER/REPO:QUANT) or URL",
        description="Download models, verified by SHA-256, resumable, in parallel where the "
        "server allows. NAME is a catalog name or alias (see `lmserv list`), a hub name "
        "hf.co/OWNER/REPO[:QUANT] or OWNER/REPO[:QUANT] (without QUANT: Q4_K_M when the "
        "repository has it, see docs/models.md), hf://OWNER/REPO[@REV]/FILE.gguf, or an "
        "http(s) URL, which may end in #sha256=<hex>. Hub files are verified against the "
        "SHA-256 the hub publishes. Interrupted downloads resume when the command is run again.",
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
    lst.add_argument(
        "--partial", action="store_true", help="only interrupted downloads (`rm --partial`)"
    )
    lst.set_defaults(func=_list)

    rm = sub.add_parser(
        "rm",
        help="delete a local model",
        description="Delete a model from the models folder (with its partial download): a "
        "catalog name, a file name, or the hub name it was pulled with.",
    )
    rm.add_argument("names", nargs="*", metavar="NAME")
    rm.add_argument(
        "--partial", action="store_true", help="delete every interrupted download instead"
    )
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
    if args.partial:
        local = [m for m in local if m.partial]
        if args.json:
            print_json([m.to_dict() for m in local])
            return 0
        for model in local:
            print(f"  {model.path}.part  {_size(model.size)}")
        if not local:
            print("  (no interrupted downloads)")
        return 0
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
    hub = [m for m in local if m.repo]
    if hub:
        print(f"  {'NAME':<44} {'REPOSITORY':<34} {'REVISION':<12} {'QUANT':<8} {'SIZE':>9}")
    for model in hub:
        state = colour("verified", "green") if model.verified else colour("unverified", "yellow")
        extra = "  +mmproj" if model.mmproj else ""
        parts = f"  ({len(model.files)} parts)" if len(model.files) > 1 else ""
        print(
            f"  {model.name or '':<44} {model.repo or '':<34} {(model.revision or '')[:12]:<12} "
            f"{model.quantization or '-':<8} {_size(model.size):>9}  {state}{parts}{extra}"
        )
    for model in local:
        if model.repo:
            continue
        if model.partial:
            state = colour("partial: `lmserv pull` again resumes it", "yellow")
        elif model.verified:
            state = colour("verified", "green")
        else:
            state = colour("unverified", "yellow")
        name = f" ({model.catalog_name})" if model.catalog_name else ""
        try:  # a partial hub download sits in its repository's folder: show where
            shown = str(model.path.relative_to(config.expand_path(str(folder), what="--dir")))
        except ValueError:
            shown = model.path.name
        print(f"  {shown}{name}  {_size(model.size)}  {state}")
    if local:
        print(f"  total on disk: {_size(sum(m.size for m in local))}")
    return 0


def _key(entry: CatalogEntry) -> tuple[int, int]:
    return (entry.kind == "embedding", entry.size or 0)


def _rm(args: argparse.Namespace) -> int:
    if args.partial == bool(args.names):
        print("lmserv rm: error: give model names, or --partial (not both)", file=sys.stderr)
        return 2
    if args.partial:
        removed = remove_partial(args.dir)
        for path in removed:
            print(f"removed {path}")
        if not removed:
            print("no interrupted downloads")
        return 0
    catalog = load_catalog()
    for name in args.names:
        for path in remove_model(name, args.dir, catalog):
            print(f"removed {path}")
    return 0
