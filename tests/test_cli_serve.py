"""``lmserv serve/run/chat`` and ``python -m lmserv.demo`` as real subprocesses."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from _helpers import cli_env, free_port, llama_server_pids, run_lmserv
from lmserv import Client, ServerUnavailable
from lmserv.install import LlamaBuild
from lmserv.testing import COUNTING_CONTINUATION


@pytest.fixture
def env(llama_build: LlamaBuild, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The fixture's build on LLAMA_BIN_DIR; lmserv's data folder in ``tmp_path``.

    Afterwards, no llama-server serving a model from ``tmp_path`` may be left running.
    """
    yield cli_env(
        tmp_path / "home",
        LLAMA_BIN_DIR=str(llama_build.bin_dir),
        LMSERV_PATHS_DATA=str(tmp_path / "data"),
        LMSERV_PATHS_CACHE=str(tmp_path / "cache"),
        LLAMA_ARG_THREADS="1",  # llama-server reads its flags from the environment too
    )
    assert llama_server_pids(str(tmp_path)) == [], "a llama-server outlived its lmserv command"


def lmserv(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run_lmserv(*args, home=Path(env["HOME"]), env=env, stdin=stdin)


def test_run_streams_the_answer_and_reports_speed(env: dict[str, str], tmp_path: Path) -> None:
    out = lmserv(env, "run", "counting", "one two")
    assert out.returncode == 0, out.stderr
    assert out.stdout == COUNTING_CONTINUATION + "\n"
    assert re.search(r"9 tokens, [\d.]+ tokens/s", out.stderr)
    assert (tmp_path / "data" / "models" / "counting.gguf").is_file()


def test_run_raw_with_a_model_path(env: dict[str, str], tmp_path: Path) -> None:
    lmserv(env, "run")  # writes the default model
    model = tmp_path / "data" / "models" / "counting.gguf"
    out = lmserv(env, "run", str(model), "six", "--raw", "--max-tokens", "2")
    assert (out.returncode, out.stdout) == (0, " seven eight\n"), out.stderr


def test_run_unknown_model_is_a_clean_error(env: dict[str, str], tmp_path: Path) -> None:
    out = lmserv(env, "run", str(tmp_path / "nope.gguf"), "hi")
    assert out.returncode == 1
    assert "nope.gguf" in out.stderr and "Traceback" not in out.stderr


def test_chat_keeps_the_conversation(env: dict[str, str]) -> None:
    out = lmserv(env, "chat", "counting", "--temperature", "0", stdin="one two\nfive\n")
    assert out.returncode == 0, out.stderr
    # The counting model's template joins all turns; the second ends in "five".
    assert out.stdout.splitlines() == [COUNTING_CONTINUATION, " six seven eight nine ten"]


def test_serve_prints_url_and_stops_on_ctrl_c(env: dict[str, str]) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmserv", "serve", "counting"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "LMSERV_SERVER_PORT": str(port)},  # the [server] setting, by environment
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        found = re.search(r"ready at (http://127\.0\.0\.1:\d+)", first)
        assert found, first + proc.stderr.read() if proc.stderr else first
        assert found.group(1).endswith(f":{port}")
        with Client(found.group(1)) as client:
            assert client.complete("one two", temperature=0).text == COUNTING_CONTINUATION
            assert client.props()["total_slots"] == 4  # llama-server's own default
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        with (
            Client(found.group(1), timeout=2.0) as client,
            pytest.raises(ServerUnavailable, match="running"),
        ):
            client.health()  # gone: the CLI stopped it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_runs_end_to_end(env: dict[str, str], gemma_model: Path) -> None:
    from conftest import TEST_BUILD_DIR

    demo_env = {
        **env,
        # The session's build and model, found where the demo looks for them (no compile, no
        # download): the shared build folder is <paths.cache>/llama.cpp.
        "LMSERV_PATHS_CACHE": str(TEST_BUILD_DIR.parent),
        "LMSERV_PATHS_MODELS": str(gemma_model.parent),
    }
    out = subprocess.run(
        [sys.executable, "-m", "lmserv.demo"],
        capture_output=True,
        text=True,
        env=demo_env,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"answer: [^\n]*Paris", out.stdout), out.stdout
    assert re.search(r"\d+ tokens at [\d.]+ tokens/s", out.stdout)


def test_run_uses_the_default_model_setting(env: dict[str, str], tmp_path: Path) -> None:
    from lmserv.testing import write_counting_model

    model = write_counting_model(tmp_path / "elsewhere" / "mine.gguf")
    out = lmserv({**env, "LMSERV_MODELS_DEFAULT": str(model)}, "run", "--raw", "--max-tokens", "1")
    assert (out.returncode, out.stdout) == (0, " three\n"), out.stderr
    assert not (tmp_path / "data" / "models" / "counting.gguf").exists()  # not the built-in one
