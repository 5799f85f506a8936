"""``lmserv pull``, ``lmserv list`` and ``lmserv rm`` as a user runs them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from _http_server import FileServer
from lmserv import config
from lmserv.cli import main

DATA = os.urandom(200_000)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        srv.add("/cli-model.gguf", DATA)
        yield srv


def _lmserv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmserv", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        check=False,
    )


def test_pull_list_rm_round_trip(server: FileServer, tmp_path: Path) -> None:
    models = tmp_path / "models"
    url = server.url("/cli-model.gguf") + f"#sha256={SHA}"
    out = _lmserv("pull", url, "--dir", str(models), "--quiet")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(models / "cli-model.gguf")
    assert out.stderr == ""

    listed = _lmserv("list", "--json", "--dir", str(models))
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert {e["name"] for e in data["catalog"]} >= {"gemma-2b", "phi3-mini", "mistral-7b-instruct"}
    assert [(m["name"], m["size"], m["verified"], m["sha256"]) for m in data["local"]] == [
        ("cli-model.gguf", len(DATA), True, SHA)
    ]

    text = _lmserv("list", "--dir", str(models))
    assert "qwen2.5-0.5b-instruct" in text.stdout
    assert "cli-model.gguf" in text.stdout and "verified" in text.stdout

    removed = _lmserv("rm", "cli-model.gguf", "--dir", str(models))
    assert removed.returncode == 0, removed.stderr
    assert not (models / "cli-model.gguf").exists()
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []
    again = _lmserv("rm", "cli-model.gguf", "--dir", str(models))
    assert again.returncode == 1 and "no local model" in again.stderr


def test_pull_by_catalog_name_and_rm_by_name(
    server: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    entry = {
        "url": server.url("/cli-model.gguf"),
        "sha256": SHA,
        "size": len(DATA),
        "license": "mit",
        "description": "test",
    }
    monkeypatch.setattr(config, "user_catalog", lambda: {"clitest": entry})
    monkeypatch.setenv("LMSERV_PATHS_MODELS", str(tmp_path))
    assert main(["pull", "clitest", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli-model.gguf")
    assert main(["list"]) == 0
    assert "[verified]" in capsys.readouterr().out
    # A file that no longer matches its record is shown as unverified.
    (tmp_path / "cli-model.gguf").write_bytes(b"x" * len(DATA))
    assert main(["list", "--json"]) == 0
    (local,) = json.loads(capsys.readouterr().out)["local"]
    assert local["catalog_name"] == "clitest" and local["verified"] is False
    assert main(["rm", "clitest"]) == 0
    assert not (tmp_path / "cli-model.gguf").exists()
    assert "removed" in capsys.readouterr().out
    # An interrupted download is listed as partial, and rm removes it too.
    (tmp_path / "cli-model.gguf.part").write_bytes(DATA[:1000])
    assert main(["list", "--json"]) == 0
    (local,) = json.loads(capsys.readouterr().out)["local"]
    assert (local["name"], local["size"], local["partial"]) == ("cli-model.gguf", 1000, True)
    assert main(["list"]) == 0
    assert "partial" in capsys.readouterr().out
    assert main(["rm", "clitest"]) == 0
    assert list(tmp_path.glob("cli-model*")) == []


def test_errors_exit_1_and_usage_errors_exit_2(tmp_path: Path) -> None:
    unknown = _lmserv("pull", "gemma-2bb", "--dir", str(tmp_path))
    assert unknown.returncode == 1
    assert "did you mean gemma-2b" in unknown.stderr and "Traceback" not in unknown.stderr
    assert _lmserv("pull").returncode == 2
    bad_spec = _lmserv("pull", "hf://only-owner/x.gguf", "--dir", str(tmp_path))
    assert bad_spec.returncode == 2 and "hf://owner/repo/file.gguf" in bad_spec.stderr
    assert _lmserv("pull", "x", "--connections", "0").returncode == 2
    refused = _lmserv(
        "pull", "http://127.0.0.1:9/none.gguf", "--dir", str(tmp_path), "-q", "--retries", "1"
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    # Nothing arrived, so nothing is kept: the message must not promise a resume.
    assert "no partial file was kept" in refused.stderr and "to resume" not in refused.stderr
    assert "lmserv pull http://127.0.0.1:9/none.gguf` again to try again" in refused.stderr
