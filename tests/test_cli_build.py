"""``lmserv build`` as a user runs it: a subprocess, real cmake, a miniature source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _fake_llama import make_fake_llama


def _lmserv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmserv", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **(env or {})),
        check=False,
    )


def test_build_command_prints_binaries_and_commit(tmp_path: Path) -> None:
    src, commit = make_fake_llama(tmp_path / "fake")
    out = _lmserv("build", "--source", str(src), "--cuda", "off", "--dir", str(tmp_path / "o"))
    assert out.returncode == 0, out.stderr
    assert f"llama.cpp {commit[:12]} (CPU build)" in out.stdout
    assert str(tmp_path / "o" / "build-cpu" / "bin" / "llama-server") in out.stdout


def test_build_usage_errors_exit_2() -> None:
    assert _lmserv("build", "--jobs", "0").returncode == 2
    assert _lmserv("build", "--cuda", "maybe").returncode == 2


def test_build_failure_exits_1_with_message(tmp_path: Path) -> None:
    out = _lmserv(
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
