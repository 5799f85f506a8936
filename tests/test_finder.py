"""The finder's search order and its error, on real files in temporary folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmserv.errors import BinaryNotFound
from lmserv.install.finder import find_binary, find_library


def _exe(folder: Path, name: str = "llama-server") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture()
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Four candidate folders and an isolated environment pointing at them."""
    p = {
        "env": tmp_path / "envbin",
        "own": tmp_path / "data" / "llama.cpp" / "build-cpu" / "bin",
        "own_cuda": tmp_path / "data" / "llama.cpp" / "build-cuda" / "bin",
        "shared": tmp_path / "cache" / "llama.cpp" / "build-cpu" / "bin",
        "path": tmp_path / "onpath",
        "known": tmp_path / "cwd" / "llama.cpp" / "build" / "bin",
    }
    monkeypatch.setenv("LLAMA_BIN_DIR", str(p["env"]))
    monkeypatch.delenv("LLAMA_LIB_DIR", raising=False)
    monkeypatch.setenv("LMSERV_PATHS_BUILDS", str(tmp_path / "data" / "llama.cpp"))
    monkeypatch.setenv("LMSERV_PATHS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(p["path"]))
    monkeypatch.setenv("LD_LIBRARY_PATH", str(p["path"]))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return p


def test_search_order_for_binaries(places: dict[str, Path]) -> None:
    known = _exe(places["known"])
    assert find_binary("llama-server") == known
    on_path = _exe(places["path"])
    assert find_binary("llama-server") == on_path
    shared = _exe(places["shared"])  # the demo's and the tests' build (build_shared)
    assert find_binary("llama-server") == shared
    own = _exe(places["own"])
    assert find_binary("llama-server") == own
    own_cuda = _exe(places["own_cuda"])
    assert find_binary("llama-server") == own_cuda, "a CUDA build is preferred over a CPU one"
    env = _exe(places["env"])
    assert find_binary("llama-server") == env


def test_non_executable_file_is_skipped(places: dict[str, Path]) -> None:
    places["env"].mkdir(parents=True)
    (places["env"] / "llama-server").write_text("not executable")
    on_path = _exe(places["path"])
    assert find_binary("llama-server") == on_path


def test_missing_binary_lists_every_place_and_how_to_build(places: dict[str, Path]) -> None:
    with pytest.raises(BinaryNotFound) as info:
        find_binary("llama-server")
    message = str(info.value)
    for folder in (
        places["env"],
        places["own"],
        places["own_cuda"],
        places["shared"],
        places["known"],
    ):
        assert str(folder / "llama-server") in message
    assert "PATH" in message
    assert "lmserv build" in message
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.searched and info.value.name == "llama-server"


def test_windows_names(places: dict[str, Path]) -> None:
    exe = _exe(places["env"], "llama-server.exe")
    assert find_binary("llama-server", platform="win32") == exe
    dll = places["env"] / "llama.dll"
    dll.write_bytes(b"")
    assert find_library("llama", platform="win32") == dll


def test_library_order(
    places: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for folder in (places["own"], places["path"]):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "libllama.so").write_bytes(b"")
    assert find_library("llama", platform="linux") == places["own"] / "libllama.so"
    libdir = tmp_path / "libdir"
    libdir.mkdir()
    (libdir / "libllama.so").write_bytes(b"")
    monkeypatch.setenv("LLAMA_LIB_DIR", str(libdir))
    assert find_library("llama", platform="linux") == libdir / "libllama.so"
    monkeypatch.delenv("LLAMA_LIB_DIR")
    os.remove(places["own"] / "libllama.so")
    assert find_library("llama", platform="linux") == places["path"] / "libllama.so"
    os.remove(places["path"] / "libllama.so")
    with pytest.raises(BinaryNotFound, match="LLAMA_LIB_DIR"):
        find_library("llama", platform="linux")


def test_library_dir_comes_before_binary_dir_before_own_builds(
    places: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A build whose libraries live apart from its binaries (lib/ next to bin/): LLAMA_LIB_DIR
    # names the libraries to use even when LLAMA_BIN_DIR holds another libllama.
    libdir = tmp_path / "libdir"
    for folder in (libdir, places["env"], places["own"]):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "libllama.so").write_bytes(b"")
    monkeypatch.setenv("LLAMA_LIB_DIR", str(libdir))
    assert find_library("llama", platform="linux") == libdir / "libllama.so"
    os.remove(libdir / "libllama.so")
    assert find_library("llama", platform="linux") == places["env"] / "libllama.so"
    os.remove(places["env"] / "libllama.so")
    assert find_library("llama", platform="linux") == places["own"] / "libllama.so"
    os.remove(places["own"] / "libllama.so")
    with pytest.raises(BinaryNotFound) as info:
        find_library("llama", platform="linux")
    searched = [entry.split(":", 1)[0] for entry in info.value.searched]
    assert searched.index("$LLAMA_LIB_DIR") < searched.index("$LLAMA_BIN_DIR")
