"""Parallel Range downloads, chunk-wise resume and two processes on one file, over real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from _http_server import FileServer
from lmserv.errors import ChecksumMismatch, DownloadError
from lmserv.install import download_file

SMALL = os.urandom(8 * 1024 * 1024 + 17)
SMALL_SHA = hashlib.sha256(SMALL).hexdigest()
FAST = {"stall_timeout": 2.0, "backoff": 0.01, "progress": False}


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        srv.add("/small.gguf", SMALL)
        yield srv


def _starts(srv: FileServer) -> list[int]:
    return [int(r.range.split("=")[1].split("-")[0]) for r in srv.requests if r.range]


def test_tens_of_megabytes_in_parallel_verified(tmp_path: Path) -> None:
    big = os.urandom(24 * 1024 * 1024 + 5)
    with FileServer() as srv:
        srv.add("/big.gguf", big)
        srv.set_faults(throttle=8_000_000)  # per connection: parallelism has to overlap
        dest = download_file(
            srv.url("/big.gguf"),
            tmp_path / "big.gguf",
            sha256=hashlib.sha256(big).hexdigest(),
            size=len(big),
            connections=4,
            **FAST,
        )
        assert dest.read_bytes() == big
        assert srv.state.max_active >= 2  # connections overlapped
        assert srv.requests[0].range == "bytes=0-0"  # the probe
        assert len(srv.requests) >= 5
        assert srv.bytes_served == len(big) + 1
    assert not (tmp_path / "big.gguf.part").exists()
    assert not (tmp_path / "big.gguf.part.json").exists()


def test_default_is_parallel_for_large_files_only(server: FileServer, tmp_path: Path) -> None:
    download_file(server.url("/small.gguf"), tmp_path / "small.gguf", sha256=SMALL_SHA, **FAST)
    assert [r.range for r in server.requests] == ["bytes=0-0", None]  # 8 MiB: one connection


def test_parallel_survives_drops_503_and_a_stall(server: FileServer, tmp_path: Path) -> None:
    server.set_faults(
        drop_after=300_000,
        drop_times=3,
        fail_503=2,
        stall_after=100_000,
        stall_times=1,
        stall_seconds=60,
    )
    options = dict(FAST, stall_timeout=1.0)
    dest = download_file(
        server.url("/small.gguf"), tmp_path / "s.gguf", sha256=SMALL_SHA, connections=4, **options
    )
    assert dest.read_bytes() == SMALL
    statuses = [r.status for r in server.requests]
    assert statuses.count(503) == 2


def test_parallel_checksum_mismatch_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    server.set_faults(corrupt_at=5_000_000)
    with pytest.raises(ChecksumMismatch):
        download_file(
            server.url("/small.gguf"), tmp_path / "s.gguf", sha256=SMALL_SHA, connections=4, **FAST
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.gguf.lock"]


def test_single_connection_part_is_continued_in_parallel(
    server: FileServer, tmp_path: Path
) -> None:
    (tmp_path / "s.gguf.part").write_bytes(SMALL[:3_000_000])
    dest = download_file(
        server.url("/small.gguf"), tmp_path / "s.gguf", sha256=SMALL_SHA, connections=4, **FAST
    )
    assert dest.read_bytes() == SMALL
    assert server.bytes_served == len(SMALL) - 3_000_000 + 1  # the rest, and the probe
    assert min(_starts(server)[1:]) == 3_000_000
    assert len(server.requests) > 3


def test_server_ignoring_range_falls_back_to_one_connection(
    server: FileServer, tmp_path: Path
) -> None:
    server.set_faults(ignore_range=True)
    dest = download_file(
        server.url("/small.gguf"), tmp_path / "s.gguf", sha256=SMALL_SHA, connections=4, **FAST
    )
    assert dest.read_bytes() == SMALL
    assert [r.status for r in server.requests] == [200, 200]  # probe (closed early), then all


def test_interrupted_parts_resume_individually(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "s.gguf"
    server.set_faults(fail_after_bytes=len(SMALL) // 2, throttle=2_000_000)
    with pytest.raises(DownloadError, match="to resume"):
        download_file(
            server.url("/small.gguf"), dest, sha256=SMALL_SHA, connections=4, retries=1, **FAST
        )
    state = json.loads((tmp_path / "s.gguf.part.json").read_text())
    chunks = state["chunks"]
    done = sum(d for _s, _e, d in chunks)
    finished = [(s, e) for s, e, d in chunks if d == e - s]
    assert finished and done < len(SMALL)
    server.set_faults()
    server.reset_log()
    download_file(
        server.url("/small.gguf"), dest, sha256=SMALL_SHA, size=len(SMALL), connections=4, **FAST
    )
    assert dest.read_bytes() == SMALL
    # Only what was missing went over the wire again, and no finished chunk was asked for.
    assert server.bytes_served == len(SMALL) - done
    assert not any(s <= start < e for start in _starts(server) for s, e in finished)
    assert not (tmp_path / "s.gguf.part.json").exists()


def _spawn(url: str, dest: Path, *extra: str) -> subprocess.Popen[bytes]:
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO); "
        "from lmserv.install import download_file; "
        "print(download_file(sys.argv[1], sys.argv[2], sha256=sys.argv[3], connections=4, "
        "progress=False))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, url, str(dest), SMALL_SHA, *extra],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)


def test_two_processes_fetching_one_file_do_not_collide(server: FileServer, tmp_path: Path) -> None:
    gate = threading.Event()
    server.set_faults(gate=gate)  # the first process holds its lock until the second waits
    dest = tmp_path / "s.gguf"
    first = _spawn(server.url("/small.gguf"), dest)
    second = None
    try:
        _wait_for(lambda: server.state.active > 0)
        second = _spawn(server.url("/small.gguf"), dest)
        assert second.stderr is not None
        line = _readline(second.stderr, timeout=60)
        assert "waiting for another process" in line, line
        gate.set()
        out1, err1 = first.communicate(timeout=60)
        out2, err2 = second.communicate(timeout=60)
    finally:
        gate.set()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert first.returncode == 0, err1.decode()
    assert second.returncode == 0, err2.decode()
    assert out1.strip() == out2.strip() == str(dest).encode()
    assert dest.read_bytes() == SMALL
    assert server.bytes_served == len(SMALL) + 1  # one download (and its 1-byte probe)


def _readline(stream: IO[bytes], timeout: float) -> str:
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0].decode() if lines else "(nothing)"


def test_ctrl_c_during_parallel_download_resumes_chunks(server: FileServer, tmp_path: Path) -> None:
    server.set_faults(throttle=500_000)  # 4 connections: about 4 s for the whole file
    dest = tmp_path / "s.gguf"
    state = tmp_path / "s.gguf.part.json"
    proc = _spawn(server.url("/small.gguf"), dest)
    try:
        _wait_for(lambda: server.bytes_served > 1_500_000)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err
    done = sum(d for _s, _e, d in json.loads(state.read_text())["chunks"])
    assert done > 1_000_000
    server.set_faults()
    server.reset_log()
    download_file(server.url("/small.gguf"), dest, sha256=SMALL_SHA, connections=4, **FAST)
    assert dest.read_bytes() == SMALL
    assert server.bytes_served == len(SMALL) - done + 1  # and a 1-byte probe for the size
