"""Small helpers shared by the subcommand modules: JSON output and TTY-aware colour."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["add_json_flag", "colour", "print_json"]


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def colour(text: str, code: str, stream: Any = None) -> str:
    """Wrap ``text`` in an ANSI colour only on a TTY and when ``NO_COLOR`` is unset."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or not getattr(stream, "isatty", lambda: False)():
        return text
    codes = {"red": "31", "green": "32", "yellow": "33", "bold": "1"}
    return f"\033[{codes.get(code, code)}m{text}\033[0m"
