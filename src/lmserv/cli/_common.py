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
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from lmserv import config
from lmserv._process import Supervised
from lmserv._units import human_bytes
from lmserv.install._models import resolve_model as _resolve_installed

__all__ = [
    "COUNTING",
    "add_json_flag",
    "colour",
    "human_bytes",
    "int_arg",
    "port_int",
    "positive_int",
    "print_json",
    "resolve_model",
    "sigterm_as_interrupt",
    "status_label",
    "use_colour",
]

COUNTING = "counting"


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


def int_arg(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """The argparse ``type=`` of every integer flag: a whole number in ``minimum..maximum``.

    Anything else (``-5``, ``1.5``, ``ten``) is a usage error: exit 2 with the value and the range.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            wanted = f"in {minimum}..{maximum}" if maximum is not None else f"of at least {minimum}"
            raise argparse.ArgumentTypeError(f"expected a number {wanted}, got {value}")
        return value

    return parse


positive_int = int_arg(1)
port_int = int_arg(1, 65535)


def sigterm_as_interrupt() -> None:
    """Stop cleanly on SIGTERM too (``kill``, systemd): it raises ``KeyboardInterrupt`` as Ctrl-C
    does, so the command's ``finally`` blocks stop the processes it started."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run_in_foreground(proc: Supervised, what: str, announce: Callable[[], None]) -> int:
    """``lmserv serve``'s foreground loop for ``proc`` (a ``LlamaServer`` or ``ModelService``):
    start it, ``announce`` what is ready, wait; Ctrl-C or SIGTERM stops it (exit 0), an exit of
    its own is a failure (exit 1, with the last log lines)."""
    sigterm_as_interrupt()
    try:
        proc.start()
        announce()
        code = proc.wait()
        print(
            f"lmserv: {what} exited with code {code}; last log lines:\n{proc.log_tail(10)}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"lmserv: stopping {what}", file=sys.stderr)
        return 0
    finally:
        proc.stop()


def resolve_model(spec: str | None, *, pull: bool) -> Path:
    """The local GGUF file for a command's ``MODEL`` argument; the one resolver of every command.

    ``None`` means the ``models.default`` setting, else :data:`COUNTING` (the tiny built-in
    test model, written on the spot). Anything else goes to
    :func:`lmserv.install._models.resolve_model` (path, file in the models folder, catalog
    name or alias, hub name ``hf.co/OWNER/REPO:QUANT``, URL, ``hf://``); ``pull=True`` downloads a catalog/URL model when needed.
    Raises :class:`~lmserv.errors.ModelNotFound` when nothing matches.
    """
    if spec is None:
        spec = config.load_settings().models.default or COUNTING
    if spec == COUNTING:
        from lmserv.testing import write_counting_model  # needs gguf; only for this model

        return write_counting_model(config.models_dir() / "counting.gguf")
    return _resolve_installed(spec, pull=pull)
