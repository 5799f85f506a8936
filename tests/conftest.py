"""Shared fixtures: one real CPU build of llama.cpp per test session, the counting model.

The build goes to ``~/.cache/lmserv/llama.cpp`` (the sdist to ``~/.cache/lmserv/sdist``), so a
rerun finds it and returns at once; a fresh machine builds it here, for real, in a few minutes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from _helpers import llama_server_pids
from lmserv import config
from lmserv.install import LlamaBuild, build_llama_cpp
from lmserv.testing import write_counting_model

TEST_BUILD_DIR = Path(
    os.environ.get("LMSERV_TEST_BUILD_DIR", str(config.cache_dir() / "llama.cpp"))
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``slow`` means exactly "needs the real llama.cpp build": every test that asks for the
    build, directly or through another fixture, gets the marker, so ``-m "not slow"`` compiles
    nothing."""
    for item in items:
        if "llama_build" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def llama_build() -> Iterator[LlamaBuild]:
    """A real CPU build (with the RPC worker) of the pinned llama.cpp commit.

    Also points ``LLAMA_BIN_DIR``/``LLAMA_LIB_DIR`` at it for the whole session, so code under
    test (and the subprocesses it starts) find these binaries first.
    """
    # Without the chat page: it needs npm and is tested in its own build (test_browser.py).
    build = build_llama_cpp(
        TEST_BUILD_DIR, source="pypi", cuda=False, rpc=True, ui=False, progress=False
    )
    saved = {k: os.environ.get(k) for k in ("LLAMA_BIN_DIR", "LLAMA_LIB_DIR")}
    os.environ["LLAMA_BIN_DIR"] = str(build.bin_dir)
    os.environ["LLAMA_LIB_DIR"] = str(build.lib_dir)
    yield build
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def model_dir(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """A folder for one test module's models (``client-models`` for ``test_client``, ...).

    After the module, no llama-server serving a model from it may be left running.
    """
    name = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    folder = tmp_path_factory.mktemp(f"{name}-models")
    yield folder
    assert llama_server_pids(str(folder)) == [], "a llama-server outlived the test module"


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Path:
    """The real counting model (``lmserv.testing``), written once per test module."""
    return write_counting_model(model_dir / "counting.gguf")
