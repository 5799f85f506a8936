"""Bad input gets a clear error, never a traceback: URLs, text that is not UTF-8, ``~user``
paths, API keys a header cannot carry. Through the library and through the real ``lmserv``.

None of these needs a llama.cpp build: each is refused before anything is started or sent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmserv import Client, ConfigError, Llama, LlamaServer
from lmserv.client import AsyncClient
from lmserv.config import expand_path, load_settings

SRC = Path(__file__).parents[1] / "src"
NOBODY = "~lmserv-no-such-user"  # a ~user that names nobody on any test machine
UNREACHABLE = "http://127.0.0.1:9"  # never contacted: every case fails before a request


@pytest.mark.parametrize("url", ["notaurl", "http://[::1/x.gguf", "ftp://host/x", "http://"])
def test_a_bad_server_url_is_refused_when_the_client_is_made(url: str) -> None:
    for cls in (Client, AsyncClient):
        with pytest.raises(ConfigError, match="http:// or https://") as err:
            cls(url)
        assert repr(url) in str(err.value)


@pytest.mark.parametrize(
    ("key", "found"),
    [("abc\ndef", "a line break at position 4"), ("clé", "non-ASCII character 'é' at position 3")],
)
def test_an_api_key_a_header_cannot_carry_is_refused_without_echoing_it(
    key: str, found: str, tmp_path: Path
) -> None:
    for make in (
        lambda: Client(UNREACHABLE, api_key=key),
        lambda: LlamaServer(tmp_path / "m.gguf", api_key=key),
        lambda: load_settings(env={"LMSERV_SERVER_API_KEY": key}, file=None),
    ):
        with pytest.raises(ConfigError, match=found) as err:
            make()
        assert key not in str(err.value)


def test_text_that_is_not_utf8_is_refused_naming_the_field() -> None:
    bad = b"one \xff two".decode("utf-8", "surrogateescape")  # as argv or a file would give it
    with Client(UNREACHABLE) as client:
        with pytest.raises(ConfigError, match=r"POST /completion: prompt has the byte 0xFF"):
            client.complete(bad)
        with pytest.raises(ConfigError, match=r"messages\[1\]\.content has the byte 0xFF"):
            client.chat([{"role": "user", "content": "hi"}, {"role": "user", "content": bad}])
        with pytest.raises(ConfigError, match=r"lone surrogate U\+D800"):
            client.embed("x\ud800")


def test_a_path_with_an_unknown_user_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no home folder"):
        expand_path(f"{NOBODY}/x", what="model")
    with pytest.raises(ConfigError, match=r"paths\.models in \$LMSERV_PATHS_MODELS.*no home"):
        load_settings(env={"LMSERV_PATHS_MODELS": f"{NOBODY}/models"}, file=None)
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\ncache = "{NOBODY}/cache"\n')
    with pytest.raises(ConfigError, match=r"paths\.cache in .*config\.toml.*no home"):
        load_settings(env={}, file=config)
    with pytest.raises(ConfigError, match="no home folder"):
        Llama(f"{NOBODY}/model.gguf")


def _lmserv(
    tmp_path: Path, *args: str | bytes, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    base = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "HOME": str(tmp_path),
        "LMSERV_PATHS_DATA": str(tmp_path / "data"),
        "LMSERV_PATHS_CACHE": str(tmp_path / "cache"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "lmserv", *args],
        input=stdin,
        capture_output=True,
        env={**base, **(env or {})},
        timeout=120,
    )
    return subprocess.CompletedProcess(
        out.args, out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode()
    )


@pytest.mark.parametrize(
    ("args", "env", "stdin", "code", "message"),
    [
        (("run", "--url", "notaurl"), {}, b"", 2, "argument --url: server URL 'notaurl'"),
        (("run", "--url", "http://[::1/x"), {}, b"", 2, "is not an http:// or https:// URL"),
        (("run", "counting", b"one \xff", "--url", UNREACHABLE), {}, b"", 2, "byte 0xFF"),
        (("chat", "--url", UNREACHABLE), {}, b"\nbad \xfe line\n", 1, "input line 2 has"),
        (("run", "--url", UNREACHABLE, "--api-key", "a\nb"), {}, b"", 1, "a line break"),
        (("run", "--url", UNREACHABLE, "--api-key", "ké"), {}, b"", 1, "non-ASCII"),
        (("serve",), {"LMSERV_SERVER_API_KEY": "k\u00e9y"}, b"", 1, "LMSERV_SERVER_API_KEY"),
        (("list",), {"LMSERV_PATHS_MODELS": f"{NOBODY}/m"}, b"", 1, "no home folder"),
        (("list",), {"LMSERV_CONFIG": f"{NOBODY}/c.toml"}, b"", 1, "$LMSERV_CONFIG"),
        (("run", "counting"), {"LLAMA_BIN_DIR": f"{NOBODY}/bin"}, b"", 1, "$LLAMA_BIN_DIR"),
        (("run", f"{NOBODY}/m.gguf"), {}, b"", 1, "model '~lmserv-no-such-user/m.gguf'"),
    ],
)
def test_the_cli_turns_bad_input_into_a_usage_error_or_a_failure(
    tmp_path: Path,
    args: tuple[str | bytes, ...],
    env: dict[str, str],
    stdin: bytes,
    code: int,
    message: str,
) -> None:
    out = _lmserv(tmp_path, *args, env=env, stdin=stdin)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == code, out.stderr
    assert message in out.stderr
