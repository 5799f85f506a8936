"""Start-to-ready: LlamaServer.start() vs llama-server launched by hand, polled every 10 ms.

    PYTHONPATH=src python benchmarks/bench_server.py [--rounds 5]

Prints medians and the ratio (lmserv / hand); 1.00 means no overhead.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import hand_launch, median, stop

from lmserv import LlamaServer
from lmserv.testing import write_counting_model, write_synthetic_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "counting (300 KB)": write_counting_model(Path(tmp) / "counting.gguf"),
            "synthetic 50M f16 (100 MB)": write_synthetic_model(Path(tmp) / "syn.gguf"),
        }
        for label, model in models.items():
            ours: list[float] = []
            hand: list[float] = []
            for i in range(args.rounds):  # ABBA order, so load that drifts hits both alike
                for side in ("hand", "ours") if i % 2 == 0 else ("ours", "hand"):
                    began = time.perf_counter()
                    if side == "hand":
                        proc, _url = hand_launch(model)
                        hand.append(time.perf_counter() - began)
                        stop(proc)
                    else:
                        server = LlamaServer(model).start()
                        ours.append(time.perf_counter() - began)
                        server.stop()
            h, o = median(hand), median(ours)
            print(
                f"{label:28s} start-to-ready  hand {h * 1000:7.1f} ms  "
                f"LlamaServer {o * 1000:7.1f} ms  ratio {o / h:.2f}"
            )


if __name__ == "__main__":
    main()
