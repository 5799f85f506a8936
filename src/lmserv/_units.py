"""Human-readable sizes, shared by library messages and the command line."""

from __future__ import annotations

__all__ = ["human_bytes"]


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; binary units, as nvidia-smi and llama.cpp print them.

    >>> human_bytes(85899345920)
    '80.0 GiB'
    >>> human_bytes(512)
    '512 B'
    >>> human_bytes(3 * 2**40)
    '3.0 TiB'
    """
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns at TiB
