"""Cost of llama.cpp's RPC protocol: a synthetic model on 2 loopback workers vs all local.

Both runs use ``llama-bench`` from the same build, on the same model, with one CPU thread per
compute site, measured alternately in this run. On one machine RPC cannot be faster: the ratio
(RPC tokens/s / local tokens/s) is what the network protocol costs, not a speed-up.

    PYTHONPATH=src python benchmarks/bench_rpc.py [--params 50e6] [--gen 32] [--reps 3]

Prints the figures, the ratio and the exact commands; record them in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from lmserv.install.finder import find_binary
from lmserv.rpc import RpcWorker
from lmserv.testing import write_synthetic_model


def bench(args: list[str]) -> float:
    """Generation tokens/s from one ``llama-bench`` run (JSON output)."""
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise SystemExit(f"llama-bench failed ({out.returncode}):\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout)[0]
    if ("--rpc" in args) != ("RPC" in row["backends"]):
        raise SystemExit(f"unexpected backends {row['backends']!r} for {args}")
    return float(row["avg_ts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=50e6, help="synthetic model size")
    parser.add_argument("--quant", default="f16")
    parser.add_argument("--gen", type=int, default=32, help="tokens generated per run")
    parser.add_argument("--reps", type=int, default=3, help="alternating rounds")
    parser.add_argument("--threads", type=int, default=1, help="threads per compute site")
    opts = parser.parse_args()

    llama_bench = str(find_binary("llama-bench"))
    with tempfile.TemporaryDirectory(prefix="lmserv-bench-rpc-") as tmp:
        model = write_synthetic_model(
            Path(tmp) / "synthetic.gguf", params=int(opts.params), quant=opts.quant
        )
        size_mb = model.stat().st_size / 1e6
        common = [llama_bench, "-m", str(model), "-p", "0", "-n", str(opts.gen), "-r", "1"]
        common += ["-t", str(opts.threads), "-o", "json"]
        local_cmd = [*common, "-ngl", "0"]
        with (
            RpcWorker(port=None, threads=opts.threads) as a,
            RpcWorker(port=None, threads=opts.threads) as b,
        ):
            rpc_cmd = [*common, "-ngl", "99", "--rpc", f"{a.endpoint},{b.endpoint}"]
            bench(local_cmd)  # warm the page cache and both code paths once
            bench(rpc_cmd)
            local: list[float] = []
            remote: list[float] = []
            for _ in range(opts.reps):
                local.append(bench(local_cmd))
                remote.append(bench(rpc_cmd))
    lo, rp = statistics.median(local), statistics.median(remote)
    print(f"model: synthetic {opts.params / 1e6:.0f}M params, {opts.quant}, {size_mb:.0f} MB")
    print(f"local   (-ngl 0, CPU, {opts.threads} thread): {lo:8.2f} tok/s  runs {local}")
    print(f"2 RPC workers on 127.0.0.1 (-ngl 99):   {rp:8.2f} tok/s  runs {remote}")
    print(f"ratio RPC/local: {rp / lo:.3f}")
    print("local command:", " ".join(local_cmd))
    print("rpc command:  ", " ".join(rpc_cmd))


if __name__ == "__main__":
    main()
