"""The real model (Gemma 3 270M Q4_K_M) against llama.cpp's own tools and llama-cpp-python.

    PYTHONPATH=src:benchmarks python benchmarks/bench_gemma.py [--rounds 4] [--only bindings|server]

Three comparisons, each a ratio of medians measured in this one run, the two sides alternating
(ABBA order) so that load from other processes hits both alike:

1. ``lmserv.Llama`` vs ``llama-bench`` on the same build, model and threads: generation of
   ``--tokens`` tokens (batch 1, end-of-sequence ignored; goal >= 0.98) and prompt processing of
   ``--prompt-tokens`` tokens.
2. ``lmserv.Llama`` vs llama-cpp-python's ``Llama``: the same prompt, greedy, ``--tokens``
   tokens; the two outputs must be equal. Its pure-Python package ``llama_cpp`` is taken out of
   the llama-cpp-python sdist the build cached (``~/.cache/lmserv/sdist``) and pointed at our
   libllama with ``LLAMA_CPP_LIB_PATH``: the same C code on both sides, nothing compiled. It runs
   in a subprocess (it needs ``diskcache`` and ``jinja2``: ``pip install diskcache jinja2``).
   Flash attention is on for both (llama-cpp-python's default is off, lmserv's ``"auto"``; the
   two give different greedy text on this model). Goal: at least as fast.
3. ``LlamaServer`` (its defaults) vs ``llama-server`` run by hand with its own defaults:
   aggregate tokens/s with 4 and 16 concurrent clients, and time to the first streamed token
   on an idle server. Goal >= 1.0 (for time to first token: hand / ours >= 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _common import hand_launch, stop

from lmserv import Llama, LlamaParams, LlamaServer, config
from lmserv.install import ensure_model
from lmserv.install.llama_build import build_shared

PROMPT = "Q: What is the capital of France?\nA:"
LONG_PROMPT = "The history of Paris begins with a small settlement on an island in the Seine. "


def ratio_line(name: str, base: list[float], mine: list[float], goal: str) -> str:
    b, m = statistics.median(base), statistics.median(mine)
    return f"| {name} | {b:.2f} | {m:.2f} | {m / b:.3f} | {goal} |"


# -- 1. Llama vs llama-bench ---------------------------------------------------------------------


def llama_bench(bench: Path, model: Path, threads: int, prompt: int, gen: int) -> float:
    cmd = [str(bench), "-m", str(model), "-p", str(prompt), "-n", str(gen), "-t", str(threads)]
    cmd += ["-r", "1", "-o", "json", "-ngl", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def ours_generation(llm: Llama, tokens: int) -> float:
    # Prompt = BOS only, then `tokens` single-token decodes, as llama-bench's tg test.
    began = time.perf_counter()
    done = llm.complete("", max_tokens=tokens, temperature=0, ignore_eos=True)
    elapsed = time.perf_counter() - began
    assert done.completion_tokens == tokens, done
    return tokens / elapsed


def ours_prompt(llm: Llama, prompt: str) -> float:
    done = llm.complete(prompt, max_tokens=1, temperature=0, ignore_eos=True)
    assert done.timings is not None
    return done.timings.prompt_tokens / (done.timings.prompt_ms / 1000)


def bench_llama_bench(model: Path, bin_dir: Path, args: argparse.Namespace) -> list[str]:
    tg_base: list[float] = []
    tg_mine: list[float] = []
    pp_base: list[float] = []
    pp_mine: list[float] = []
    with Llama(model, n_ctx=1024, n_threads=args.threads, n_gpu_layers=0) as llm:
        prompt_ids = llm.tokenize(LONG_PROMPT * 40, add_special=False)[: args.prompt_tokens - 1]
        prompt = llm.detokenize(prompt_ids)
        n_prompt = len(llm.tokenize(prompt, add_special=True))
        ours_generation(llm, 8)  # warm-up
        for i in range(args.rounds):
            sides: list[Callable[[], None]] = [
                lambda: tg_base.append(
                    llama_bench(bin_dir / "llama-bench", model, args.threads, 0, args.tokens)
                ),
                lambda: tg_mine.append(ours_generation(llm, args.tokens)),
            ]
            for side in sides if i % 2 == 0 else sides[::-1]:
                side()
            sides = [
                lambda: pp_base.append(
                    llama_bench(bin_dir / "llama-bench", model, args.threads, n_prompt, 0)
                ),
                lambda: pp_mine.append(ours_prompt(llm, prompt)),
            ]
            for side in sides if i % 2 == 0 else sides[::-1]:
                side()
    return [
        ratio_line(f"generation, {args.tokens} tokens (tok/s)", tg_base, tg_mine, ">= 0.98"),
        ratio_line(f"prompt processing, {n_prompt} tokens (tok/s)", pp_base, pp_mine, "-"),
    ]


# -- 2. Llama vs llama-cpp-python ------------------------------------------------------------------

_LLAMA_CPP_PYTHON = """
import json, sys, time
import llama_cpp
model, threads, tokens, runs, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
llm = llama_cpp.Llama(
    model, n_ctx=1024, n_threads=threads, n_gpu_layers=0, flash_attn=True, verbose=False
)
speeds, text = [], None
for _ in range(runs):
    began = time.perf_counter()
    out = llm.create_completion(prompt, max_tokens=tokens, temperature=0, top_k=1)
    speeds.append(out["usage"]["completion_tokens"] / (time.perf_counter() - began))
    text = out["choices"][0]["text"]
print(json.dumps({"speeds": speeds, "text": text}))
"""


def llama_cpp_package(folder: Path) -> Path:
    """``llama_cpp`` (pure Python) extracted from the cached llama-cpp-python sdist."""
    sdists = sorted((config.cache_dir() / "sdist").glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        raise SystemExit("no llama-cpp-python sdist in ~/.cache/lmserv/sdist: run the build first")
    with tarfile.open(sdists[-1]) as archive:
        members = [
            m
            for m in archive.getmembers()
            if m.name.split("/")[1:2] == ["llama_cpp"] and (m.isfile() or m.isdir())
        ]
        archive.extractall(folder, members=members, filter="data")
    return folder / members[0].name.split("/")[0]


def ours_completion(llm: Llama, tokens: int) -> tuple[float, str]:
    began = time.perf_counter()
    done = llm.complete(PROMPT, max_tokens=tokens, temperature=0)
    return done.completion_tokens / (time.perf_counter() - began), done.text


def bench_llama_cpp_python(model: Path, lib_dir: Path, args: argparse.Namespace) -> list[str]:
    base: list[float] = []
    mine: list[float] = []
    texts: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        root = llama_cpp_package(Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(root), "LLAMA_CPP_LIB_PATH": str(lib_dir)}
        # Flash attention on both sides: llama-cpp-python's default is off, lmserv's "auto" (on,
        # on this CPU); the two compute slightly different logits, enough to change greedy text.
        params = LlamaParams(flash_attn="on")
        with Llama(model, n_ctx=1024, n_threads=args.threads, n_gpu_layers=0, params=params) as llm:
            ours_completion(llm, 4)  # warm-up

            def theirs() -> None:
                cmd = [sys.executable, "-c", _LLAMA_CPP_PYTHON, str(model), str(args.threads)]
                cmd += [str(args.tokens), "3", PROMPT]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if out.returncode != 0:
                    raise SystemExit(f"llama-cpp-python failed:\n{out.stderr[-2000:]}")
                data = json.loads(out.stdout.strip().splitlines()[-1])
                base.append(statistics.median(data["speeds"][1:]))  # the first run warms up
                texts.add("theirs:" + data["text"])

            def mine_side() -> None:
                runs = [ours_completion(llm, args.tokens) for _ in range(2)]
                mine.append(statistics.median(r[0] for r in runs))
                texts.add("ours:" + runs[-1][1])

            for i in range(args.rounds):
                for side in (theirs, mine_side) if i % 2 == 0 else (mine_side, theirs):
                    side()
    outputs = {t.partition(":")[2] for t in texts}
    same = "identical" if len(outputs) == 1 else f"DIFFER: {sorted(texts)}"
    print(f"llama-cpp-python vs lmserv greedy outputs: {same}")
    return [
        ratio_line(
            f"`Llama` vs llama-cpp-python `Llama`, {args.tokens} tokens greedy, outputs {same}",
            base,
            mine,
            ">= 1.0",
        )
    ]


# -- 3. LlamaServer vs llama-server --------------------------------------------------------------


def burst(url: str, clients: int, tokens: int) -> float:
    body = {"prompt": PROMPT, "n_predict": tokens, "ignore_eos": True, "temperature": 0}

    def one(i: int) -> int:
        with httpx.Client(timeout=600) as http:
            answer = http.post(url + "/completion", json={**body, "seed": i}).json()
            return int(answer["tokens_predicted"])

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(one, range(clients)))
    return total / (time.perf_counter() - began)


def first_token(url: str, samples: int) -> float:
    """Median seconds from sending a streamed request to its first token (idle server)."""
    times = []
    body = {"prompt": PROMPT, "n_predict": 4, "temperature": 0, "stream": True}
    # A fresh connection per request: llama-server closes idle keep-alive connections (after
    # 5 s), and a request sent on one it just closed fails without an answer.
    with httpx.Client(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        for _ in range(samples):
            began = time.perf_counter()
            with http.stream("POST", url + "/completion", json=body) as response:
                lines = response.iter_lines()  # one iterator: a stream is read once
                for line in lines:
                    if line.startswith("data: "):
                        times.append(time.perf_counter() - began)
                        break
                for _line in lines:
                    pass
    return statistics.median(times)


def bench_server(model: Path, bin_dir: Path, args: argparse.Namespace) -> list[str]:
    results: dict[str, tuple[list[float], list[float]]] = {
        key: ([], []) for key in ("4", "16", "ttft")
    }

    def measure(url: str, side: int) -> None:
        burst(url, 4, 4)  # warm-up
        for clients in (4, 16):
            results[str(clients)][side].append(burst(url, clients, args.server_tokens))
        results["ttft"][side].append(first_token(url, 8))

    def hand() -> None:
        proc, url = hand_launch(model)
        try:
            measure(url, 0)
        finally:
            stop(proc)

    def ours() -> None:
        with LlamaServer(model, binary=bin_dir / "llama-server") as server:
            measure(server.base_url, 1)

    for i in range(args.rounds):
        for side in (hand, ours) if i % 2 == 0 else (ours, hand):
            side()
    lines = []
    for clients in ("4", "16"):
        base, mine = results[clients]
        lines.append(
            ratio_line(
                f"{clients} concurrent clients x {args.server_tokens} tokens (tok/s)",
                base,
                mine,
                ">= 1.0",
            )
        )
    base, mine = results["ttft"]
    b, m = statistics.median(base) * 1000, statistics.median(mine) * 1000
    lines.append(
        f"| time to first token, idle (ms; ratio hand / ours) | {b:.1f} | {m:.1f} | {b / m:.3f} | >= 1.0 |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--server-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two sides")
    parser.add_argument("--only", choices=["bindings", "llama-cpp-python", "server"], default=None)
    args = parser.parse_args()

    build = build_shared()
    bin_dir, lib_dir = build.bin_dir, build.lib_dir
    os.environ["LLAMA_BIN_DIR"] = str(bin_dir)  # hand_launch's llama-server: the same one
    os.environ["LLAMA_LIB_DIR"] = str(lib_dir)
    model = ensure_model("gemma3-270m")
    load = os.getloadavg()
    print(
        f"model {model.name}, build {build.commit[:7]}, threads {args.threads}, rounds {args.rounds}"
    )
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rows = [
        "| benchmark | baseline (median) | lmserv (median) | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    if args.only in (None, "bindings"):
        rows += bench_llama_bench(model, bin_dir, args)
    if args.only in (None, "llama-cpp-python"):
        rows += bench_llama_cpp_python(model, lib_dir, args)
    if args.only in (None, "server"):
        rows += bench_server(model, bin_dir, args)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
