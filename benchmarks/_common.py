"""Helpers shared by the serving benchmarks (not part of the package)."""

from __future__ import annotations

import http.client
import socket
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from lmserv.install.finder import find_binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hand_launch(
    model: Path, args: Sequence[str] = (), log: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """llama-server started by hand, polled on /health every 10 ms: the baseline."""
    port = free_port()
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [str(find_binary("llama-server")), "-m", str(model), "--port", str(port), *args],
        stdout=out,
        stderr=out,
        # Its own session, as LlamaServer does: with the kernel's autogroup scheduling a
        # session is a CPU-share unit, and a busy machine would otherwise skew the comparison.
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        finally:
            conn.close()
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}")
        time.sleep(0.01)
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
