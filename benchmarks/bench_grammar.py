"""Grammar-constrained generation: tokens/s in process (``Llama``) and on llama-server, each
against itself unconstrained, with the same GBNF grammar on both sides.

Writes a synthetic model (``write_synthetic_model``: 32000 tokens, words `` w0`` … `` w31740``
plus bytes), and two grammars, so the text runs to ``--tokens`` (end-of-sequence ignored):

    allowing: root ::= ( " w" [0-9]+ )+     the model's own picks pass (each token checked alone)
    refusing: root ::= [0-9]+               its picks are refused (every candidate checked)

Six configurations, greedy, one thread each: in process free / allowing / refusing, and the
same on llama-server (through ``Client.complete``). Each round runs all six in turn, and the order flips
every round, so load from other processes hits all alike; speeds are the engines' own
generation timings (``Completion.timings.predicted_per_second``, the same measure on both
sides), medians over the rounds. Ratios are within one engine (grammar / free), the thing the
numbers can say on a shared machine.

    PYTHONPATH=src python benchmarks/bench_grammar.py --tokens 64 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from lmserv import Client, Completion, Llama, LlamaServer
from lmserv.testing import write_synthetic_model

GRAMMARS = {"allowing": 'root ::= ( " w" [0-9]+ )+', "refusing": "root ::= [0-9]+"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--params", type=int, default=20_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_synthetic_model(Path(tmp) / "synthetic.gguf", params=args.params)
        options: dict[str, Any] = {"max_tokens": args.tokens, "temperature": 0, "ignore_eos": True}
        with (
            Llama(model, n_ctx=512, n_threads=1) as llm,
            LlamaServer(model, n_ctx=512, parallel=1, extra_args=("-t", "1")) as server,
            Client(server.base_url, timeout=600) as client,
        ):
            engines = {"in-process": llm.complete, "llama-server": client.complete}
            runs: dict[str, Callable[[], Completion]] = {}
            for side, complete in engines.items():
                runs[f"{side} free"] = partial(complete, "w1", **options)
                for kind, grammar in GRAMMARS.items():
                    runs[f"{side} {kind}"] = partial(complete, "w1", grammar=grammar, **options)
            for run in runs.values():  # warm up: caches, pages, the server's first request
                run()
            speeds: dict[str, list[float]] = {name: [] for name in runs}
            names = list(runs)
            for i in range(args.rounds):
                for name in names if i % 2 == 0 else reversed(names):
                    done = runs[name]()
                    assert done.completion_tokens >= args.tokens, (name, done)
                    assert done.timings is not None
                    speeds[name].append(done.timings.predicted_per_second)
    median = {name: statistics.median(values) for name, values in speeds.items()}
    print(f"{args.tokens} tokens, greedy, 1 thread, {args.rounds} rounds, medians (tokens/s):")
    for name, value in median.items():
        spread = f"{min(speeds[name]):.1f}-{max(speeds[name]):.1f}"
        print(f"  {name:23s} {value:8.1f}   (range {spread})")
    for kind in GRAMMARS:
        for side in ("in-process", "llama-server"):
            ratio = median[f"{side} {kind}"] / median[f"{side} free"]
            print(f"  {side} {kind} / free: {ratio:.2f}")
        ratio = median[f"in-process {kind}"] / median[f"llama-server {kind}"]
        print(f"  {kind}, in-process / llama-server: {ratio:.2f}")


if __name__ == "__main__":
    main()
