"""The ``lmserv`` command.

Each group of subcommands lives in its own module under ``lmserv.cli`` and exposes
``register(subparsers)``; this module assembles them and turns errors into exit codes:
0 success, 1 failure (an :class:`~lmserv.errors.LmservError`), 2 usage, 130 interrupted,
141 when the reader of its output went away (``| head``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from lmserv import __version__
from lmserv.cli import _build, _models, _serve, _service, _system, _worker
from lmserv.errors import LmservError

__all__ = ["build_parser", "main"]

_GROUPS = (_build, _models, _serve, _service, _system, _worker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmserv",
        description="Build llama.cpp, fetch GGUF models, serve them and talk to them.",
    )
    parser.add_argument("--version", action="version", version=f"lmserv {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except LmservError as exc:
        print(f"lmserv: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lmserv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`lmserv list | head`): not an error worth a traceback. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for the same situation


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
