"""`lmserv` subcommands: placeholder, filled in by its issue."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this group's subcommands to ``sub``."""
