"""Aggregate tokens/s with 16 concurrent clients on a synthetic model:
LlamaServer's defaults vs llama-server run by hand with its own defaults.

    PYTHONPATH=src python benchmarks/bench_throughput.py [--params 50000000] [--tokens 32]

Each round sends 16 requests at once (one per client thread, raw httpx, so only the servers
differ) of ``--tokens`` tokens each; the rounds alternate between the two servers. Prints
tokens/s of each and the ratio (LlamaServer / hand); 1.00 or more means at least as fast.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _common import hand_launch, median, stop

from lmserv import LlamaServer
from lmserv.testing import write_synthetic_model

CLIENTS = 16


def burst(url: str, tokens: int) -> float:
    """Tokens per second for 16 simultaneous requests."""
    body = {"prompt": "hello world", "n_predict": tokens, "ignore_eos": True, "temperature": 0}

    def one(i: int) -> int:
        with httpx.Client(timeout=600) as http:
            answer = http.post(url + "/completion", json={**body, "seed": i}).json()
            return int(answer["tokens_predicted"])

    began = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        total = sum(pool.map(one, range(CLIENTS)))
    return total / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=int, default=50_000_000)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_synthetic_model(Path(tmp) / "synthetic.gguf", params=args.params)
        ours: list[float] = []
        hand: list[float] = []

        def run_hand() -> None:
            proc, url = hand_launch(model)
            try:
                burst(url, 4)  # warm-up
                hand.append(burst(url, args.tokens))
            finally:
                stop(proc)

        def run_ours() -> None:
            with LlamaServer(model) as server:
                burst(server.base_url, 4)
                ours.append(burst(server.base_url, args.tokens))

        for i in range(args.rounds):  # ABBA order, so load that drifts hits both alike
            for run in (run_hand, run_ours) if i % 2 == 0 else (run_ours, run_hand):
                run()
        o, h = median(ours), median(hand)
        print(
            f"{CLIENTS} clients x {args.tokens} tokens, synthetic {args.params // 1_000_000}M f16: "
            f"hand (llama-server defaults) {h:7.1f} tok/s  LlamaServer defaults {o:7.1f} tok/s  "
            f"ratio {o / h:.2f}"
        )


if __name__ == "__main__":
    main()
