"""LlamaServer's life cycle with the real llama-server: start, fail, stop, die, never leak."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from _helpers import llama_server_pids
from lmserv import (
    BinaryNotFound,
    LlamaServer,
    ModelNotFound,
    ServerError,
    ServerStartError,
    ServerTimeout,
    ServerUnavailable,
)
from lmserv.install import LlamaBuild
from lmserv.testing import COUNTING_CONTINUATION, write_synthetic_model

THREADS = ("-t", "1")


def wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pid not in llama_server_pids(""):
            return True
        time.sleep(0.05)
    return False


def test_start_stop_and_log(llama_build: LlamaBuild, model: Path, tmp_path: Path) -> None:
    server = LlamaServer(model, log_path=tmp_path / "server.log", extra_args=THREADS)
    with pytest.raises(ServerError, match="start"):
        _ = server.base_url
    with server:
        assert server.running and server.pid is not None
        pid = server.pid
        assert server.base_url.startswith("http://127.0.0.1:")
        assert not server.base_url.endswith(":0")  # the real port, read from the log
        with server.client() as client:
            assert client.complete("one two", temperature=0).text == COUNTING_CONTINUATION
        assert "listening on" in server.log_tail()
    assert not server.running
    assert pid not in llama_server_pids(str(model))
    assert server.stop() == 0  # second stop: same exit code, nothing to do
    assert "listening on" in (tmp_path / "server.log").read_text()


def test_explicit_port(llama_build: LlamaBuild, model: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with LlamaServer(model, port=port, extra_args=THREADS) as server:
        assert server.base_url == f"http://127.0.0.1:{port}"


def test_port_in_use_fails_fast_with_llama_servers_words(
    llama_build: LlamaBuild, model: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = LlamaServer(model, port=port, start_timeout=600, extra_args=THREADS)
        with pytest.raises(ServerStartError) as err:
            server.start()
    assert err.value.returncode not in (None, 0)
    assert str(port) in err.value.log_tail
    assert not server.running


def test_bad_model_path_fails_fast(llama_build: LlamaBuild, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    server = LlamaServer(missing, start_timeout=600)  # must not wait for the timeout
    with pytest.raises(ModelNotFound, match="does not exist"):  # as from Llama and plan_offload
        server.start()
    assert not server.running and llama_server_pids(str(missing)) == []
    # A file llama-server cannot load: its own words, from its log, without the timeout.
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model" * 100)
    with pytest.raises(ServerStartError) as err:
        LlamaServer(junk, start_timeout=600).start()
    assert err.value.returncode == 1
    assert "invalid magic characters" in err.value.log_tail
    assert str(junk) in str(err.value)
    assert llama_server_pids(str(junk)) == []


def test_timeout_says_what_it_waited_for(llama_build: LlamaBuild, model: Path) -> None:
    server = LlamaServer(model, start_timeout=0.0, extra_args=THREADS)
    with pytest.raises(ServerTimeout, match="listening on") as err:
        server.start()
    assert isinstance(err.value, TimeoutError)
    assert not server.running
    assert llama_server_pids(str(model)) == []


def test_missing_binary_and_public_bind_warning(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = LlamaServer(model, host="0.0.0.0", binary=tmp_path / "llama-server")
    with caplog.at_level(logging.WARNING, logger="lmserv.server"), pytest.raises(BinaryNotFound):
        server.start()
    assert "without an API key" in caplog.text


def test_server_killed_mid_stream_raises_clear_error(
    llama_build: LlamaBuild, model_dir: Path
) -> None:
    slow = write_synthetic_model(model_dir / "synthetic.gguf", params=20_000_000, quant="f16")
    with LlamaServer(slow, parallel=1, n_ctx=4096, extra_args=THREADS) as server:
        client = server.client()
        stream = client.stream("hello", max_tokens=4000, ignore_eos=True, temperature=0)
        chunks = iter(stream)
        next(chunks)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        with pytest.raises(ServerUnavailable, match=r"crashed or been stopped|ended before"):
            for _ in chunks:
                pass
        client.close()


def test_no_orphan_when_python_parent_dies(llama_build: LlamaBuild, model: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys
        from lmserv import LlamaServer
        server = LlamaServer({str(model)!r}, extra_args=("-t", "1")).start()
        print(server.pid, flush=True)
        os._exit(0)  # dies without stop() and without atexit handlers
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.strip())
    assert wait_gone(pid), f"llama-server {pid} outlived its Python parent"


def test_no_orphan_when_started_from_a_thread_and_python_is_killed(
    llama_build: LlamaBuild, model: Path
) -> None:
    # The parent-death signal follows the thread that forked, not the process: a server
    # started from a worker thread must survive that thread and still die with Python.
    script = textwrap.dedent(
        f"""
        import os, threading, time
        from lmserv import LlamaServer
        servers = []
        def start():
            servers.append(LlamaServer({str(model)!r}, extra_args=("-t", "1")).start())
        thread = threading.Thread(target=start)
        thread.start()
        thread.join()
        while str(thread.native_id) in os.listdir("/proc/self/task"):
            time.sleep(0.01)
        with servers[0].client() as client:
            client.health()
        print(servers[0].pid, flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    pid = 0
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline() or 0)
        assert pid in llama_server_pids(str(model)), "the server died with its starting thread"
        parent.kill()  # SIGKILL: no stop(), no atexit
        parent.wait(30)
        assert wait_gone(pid), f"llama-server {pid} outlived its SIGKILLed Python parent"
    finally:
        parent.kill()
        parent.wait(30)
        if parent.stdout is not None:
            parent.stdout.close()
        if pid and pid in llama_server_pids(str(model)):
            os.kill(pid, signal.SIGKILL)


# A llama-server stand-in that ignores SIGTERM (as a server wedged in a long decode may): it
# logs the line LlamaServer waits for and answers /health, and nothing stops it but SIGKILL.
_DEAF_SERVER = """#!{python}
import http.server, signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "15")
        self.end_headers()
        self.wfile.write(b'{{"status":"ok"}}')

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Health)
port = server.server_address[1]
print(f"main: server is listening on http://127.0.0.1:{{port}} - starting the main loop", flush=True)
server.serve_forever()
"""


def _stop_in_a_thread(server: LlamaServer) -> int | None:
    """``server.stop()``, failing (not hanging) if it never returns."""
    codes: list[int | None] = []
    thread = threading.Thread(target=lambda: codes.append(server.stop()), daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "stop() never returned: it did not escalate to SIGKILL"
    return codes[0]


def test_stop_kills_a_server_that_ignores_sigterm(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stub = tmp_path / "llama-server"
    stub.write_text(_DEAF_SERVER.format(python=sys.executable))
    stub.chmod(0o755)
    server = LlamaServer(model, binary=stub, stop_timeout=1.5).start()
    pid = server.pid
    assert pid is not None
    with caplog.at_level(logging.WARNING, logger="lmserv.server"):
        assert _stop_in_a_thread(server) == -signal.SIGKILL
    assert f"llama-server (pid {pid}) ignored SIGTERM" in caplog.text
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie


@pytest.mark.slow
def test_stop_kills_a_real_server_that_cannot_take_sigterm(
    llama_build: LlamaBuild, model: Path
) -> None:
    # SIGSTOP: the real llama-server, frozen, cannot run its SIGTERM handler; SIGKILL still works.
    server = LlamaServer(model, extra_args=THREADS, stop_timeout=1.5).start()
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    assert _stop_in_a_thread(server) == -signal.SIGKILL
    assert wait_gone(server.pid) and not server.running


def test_unrunnable_binary_is_a_start_error(model: Path, tmp_path: Path) -> None:
    fake = tmp_path / "llama-server"
    fake.write_text("not a program")  # exists, but is not executable
    with pytest.raises(ServerStartError, match="could not run"):
        LlamaServer(model, binary=fake).start()


def _device_line(name: str, description: str) -> str:
    # common.cpp: COM_TRC("  - %-8s: %s (%zu MiB, %zu MiB free)\n", ...) under "common_param:"
    return f"0.00.002.695 I cmn  common_param:   - {name:<8s}: {description} (143771 MiB, 143000 MiB free)"


def test_info_sees_gpu_offload_and_gpu_left_unused() -> None:
    """The GPU lines follow llama.cpp's format strings (this machine has no GPU to log them)."""
    from lmserv._server_info import _parse_info

    common = [
        "0.00.002.682 I cmn  common_param: common_params_print_info: build 1 (0c1e570) with GNU",
        _device_line("CUDA0", "NVIDIA H200"),
        _device_line("CPU", "Intel(R) Xeon(R) Processor"),
    ]
    offloaded = [
        *common,
        "0.00.007.670 I load_tensors: offloaded 33/33 layers to GPU",
        "0.00.007.672 I load_tensors:        CUDA0 model buffer size =  4403.49 MiB",
        "0.00.007.672 I load_tensors:   CPU_Mapped model buffer size =   281.81 MiB",
        "0.00.009.663 I srv    load_model: initializing, n_slots = 4, n_ctx_slot = 8192, kv_unified = 'true'",
    ]
    info = _parse_info(offloaded, "http://127.0.0.1:1", 1, "m.gguf")
    assert (info.devices, info.weights_on) == (("CUDA0", "CPU"), ("CUDA0", "CPU_Mapped"))
    assert (info.gpu_layers, info.total_layers, info.n_ctx, info.slots) == (33, 33, 8192, 4)
    assert not info.gpu_unused and "33/33 layers on GPU" in info.summary()
    unused = [*common, "0.00.007.672 I load_tensors:   CPU_Mapped model buffer size =   281.81 MiB"]
    info = _parse_info(unused, "http://127.0.0.1:1", 1, "m.gguf")
    assert info.gpu_unused and "GPU found (CUDA0, CPU) but not used" in info.summary()
