"""download_file over one connection against a real, misbehaving HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _http_server import FileServer
from lmserv.errors import ChecksumMismatch, DownloadError, InsufficientDiskSpace
from lmserv.install import download_file
from lmserv.install._download import sidecar_path
from lmserv.install._http import token_headers

SIZE = 3 * 1024 * 1024 + 123
DATA = os.urandom(SIZE)
SHA = hashlib.sha256(DATA).hexdigest()
FAST = {"stall_timeout": 2.0, "backoff": 0.01, "connections": 1, "progress": False}


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        srv.add("/model.gguf", DATA)
        yield srv


def _ranges(srv: FileServer) -> list[str | None]:
    return [r.range for r in srv.requests]


def test_download_verifies_and_renames(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "model.gguf"
    path = download_file(server.url("/model.gguf"), dest, sha256=SHA, size=SIZE, **FAST)
    assert path == dest
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "model.gguf.part").exists()
    assert sidecar_path(dest).exists()
    assert server.bytes_served == SIZE


def test_checksum_mismatch_deletes_and_names_both_digests(
    server: FileServer, tmp_path: Path
) -> None:
    server.set_faults(corrupt_at=1_000_000)
    bad = bytearray(DATA)
    bad[1_000_000] ^= 0xFF
    dest = tmp_path / "model.gguf"
    with pytest.raises(ChecksumMismatch) as info:
        download_file(server.url("/model.gguf"), dest, sha256=SHA, **FAST)
    assert info.value.expected == SHA
    assert info.value.actual == hashlib.sha256(bad).hexdigest()
    assert SHA in str(info.value) and info.value.actual in str(info.value)
    assert not dest.exists()
    assert not (tmp_path / "model.gguf.part").exists()


def test_resume_continues_a_partial_file_with_range(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "model.gguf"
    (tmp_path / "model.gguf.part").write_bytes(DATA[:1_000_000])
    download_file(server.url("/model.gguf"), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert _ranges(server) == ["bytes=1000000-"]
    assert server.bytes_served == SIZE - 1_000_000


def test_server_ignoring_range_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    # The partial bytes are garbage: appending the full body to them would fail the checksum.
    (tmp_path / "model.gguf.part").write_bytes(b"x" * 500_000)
    server.set_faults(ignore_range=True)
    dest = download_file(server.url("/model.gguf"), tmp_path / "model.gguf", sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert [r.status for r in server.requests] == [200]


def test_complete_part_answered_416_is_verified_without_download(
    server: FileServer, tmp_path: Path
) -> None:
    (tmp_path / "model.gguf.part").write_bytes(DATA)
    dest = download_file(server.url("/model.gguf"), tmp_path / "model.gguf", sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert [r.status for r in server.requests] == [416]
    assert server.bytes_served == 0


def test_dropped_connections_resume_where_they_stopped(server: FileServer, tmp_path: Path) -> None:
    server.set_faults(drop_after=700_000, drop_times=3)
    dest = download_file(server.url("/model.gguf"), tmp_path / "model.gguf", sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert _ranges(server) == [None, "bytes=700000-", "bytes=1400000-", "bytes=2100000-"]


def test_503_is_retried_honouring_retry_after(
    server: FileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.set_faults(fail_503=3, retry_after="1")
    caplog.set_level(logging.INFO, logger="lmserv")
    options = dict(FAST, backoff=60.0)  # only Retry-After keeps this test short
    dest = download_file(server.url("/model.gguf"), tmp_path / "model.gguf", sha256=SHA, **options)
    assert dest.read_bytes() == DATA
    assert [r.status for r in server.requests] == [503, 503, 503, 200]
    assert caplog.text.count("retrying in 1.0s") == 3


def test_gives_up_after_retries_keeps_part_and_resumes_later(
    server: FileServer, tmp_path: Path
) -> None:
    server.set_faults(drop_after=400_000, drop_times=1, fail_after_bytes=400_000)
    dest = tmp_path / "model.gguf"
    with pytest.raises(DownloadError) as info:
        download_file(server.url("/model.gguf"), dest, sha256=SHA, retries=2, **FAST)
    message = str(info.value)
    assert "after 2 retries" in message and "to resume" in message and "HTTP 500" in message
    assert (tmp_path / "model.gguf.part").stat().st_size == 400_000
    assert [r.status for r in server.requests] == [200, 500, 500]  # the drop, then 2 retries
    server.set_faults()
    server.reset_log()
    download_file(server.url("/model.gguf"), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert _ranges(server) == ["bytes=400000-"]


def test_stalled_connection_is_dropped_and_its_range_retried(
    server: FileServer, tmp_path: Path
) -> None:
    server.set_faults(stall_after=300_000, stall_times=1, stall_seconds=60)
    options = dict(FAST, stall_timeout=1.0)
    dest = download_file(server.url("/model.gguf"), tmp_path / "model.gguf", sha256=SHA, **options)
    assert dest.read_bytes() == DATA
    assert _ranges(server) == [None, "bytes=300000-"]


def test_not_found_fails_at_once_with_the_status(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download_file(server.url("/nope.gguf"), tmp_path / "nope.gguf", **FAST)
    assert "check the URL" in str(info.value)
    assert len(server.requests) == 1


def test_disk_space_is_checked_before_any_request(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(InsufficientDiskSpace, match="not enough disk space"):
        download_file(server.url("/model.gguf"), tmp_path / "m.gguf", size=10**15, **FAST)
    assert server.requests == []


@pytest.mark.parametrize("connections", [1, None])
def test_disk_space_is_checked_against_the_size_the_server_reports(
    server: FileServer, tmp_path: Path, connections: int | None
) -> None:
    server.set_faults(fake_total=10**15)
    options = dict(FAST, connections=connections)
    with pytest.raises(InsufficientDiskSpace):
        download_file(server.url("/model.gguf"), tmp_path / "m.gguf", **options)
    assert not (tmp_path / "m.gguf").exists()


def test_verified_file_is_returned_without_network(server: FileServer, tmp_path: Path) -> None:
    url = server.url("/model.gguf")
    dest = download_file(url, tmp_path / "model.gguf", sha256=SHA, **FAST)
    server.stop()
    assert download_file(url, dest, sha256=SHA, **FAST) == dest
    assert download_file(url, dest, **FAST) == dest
    # A changed file no longer matches its sidecar: it is re-checked, found bad, re-fetched.
    dest.write_bytes(b"y" * SIZE)
    with pytest.raises(DownloadError):
        download_file(url, dest, sha256=SHA, retries=0, **FAST)


def test_existing_file_without_sidecar_is_hashed_once(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "model.gguf"
    dest.write_bytes(DATA)
    assert download_file(server.url("/model.gguf"), dest, sha256=SHA, **FAST) == dest
    assert server.requests == []
    assert sidecar_path(dest).exists()


def test_authorization_never_follows_a_redirect_to_another_host(tmp_path: Path) -> None:
    with FileServer() as a, FileServer() as b:
        b.add("/model.gguf", DATA)
        a.add("/model.gguf", DATA)
        # Same origin first (token kept), then another host and port (token dropped).
        a.redirect("/start", "/hop")
        a.redirect("/hop", b.url("/model.gguf", host="localhost"))
        download_file(
            a.url("/start"),
            tmp_path / "model.gguf",
            sha256=SHA,
            headers={"Authorization": "Bearer secret"},
            **FAST,
        )
        assert [(r.path, r.authorization) for r in a.requests] == [
            ("/start", "Bearer secret"),
            ("/hop", "Bearer secret"),
        ]
        assert [(r.path, r.authorization) for r in b.requests] == [("/model.gguf", None)]
        assert b.requests[0].host == f"localhost:{b.port}"


def test_hf_token_goes_only_to_huggingface(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    download_file(server.url("/model.gguf"), tmp_path / "model.gguf", sha256=SHA, **FAST)
    assert server.requests[0].authorization is None
    assert token_headers("https://huggingface.co/o/r/resolve/main/f.gguf") == {
        "Authorization": "Bearer hf_secret"
    }
    assert token_headers("https://cdn-lfs.huggingface.co/x") == {}
    assert token_headers("http://huggingface.co/x") == {}
    assert token_headers("https://huggingface.co.evil.example/x") == {}


def test_progress_bar_only_when_asked_or_on_a_tty(
    server: FileServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    url = server.url("/model.gguf")
    options = {k: v for k, v in FAST.items() if k != "progress"}
    download_file(url, tmp_path / "a.gguf", **options)  # stderr is not a TTY here
    download_file(url, tmp_path / "b.gguf", progress=False, **options)
    assert capfd.readouterr().err == ""
    download_file(url, tmp_path / "c.gguf", progress=True, **options)
    err = capfd.readouterr().err
    assert "c.gguf" in err and "100%" in err and "3.00M" in err


def test_ctrl_c_leaves_the_part_for_the_next_run(server: FileServer, tmp_path: Path) -> None:
    server.set_faults(throttle=1_000_000)
    dest = tmp_path / "model.gguf"
    code = (
        "import sys; from lmserv.install import download_file; "
        "download_file(sys.argv[1], sys.argv[2], connections=1, progress=False)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, server.url("/model.gguf"), str(dest)],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        stderr=subprocess.PIPE,
    )
    part = tmp_path / "model.gguf.part"
    try:
        deadline = time.monotonic() + 30
        while (not part.exists() or part.stat().st_size < 300_000) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, err
    assert b"KeyboardInterrupt" in err
    kept = part.stat().st_size
    assert 300_000 <= kept < SIZE
    assert not dest.exists()
    server.set_faults()
    server.reset_log()
    download_file(server.url("/model.gguf"), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert _ranges(server) == [f"bytes={kept}-"]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_progress_bar_appears_on_a_real_tty(server: FileServer, tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    code = (
        "import sys; from lmserv.install import download_file; "
        "download_file(sys.argv[1], sys.argv[2], connections=1)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, server.url("/model.gguf"), str(tmp_path / "tty.gguf")],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO once the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    shown = b"".join(chunks).decode(errors="replace")
    # name, percentage, size, rate and [elapsed<remaining]
    assert "tty.gguf" in shown and "100%" in shown and "3.00M" in shown
    assert "/s" in shown and "<" in shown
