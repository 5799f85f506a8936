"""``lmserv build`` as a user runs it: a subprocess, real cmake, a miniature source."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from _fake_llama import make_fake_llama
from _helpers import run_lmserv

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def lmserv(tmp_path: Path) -> Run:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_lmserv(*args, home=tmp_path / "home", timeout=300)

    return run


def test_build_command_prints_binaries_and_commit(tmp_path: Path, lmserv: Run) -> None:
    src, commit = make_fake_llama(tmp_path / "fake")
    out = lmserv("build", "--source", str(src), "--cuda", "off", "--dir", str(tmp_path / "o"))
    assert out.returncode == 0, out.stderr
    assert f"llama.cpp {commit[:12]} (CPU build)" in out.stdout
    assert str(tmp_path / "o" / "build-cpu" / "bin" / "llama-server") in out.stdout


def test_build_usage_errors_exit_2(lmserv: Run) -> None:
    assert lmserv("build", "--jobs", "0").returncode == 2
    assert lmserv("build", "--cuda", "maybe").returncode == 2


def test_build_failure_exits_1_with_message(tmp_path: Path, lmserv: Run) -> None:
    out = lmserv(
        "build",
        "--source",
        str(tmp_path / "missing"),
        "--cuda",
        "off",
        "--dir",
        str(tmp_path / "o"),
    )
    assert out.returncode == 1
    assert "lmserv: error:" in out.stderr
    assert "Traceback" not in out.stderr
