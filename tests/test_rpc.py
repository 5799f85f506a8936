"""RPC workers: real ``ggml-rpc-server`` processes on 127.0.0.1, real sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmserv.errors import BinaryNotFound, ConfigError, WorkerError
from lmserv.install import LlamaBuild
from lmserv.rpc import RpcWorker, check_endpoints, is_loopback, parse_endpoint, probe_endpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A plain TCP listener on 127.0.0.1, standing in for 'some other process has the port'."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


# -- endpoints (no processes) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.2", "has no ':port'"),
        ("10.0.0.2:", "bad port ''"),
        (":50052", "bad host ''"),
        ("10.0.0.2:0", "outside 1..65535"),
        ("10.0.0.2:65536", "outside 1..65535"),
        ("10.0.0.2:5x", "bad port '5x'"),
        ("[::1]:50052", "more than one ':'"),
        ("a b:1", "bad host"),
        ("h1:1,h2:2", "several endpoints"),
    ],
)
def test_bad_endpoints_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_endpoint(text)
    assert repr(text) in str(info.value)  # the message quotes the bad value
    assert isinstance(info.value, ValueError)


def test_endpoint_forms() -> None:
    assert parse_endpoint("gpu-box:50052") == ("gpu-box", 50052)
    assert parse_endpoint("10.0.0.2:1") == ("10.0.0.2", 1)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("127.5.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_probe_names_the_dead_worker() -> None:
    port = _closed_port()
    with pytest.raises(WorkerError, match=rf"RPC worker 127\.0\.0\.1:{port} is not reachable") as e:
        probe_endpoint(f"127.0.0.1:{port}", timeout=1.0)
    assert e.value.endpoint == f"127.0.0.1:{port}"


def test_check_endpoints_refuses_duplicates_before_connecting() -> None:
    port = _closed_port()
    with pytest.raises(ConfigError, match="listed twice"):
        check_endpoints([f"127.0.0.1:{port}", f" 127.0.0.1:{port}"])


def test_a_port_that_is_not_a_worker_is_named(listener: socket.socket) -> None:
    # Something accepts TCP there but never speaks the RPC protocol: bounded by the timeout.
    port = listener.getsockname()[1]
    with pytest.raises(WorkerError, match=r"did not take it up within 0\.5s") as e:
        check_endpoints([f"127.0.0.1:{port}"], timeout=0.5)
    assert e.value.endpoint == f"127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host": "localhost"}, "not an IPv4 address"),
        ({"host": "::1"}, "not an IPv4 address"),
        ({"port": 0}, "outside 1..65535"),
        ({"threads": 0}, "positive integer"),
        ({"device": "CUDA0,CUDA1"}, "not a device name"),
    ],
)
def test_bad_worker_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RpcWorker(**kwargs)  # type: ignore[arg-type]


def test_command_is_an_argument_list(tmp_path: Path) -> None:
    fake = tmp_path / "ggml-rpc-server"
    worker = RpcWorker(
        "127.0.0.1", 50060, cache=True, threads=3, device=["CUDA0", "CUDA1"], binary=fake
    )
    assert worker.command() == [
        str(fake),
        "--host",
        "127.0.0.1",
        "--port",
        "50060",
        "--threads",
        "3",
        "--device",
        "CUDA0,CUDA1",
        "--cache",
    ]
    assert worker.endpoint == "127.0.0.1:50060"


def test_missing_binary_is_binary_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_BIN_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LMSERV_PATHS_BUILDS", str(tmp_path / "builds"))
    monkeypatch.setenv("LMSERV_PATHS_CACHE", str(tmp_path / "cache"))  # no shared build either
    with pytest.raises(BinaryNotFound, match="ggml-rpc-server"):
        RpcWorker(port=None).start()


# -- real workers -----------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_starts_serves_and_stops(llama_build: LlamaBuild, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    worker = RpcWorker(port=None, threads=1, log_path=log)
    with worker:
        assert worker.running and worker.port is not None
        probe_endpoint(worker.endpoint)
        assert worker.exposed_devices()[0].startswith("CPU")
        assert f"endpoint       : 127.0.0.1:{worker.port}" in worker.log_tail()
        pid = worker.pid
    assert not worker.running
    assert worker.returncode == -signal.SIGTERM
    assert pid is not None and not _alive(pid)
    with pytest.raises(WorkerError, match="not reachable"):
        probe_endpoint(worker.endpoint, timeout=1.0)
    assert worker.stop() == -signal.SIGTERM  # twice is fine
    assert log.read_text().startswith("Starting RPC server")


def _hello(sock: socket.socket) -> bytes:
    """What llama-server does first: the RPC HELLO (cmd 14, 24 bytes of capabilities)."""
    sock.sendall(bytes([14]) + (24).to_bytes(8, "little") + bytes(24))
    answer = b""
    while len(answer) < 8 + 28:
        chunk = sock.recv(64)
        assert chunk, "the worker closed the connection"
        answer += chunk
    return answer


@pytest.mark.slow
def test_busy_worker_is_named_and_not_harmed(llama_build: LlamaBuild) -> None:
    # A worker serves one client at a time. Hold it with a client that completed the HELLO
    # exchange, as llama-server does, then probe: a clear error within the timeout. The
    # queued probe must not hurt the worker once it gets to it (a probe that sent a request
    # and left would kill it with SIGPIPE when it answered).
    with RpcWorker(port=None, threads=1) as worker:
        assert worker.port is not None
        with socket.create_connection(("127.0.0.1", worker.port), timeout=5) as client:
            assert int.from_bytes(_hello(client)[:8], "little") == 28
            with pytest.raises(WorkerError, match="probably in use by another llama-server"):
                probe_endpoint(worker.endpoint, timeout=0.5)
        probe_endpoint(worker.endpoint)  # free again once that client has left
        probe_endpoint(worker.endpoint)
        assert worker.running, worker.log_tail()


@pytest.mark.slow
def test_a_client_that_leaves_early_does_not_kill_the_worker(llama_build: LlamaBuild) -> None:
    # A client (here: a HELLO queued behind a busy worker, like a llama-server killed while
    # waiting) that is gone when the worker answers: the answer's write fails. With SIGPIPE at
    # its default the worker would die of it (exit -13); RpcWorker keeps it ignored.
    with RpcWorker(port=None, threads=1) as worker:
        assert worker.port is not None
        address = ("127.0.0.1", worker.port)
        with socket.create_connection(address, timeout=5) as holder:
            _hello(holder)
            with socket.create_connection(address, timeout=5) as leaver:
                leaver.sendall(bytes([14]) + (24).to_bytes(8, "little") + bytes(24))
        probe_endpoint(worker.endpoint, timeout=5)  # served after the leaver, so it was handled
        probe_endpoint(worker.endpoint, timeout=5)
        assert worker.running, f"worker exited {worker.returncode}: {worker.log_tail()}"


@pytest.mark.slow
def test_taken_port_fails_fast(llama_build: LlamaBuild, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with pytest.raises(WorkerError, match=rf"127\.0\.0\.1:{port}: the port is already in use"):
        RpcWorker(port=port).start()


@pytest.mark.slow
def test_worker_exit_reports_code_and_log(llama_build: LlamaBuild) -> None:
    worker = RpcWorker(port=None, device="NO_SUCH_DEVICE")
    with pytest.raises(WorkerError, match="exited with code 1 before accepting") as info:
        worker.start()
    assert info.value.returncode == 1
    assert "unknown device: NO_SUCH_DEVICE" in info.value.log_tail
    assert not worker.running


@pytest.mark.slow
def test_worker_dies_with_its_parent(llama_build: LlamaBuild, tmp_path: Path) -> None:
    # A Python parent killed with SIGKILL runs no cleanup; the parent-death signal still
    # stops the worker (Linux only: elsewhere the atexit handler covers normal exits).
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal is Linux only")
    script = (
        "import sys, time\n"
        "from lmserv.rpc import RpcWorker\n"
        "w = RpcWorker(port=None, threads=1).start()\n"
        "print(w.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert _alive(pid)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    _wait_gone(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _wait_gone(pid: int) -> None:
    import time

    for _ in range(200):  # a bound on waiting, not a speed assertion
        if not _alive(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    pytest.fail(f"worker pid {pid} outlived its parent")


# -- the CLI, as a user runs it ---------------------------------------------------------------


def _cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, "-m", "lmserv", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        **kwargs,  # type: ignore[call-overload]
    )


def test_cli_help() -> None:
    proc = _cli("worker", "--help")
    assert proc.returncode == 0
    for flag in ("--host", "--port", "--cache", "--threads", "--device"):
        assert flag in proc.stdout
    assert "NO authentication" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "my-host"], "not an IPv4 address"),
        (["--port", "70000"], "expected a number in 1..65535, got 70000"),
        (["--threads", "0"], "--threads: expected a number of at least 1, got 0"),
    ],
)
def test_cli_usage_errors_exit_2(args: list[str], message: str) -> None:
    proc = _cli("worker", *args)
    assert proc.returncode == 2
    assert message in proc.stderr


@pytest.mark.slow
def test_cli_warns_when_not_loopback(llama_build: LlamaBuild) -> None:
    # 192.0.2.1 (TEST-NET-1) is not this machine's, so the bind fails: the warning is shown
    # first, nothing is ever exposed, and the failure exits 1 with the reason.
    proc = _cli("worker", "--host", "192.0.2.1", "--port", "50052")
    assert proc.returncode == 1
    assert "WARNING: this RPC worker listens on 192.0.2.1:50052, not on loopback" in proc.stderr
    assert "NO authentication" in proc.stderr
    assert "the address cannot be bound" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cli_runs_in_foreground_and_stops_cleanly(
    llama_build: LlamaBuild, stop: signal.Signals
) -> None:
    port = _closed_port()
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmserv", "worker", "--port", str(port), "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline()]
        while banner[-1] and not banner[-1].startswith("log:"):  # the banner's last line
            banner.append(proc.stdout.readline())
        assert banner[0].startswith(f"RPC worker listening on 127.0.0.1:{port}")
        assert any(line.startswith("  device CPU") for line in banner)
        worker_pid = int(banner[0].split("(pid ")[1].rstrip(")\n"))
        assert f"--rpc 127.0.0.1:{port}" in "".join(banner)
        probe_endpoint(f"127.0.0.1:{port}")
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "WARNING" not in err  # loopback: no warning
    assert "RPC worker stopped" in err
    assert "Traceback" not in err
    _wait_gone(worker_pid)
    with pytest.raises(WorkerError):
        probe_endpoint(f"127.0.0.1:{port}", timeout=1.0)
