"""``lmserv pull``, ``lmserv list`` and ``lmserv rm`` as a user runs them."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from _helpers import run_lmserv
from _http_server import FileServer
from _system_helpers import write_llama_gguf
from lmserv import config
from lmserv.cli import main

DATA = os.urandom(200_000)
SHA = hashlib.sha256(DATA).hexdigest()
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        srv.add("/cli-model.gguf", DATA)
        yield srv


@pytest.fixture
def lmserv(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``lmserv ARGS`` in a subprocess isolated in ``tmp_path/home``."""
    return functools.partial(run_lmserv, home=tmp_path / "home")


def test_pull_list_rm_round_trip(server: FileServer, tmp_path: Path, lmserv: Run) -> None:
    models = tmp_path / "models"
    url = server.url("/cli-model.gguf") + f"#sha256={SHA}"
    out = lmserv("pull", url, "--dir", str(models), "--quiet")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(models / "cli-model.gguf")
    assert out.stderr == ""

    listed = lmserv("list", "--json", "--dir", str(models))
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert {e["name"] for e in data["catalog"]} >= {"gemma-2b", "phi3-mini", "mistral-7b-instruct"}
    assert [(m["name"], m["size"], m["verified"], m["sha256"]) for m in data["local"]] == [
        ("cli-model.gguf", len(DATA), True, SHA)
    ]

    text = lmserv("list", "--dir", str(models))
    assert "qwen2.5-0.5b-instruct" in text.stdout
    assert "cli-model.gguf" in text.stdout and "verified" in text.stdout

    removed = lmserv("rm", "cli-model.gguf", "--dir", str(models))
    assert removed.returncode == 0, removed.stderr
    assert not (models / "cli-model.gguf").exists()
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []
    again = lmserv("rm", "cli-model.gguf", "--dir", str(models))
    assert again.returncode == 1 and "no local model" in again.stderr


def test_pull_by_catalog_name_and_rm_by_name(
    server: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cli_home: Path,
) -> None:
    entry = {
        "url": server.url("/cli-model.gguf"),
        "sha256": SHA,
        "size": len(DATA),
        "license": "mit",
        "description": "test",
    }
    monkeypatch.setattr(config, "user_catalog", lambda: {"clitest": entry})
    models = tmp_path / "models"
    monkeypatch.setenv("LMSERV_PATHS_MODELS", str(models))
    assert main(["pull", "clitest", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(models / "cli-model.gguf")
    assert main(["list"]) == 0
    assert "[verified]" in capsys.readouterr().out
    # A file that no longer matches its record is shown as unverified.
    (models / "cli-model.gguf").write_bytes(b"x" * len(DATA))
    assert main(["list", "--json"]) == 0
    (local,) = json.loads(capsys.readouterr().out)["local"]
    assert local["catalog_name"] == "clitest" and local["verified"] is False
    assert main(["rm", "clitest"]) == 0
    assert not (models / "cli-model.gguf").exists()
    assert "removed" in capsys.readouterr().out
    # An interrupted download is listed as partial, and rm removes it too.
    (models / "cli-model.gguf.part").write_bytes(DATA[:1000])
    assert main(["list", "--json"]) == 0
    (local,) = json.loads(capsys.readouterr().out)["local"]
    assert (local["name"], local["size"], local["partial"]) == ("cli-model.gguf", 1000, True)
    assert main(["list"]) == 0
    assert "partial" in capsys.readouterr().out
    assert main(["rm", "clitest"]) == 0
    assert list(models.glob("cli-model*")) == []


def test_errors_exit_1_and_usage_errors_exit_2(tmp_path: Path, lmserv: Run) -> None:
    unknown = lmserv("pull", "gemma-2bb", "--dir", str(tmp_path))
    assert unknown.returncode == 1
    assert "did you mean gemma-2b" in unknown.stderr and "Traceback" not in unknown.stderr
    assert lmserv("pull").returncode == 2
    bad_spec = lmserv("pull", "hf://only-owner/x.gguf", "--dir", str(tmp_path))
    assert bad_spec.returncode == 2 and "hf://owner/repo/file.gguf" in bad_spec.stderr
    assert lmserv("pull", "x", "--connections", "0").returncode == 2
    refused = lmserv(
        "pull", "http://127.0.0.1:9/none.gguf", "--dir", str(tmp_path), "-q", "--retries", "1"
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    # Nothing arrived, so nothing is kept: the message must not promise a resume.
    assert "no partial file was kept" in refused.stderr and "to resume" not in refused.stderr
    assert "lmserv pull http://127.0.0.1:9/none.gguf` again to try again" in refused.stderr


# --------------------------------------------------------------------------- one resolver, one "verified"


def _catalog_home(home: Path, url: str, sha: str, size: int) -> Path:
    """A home whose config file adds the catalog entry ``tinyllama-test`` for ``url``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[catalog.tinyllama-test]\nurl = "{url}"\nsha256 = "{sha}"\nsize = {size}\n'
        'license = "mit"\ndescription = "a tiny llama"\naliases = ["tiny-alias"]\n'
    )
    return home


def test_plan_finds_a_model_pulled_by_catalog_name(tmp_path: Path) -> None:
    # Reproduced bug: `lmserv plan NAME` said "pull it first" for a model `lmserv serve NAME`
    # found, because plan looked for NAME(.gguf) and not for the file the pull wrote.
    gguf = write_llama_gguf(tmp_path / "src.gguf").read_bytes()
    sha = hashlib.sha256(gguf).hexdigest()
    with FileServer() as srv:
        srv.add("/tiny-llama-q8.gguf", gguf)
        home = _catalog_home(tmp_path / "home", srv.url("/tiny-llama-q8.gguf"), sha, len(gguf))
        before = run_lmserv("plan", "tinyllama-test", home=home)
        assert before.returncode == 1 and "Traceback" not in before.stderr
        assert "lmserv pull tinyllama-test" in before.stderr  # not pulled yet: says how
        pulled = run_lmserv("pull", "tinyllama-test", "-q", home=home)
        assert pulled.returncode == 0, pulled.stderr
    for name in ("tinyllama-test", "tiny-alias", "tiny-llama-q8.gguf", "tiny-llama-q8"):
        plan = run_lmserv("plan", name, "--json", home=home)  # the server is gone: no network
        assert plan.returncode == 0, (name, plan.stderr)
        data = json.loads(plan.stdout)
        assert data["n_layer"] == 4 and Path(data["model_path"]).name == "tiny-llama-q8.gguf"
    unknown = run_lmserv("plan", "tinyllama-tset", home=home)
    assert unknown.returncode == 1 and "did you mean tinyllama-test" in unknown.stderr


def test_a_missing_model_file_is_the_same_error_everywhere(tmp_path: Path) -> None:
    from lmserv import Llama, LlamaServer, ModelNotFound, ensure_model, plan_offload

    missing = tmp_path / "nowhere.gguf"
    for call in (
        lambda: LlamaServer(missing).start(),
        lambda: Llama(missing),
        lambda: plan_offload(missing, []),
        lambda: ensure_model(missing),
    ):
        with pytest.raises(ModelNotFound, match=r"nowhere\.gguf.*does not exist") as info:
            call()
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, KeyError)
    for command in ("serve", "run", "plan"):
        out = run_lmserv(command, str(missing), home=tmp_path / "home")
        assert out.returncode == 1, (command, out.stderr)
        assert f"lmserv: error: model file {str(missing)!r} does not exist" in out.stderr, command


def test_doctor_and_list_agree_about_verified(server: FileServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    models = home / "models"
    env = {"LMSERV_PATHS_MODELS": str(models)}
    url = server.url("/cli-model.gguf") + f"#sha256={SHA}"
    assert run_lmserv("pull", url, "-q", home=home, env=env).returncode == 0
    (models / "copied.gguf").write_bytes(DATA)  # a file with no record
    (models / "planted.gguf").write_bytes(DATA)
    (models / "planted.gguf.verified").write_text("{}")  # a sidecar lmserv never writes
    listed = run_lmserv("list", "--json", home=home, env=env)
    doctor = run_lmserv("doctor", "--json", home=home, env=env)
    by_list = {m["name"]: m["verified"] for m in json.loads(listed.stdout)["local"]}
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    by_doctor = {m["file"]: m["verified"] for m in checks["models"]["details"]["models"]}
    assert by_list == by_doctor
    assert by_list["cli-model.gguf"] is True
    assert by_list["copied.gguf"] is False and by_list["planted.gguf"] is False


def test_doctor_resolves_the_default_model_like_run(tmp_path: Path) -> None:
    home = _catalog_home(tmp_path / "home", "http://127.0.0.1:9/tiny-llama-q8.gguf", SHA, 1)
    with (home / "config.toml").open("a") as fh:
        fh.write('\n[models]\ndefault = "tiny-alias"\n')
    checks = {
        c["name"]: c for c in json.loads(run_lmserv("doctor", "--json", home=home).stdout)["checks"]
    }
    assert checks["default-model"]["status"] == "warn"
    assert "lmserv pull tiny-alias" in checks["default-model"]["fix"]  # same words as plan/run
    models = home / ".local" / "share" / "lmserv" / "models"
    models.mkdir(parents=True)
    (models / "tiny-llama-q8.gguf").write_bytes(b"GGUF")
    checks = {
        c["name"]: c for c in json.loads(run_lmserv("doctor", "--json", home=home).stdout)["checks"]
    }
    assert checks["default-model"]["status"] == "ok"
    assert checks["default-model"]["details"]["path"] == str(models / "tiny-llama-q8.gguf")
