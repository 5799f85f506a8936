"""Settings: defaults < config file < environment < arguments, and errors that point at the line."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from lmserv import config
from lmserv.config import Origin, Settings, load_settings
from lmserv.errors import ConfigError


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME with no LMSERV_*/XDG_* variables; returns the config file path (absent)."""
    for var in list(os.environ):
        if var.startswith(("LMSERV_", "XDG_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path / ".config" / "lmserv" / "config.toml"


def test_defaults_without_file_or_environment(isolated: Path, tmp_path: Path) -> None:
    s = load_settings()
    assert s.config_file == isolated and not s.config_file_exists
    assert (s.server.host, s.server.port, s.server.api_key) == ("127.0.0.1", None, None)
    assert (s.build.cuda, s.build.jobs, s.build.rpc, s.build.source) == ("auto", None, False, None)
    assert s.download.connections is None and s.models.default is None
    assert s.paths.data == tmp_path / ".local" / "share" / "lmserv"
    assert s.paths.models == s.paths.data / "models"
    assert s.paths.builds == s.paths.data / "llama.cpp"
    assert s.paths.cache == tmp_path / ".cache" / "lmserv"
    assert {o.kind for _, _, o in s.items()} == {"default"}
    assert dict(s.catalog) == {}


def test_every_setting_has_one_env_name() -> None:
    names = Settings.names()
    assert "server.port" in names and len(names) == len(set(names))
    assert Settings.env_name("server.port") == "LMSERV_SERVER_PORT"
    assert Settings.env_name("server.api_key") == "LMSERV_SERVER_API_KEY"
    assert Settings.env_name("paths.models") == "LMSERV_PATHS_MODELS"
    for name in names:
        table, key = name.split(".")
        assert Settings.env_name(name) == f"LMSERV_{table.upper()}_{key.upper()}"
        assert Settings.help(name)


def test_file_then_env_then_argument(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolated.parent.mkdir(parents=True)
    _write(
        isolated,
        """
        # lmserv settings
        [server]
        host = "0.0.0.0"
        port = 8081

        [build]
        cuda = "off"
        jobs = 3
        """,
    )
    s = load_settings()
    assert s.server.port == 8081 and s.origin("server.port") == Origin("file", f"{isolated}:4")
    assert s.origin("server.host") == Origin("file", f"{isolated}:3")
    assert s.build.cuda == "off" and s.build.jobs == 3
    assert s.origin("server.api_key").kind == "default"

    monkeypatch.setenv("LMSERV_SERVER_PORT", "8082")
    monkeypatch.setenv("LMSERV_BUILD_RPC", "yes")
    s = load_settings()
    assert s.server.port == 8082 and s.origin("server.port") == Origin("env", "LMSERV_SERVER_PORT")
    assert s.build.rpc is True
    assert s.server.host == "0.0.0.0"  # still from the file

    s = load_settings({"server.port": 8083, "build.jobs": None, "build.cuda": "on"})
    assert s.server.port == 8083 and s.origin("server.port") == Origin("argument", "server.port")
    assert s.build.jobs == 3 and s.origin("build.jobs").kind == "file"  # None: not given
    assert s.build.cuda == "on"


def test_empty_env_variable_counts_as_unset(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMSERV_SERVER_API_KEY", "")
    assert load_settings().server.api_key is None
    monkeypatch.setenv("LMSERV_SERVER_API_KEY", "s3cret")
    assert load_settings().server.api_key == "s3cret"


def test_paths_follow_data_folder(isolated: Path, tmp_path: Path) -> None:
    isolated.parent.mkdir(parents=True)
    _write(isolated, f'[paths]\ndata = "{tmp_path / "d"}"\nbuilds = "~/b"\ncache = "c"\n')
    s = load_settings()
    assert s.paths.cache == isolated.parent / "c"  # relative to the config file
    assert s.paths.models == tmp_path / "d" / "models"
    assert s.origin("paths.models") == Origin("default", "paths.data/models")
    assert s.paths.builds == tmp_path / "b"  # ~ is the (temporary) home


def test_folder_functions_read_the_settings(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert config.models_dir() == tmp_path / ".local" / "share" / "lmserv" / "models"
    monkeypatch.setenv("LMSERV_PATHS_MODELS", str(tmp_path / "m"))
    assert config.models_dir() == tmp_path / "m"
    isolated.parent.mkdir(parents=True)
    _write(isolated, f'[paths]\nbuilds = "{tmp_path / "builds"}"\ncache = "{tmp_path / "c"}"\n')
    assert config.builds_dir() == tmp_path / "builds"  # the file changed: read again
    assert config.cache_dir() == tmp_path / "c"
    assert config.data_dir() == tmp_path / ".local" / "share" / "lmserv"


def test_user_catalog_from_file(isolated: Path) -> None:
    isolated.parent.mkdir(parents=True)
    _write(
        isolated,
        """
        [catalog.my-model]
        url = "https://example.org/my-model-Q4_K_M.gguf"
        sha256 = "ab"
        size = 123

        [catalog."other.model"]
        url = "hf://owner/repo/file.gguf"
        """,
    )
    assert config.user_catalog() == {
        "my-model": {
            "url": "https://example.org/my-model-Q4_K_M.gguf",
            "sha256": "ab",
            "size": 123,
        },
        "other.model": {"url": "hf://owner/repo/file.gguf"},
    }


def test_lmserv_config_names_the_file(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = _write(tmp_path / "elsewhere.toml", "[models]\ndefault = 'phi3-mini'\n")
    monkeypatch.setenv("LMSERV_CONFIG", str(other))
    s = load_settings()
    assert s.config_file == other and s.models.default == "phi3-mini"
    assert config.config_file() == other
    monkeypatch.setenv("LMSERV_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match=r"missing\.toml.*does not exist"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "[server]\nprot = 1\n",
            r"unknown key 'prot' in table \[server\] .*config\.toml:2.*'port'",
        ),
        ("[sever]\nport = 1\n", r"unknown table \[sever\] .*config\.toml:1.*'server'"),
        (
            "[server]\nhost = 'x'\nport = 'abc'\n",
            r"server\.port .*config\.toml:3: expected a whole number, got 'abc'",
        ),
        (
            "[server]\nport = 70000\n",
            r"server\.port .*:2: expected a port number from 1 to 65535 \(0 or 'auto': a free one\), got 70000",
        ),
        ("[server]\nport = true\n", r"server\.port .*:2: expected a whole number"),
        ("[build]\ncuda = 'maybe'\n", r"build\.cuda .*:2: expected 'auto', 'on' or 'off'"),
        ("[build]\njobs = -2\n", r"build\.jobs .*:2: expected a positive number"),
        ("[build]\nrpc = 'yes'\n", r"build\.rpc .*:2: expected true or false"),
        ("[paths]\nmodels = 3\n", r"paths\.models .*:2: expected a string"),
        ("server.port = 'x'\n", r"server\.port .*config\.toml:1"),
        ("[server]\nport = = 1\n", r"config\.toml is not valid TOML: .*line 2"),
        ("[catalog]\nfoo = 1\n", r"catalog entry 'foo' .*config\.toml:2 must be a table"),
        ("server = 5\n", r"'server' in the config file .*config\.toml:1 must be a table"),
    ],
)
def test_bad_file_names_key_file_and_line(isolated: Path, text: str, pattern: str) -> None:
    isolated.parent.mkdir(parents=True)
    isolated.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        load_settings()
    with pytest.raises(ConfigError):  # and the folder functions refuse it too
        config.models_dir()


@pytest.mark.parametrize(
    ("var", "value", "pattern"),
    [
        (
            "LMSERV_SERVER_PORT",
            "80a",
            r"server\.port in \$LMSERV_SERVER_PORT: expected a whole number",
        ),
        (
            "LMSERV_BUILD_RPC",
            "perhaps",
            r"build\.rpc in \$LMSERV_BUILD_RPC: expected true or false",
        ),
        (
            "LMSERV_DOWNLOAD_CONNECTIONS",
            "-1",
            r"download\.connections in \$LMSERV_DOWNLOAD_CONNECTIONS",
        ),
    ],
)
def test_bad_environment_names_the_variable(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str, pattern: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=pattern):
        load_settings()


def test_bad_argument(isolated: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting 'server\.prot' .*'server\.port'"):
        load_settings({"server.prot": 1})
    with pytest.raises(ConfigError, match=r"server\.port in the argument server\.port"):
        load_settings({"server.port": -1})


def test_port_zero_or_auto_means_a_free_port(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMSERV_SERVER_PORT", "0")
    assert load_settings().server.port is None
    assert load_settings({"server.port": "auto"}).server.port is None
    assert load_settings({"server.port": 8080}).server.port == 8080


def test_counts_accept_auto(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMSERV_DOWNLOAD_CONNECTIONS", "auto")
    assert load_settings().download.connections is None
    monkeypatch.setenv("LMSERV_DOWNLOAD_CONNECTIONS", "8")
    assert load_settings().download.connections == 8


def test_unknown_env_in_a_known_table_is_only_warned(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LMSERV_SERVER_PROT", "1")
    monkeypatch.setenv("LMSERV_TEST_BUILD_DIR", "/x")  # not a table of ours: silent
    load_settings()
    assert "LMSERV_SERVER_PROT is not an lmserv setting" in caplog.text
    assert "LMSERV_TEST_BUILD_DIR" not in caplog.text


def test_cached_folders_follow_home(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LMSERV_CONFIG", str(_write(tmp_path / "fixed.toml", "")))
    first = config.data_dir()
    monkeypatch.setenv("HOME", str(tmp_path / "other"))
    assert config.data_dir() == tmp_path / "other" / ".local" / "share" / "lmserv" != first
