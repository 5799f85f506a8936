"""Helpers shared across test modules: the CLI runner, free ports, live llama-server pids.

Every test that runs the ``lmserv`` command goes through :func:`cli_env` (a subprocess, with
:func:`run_lmserv`) or the ``cli_home`` fixture (in-process ``main``), so no test reads or
writes the real user's config file, models folder or ``LMSERV_*``/``LLAMA_*`` variables.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["ISOLATED_PREFIXES", "cli_env", "free_port", "llama_server_pids", "run_lmserv"]

SRC = Path(__file__).resolve().parents[1] / "src"
# Variables of the user's environment that change what lmserv does: never inherited by a test.
ISOLATED_PREFIXES = ("LMSERV_", "XDG_", "LLAMA_")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment for running ``python -m lmserv`` as a user would, isolated in ``home``.

    HOME is ``home``, the config file ``home/config.toml`` (created empty unless it exists),
    and no ``LMSERV_*``, ``XDG_*``, ``LLAMA_*``, ``NO_COLOR`` or ``CUDA_VISIBLE_DEVICES`` comes
    from the caller's environment; ``extra`` adds variables back (e.g. ``LLAMA_BIN_DIR``).
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").touch(exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(ISOLATED_PREFIXES) and k not in ("CUDA_VISIBLE_DEVICES", "NO_COLOR")
    }
    env.update(HOME=str(home), PYTHONPATH=str(SRC), LMSERV_CONFIG=str(home / "config.toml"))
    env.update(extra)
    return env


def run_lmserv(
    *args: str,
    home: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m lmserv ARGS`` in a subprocess isolated in ``home`` (see :func:`cli_env`)."""
    return subprocess.run(
        [sys.executable, "-m", "lmserv", *args],
        env={**cli_env(home), **(env or {})},
        cwd=cwd or home,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (bound to 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
