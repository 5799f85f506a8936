"""The chat page in ``lmserv serve``: ``--ui/--no-ui``, ``--open``, and the line with its URL.

Shared by the single-model form and the model service, so both say the same thing.
"""

from __future__ import annotations

import argparse
import logging
import webbrowser

__all__ = ["add_page_options", "announce_page"]

log = logging.getLogger(__name__)


def add_page_options(p: argparse.ArgumentParser) -> None:
    """Add ``--ui/--no-ui`` (default on) and ``--open``."""
    p.add_argument(
        "--ui",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the chat page at / when the build has one (default: on)",
    )
    p.add_argument(
        "--open", action="store_true", help="open the chat page in the browser once ready"
    )


def announce_page(
    base_url: str, *, has_page: bool, wanted: bool, open_browser: bool, api_key: bool
) -> None:
    """Print where the page is (or why there is none) and open it when asked."""
    if has_page:
        how = "; it asks for the API key" if api_key else ""
        print(f"  chat page: {base_url}/{how}", flush=True)
        if open_browser and not webbrowser.open(base_url + "/"):
            print("  (no browser could be started here; open the URL above)", flush=True)
    elif wanted:
        print(
            "  chat page: not in this llama.cpp build (rebuild with `lmserv build --ui`; "
            "it needs npm)",
            flush=True,
        )
