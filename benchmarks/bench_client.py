"""Client overhead: Client.complete vs a raw httpx.post of the same body (1-token answers),
and time to the first streamed chunk: Client.stream vs raw httpx streaming.

    PYTHONPATH=src python benchmarks/bench_client.py [--requests 200]

Both sides use one pooled connection against the same LlamaServer (counting model), in
alternating blocks; prints medians and the ratio (lmserv / raw); 1.00 means no overhead.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
from _common import median

from lmserv import LlamaServer
from lmserv.testing import write_counting_model

BODY = {"prompt": "one two", "n_predict": 1, "temperature": 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_counting_model(Path(tmp) / "counting.gguf")
        with LlamaServer(model, parallel=1) as server:
            client = server.client()
            raw = httpx.Client(base_url=server.base_url, timeout=60)
            for _ in range(20):  # warm both connections and the server's prompt cache
                client.complete("one two", max_tokens=1, temperature=0)
                raw.post("/completion", json=BODY).json()
            ours: list[float] = []
            base: list[float] = []
            for _ in range(args.requests // 10):
                for _ in range(10):
                    t = time.perf_counter()
                    raw.post("/completion", json=BODY).raise_for_status()
                    base.append(time.perf_counter() - t)
                for _ in range(10):
                    t = time.perf_counter()
                    client.complete("one two", max_tokens=1, temperature=0)
                    ours.append(time.perf_counter() - t)
            o, b = median(ours), median(base)
            print(
                f"complete, 1 token    raw httpx {b * 1e3:6.2f} ms  Client {o * 1e3:6.2f} ms  "
                f"ratio {o / b:.2f}"
            )
            first_ours: list[float] = []
            first_base: list[float] = []
            stream_body = {**BODY, "n_predict": 8, "stream": True}
            for _ in range(args.requests // 4):
                t = time.perf_counter()
                with raw.stream("POST", "/completion", json=stream_body) as response:
                    for line in response.iter_lines():
                        if line.startswith("data:"):
                            first_base.append(time.perf_counter() - t)
                            break
                t = time.perf_counter()
                with client.stream("one two", max_tokens=8, temperature=0) as stream:
                    for _chunk in stream:
                        first_ours.append(time.perf_counter() - t)
                        break
            o, b = median(first_ours), median(first_base)
            print(
                f"stream, first chunk  raw httpx {b * 1e3:6.2f} ms  Client {o * 1e3:6.2f} ms  "
                f"ratio {o / b:.2f}"
            )
            client.close()
            raw.close()


if __name__ == "__main__":
    main()
