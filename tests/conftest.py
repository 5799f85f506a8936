"""Shared fixtures: one real CPU build of llama.cpp per test session, the counting model, and
the real model (Gemma 3 270M).

The build is the shared one (:func:`lmserv.install.llama_build.build_shared`, in
``~/.cache/lmserv/llama.cpp``; the sdist in ``~/.cache/lmserv/sdist``), the same the demo uses,
so a rerun finds it and returns at once; a fresh machine builds it here, for real, in a few
minutes. The real model is never downloaded by a test: ``scripts/test.sh`` pulls it once
(``lmserv pull gemma3-270m``) into lmserv's models folder, where :func:`gemma_model` finds it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from _api_server import ApiServer
from _helpers import cli_env, llama_server_pids
from lmserv import Client, config
from lmserv.install import LlamaBuild, load_catalog
from lmserv.install._download import is_verified
from lmserv.install.llama_build import build_shared, shared_build_dir
from lmserv.testing import write_counting_model

TEST_BUILD_DIR = Path(os.environ.get("LMSERV_TEST_BUILD_DIR", str(shared_build_dir())))
# Read before any test changes the settings: where `lmserv pull gemma3-270m` put the model.
GEMMA = load_catalog(user=False)["gemma3-270m"]
GEMMA_PATH = Path(os.environ.get("LMSERV_TEST_GEMMA", str(config.models_dir() / GEMMA.local_name)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``slow`` means exactly "needs the real llama.cpp build": every test that asks for the
    build, directly or through another fixture, gets the marker, so ``-m "not slow"`` compiles
    nothing."""
    for item in items:
        if "llama_build" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """For tests calling ``lmserv.cli.main`` in-process: the environment of
    :func:`_helpers.cli_env` (HOME, an empty config file, none of the user's ``LMSERV_*``,
    ``XDG_*`` or ``LLAMA_*`` variables) set on this process for the test; returns the home."""
    home = tmp_path / "home"
    env = cli_env(home)
    for key in list(os.environ):
        if key not in env:
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return home


@pytest.fixture(scope="session")
def llama_build() -> Iterator[LlamaBuild]:
    """A real CPU build (with the RPC worker) of the pinned llama.cpp commit.

    Also points ``LLAMA_BIN_DIR``/``LLAMA_LIB_DIR`` at it for the whole session, so code under
    test (and the subprocesses it starts) find these binaries first.
    """
    build = build_shared(TEST_BUILD_DIR, progress=False)
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


@pytest.fixture(scope="session")
def gemma_model() -> Path:
    """Gemma 3 270M Q4_K_M (base model, no chat template), verified, for the whole session.

    Fails (never downloads) when it is not there: ``scripts/test.sh`` pulls it once with
    ``lmserv pull gemma3-270m``; ``LMSERV_TEST_GEMMA`` may point at a copy elsewhere.
    """
    if not GEMMA_PATH.is_file() or not is_verified(GEMMA_PATH, GEMMA.sha256):
        pytest.fail(
            f"the real model is not at {GEMMA_PATH} (or not verified); tests never download "
            "it: run `lmserv pull gemma3-270m` once (scripts/test.sh does), or set "
            "LMSERV_TEST_GEMMA to a verified copy"
        )
    return GEMMA_PATH


@pytest.fixture
def api() -> Iterator[ApiServer]:
    """The stand-in of llama-server's API (``_api_server.ApiServer``), recording requests."""
    with ApiServer() as server:
        yield server


@pytest.fixture
def client(api: ApiServer) -> Iterator[Client]:
    """A :class:`~lmserv.Client` of :func:`api`."""
    with Client(api.base_url, timeout=5.0) as c:
        yield c
