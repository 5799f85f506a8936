"""Faults an outside test pass found in downloads, each against a real server, disk or process.

One test per class of fault (see docs/faults.md, which names these tests): a body longer than
the file, the same file name from another URL, a file that changes upstream between two runs,
an unreadable Retry-After, a full or read-only disk, a folder that is a file, planted symbolic
links, credentials on a redirect, and the ``download.connections`` setting.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _http_server import FileServer
from lmserv.errors import ConfigError, DownloadError, InsufficientDiskSpace
from lmserv.install import download_file
from lmserv.install._download import is_verified, sidecar_path
from lmserv.install._http import Retryable, retry_after
from lmserv.install._parallel import RetryPolicy

SIZE = 3 * 1024 * 1024 + 123
OLD = os.urandom(SIZE)
NEW = os.urandom(SIZE)
OLD_SHA = hashlib.sha256(OLD).hexdigest()
NEW_SHA = hashlib.sha256(NEW).hexdigest()
FAST = {"stall_timeout": 2.0, "backoff": 0.01, "progress": False}


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        srv.add("/model.gguf", OLD)
        yield srv


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".part")))


# -- a known size is enforced while streaming --------------------------------------------------


def test_endless_body_is_cut_at_the_known_size(server: FileServer, tmp_path: Path) -> None:
    # No Content-Length, and junk after the file until the client hangs up (or 32 MiB went out,
    # so that a client which does not stop fails this test quickly instead of filling the disk).
    server.set_faults(endless=True, endless_limit=32 << 20)
    dest = tmp_path / "model.gguf"
    with pytest.raises(DownloadError, match=f"more than the {SIZE} bytes") as info:
        download_file(server.url("/model.gguf"), dest, size=SIZE, connections=1, **FAST)
    assert "partial file was deleted" in str(info.value)
    assert not dest.exists() and _leftovers(tmp_path) == []
    assert server.bytes_served < SIZE + (32 << 20)  # it hung up before the end of the junk


def test_endless_ranges_in_parallel_stop_at_each_chunk(tmp_path: Path) -> None:
    data = os.urandom(8 * 1024 * 1024 + 17)
    with FileServer() as srv:
        srv.add("/big.gguf", data)
        srv.set_faults(endless=True)
        dest = download_file(
            srv.url("/big.gguf"), tmp_path / "big.gguf", size=len(data), connections=4, **FAST
        )
    assert dest.read_bytes() == data


# -- one file name, two URLs ------------------------------------------------------------------


def test_same_name_from_another_url_is_refused_naming_both(
    server: FileServer, tmp_path: Path
) -> None:
    server.add("/other/model.gguf", NEW)
    first, second = server.url("/model.gguf"), server.url("/other/model.gguf")
    dest = download_file(first, tmp_path / "model.gguf", connections=1, **FAST)
    server.reset_log()
    with pytest.raises(DownloadError) as info:
        download_file(second, dest, connections=1, **FAST)
    assert first in str(info.value) and second in str(info.value)
    assert server.requests == [] and dest.read_bytes() == OLD
    # With the digest of the new content it is replaced; with the old one, the copy is kept.
    assert download_file(second, dest, sha256=OLD_SHA, connections=1, **FAST) == dest
    assert server.requests == []
    download_file(second, dest, sha256=NEW_SHA, connections=1, **FAST)
    assert dest.read_bytes() == NEW


def test_a_stale_file_is_not_verified_after_the_digest_changes(
    server: FileServer, tmp_path: Path
) -> None:
    dest = download_file(server.url("/model.gguf"), tmp_path / "model.gguf", **FAST)
    assert is_verified(dest) and is_verified(dest, OLD_SHA)
    assert not is_verified(dest, NEW_SHA)  # a catalog that now asks for another digest
    server.add("/model.gguf", NEW)
    server.reset_log()
    download_file(server.url("/model.gguf"), dest, sha256=NEW_SHA, connections=1, **FAST)
    assert dest.read_bytes() == NEW and len(server.requests) == 1


# -- a file that changed upstream between two runs --------------------------------------------


def _interrupt(server: FileServer, dest: Path, connections: int, after: int) -> None:
    server.set_faults(drop_after=after, drop_times=-1, fail_after_bytes=after)
    with pytest.raises(DownloadError, match="to resume"):
        download_file(server.url("/model.gguf"), dest, connections=connections, retries=0, **FAST)
    assert dest.with_name(dest.name + ".part").exists()


@pytest.mark.parametrize(
    "faults",
    [
        {},  # ETag and If-Range: the server answers 200 with the new file
        {"etag": False},  # Last-Modified as the validator
        {"ignore_if_range": True},  # 206 anyway, but with another ETag: lmserv notices
    ],
    ids=["etag", "last-modified", "if-range-ignored"],
)
def test_resume_after_the_file_changed_starts_over(
    server: FileServer, tmp_path: Path, faults: dict[str, bool]
) -> None:
    dest = tmp_path / "model.gguf"
    server.set_faults(**faults)
    _interrupt(server, dest, connections=1, after=1_000_000)
    state = json.loads((tmp_path / "model.gguf.part.json").read_text())
    assert state["etag"] or state["last_modified"]
    server.add("/model.gguf", NEW)  # same name, same size, other bytes
    server.set_faults(**faults)
    server.reset_log()
    download_file(server.url("/model.gguf"), dest, connections=1, **FAST)  # no digest given
    assert dest.read_bytes() == NEW  # never old bytes spliced with new ones
    assert server.requests[0].range == "bytes=1000000-"
    assert server.requests[0].if_range in (state["etag"], state["last_modified"])
    assert not (tmp_path / "model.gguf.part.json").exists()


def test_resume_of_an_unchanged_file_sends_if_range_and_continues(
    server: FileServer, tmp_path: Path
) -> None:
    dest = tmp_path / "model.gguf"
    _interrupt(server, dest, connections=1, after=1_000_000)
    server.set_faults()
    server.reset_log()
    download_file(server.url("/model.gguf"), dest, sha256=OLD_SHA, connections=1, **FAST)
    assert [(r.range, r.status) for r in server.requests] == [("bytes=1000000-", 206)]
    assert server.requests[0].if_range == f'"v0-{SIZE}"'


@pytest.mark.parametrize("size_known", [True, False])
def test_parallel_resume_after_the_file_changed_starts_over(
    tmp_path: Path, size_known: bool
) -> None:
    old, new = os.urandom(8 * 1024 * 1024), os.urandom(8 * 1024 * 1024)
    dest = tmp_path / "s.gguf"
    with FileServer() as srv:
        srv.add("/model.gguf", old)
        _interrupt(srv, dest, connections=4, after=3_000_000)
        srv.add("/model.gguf", new)
        srv.set_faults()
        size = len(new) if size_known else None
        download_file(srv.url("/model.gguf"), dest, size=size, connections=4, **FAST)
    assert dest.read_bytes() == new


# -- Retry-After and long waits ----------------------------------------------------------------


def test_malformed_retry_after_is_treated_as_absent(server: FileServer, tmp_path: Path) -> None:
    assert [retry_after(v) for v in ("soon", "", "nan", "Mon, 99 Foo", "2", "-3")] == [
        None,
        None,
        None,
        None,
        2.0,
        0.0,
    ]
    server.set_faults(fail_503=2, retry_after="soon")
    dest = download_file(server.url("/model.gguf"), tmp_path / "m.gguf", connections=1, **FAST)
    assert dest.read_bytes() == OLD
    assert [r.status for r in server.requests] == [503, 503, 200]


def test_a_long_wait_says_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lmserv")
    policy = RetryPolicy(retries=3, backoff=0.01)
    capped = policy.pause_after(Retryable("HTTP 503 from x", 3600.0), 1, str)
    assert capped == 120.0
    assert "asked to wait 3600s (Retry-After), waiting the maximum 120s" in caplog.text
    caplog.clear()
    assert policy.pause_after(Retryable("HTTP 429 from x", 7.0), 1, str) == 7.0
    assert "waiting 7s as the server asked" in caplog.text
    caplog.clear()
    assert policy.pause_after(Retryable("HTTP 503 from x", 0.5), 1, str) == 0.5
    assert caplog.text == ""  # short pauses stay quiet


def test_a_stalled_server_is_reported(
    server: FileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lmserv")
    server.set_faults(stall_after=300_000, stall_times=1, stall_seconds=60)
    options = dict(FAST, stall_timeout=1.0)
    download_file(server.url("/model.gguf"), tmp_path / "m.gguf", connections=1, **options)
    assert "the server went silent" in caplog.text and "reconnecting" in caplog.text


# -- the filesystem ----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB filesystem (tmpfs): writes past it fail with ENOSPC, as on a full disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
            capture_output=True,
            check=False,
        ).returncode
    ):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * (256 * 1024))
            f.flush()
    return filler


def _recorded(state: Path) -> int:
    try:
        return sum(done for _s, _e, done in json.loads(state.read_text())["chunks"])
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("connections", [1, 4])
def test_disk_full_mid_download_keeps_the_part_and_resumes(
    small_disk: Path, connections: int
) -> None:
    data = os.urandom(8 * 1024 * 1024 + 17)
    sha = hashlib.sha256(data).hexdigest()
    dest = small_disk / "m.gguf"
    part = small_disk / "m.gguf.part"
    errors: list[BaseException] = []
    with FileServer() as srv:
        srv.add("/m.gguf", data)
        srv.set_faults(throttle=600_000)
        url = srv.url("/m.gguf")
        state = small_disk / "m.gguf.part.json"

        def run() -> None:
            try:
                download_file(url, dest, sha256=sha, connections=connections, **FAST)
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 30
        # Parallel progress counts once checkpointed (every second): wait for one with bytes.
        while time.monotonic() < deadline and (
            srv.bytes_served < 1_500_000 or (connections > 1 and _recorded(state) == 0)
        ):
            time.sleep(0.02)
        filler = _fill(small_disk)  # the disk fills while the download runs
        worker.join(60)
        assert len(errors) == 1 and isinstance(errors[0], InsufficientDiskSpace), errors
        message = str(errors[0])
        assert "the disk is full" in message and str(small_disk) in message
        assert f"the partial file {part} is kept" in message
        assert part.exists() and not dest.exists()
        assert not [p for p in small_disk.iterdir() if p.name.endswith(".tmp")]
        filler.unlink()
        srv.set_faults()
        srv.reset_log()
        download_file(url, dest, sha256=sha, connections=connections, **FAST)
        assert srv.bytes_served < len(data)  # resumed, not started over
    assert dest.read_bytes() == data


def test_read_only_folder_is_an_lmserv_error(small_disk: Path, server: FileServer) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(DownloadError, match="Read-only file system") as info:
        download_file(server.url("/model.gguf"), small_disk / "m.gguf", **FAST)
    assert f"Make {small_disk} writable" in str(info.value)
    assert "no partial file was kept" in str(info.value)
    assert server.requests == []


def test_models_path_that_is_a_file_is_an_lmserv_error(server: FileServer, tmp_path: Path) -> None:
    blocker = tmp_path / "models"
    blocker.write_text("not a folder")
    for folder in (blocker, blocker / "sub"):
        with pytest.raises(DownloadError, match="a file stands where a folder is needed") as info:
            download_file(server.url("/model.gguf"), folder / "m.gguf", **FAST)
        assert str(folder) in str(info.value)
    out = subprocess.run(
        [sys.executable, "-m", "lmserv", "pull", server.url("/model.gguf"), "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(
            os.environ, LMSERV_PATHS_MODELS=str(blocker), PYTHONPATH=os.pathsep.join(sys.path)
        ),
        check=False,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"cannot use {blocker} as the download folder" in out.stderr


# -- planted symbolic links ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["m.gguf.part", "m.gguf.part.json", ".m.gguf.lock"])
@pytest.mark.parametrize("connections", [1, 4])
def test_a_planted_link_is_never_written_through(
    server: FileServer, tmp_path: Path, name: str, connections: int
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    models = tmp_path / "models"
    models.mkdir()
    (models / name).symlink_to(victim)
    with pytest.raises(DownloadError, match="is a symbolic link") as info:
        download_file(server.url("/model.gguf"), models / "m.gguf", connections=connections, **FAST)
    assert str(models / name) in str(info.value) and "Delete the link" in str(info.value)
    assert victim.read_text() == "precious"


def test_a_link_at_a_temp_name_is_not_followed(server: FileServer, tmp_path: Path) -> None:
    # Temp files get fresh unpredictable names (mkstemp, O_EXCL), so a link planted where a
    # fixed "NAME.tmp" would be is never opened: it stays as it was, and no temp file is left.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    models = tmp_path / "models"
    models.mkdir()
    dest = models / "m.gguf"
    tmp = sidecar_path(dest).with_name(sidecar_path(dest).name + ".tmp")
    tmp.symlink_to(victim)
    download_file(server.url("/model.gguf"), dest, sha256=OLD_SHA, **FAST)
    assert victim.read_text() == "precious"
    assert tmp.is_symlink()  # not ours: left alone, never written through
    assert sorted(p.name for p in models.glob("*.tmp")) == [tmp.name]
    assert is_verified(dest, OLD_SHA)


def test_a_link_swapped_in_after_the_check_is_not_followed(tmp_path: Path) -> None:
    from lmserv.install._files import open_nofollow

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "x.part"
    link.symlink_to(victim)
    for mode in ("ab", "wb", "r+b", "w+b"):
        with pytest.raises(DownloadError, match="is a symbolic link"):
            open_nofollow(link, mode)
    assert victim.read_text() == "precious"
    with pytest.raises(OSError) as info:  # the flag itself, not only the check, refuses
        os.open(link, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    assert info.value.errno == errno.ELOOP


# -- credentials ---------------------------------------------------------------------------------

SECRETS = {
    "Authorization": "Bearer secret-a",
    "Cookie": "session=secret-b",
    "Proxy-Authorization": "Basic secret-c",
    "X-Api-Key": "secret-d",
    "X-Custom-Token": "secret-e",
}


def test_no_credential_header_follows_a_redirect_to_another_port(tmp_path: Path) -> None:
    # Same host, another port: another service, which must not see the token.
    with FileServer() as a, FileServer() as b:
        b.add("/model.gguf", OLD)
        a.redirect("/start", "/hop")  # same origin: everything kept
        a.redirect("/hop", b.url("/model.gguf"))
        headers = dict(SECRETS, **{"User-Agent": "tester/1"})
        download_file(a.url("/start"), tmp_path / "m.gguf", headers=headers, connections=1, **FAST)
        for request in a.requests:
            assert all(request.headers.get(k.lower()) == v for k, v in SECRETS.items())
        [seen] = b.requests
        assert seen.host == f"127.0.0.1:{b.port}"
        assert not any("secret" in value for value in seen.headers.values()), seen.headers
        assert seen.headers["user-agent"] == "tester/1"


def test_credentials_in_the_url_are_never_written_down(server: FileServer, tmp_path: Path) -> None:
    url = server.url("/model.gguf").replace("http://", "http://user:pa55word@")
    dest = tmp_path / "model.gguf"
    server.set_faults(drop_after=1_000_000, drop_times=-1, fail_after_bytes=1_000_000)
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, connections=1, retries=0, **FAST)
    assert "pa55word" not in str(info.value)
    assert "pa55word" not in (tmp_path / "model.gguf.part.json").read_text()
    server.set_faults()
    download_file(url, dest, connections=1, **FAST)
    record = sidecar_path(dest).read_text()
    assert "pa55word" not in record and "user@" not in record
    assert json.loads(record)["url"] == server.url("/model.gguf")


# -- bad URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://[::1/x.gguf", "malformed"),
        ("http://127.0.0.1:99999/x.gguf", "malformed"),
        ("http:///x.gguf", "not an http(s) URL with a host"),
        ("http://127.0.0.1:9/..tar.gz", "cannot name a folder"),
        ("http://127.0.0.1:9/.tar.gz", "cannot name a folder"),
    ],
)
def test_bad_urls_are_clear_errors(tmp_path: Path, url: str, why: str) -> None:
    name = url.rsplit("/", 1)[-1] or "x"
    with pytest.raises(ConfigError, match=re.escape(why)):
        download_file(url, tmp_path / name, **FAST)
    out = subprocess.run(
        [sys.executable, "-m", "lmserv", "pull", url, "--dir", str(tmp_path), "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        check=False,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr and why in out.stderr


# -- the download.connections setting, end to end --------------------------------------------------


@pytest.mark.parametrize("where", ["env", "file", "unset"])
def test_pull_honours_the_connections_setting(tmp_path: Path, where: str) -> None:
    data = os.urandom(8 * 1024 * 1024 + 17)  # below the size where lmserv goes parallel itself
    config = tmp_path / "config.toml"
    config.write_text("[download]\nconnections = 3\n" if where == "file" else "")
    env = dict(os.environ, LMSERV_CONFIG=str(config), PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("LMSERV_DOWNLOAD_CONNECTIONS", None)
    if where == "env":
        env["LMSERV_DOWNLOAD_CONNECTIONS"] = "3"
    with FileServer() as srv:
        srv.add("/m.gguf", data)
        out = subprocess.run(
            [sys.executable, "-m", "lmserv", "pull", srv.url("/m.gguf"), "--dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        ranges = [r.range for r in srv.requests]
    assert (tmp_path / "m.gguf").read_bytes() == data
    if where == "unset":
        assert ranges == ["bytes=0-0", None]  # one connection after the probe
    else:
        assert len(ranges) > 3 and None not in ranges  # chunks over 3 connections
        assert srv.state.max_active >= 2
