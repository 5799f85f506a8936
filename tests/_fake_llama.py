"""A miniature llama.cpp look-alike: the same CMake targets, compiled for real in seconds.

It lets the builder's logic (stamps, locks, progress, failures, sources) be tested with the real
cmake, ninja, compiler and git, without paying for a full llama.cpp compile each time.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lmserv.install._toolchain import find_cmake

#: cmake as the builder finds it (PATH or the PyPI wheel); ``None`` on a machine without it.
REAL_CMAKE = find_cmake()
NO_CMAKE = "cmake is not installed (PATH or `pip install cmake`): this test builds with it"
needs_cmake = pytest.mark.skipif(REAL_CMAKE is None, reason=NO_CMAKE)

CMAKELISTS = """\
cmake_minimum_required(VERSION 3.14)
project(fakellama C)
option(GGML_RPC "rpc" OFF)
option(GGML_CUDA "cuda" OFF)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
set(CMAKE_LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_library(ggml SHARED ggml.c)
add_library(llama SHARED llama.c)
target_link_libraries(llama PRIVATE ggml)
foreach(t llama-server llama-cli llama-bench llama-quantize)
  add_executable(${t} main.c)
  target_compile_definitions(${t} PRIVATE TOOL="${t}")
endforeach()
if(GGML_RPC)
  add_executable(ggml-rpc-server main.c)
  target_compile_definitions(ggml-rpc-server PRIVATE TOOL="ggml-rpc-server")
endif()
"""

MAIN_C = """\
#include <stdio.h>
int main(void) { printf("%s version: fake\\n", TOOL); return 0; }
"""


def make_fake_llama(root: Path, *, broken: bool = False) -> tuple[Path, str]:
    """Create the project as a git repository under ``root``; return (path, commit).

    Skips the calling test on a machine without cmake: every use of the project builds it.
    """
    if REAL_CMAKE is None:
        pytest.skip(NO_CMAKE)
    root.mkdir(parents=True, exist_ok=True)
    (root / "include").mkdir(exist_ok=True)
    (root / "include" / "llama.h").write_text("int llama_fake(void);\n")
    (root / "CMakeLists.txt").write_text(CMAKELISTS)
    (root / "ggml.c").write_text("int ggml_fake(void) { return 1; }\n")
    (root / "llama.c").write_text("int llama_fake(void) { return 2; }\n")
    (root / "main.c").write_text(MAIN_C + ("this is not C;\n" if broken else ""))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "fake"], cwd=root, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()
    return root, commit


def cmake_wrapper(folder: Path, real_cmake: str, record: Path) -> Path:
    """A ``cmake`` that records each invocation in ``record`` and runs the real one."""
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "cmake"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{record}"\nexec "{real_cmake}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper
