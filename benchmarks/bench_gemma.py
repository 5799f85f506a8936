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
   in this process, calls alternated with ours (it needs ``diskcache`` and ``jinja2``:
   ``pip install diskcache jinja2``).
   Flash attention is on for both (llama-cpp-python's default is off, lmserv's ``"auto"``; the
   two give different greedy text on this model). llama-cpp-python reuses the KV cache of the
   prompt's common prefix between calls by default; lmserv does with ``reuse_prompt=True``, the
   like-for-like row (goal: at least as fast); a second row shows lmserv's default, which
   decodes the prompt again.
3. ``LlamaServer`` (its defaults) vs ``llama-server`` run by hand with its own defaults, both up
   at once and measured in turn (``--alternations`` per pair, ``--rounds`` pairs): aggregate
   tokens/s with 4 and 16 concurrent clients, and time to the first streamed token on an idle
   server. Goal >= 1.0 (for time to first token: hand / ours >= 1.0).

Every row also gives a 90 % bootstrap interval of its ratio (pairs resampled): on this shared
2-core VM two identical llama-servers differ by several percent in a short run, and the
interval says whether a ratio's distance from 1.0 is larger than that.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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


def interval(base: list[float], mine: list[float], *, invert: bool = False) -> str:
    """A 90 % bootstrap interval of the ratio of medians, resampling the (base, mine) pairs.

    The pairs were measured side by side (same round, alternated), so resampling pairs keeps
    what the two sides shared. Two identical servers on this VM differ by several percent in a
    short run; the interval says whether a ratio's distance from 1.0 is more than that.
    """
    pairs = list(zip(base, mine, strict=True))
    rng = random.Random(0)
    ratios = []
    for _ in range(2000):
        sample = [rng.choice(pairs) for _ in pairs]
        b = statistics.median(p[0] for p in sample)
        m = statistics.median(p[1] for p in sample)
        ratios.append(b / m if invert else m / b)
    ratios.sort()
    return f"{ratios[len(ratios) // 20]:.3f}-{ratios[-len(ratios) // 20]:.3f}"


def ratio_line(
    name: str, base: list[float], mine: list[float], goal: str, *, invert: bool = False
) -> str:
    """A table row: the two medians, their ratio (``invert``: base / mine, for times) and its
    90 % interval."""
    b, m = statistics.median(base), statistics.median(mine)
    ratio = b / m if invert else m / b
    spread = interval(base, mine, invert=invert)
    return f"| {name} | {b:.2f} | {m:.2f} | {ratio:.3f} | {spread} | {goal} |"


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
        for i in range(args.rounds * 2):  # short runs: twice as many pairs
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
    """Both bindings in this one process, on the one libllama, calls alternated (ABBA).

    In one process the two sides share the library, the page cache and the CPU placement; run
    in a subprocess, llama-cpp-python's figures moved by several percent from run to run.
    """
    base: list[float] = []
    same: list[float] = []  # ours with prompt reuse, as llama-cpp-python does by default
    plain: list[float] = []  # ours with its defaults (the prompt decoded again each call)
    texts: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(llama_cpp_package(Path(tmp))))
        os.environ["LLAMA_CPP_LIB_PATH"] = str(lib_dir)  # its loader: our libllama, not its own
        import llama_cpp  # type: ignore[import-not-found]

        # Flash attention on both sides: llama-cpp-python's default is off, lmserv's "auto" (on,
        # on this CPU); the two compute slightly different logits, enough to change greedy text.
        # llama-cpp-python keeps the KV cache of the prompt's common prefix between calls
        # (Llama.generate: "prefix-match hit") and decodes only the last prompt token again;
        # lmserv does that with reuse_prompt=True and decodes the whole prompt by default.
        opts = {"n_ctx": 1024, "n_threads": args.threads, "n_gpu_layers": 0}
        theirs_llm = llama_cpp.Llama(str(model), **opts, flash_attn=True, verbose=False)
        reusing = LlamaParams(flash_attn="on", reuse_prompt=True)
        with (
            Llama(model, **opts, params=reusing) as llm_same,
            Llama(model, **opts, params=LlamaParams(flash_attn="on")) as llm_plain,
        ):

            def theirs() -> None:
                began = time.perf_counter()
                out = theirs_llm.create_completion(
                    PROMPT, max_tokens=args.tokens, temperature=0, top_k=1
                )
                base.append(out["usage"]["completion_tokens"] / (time.perf_counter() - began))
                texts["theirs"] = out["choices"][0]["text"]

            def mine() -> None:
                for llm, into, label in ((llm_same, same, "reuse"), (llm_plain, plain, "plain")):
                    speed, texts[f"ours-{label}"] = ours_completion(llm, args.tokens)
                    into.append(speed)

            theirs()  # warm-up
            mine()
            for warm in (base, same, plain):
                warm.clear()
            for i in range(args.rounds * 3):
                for side in (theirs, mine) if i % 2 == 0 else (mine, theirs):
                    side()
        theirs_llm.close()
    equal = "identical" if len(set(texts.values())) == 1 else f"DIFFER: {texts}"
    print(f"llama-cpp-python vs lmserv greedy outputs: {equal}")
    name = f"`Llama` vs llama-cpp-python `Llama`, {args.tokens} tokens greedy, outputs {equal}"
    return [
        ratio_line(f"{name}; both reuse the prompt prefix", base, same, ">= 1.0"),
        ratio_line(f"{name}; lmserv's default (prompt decoded again)", base, plain, "-"),
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
    """Both servers up at once, bursts alternated between them (ABBA) many times.

    An idle llama-server uses no CPU, so the one waiting does not slow the one measured; keeping
    both up and alternating every few seconds puts the two sides in the same minutes, which
    restarting one server per side did not (on this VM two *identical* hand-run servers measured
    that way differed by up to 9 % at 8 rounds). Each round starts fresh processes.
    """
    results: dict[str, tuple[list[float], list[float]]] = {
        key: ([], []) for key in ("4", "16", "ttft")
    }

    def measure(url: str, side: int) -> None:
        for clients in (4, 16):
            results[str(clients)][side].append(burst(url, clients, args.server_tokens))
        results["ttft"][side].append(first_token(url, 8))

    for _ in range(args.rounds):
        proc, hand_url = hand_launch(model)
        try:
            with LlamaServer(model, binary=bin_dir / "llama-server") as server:
                urls = (hand_url, server.base_url)
                for url in urls:
                    burst(url, 4, 4)  # warm-up
                for i in range(args.alternations):
                    for side in (0, 1) if i % 2 == 0 else (1, 0):
                        measure(urls[side], side)
        finally:
            stop(proc)
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
    name = "time to first token, idle (ms; ratio hand / ours)"
    ms = [x * 1000 for x in base], [x * 1000 for x in mine]
    lines.append(ratio_line(name, *ms, ">= 1.0", invert=True))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--server-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two sides")
    parser.add_argument(
        "--alternations", type=int, default=4, help="server part: alternations per pair of servers"
    )
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
        "| benchmark | baseline (median) | lmserv (median) | ratio | 90 % interval | goal |",
        "|---|---|---|---|---|---|",
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
