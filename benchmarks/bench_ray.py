"""Replicas on Ray Serve (lmserv.ray): what Serve's proxy costs, and what a second replica buys.

    PYTHONPATH=src:benchmarks python benchmarks/bench_ray.py [--requests 200] [--rounds 4]

1. Per-request overhead: a 1-token completion of the counting model, sequential, on one
   pooled connection, to a llama-server started directly vs through Serve's HTTP proxy to a
   one-replica application; blocks of requests alternate between the two (ABBA). Prints the
   medians and the difference (what the proxy, the router and the replica's relay add).
2. Aggregate tokens/s, 16 concurrent clients (bench_throughput's burst) on a synthetic model,
   one replica vs two; rounds alternate (1, 2, 2, 1, ...), scaling the same application
   in place between them. On one machine the two replicas share its cores, so expect ~1x.

Starts its own local Ray cluster (loopback, no dashboard) and stops it at the end.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import ray
from _common import free_port, median
from bench_throughput import burst
from ray import serve

from lmserv import LlamaServer
from lmserv.ray import deployment, run
from lmserv.testing import write_counting_model, write_synthetic_model

BODY = {"prompt": "one two", "max_tokens": 1, "temperature": 0}


def latencies(http: httpx.Client, url: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        began = time.perf_counter()
        answer = http.post(url + "/v1/completions", json=BODY)
        out.append(time.perf_counter() - began)
        answer.raise_for_status()
    return out


def overhead(proxy: str, model: Path, requests: int, rounds: int) -> None:
    run(deployment(model, extra_args=("-t", "1")), name="overhead", route_prefix="/")
    with LlamaServer(model, extra_args=("-t", "1")) as direct, httpx.Client(timeout=60) as http:
        latencies(http, direct.base_url, 10)  # warm both paths
        latencies(http, proxy, 10)
        times: dict[str, list[float]] = {"direct": [], "serve": []}
        for i in range(rounds):
            for side in ("direct", "serve") if i % 2 == 0 else ("serve", "direct"):
                url = direct.base_url if side == "direct" else proxy
                times[side] += latencies(http, url, requests // rounds)
    serve.delete("overhead")
    d, s = median(times["direct"]) * 1000, median(times["serve"]) * 1000
    print(
        f"1-token completion, per request: direct {d:.2f} ms, through Serve {s:.2f} ms, "
        f"+{s - d:.2f} ms (ratio {s / d:.2f}), {len(times['serve'])} requests each"
    )


def scaling(proxy: str, model: Path, tokens: int, rounds: int) -> None:
    rates: dict[int, list[float]] = {1: [], 2: []}
    for i in range(rounds):
        for replicas in (1, 2) if i % 2 == 0 else (2, 1):
            run(deployment(model, num_replicas=replicas), name="scaling", route_prefix="/")
            burst(proxy, 4)  # warm-up: every replica loaded and touched
            rates[replicas].append(burst(proxy, tokens))
    serve.delete("scaling")
    one, two = median(rates[1]), median(rates[2])
    print(
        f"16 clients x {tokens} tokens: 1 replica {one:.1f} tok/s, 2 replicas {two:.1f} tok/s, "
        f"ratio {two / one:.2f} (rounds: 1 -> {[round(r) for r in rates[1]]}, "
        f"2 -> {[round(r) for r in rates[2]]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--params", type=int, default=20_000_000)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmray", dir="/tmp") as tmp:
        ray.init(
            address="local",
            include_dashboard=False,
            _temp_dir=tmp + "/ray",
            log_to_driver=False,
        )
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        proxy = f"http://127.0.0.1:{port}"
        try:
            counting = write_counting_model(Path(tmp) / "counting.gguf")
            overhead(proxy, counting, args.requests, args.rounds)
            synthetic = write_synthetic_model(Path(tmp) / "synthetic.gguf", params=args.params)
            scaling(proxy, synthetic, args.tokens, args.rounds)
        finally:
            serve.shutdown()
            ray.shutdown()


if __name__ == "__main__":
    main()
