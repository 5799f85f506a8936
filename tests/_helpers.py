"""Helpers shared by the tests that start real llama-server processes."""

from __future__ import annotations

from pathlib import Path

__all__ = ["llama_server_pids"]


def llama_server_pids(fragment: str) -> list[int]:
    """Pids of live llama-server processes whose command line mentions ``fragment`` (from /proc).

    Zombies do not count: they are dead, only not yet reaped by their parent.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().split(") ", 1)[1][:1]
            except OSError:
                continue
            if "llama-server" in cmd and fragment in cmd and state != "Z":
                pids.append(int(entry.name))
    return pids
