"""Generation speed of ``lmserv.Llama`` against ``llama-bench`` on the same model and threads.

Writes a synthetic llama model (``lmserv.testing.write_synthetic_model``), then measures
text generation of ``--tokens`` tokens (batch size 1, greedy, end-of-sequence ignored) three ways:

- ``llama-bench -p 0 -n N -t T`` (llama.cpp's own C++ loop, no sampling): the baseline;
- ``lmserv.Llama.stream`` (prompt = BOS only, so N decodes, like llama-bench): ours;
- ``llama_cpp.Llama`` when llama-cpp-python is importable.

Rounds alternate (``--reps`` runs of the baseline, then ``--reps`` of ours, ...) so that load from
other processes hits both alike; the best run of each is compared (the least disturbed one on a
shared machine), and the median is printed too. Target: ours / llama-bench >= 0.95.

    PYTHONPATH=src python benchmarks/bench_bindings.py --threads 2 --tokens 128 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmserv import Llama
from lmserv.install.finder import find_binary
from lmserv.testing import write_synthetic_model


def llama_bench(bench: Path, model: Path, threads: int, tokens: int, reps: int) -> list[float]:
    """tokens/s of each of ``reps`` repetitions of llama-bench's generation test."""
    cmd = [str(bench), "-m", str(model), "-p", "0", "-n", str(tokens), "-t", str(threads)]
    cmd += ["-r", str(reps), "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [float(x) for x in json.loads(out)[0]["samples_ts"]]


def ours(llm: Llama, tokens: int) -> float:
    start = time.perf_counter()
    done = llm.complete("", max_tokens=tokens, temperature=0, ignore_eos=True)
    elapsed = time.perf_counter() - start
    assert done.completion_tokens == tokens, done
    return tokens / elapsed


_LLAMA_CPP_PYTHON = """
import json, sys, time
import llama_cpp
model, threads, tokens, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(model, n_ctx=256, n_threads=threads, verbose=False)
speeds = []
for _ in range(runs):
    start = time.perf_counter()
    n = sum(1 for _ in llm.create_completion("", max_tokens=tokens, temperature=0, stream=True))
    speeds.append(n / (time.perf_counter() - start))
print(json.dumps(speeds))
"""


def llama_cpp_python(model: Path, threads: int, tokens: int, runs: int) -> list[float] | None:
    """tokens/s of llama-cpp-python, or None when it is not installed.

    Runs in its own process: its bundled libllama must not meet ours in one address space.
    """
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    args = [str(model), str(threads), str(tokens), str(runs)]
    out = subprocess.run(
        [sys.executable, "-c", _LLAMA_CPP_PYTHON, *args], capture_output=True, text=True, check=True
    ).stdout
    return [float(x) for x in json.loads(out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two")
    parser.add_argument("--reps", type=int, default=3, help="runs of each per round")
    parser.add_argument("--params", type=int, default=50_000_000, help="synthetic model size")
    parser.add_argument("--quant", default="f16", choices=["f32", "f16", "q8_0"])
    parser.add_argument("--model", type=Path, help="use this GGUF instead of a synthetic one")
    args = parser.parse_args()

    bench = find_binary("llama-bench")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or write_synthetic_model(
            Path(tmp) / "synthetic.gguf", params=args.params, quant=args.quant
        )
        base: list[float] = []
        mine: list[float] = []
        with Llama(model, n_ctx=256, n_threads=args.threads, n_gpu_layers=0) as llm:
            llm.complete("", max_tokens=8, temperature=0, ignore_eos=True)  # warm-up
            for _ in range(args.rounds):
                base += llama_bench(bench, model, args.threads, args.tokens, args.reps)
                mine += [ours(llm, args.tokens) for _ in range(args.reps)]
        other = llama_cpp_python(model, args.threads, args.tokens, args.rounds * args.reps)

    print(f"model: {model.name if args.model else 'synthetic'} params={args.params} {args.quant}")
    print(f"threads={args.threads} tokens={args.tokens} rounds={args.rounds} reps={args.reps}")
    print(
        f"llama-bench tg{args.tokens}: best {max(base):.1f} t/s, median {statistics.median(base):.1f}"
    )
    print(f"lmserv.Llama     : best {max(mine):.1f} t/s, median {statistics.median(mine):.1f}")
    print(
        f"ratio lmserv/llama-bench: best {max(mine) / max(base):.3f}, "
        f"median {statistics.median(mine) / statistics.median(base):.3f} (target >= 0.95)"
    )
    if other is None:
        print("llama-cpp-python: not installed in this environment")
    else:
        print(
            f"llama-cpp-python : best {max(other):.1f} t/s; "
            f"lmserv/llama-cpp-python {max(mine) / max(other):.3f}"
        )


if __name__ == "__main__":
    main()
