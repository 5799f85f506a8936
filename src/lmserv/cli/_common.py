"""Small helpers shared by the subcommand modules, so every command looks and behaves alike.

Conventions every subcommand follows: a one-line ``help`` and a fuller ``description``;
``--json`` (via :func:`add_json_flag`) on listing commands, printing one JSON document to stdout;
exit 0 on success, 1 on failure (raise an :class:`~lmserv.errors.LmservError`; ``cli.main`` turns
it into ``lmserv: error: ...``), 2 on usage errors (argparse's own ``parser.error``); colour only
on a TTY and never when ``NO_COLOR`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from lmserv._units import human_bytes

__all__ = [
    "add_json_flag",
    "colour",
    "human_bytes",
    "int_at_least",
    "positive_int",
    "print_json",
    "status_label",
    "use_colour",
]


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def use_colour(stream: Any = None) -> bool:
    """Colour only on a TTY and when ``NO_COLOR`` is unset (https://no-color.org)."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def colour(text: str, code: str, stream: Any = None) -> str:
    """Wrap ``text`` in an ANSI colour only on a TTY and when ``NO_COLOR`` is unset."""
    if not use_colour(stream):
        return text
    codes = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}
    return f"\033[{codes.get(code, code)}m{text}\033[0m"


_STATUS_COLOURS = {"ok": "green", "warn": "yellow", "fail": "red", "info": "dim"}


def status_label(status: str, width: int = 5) -> str:
    """``ok``/``warn``/``fail``/``info`` padded to ``width``, coloured on a TTY."""
    return colour(status.ljust(width), _STATUS_COLOURS.get(status, "bold"))


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type=`` for whole numbers >= ``minimum`` (else exit 2 with a reason)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected a number of at least {minimum}, got {value}"
            )
        return value

    return parse


positive_int = int_at_least(1)
