"""The model service (llama-server's router) against one llama-server per model.

    PYTHONPATH=src:benchmarks python benchmarks/bench_service.py [--model X.gguf] [--requests 200]

Three comparisons, each alternating its two sides in one run and reporting medians:

1. per request, 1-token completion: ``ModelService`` client naming the model (through the
   router's proxy to the instance) vs ``LlamaServer`` on the same model (goal <= 1.10);
2. first request to an unloaded model (the router starts an instance and loads it) vs
   ``LlamaServer.start()`` plus the same request (goal <= 1.10);
3. ``lmserv run NAME "prompt"`` as a command with a warm service vs the same command starting a
   transient server (reported).

The model is the counting model unless ``--model`` names a GGUF (it is linked into a temporary
models folder and served by its file stem).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import median

from lmserv import Client, LlamaServer, ModelService
from lmserv.testing import write_counting_model

PROMPT = "one two"
# The single server runs as the service's instances do: llama-server's defaults (4 slots, its
# default log level; LlamaServer adds only --metrics).
SINGLE_ARGS: tuple[str, ...] = ()
BLOCK = 20  # requests in a row to one side (per_request)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_request(
    model: Path, service: ModelService, name: str, requests: int
) -> tuple[float, float]:
    with LlamaServer(model, extra_args=SINGLE_ARGS) as single:
        direct = single.client()
        routed = service.client(model=name)
        for _ in range(20):  # warm both connections and both prompt caches
            direct.complete(PROMPT, max_tokens=1, temperature=0)
            routed.complete(PROMPT, max_tokens=1, temperature=0)
        base: list[float] = []
        ours: list[float] = []
        # Blocks of BLOCK requests per side, ABBA. Request by request alternation made each
        # side pay for the other: after a request, a llama-server's OpenMP threads spin for a
        # moment on both cores, and a request to the other process waits for them (measured:
        # the same single server answered in 2.6 ms alone, 4-7 ms interleaved with another).
        # (The router closes its connection after every answer; the client sends a request
        # that met such a closed connection again on a new one: lmserv._net.RequestTrace.
        # Before that fix this loop failed with "Server disconnected" within a few requests.)
        sides = [(direct, base), (routed, ours)]
        for i in range(max(1, requests // BLOCK)):
            for client, into in sides if i % 2 == 0 else sides[::-1]:
                for _ in range(BLOCK):
                    into.append(
                        _timed(lambda c=client: c.complete(PROMPT, max_tokens=1, temperature=0))
                    )
        direct.close()
        routed.close()
    return median(base), median(ours)


def first_request(
    model: Path, service: ModelService, name: str, rounds: int
) -> tuple[float, float]:
    def cold_single() -> None:
        with LlamaServer(model, extra_args=SINGLE_ARGS) as single, single.client() as client:
            client.complete(PROMPT, max_tokens=1, temperature=0)

    def cold_service() -> None:
        with service.client(model=name) as client:
            client.complete(PROMPT, max_tokens=1, temperature=0)

    base: list[float] = []
    ours: list[float] = []
    for i in range(rounds):
        for side in (0, 1) if i % 2 == 0 else (1, 0):  # ABBA
            if side == 0:
                base.append(_timed(cold_single))
            else:
                if any(m.name == name and m.holds_memory for m in service.models()):
                    service.unload(name)
                while any(m.name == name and m.state != "unloaded" for m in service.models()):
                    time.sleep(0.01)
                ours.append(_timed(cold_service))
    return median(base), median(ours)


def run_command(env: dict[str, str], model: Path, name: str, rounds: int) -> tuple[float, float]:
    """``lmserv run NAME`` with a warm service vs ``lmserv run PATH`` with none (a transient
    server each time; the path, because a name outside the catalog is the service's only)."""

    def run(e: dict[str, str], spec: str) -> None:
        argv = [sys.executable, "-m", "lmserv", "run", spec, PROMPT, "--max-tokens", "1"]
        subprocess.run(argv, env=e, check=True, capture_output=True)

    transient: list[float] = []
    warm: list[float] = []
    elsewhere = {**env, "XDG_STATE_HOME": env["XDG_STATE_HOME"] + "-none"}  # no service found
    for i in range(rounds):
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            if side == 0:
                transient.append(_timed(lambda: run(elsewhere, str(model))))
            else:
                warm.append(_timed(lambda: run(env, name)))
    return median(transient), median(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a GGUF to serve (default: counting model)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "models"
        folder.mkdir()
        if args.model:
            model = folder / args.model.name
            model.symlink_to(args.model.resolve())
        else:
            model = write_counting_model(folder / "counting.gguf")
        name = model.name.removesuffix(".gguf")
        env = {
            **os.environ,
            "LMSERV_PATHS_MODELS": str(folder),
            "LMSERV_PATHS_DATA": str(Path(tmp) / "data"),
            "XDG_STATE_HOME": str(Path(tmp) / "state"),
        }
        os.environ.update(env)
        with ModelService(folder, max_models=0, keep_alive=-1) as service:
            # A catalog model (Gemma) is served by its catalog name, any other by its stem.
            name = service.models()[0].name
            b, o = per_request(model, service, name, args.requests)
            print(
                f"1-token completion per request: LlamaServer {b * 1e3:.2f} ms, service "
                f"{o * 1e3:.2f} ms, ratio {o / b:.2f} (goal <= 1.10)"
            )
            b, o = first_request(model, service, name, args.rounds)
            print(
                f"first request, unloaded model: LlamaServer.start()+request {b * 1e3:.1f} ms, "
                f"service {o * 1e3:.1f} ms, ratio {o / b:.2f} (goal <= 1.10)"
            )
            with Client(service.base_url, model=name) as client:  # loaded for the warm runs
                client.complete(PROMPT, max_tokens=1)
            b, o = run_command(env, model, name, args.rounds)
            print(
                f"`lmserv run {name}`: transient {b * 1e3:.0f} ms, warm service {o * 1e3:.0f} ms, "
                f"ratio {o / b:.2f}"
            )


if __name__ == "__main__":
    main()
