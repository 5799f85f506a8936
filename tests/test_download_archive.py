"""Archives: verified, extracted, removed; members that would escape the folder are refused."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from _http_server import FileServer
from lmserv.errors import UnsafeArchive
from lmserv.install import download_file
from lmserv.install._archive import extract_archive

FAST = {"stall_timeout": 2.0, "backoff": 0.01, "connections": 1, "progress": False}
MODEL = b"GGUF" + bytes(range(256)) * 400


def _tar(add: Callable[[tarfile.TarFile], None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add(tar)
    return buf.getvalue()


def _file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _link(tar: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def _good(tar: tarfile.TarFile) -> None:
    _file(tar, "model.gguf", MODEL)
    _file(tar, "sub/vocab.txt", b"a b c\n")
    _link(tar, "sub/again.gguf", "../model.gguf")


def _gz(raw: bytes) -> bytes:
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(raw)) as src,
        tarfile.open(fileobj=buf, mode="w:gz") as dst,
    ):
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return buf.getvalue()


def _zst(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(raw)


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        yield srv


@pytest.mark.parametrize(("suffix", "pack"), [(".tar.gz", _gz), (".tar.zst", _zst)])
def test_archive_is_verified_extracted_and_removed(
    server: FileServer, tmp_path: Path, suffix: str, pack: Callable[[bytes], bytes]
) -> None:
    blob = pack(_tar(_good))
    url = server.add(f"/bundle{suffix}", blob)
    sha = hashlib.sha256(blob).hexdigest()
    folder = download_file(url, tmp_path / f"bundle{suffix}", sha256=sha, **FAST)
    assert folder == tmp_path / "bundle"
    assert (folder / "model.gguf").read_bytes() == MODEL
    assert (folder / "sub" / "vocab.txt").read_bytes() == b"a b c\n"
    assert (folder / "sub" / "again.gguf").read_bytes() == MODEL
    assert not (tmp_path / f"bundle{suffix}").exists()
    assert not list(tmp_path.glob("*.part"))
    # Recorded as verified: a second call needs no server.
    server.stop()
    assert download_file(url, tmp_path / f"bundle{suffix}", sha256=sha, **FAST) == folder


def _absolute(tar: tarfile.TarFile) -> None:
    _file(tar, "ok.txt", b"fine")
    _file(tar, "/tmp/lmserv-escape-abs.txt", b"evil")


def _dotdot(tar: tarfile.TarFile) -> None:
    _file(tar, "ok.txt", b"fine")
    _file(tar, "sub/../../escape-dotdot.txt", b"evil")


def _symlink_out(tar: tarfile.TarFile) -> None:
    _link(tar, "link", "../../outside")


def _symlink_abs(tar: tarfile.TarFile) -> None:
    _link(tar, "link", "/etc")


def _write_through_link(tar: tarfile.TarFile) -> None:
    _link(tar, "inner", ".")
    _link(tar, "inner2", "inner/..")  # resolves to the folder's parent


def _link_chain(tar: tarfile.TarFile) -> None:
    # "a" is judged while sub/b does not exist (sub/b/.. is then sub); once sub/b -> .. (the
    # folder itself, harmless alone) exists, a resolves to the folder's parent.
    _link(tar, "a", "sub/b/..")
    _file(tar, "sub/model.gguf", MODEL)
    _link(tar, "sub/b", "..")


def _hardlink_out(tar: tarfile.TarFile) -> None:
    _link(tar, "hard", "../escape-hard.txt", tarfile.LNKTYPE)


def _device(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("dev")
    info.type = tarfile.CHRTYPE
    tar.addfile(info)


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (_absolute, "absolute path"),
        (_dotdot, "'..'"),
        (_symlink_out, "outside the target folder"),
        (_symlink_abs, "absolute path"),
        (_write_through_link, "outside the target folder"),
        (_link_chain, "'a' links to 'sub/b/..', outside the target folder"),
        (_hardlink_out, "outside the target folder"),
        (_device, "special file"),
    ],
)
@pytest.mark.parametrize(("suffix", "pack"), [(".tar.gz", _gz), (".tar.zst", _zst)])
def test_unsafe_members_are_refused_and_nothing_is_left(
    tmp_path: Path,
    build: Callable[[tarfile.TarFile], None],
    why: str,
    suffix: str,
    pack: Callable[[bytes], bytes],
) -> None:
    work = tmp_path / "models"
    work.mkdir()
    archive = work / f"evil{suffix}"
    archive.write_bytes(pack(_tar(build)))
    with pytest.raises(UnsafeArchive, match="refusing to extract") as info:
        extract_archive(archive)
    assert why in str(info.value)
    assert sorted(p.name for p in work.iterdir()) == [archive.name]  # no folder, no temp
    assert not list(tmp_path.glob("escape*")) and not (tmp_path / "outside").exists()
    assert not Path("/tmp/lmserv-escape-abs.txt").exists()


def test_unsafe_archive_download_keeps_no_files(server: FileServer, tmp_path: Path) -> None:
    blob = _gz(_tar(_dotdot))
    url = server.add("/evil.tar.gz", blob)
    sha = hashlib.sha256(blob).hexdigest()
    for _ in range(2):  # refused again on a second call, not mistaken for done
        with pytest.raises(UnsafeArchive):
            download_file(url, tmp_path / "evil.tar.gz", sha256=sha, **FAST)
        assert not (tmp_path / "evil").exists()
        assert not (tmp_path / "evil.tar.gz").exists()
        assert not (tmp_path.parent / "escape-dotdot.txt").exists()
    assert len(server.requests) == 2


def test_verified_archive_left_unextracted_is_extracted_without_download(
    server: FileServer, tmp_path: Path
) -> None:
    blob = _gz(_tar(_good))
    url = server.add("/b.tar.gz", blob)
    sha = hashlib.sha256(blob).hexdigest()
    folder = download_file(url, tmp_path / "b.tar.gz", sha256=sha, **FAST)
    shutil.rmtree(folder)  # as if interrupted between verification and extraction
    (tmp_path / "b.tar.gz").write_bytes(blob)
    (tmp_path / ".b.tar.gz.lmserv.json").unlink()
    server.reset_log()
    assert download_file(url, tmp_path / "b.tar.gz", sha256=sha, **FAST) == folder
    assert (folder / "model.gguf").read_bytes() == MODEL
    assert server.requests == []
