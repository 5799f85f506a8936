"""``lmserv serve`` without a model, ``ps``, ``stop`` and ``run NAME`` as real subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from _helpers import llama_server_pids
from lmserv.install import LlamaBuild
from lmserv.testing import COUNTING_CONTINUATION, write_counting_model

SRC = Path(__file__).parents[1] / "src"


@pytest.fixture
def env(llama_build: LlamaBuild, tmp_path: Path) -> Iterator[dict[str, str]]:
    """lmserv's data and state folders in ``tmp_path``, the counting model in its models folder.

    Afterwards no llama-server (router or instance) from ``tmp_path`` may be left running.
    """
    write_counting_model(tmp_path / "data" / "models" / "counting.gguf")
    (tmp_path / "config.toml").write_text("")
    yield {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "LMSERV_PATHS_DATA": str(tmp_path / "data"),
        "LMSERV_PATHS_CACHE": str(tmp_path / "cache"),
        "LMSERV_CONFIG": str(tmp_path / "config.toml"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "LLAMA_ARG_THREADS": "1",
    }
    assert llama_server_pids(str(tmp_path)) == [], "a llama-server outlived its lmserv command"


def lmserv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmserv", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _start_service(env: dict[str, str], log: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmserv", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),  # llama-server's log: a file, so it can never fill a pipe
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    found = re.search(r"model service ready at (http://127\.0\.0\.1:\d+)", first)
    assert found, first + log.read_text()
    return proc, found.group(1)


def test_serve_ps_run_stop_and_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    proc, url = _start_service(env, tmp_path / "serve.log", "--keep-alive", "10m")
    try:
        states = list((tmp_path / "state" / "lmserv").glob("service-*.json"))
        assert len(states) == 1
        assert stat.S_IMODE(states[0].stat().st_mode) == 0o600
        state = json.loads(states[0].read_text())
        assert (state["url"], state["pid"], state["keep_alive"]) == (url, proc.pid, 600)

        second = lmserv(env, "serve")
        assert second.returncode == 1
        assert f"already running at {url} (pid {proc.pid})" in second.stderr

        assert json.loads(lmserv(env, "ps", "--json").stdout) == []
        out = lmserv(env, "run", "counting", "one two", "--max-tokens", "16")
        assert (out.returncode, out.stdout) == (0, COUNTING_CONTINUATION + "\n"), out.stderr
        # It ran in the service: the model is still loaded there (a transient server is gone).
        ps = json.loads(lmserv(env, "ps", "--json").stdout)
        assert [(m["name"], m["state"]) for m in ps] == [("counting", "loaded")]
        assert 0 < ps[0]["unload_in"] <= 600 and ps[0]["n_ctx"] > 0
        table = lmserv(env, "ps").stdout
        assert re.search(r"^counting\s+loaded\s+\S+.*\d+ min$", table, re.M), table

        stop = lmserv(env, "stop", "counting")
        assert (stop.returncode, stop.stdout) == (0, "unloaded counting\n"), stop.stderr
        assert json.loads(lmserv(env, "ps", "--json").stdout) == []
        unknown = lmserv(env, "stop", "nope")
        assert unknown.returncode == 1 and "serves: counting" in unknown.stderr
        assert "Traceback" not in unknown.stderr

        lmserv(env, "run", "counting", "five", "--max-tokens", "1")  # an instance to clean up
        assert llama_server_pids(str(tmp_path / "data" / "models"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert llama_server_pids(str(tmp_path)) == []  # router and instances
        assert not states[0].exists()
        assert "proxying request to model counting" in (tmp_path / "serve.log").read_text()
        gone = lmserv(env, "ps")
        assert gone.returncode == 1 and "no model service is running" in gone.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_with_a_key_and_ctrl_c(env: dict[str, str], tmp_path: Path) -> None:
    proc, url = _start_service(env, tmp_path / "serve.log", "--api-key", "k3y", "--max-models", "1")
    try:
        state = next((tmp_path / "state" / "lmserv").glob("service-*.json"))
        assert "k3y" in state.read_text()  # owner-only (0600): ps, run and stop need it
        assert httpx.get(f"{url}/v1/models").status_code == 401
        out = lmserv(env, "run", "counting", "one two", "--max-tokens", "2")
        assert (out.returncode, out.stdout) == (0, " three four\n"), out.stderr
        wrong = lmserv(env, "ps", "--api-key", "wrong")
        assert wrong.returncode == 1 and "401" in wrong.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert not state.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_without_a_service_starts_a_transient_server(env: dict[str, str]) -> None:
    out = lmserv(env, "run", "counting", "six", "--raw", "--max-tokens", "2")
    assert (out.returncode, out.stdout) == (0, " seven eight\n"), out.stderr


def test_bad_keep_alive_is_a_clean_error(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "LMSERV_PATHS_DATA": str(tmp_path)}
    out = lmserv(env, "serve", "--keep-alive", "soon")
    assert out.returncode == 1 and "keep-alive 'soon'" in out.stderr
    assert "Traceback" not in out.stderr
    assert lmserv(env, "serve", "--max-models", "-1").returncode == 2  # a usage error
