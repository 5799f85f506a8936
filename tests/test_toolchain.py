"""Toolchain decisions per platform, driven with a fake ``which`` (CI is Linux only)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lmserv.errors import ToolchainMissing
from lmserv.install import _toolchain
from lmserv.install._toolchain import cuda_architectures, find_toolchain
from lmserv.install.llama_build import cmake_commands


def _which(found: dict[str, str]) -> Callable[[str], str | None]:
    return lambda name: found.get(name)


def _no_pypi(_m: str, _a: str, _e: str) -> str | None:
    return None


WIN_CMAKE = r"C:\Tools\cmake.exe"
WIN_NINJA = r"C:\Tools\ninja.exe"


def test_windows_with_msvc_on_path_uses_ninja() -> None:
    tc = find_toolchain(
        platform="win32",
        which=_which({"cmake": WIN_CMAKE, "ninja": WIN_NINJA, "cl": r"C:\VS\cl.exe"}),
        exists=lambda _p: False,
        pypi_tool=_no_pypi,
    )
    assert tc.generator == "Ninja"
    configure, build = cmake_commands(
        Path("C:/src/llama.cpp"),
        Path("C:/out/build-cpu"),
        {"GGML_RPC": "OFF"},
        ["llama-server"],
        tc,
        jobs=4,
    )
    assert configure[:1] == [WIN_CMAKE]
    assert "-G" in configure and configure[configure.index("-G") + 1] == "Ninja"
    assert f"-DCMAKE_MAKE_PROGRAM={WIN_NINJA}" in configure
    assert "--config" not in build
    assert build[-2:] == ["--parallel", "4"]


def test_windows_without_cl_on_path_uses_visual_studio_generator() -> None:
    tc = find_toolchain(
        platform="win32",
        which=_which({"cmake": WIN_CMAKE}),
        exists=lambda p: p.endswith("vswhere.exe"),
        pypi_tool=_no_pypi,
    )
    assert tc.generator.startswith("Visual Studio")
    configure, build = cmake_commands(
        Path("C:/src"), Path("C:/out"), {}, ["llama-server"], tc, jobs=None
    )
    assert configure[configure.index("-A") + 1] == "x64"
    assert build[build.index("--config") + 1] == "Release"


def test_windows_without_msvc_is_a_clear_error() -> None:
    with pytest.raises(ToolchainMissing, match="MSVC") as info:
        find_toolchain(
            platform="win32",
            which=_which({"cmake": WIN_CMAKE, "ninja": WIN_NINJA}),
            exists=lambda _p: False,
            pypi_tool=_no_pypi,
        )
    assert "Build Tools for Visual Studio" in str(info.value)


def test_windows_uses_pypi_cmake_and_ninja_when_absent() -> None:
    wheels = {
        "cmake": r"C:\py\cmake\data\bin\cmake.exe",
        "ninja": r"C:\py\ninja\data\bin\ninja.exe",
    }
    tc = find_toolchain(
        platform="win32",
        which=_which({"cl": r"C:\VS\cl.exe"}),
        exists=lambda _p: False,
        pypi_tool=lambda module, _a, _e: wheels.get(module),
    )
    assert tc.cmake == wheels["cmake"]
    assert tc.ninja == wheels["ninja"]


def test_missing_cmake_says_how_to_install() -> None:
    with pytest.raises(ToolchainMissing, match=r"pip install cmake ninja"):
        find_toolchain(platform="linux", which=_which({"g++": "/usr/bin/g++"}), pypi_tool=_no_pypi)


def test_missing_compiler_is_named() -> None:
    with pytest.raises(ToolchainMissing, match="C\\+\\+ compiler"):
        find_toolchain(
            platform="linux", which=_which({"cmake": "/usr/bin/cmake"}), pypi_tool=_no_pypi
        )


def test_linux_without_ninja_falls_back_to_makefiles_and_uses_ccache() -> None:
    tc = find_toolchain(
        platform="linux",
        which=_which(
            {"cmake": "/usr/bin/cmake", "g++": "/usr/bin/g++", "ccache": "/usr/bin/ccache"}
        ),
        pypi_tool=_no_pypi,
    )
    assert tc.generator == "Unix Makefiles"
    assert tc.ninja is None
    assert tc.compiler_launcher == "/usr/bin/ccache"


@pytest.mark.skipif(
    Path("/usr/local/cuda/include/cublas_v2.h").exists(), reason="a full CUDA toolkit is installed"
)
def test_this_machine_has_nvcc_but_no_cublas() -> None:
    # A real check of this machine: nvcc 13 is installed, cuBLAS headers are not.
    with pytest.raises(ToolchainMissing, match="cuBLAS headers"):
        _toolchain.find_cuda()


def test_cuda_architectures() -> None:
    assert cuda_architectures(["9.0", "8.9", "9.0"], (13, 0)) == "89;90"
    assert cuda_architectures([], (13, 0)) == _toolchain.DEFAULT_CUDA_ARCHITECTURES
    assert "61" in cuda_architectures([], (12, 2))
