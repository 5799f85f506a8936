"""A model spread over RPC workers: real ``ggml-rpc-server`` workers, real ``llama-server``.

Two workers on 127.0.0.1 plus ``llama-server --rpc`` with every layer offloaded must give
exactly the single-process greedy output of the counting model, and a dead worker must be a
clear :class:`WorkerError` naming it, before (or instead of) llama-server aborting.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmserv.errors import ConfigError, ServerStartError, WorkerError
from lmserv.install import LlamaBuild
from lmserv.rpc import RpcWorker
from lmserv.server import LlamaServer
from lmserv.testing import COUNTING_CONTINUATION, COUNTING_PROMPT, write_counting_model

pytestmark = pytest.mark.slow

SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL = {"n_ctx": 256, "parallel": 1, "extra_args": ("-t", "1")}


@pytest.fixture(scope="module")
def counting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_counting_model(tmp_path_factory.mktemp("models") / "counting.gguf")


@pytest.fixture
def workers(llama_build: LlamaBuild) -> Iterator[tuple[RpcWorker, RpcWorker]]:
    with RpcWorker(port=None, threads=1) as a, RpcWorker(port=None, threads=1) as b:
        yield a, b


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _greedy(server: LlamaServer) -> str:
    with server.client() as client:
        return client.complete(COUNTING_PROMPT, max_tokens=32, temperature=0.0).text


def test_two_workers_give_the_single_process_output(
    counting: Path, workers: tuple[RpcWorker, RpcWorker]
) -> None:
    with LlamaServer(counting, n_gpu_layers=0, **SMALL) as local:  # type: ignore[arg-type]
        expected = _greedy(local)
    assert expected == COUNTING_CONTINUATION

    a, b = workers
    # -lv 4: libllama's load report names the buffers ("RPC0[host:port]"); at the default level
    # ServerInfo knows only what the flags and the build say.
    with LlamaServer(
        counting,
        rpc=[a.endpoint, b.endpoint],
        n_gpu_layers="all",
        n_ctx=256,
        parallel=1,
        extra_args=("-t", "1", "-lv", "4"),
    ) as server:
        assert _greedy(server) == expected
        # The weights really are on both workers (llama.cpp names RPC buffers
        # "RPC0[host:port]"), and every layer left the main process.
        placed = " ".join(server.info.weights_on)
        assert f"[{a.endpoint}]" in placed and f"[{b.endpoint}]" in placed
        assert server.info.gpu_layers == server.info.total_layers
        assert all(w.running for w in workers)
    assert all(w.running for w in workers)  # the server's exit leaves the workers serving


def test_dead_worker_is_named_before_llama_server_starts(
    counting: Path, workers: tuple[RpcWorker, RpcWorker]
) -> None:
    a, b = workers
    dead = b.endpoint
    assert b.pid is not None
    os.kill(b.pid, signal.SIGKILL)  # a worker that crashed, or whose machine went away
    assert b.wait(timeout=10) == -signal.SIGKILL
    server = LlamaServer(counting, rpc=[a.endpoint, dead], n_gpu_layers="all", **SMALL)  # type: ignore[arg-type]
    with pytest.raises(WorkerError, match=rf"RPC worker {dead} is not reachable") as info:
        server.start()
    assert info.value.endpoint == dead
    assert server.pid is None  # llama-server was never launched
    assert a.running


def test_unreachable_worker_does_not_hang(counting: Path, llama_build: LlamaBuild) -> None:
    # 192.0.2.1 (TEST-NET-1) never answers: the probe's timeout bounds the wait.
    server = LlamaServer(counting, rpc=["192.0.2.1:50052"], **SMALL)  # type: ignore[arg-type]
    with pytest.raises(WorkerError, match=r"RPC worker 192\.0\.2\.1:50052 is not reachable"):
        server.start()


def test_malformed_endpoint_is_refused_at_construction(counting: Path) -> None:
    with pytest.raises(ConfigError, match="has no ':port'"):
        LlamaServer(counting, rpc=["10.0.0.2"])


def test_serve_cli_with_rpc_and_a_dead_worker(counting: Path, llama_build: LlamaBuild) -> None:
    port = _closed_port()
    proc = subprocess.run(
        [sys.executable, "-m", "lmserv", "serve", str(counting), "--rpc", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert proc.returncode == 1
    assert f"RPC worker 127.0.0.1:{port} is not reachable" in proc.stderr
    assert "Traceback" not in proc.stderr


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmserv", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": SRC},
    )


def test_serve_cli_split_options(counting: Path, llama_build: LlamaBuild) -> None:
    help_text = _serve("--help").stdout
    for flag in ("--rpc", "--split-mode", "--tensor-split", "--main-gpu", "--device"):
        assert flag in help_text
    assert _serve(str(counting), "--split-mode", "rows").returncode == 2
    # This machine has no GPU: tensor mode is refused before llama-server starts.
    proc = _serve(str(counting), "--split-mode", "tensor")
    assert proc.returncode == 1
    assert "split_mode='tensor' needs at least one GPU or RPC device" in proc.stderr
    proc = _serve(str(counting), "--split-mode", "layer", "--server-args", "-sm none")
    assert proc.returncode == 1
    assert "split_mode is given twice" in proc.stderr


def test_worker_lost_between_check_and_launch(counting: Path, llama_build: LlamaBuild) -> None:
    # A stand-in that passes lmserv's check once (accepts, then closes on end-of-stream as a
    # free worker does) and then goes away: llama-server then aborts on connecting, and the
    # error still names the worker rather than only showing llama-server's backtrace.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    endpoint = f"127.0.0.1:{listener.getsockname()[1]}"

    def serve_once() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(64)
        listener.close()

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    server = LlamaServer(counting, rpc=[endpoint], **SMALL)  # type: ignore[arg-type]
    try:
        with pytest.raises(WorkerError, match=rf"RPC worker {endpoint} is not reachable") as info:
            server.start()
    finally:
        thread.join(timeout=10)
        listener.close()
    assert isinstance(info.value.__cause__, ServerStartError)  # llama-server's own failure
    assert info.value.returncode is not None and info.value.returncode != 0
    assert server.log_path is not None
    assert f"Failed to connect to {endpoint}" in server.log_path.read_text(errors="replace")
    assert not server.running
