"""The ``lmserv`` command as a user runs it: help, exit codes, JSON, config precedence, doctor.

Every test runs ``python -m lmserv`` in a subprocess through ``_helpers.run_lmserv`` (a temporary
HOME and LMSERV_CONFIG), so the real user's settings are never read or touched.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from _helpers import cli_env, run_lmserv
from _http_server import FileServer
from _system_helpers import PYTHON, fake_tool, write_llama_gguf
from lmserv.cli import build_parser, main
from lmserv.errors import ToolchainMissing
from lmserv.install import LlamaBuild, _toolchain

lmserv = run_lmserv


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _real_gpu_here() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return any(
            (Path(d) / tool).exists()
            for d in os.environ.get("PATH", "").split(os.pathsep)
            for tool in ("nvidia-smi", "rocm-smi")
        )


no_real_gpu = pytest.mark.skipif(_real_gpu_here(), reason="this machine has a GPU")


def _subcommands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- help and usage


def test_every_subcommand_has_consistent_help(tmp_path: Path) -> None:
    commands = _subcommands()
    assert {"build", "gpu", "plan", "config", "doctor"} <= set(commands)
    top = lmserv("--help", home=tmp_path)
    assert top.returncode == 0
    for command in commands:
        assert command in top.stdout
        proc = lmserv(command, "--help", home=tmp_path)
        assert proc.returncode == 0, (command, proc.stderr)
        assert proc.stdout.startswith(f"usage: lmserv {command}"), command
        assert "-h, --help" in proc.stdout
    show = lmserv("config", "show", "--help", home=tmp_path)
    assert show.stdout.startswith("usage: lmserv config show") and "--json" in show.stdout


def test_listing_commands_offer_json(tmp_path: Path) -> None:
    for command in (["gpu"], ["plan"], ["config", "show"], ["doctor"]):
        assert "--json" in lmserv(*command, "--help", home=tmp_path).stdout, command


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "usage: lmserv"),
        (("no-such-command",), "invalid choice"),
        (("plan",), "the following arguments are required: MODEL"),
        (("plan", "m.gguf", "--parallel", "0"), "expected a number of at least 1"),
        (("plan", "m.gguf", "--ctx-size", "many"), "expected a whole number"),
        (("gpu", "--bogus"), "unrecognized arguments"),
        (("config",), "usage: lmserv config"),
        (("config", "show", "--set", "novalue"), "--set expects KEY=VALUE"),
        (("config", "show", "--set", "server.prot=1"), "unknown setting 'server.prot'"),
        (("config", "show", "--set", "server.port=http"), "expected a whole number"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = lmserv(*args, home=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def _integer_flags() -> dict[str, list[str]]:
    """Every flag of every (sub)command that takes a whole number, found in the parser."""
    found: dict[str, list[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}".strip())
            elif action.option_strings and action.type not in (None, float):
                try:
                    takes_int = action.type("7") == 7  # type: ignore[operator]
                except (argparse.ArgumentTypeError, ValueError, TypeError):
                    takes_int = False
                if takes_int:
                    found.setdefault(path, []).append(action.option_strings[0])

    walk(build_parser(), "")
    return found


# What each command needs besides the flag, so that parsing reaches it.
_POSITIONALS = {"plan": ["m.gguf"], "pull": ["x"], "rm": ["x"]}


def test_every_integer_flag_rejects_negatives_with_exit_2(
    cli_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = _integer_flags()
    for command, names in (
        ("serve", {"--ctx-size", "--parallel", "--port", "--n-gpu-layers", "--main-gpu"}),
        ("run", {"--ctx-size", "--parallel", "--max-tokens", "--seed"}),
        ("plan", {"--ctx-size", "--parallel", "--reserve"}),
        ("pull", {"--connections", "--retries"}),
        ("worker", {"--port", "--threads"}),
        ("build", {"--jobs"}),
    ):
        assert names <= set(flags[command]), command
    for command, names in flags.items():
        for flag in names:
            for bad in ("-5", "1.5", "ten"):
                with pytest.raises(SystemExit) as info:
                    main([*command.split(), *_POSITIONALS.get(command, []), flag, bad])
                err = capsys.readouterr().err
                assert info.value.code == 2, (command, flag, bad)
                assert f"argument {flag}" in err and repr(bad)[1:-1] in err, err


# --------------------------------------------------------------------------- gpu


@no_real_gpu
def test_gpu_on_this_machine(tmp_path: Path) -> None:
    proc = lmserv("gpu", home=tmp_path)
    assert proc.returncode == 0 and "no GPU found" in proc.stdout
    assert as_json(lmserv("gpu", "--json", home=tmp_path)) == {
        "gpus": [],
        "cuda_compute_capabilities": [],
    }


@no_real_gpu
def test_gpu_with_recorded_nvidia_smi(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "nvidia-smi", "nvidia-smi-2gpu-units.csv")
    path = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    data = as_json(lmserv("gpu", "--json", home=tmp_path, env=path))
    assert data["cuda_compute_capabilities"] == ["8.6", "8.9"]
    assert [g["name"] for g in data["gpus"]] == [
        "NVIDIA GeForce RTX 4090",
        "NVIDIA GeForce RTX 3060",
    ]
    assert set(data["gpus"][0]) == {
        "index",
        "name",
        "backend",
        "total_memory",
        "free_memory",
        "compute_capability",
        "driver",
        "uuid",
        "source",
    }
    text = lmserv("gpu", home=tmp_path, env=path)
    assert text.returncode == 0 and "2 GPUs" in text.stdout
    assert "[1] NVIDIA GeForce RTX 3060" in text.stdout and "12.0 GiB" in text.stdout


# --------------------------------------------------------------------------- plan


@no_real_gpu
def test_plan_with_recorded_gpus(tmp_path: Path) -> None:
    model = write_llama_gguf(tmp_path / "tiny.gguf", n_layer=5)
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "nvidia-smi", "nvidia-smi-2gpu-units.csv")
    path = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    data = as_json(
        lmserv(
            "plan",
            str(model),
            "--ctx-size",
            "1024",
            "--parallel",
            "2",
            "--json",
            home=tmp_path,
            env=path,
        )
    )
    assert data["n_gpu_layers"] == 6 and data["fits_fully"] is True
    assert len(data["tensor_split"]) == 2 and sum(data["tensor_split"]) == 6
    assert data["explicit_args"][:2] == ["-ngl", "6"]
    assert data["server_args"][:2] == ["-c", "2048"]
    assert [d["index"] for d in data["devices"]] == [0, 1]
    assert all(d["total_bytes"] <= d["free_memory"] for d in data["devices"])
    text = lmserv("plan", str(model), home=tmp_path, env=path)
    assert text.returncode == 0
    assert "GPU 0 NVIDIA GeForce RTX 4090" in text.stdout
    assert "llama-server arguments: -c 2048 -np 1" in text.stdout


def test_plan_on_cpu_and_by_name(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    write_llama_gguf(models / "tiny.gguf")
    env = {"LMSERV_PATHS_MODELS": str(models), "PATH": str(tmp_path)}  # no GPU tools at all
    data = as_json(lmserv("plan", "tiny", "--json", home=tmp_path, env=env))
    assert data["model_path"] == str(models / "tiny.gguf")
    if not data["gpus"]:
        assert data["n_gpu_layers"] == 0 and data["devices"] == []


def test_plan_failures_exit_1(tmp_path: Path) -> None:
    proc = lmserv("plan", "nowhere.gguf", home=tmp_path)
    assert proc.returncode == 1
    assert "lmserv: error: model file 'nowhere.gguf' does not exist" in proc.stderr
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\0" * 64)
    proc = lmserv("plan", str(junk), home=tmp_path)
    assert proc.returncode == 1 and "not a readable GGUF" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- config


def test_config_precedence_file_env_argument(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[server]\nport = 8081\napi_key = "s3cret"\n')

    def port(**env: str) -> tuple[Any, Any]:
        extra = ["--set", "server.port=8083"] if env.pop("arg", None) else []
        data = as_json(lmserv("config", "show", "--json", *extra, home=tmp_path, env=env))
        entry = data["settings"]["server.port"]
        return entry["value"], (entry["source"], entry["where"])

    assert port() == (8081, ("file", f"{tmp_path / 'config.toml'}:2"))
    assert port(LMSERV_SERVER_PORT="8082") == (8082, ("env", "LMSERV_SERVER_PORT"))
    assert port(LMSERV_SERVER_PORT="8082", arg="1") == (8083, ("argument", "server.port"))

    data = as_json(lmserv("config", "show", "--json", home=tmp_path))
    assert data["config_file"] == str(tmp_path / "config.toml") and data["config_file_exists"]
    assert data["settings"]["server.api_key"]["value"] == "***"  # never printed
    assert data["settings"]["server.host"] == {
        "value": "127.0.0.1",
        "source": "default",
        "where": "",
        "env": "LMSERV_SERVER_HOST",
    }
    text = lmserv("config", "show", home=tmp_path)
    assert text.returncode == 0 and "s3cret" not in text.stdout
    assert f"file ({tmp_path / 'config.toml'}:2)" in text.stdout
    assert lmserv("config", "path", home=tmp_path).stdout.strip() == str(tmp_path / "config.toml")


def test_config_catalog_entries_are_shown(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[catalog.mine]\nurl = "https://example.org/mine.gguf"\nsha256 = "00"\n'
    )
    data = as_json(lmserv("config", "show", "--json", home=tmp_path))
    assert data["catalog"] == {"mine": {"url": "https://example.org/mine.gguf", "sha256": "00"}}


def test_bad_config_is_a_failure_naming_key_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("[server]\nhost = '127.0.0.1'\nprot = 8080\n")
    for args in (("config", "show"), ("gpu",), ("plan", "x.gguf")):
        proc = lmserv(*args, home=tmp_path)
        if args == ("gpu",):  # gpu reads no setting
            assert proc.returncode == 0
            continue
        assert proc.returncode == 1, args
        assert f"unknown key 'prot' in table [server] of the config file {cfg}:3" in proc.stderr
        assert "Did you mean 'port'?" in proc.stderr and "Traceback" not in proc.stderr
    assert lmserv("--help", home=tmp_path).returncode == 0  # help never reads the settings
    assert lmserv("build", "--help", home=tmp_path).returncode == 0
    proc = lmserv("config", "show", home=tmp_path, env={"LMSERV_CONFIG": str(tmp_path / "no.toml")})
    assert proc.returncode == 1 and "does not exist" in proc.stderr


def test_build_takes_its_defaults_from_settings(tmp_path: Path, llama_build: LlamaBuild) -> None:
    # The session build (CPU, RPC, pypi source) is complete, so a build with the same options,
    # all given as settings here, returns at once with what it has.
    env = {
        "LMSERV_PATHS_BUILDS": str(llama_build.bin_dir.parent.parent),
        "LMSERV_BUILD_CUDA": "off",
        "LMSERV_BUILD_RPC": "true",
        "LMSERV_BUILD_SOURCE": "pypi",
    }
    proc = lmserv("build", home=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"llama.cpp {llama_build.commit[:12]} (CPU build)" in proc.stdout
    assert "ggml-rpc-server" in proc.stdout


# --------------------------------------------------------------------------- doctor


def _checks(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in data["checks"]}


def test_doctor_on_this_machine(tmp_path: Path, llama_build: LlamaBuild) -> None:
    env = {"LLAMA_BIN_DIR": str(llama_build.bin_dir)}
    models = tmp_path / ".local" / "share" / "lmserv" / "models"
    models.mkdir(parents=True)
    with FileServer() as srv:  # a.gguf pulled, so verified; b.gguf copied in: unverified
        srv.add("/a.gguf", write_llama_gguf(tmp_path / "a.gguf").read_bytes())
        assert lmserv("pull", srv.url("/a.gguf"), "-q", home=tmp_path).returncode == 0
    write_llama_gguf(models / "b.gguf")
    proc = lmserv("doctor", "--json", home=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    checks = _checks(data)
    assert data["ok"] is True and set(data) == {"ok", "checks"}
    for check in data["checks"]:
        assert set(check) == {"name", "status", "summary", "fix", "details"}
        assert check["status"] in ("ok", "warn", "fail", "info")
    assert checks["config"]["status"] == "ok"
    assert {checks[n]["status"] for n in ("cmake", "compiler", "toolchain")} == {"ok"}
    server = checks["llama-server"]
    assert server["details"]["commit"] == llama_build.commit[:7]
    assert server["details"]["path"] == str(llama_build.bin_dir / "llama-server")
    assert checks["libllama"]["status"] == "ok"
    assert [(m["file"], m["verified"]) for m in checks["models"]["details"]["models"]] == [
        ("a.gguf", True),
        ("b.gguf", False),
    ]
    try:
        _toolchain.find_cuda()
        cuda_usable = True
    except ToolchainMissing:
        cuda_usable = False
    assert (checks["cuda"]["status"] == "ok") == cuda_usable
    if not cuda_usable:
        assert "CUDA builds not possible" in checks["cuda"]["summary"]
        assert "cuBLAS" in checks["cuda"]["summary"] + checks["cuda"]["fix"]
    if not _real_gpu_here():
        assert checks["gpus"]["status"] == "info" and checks["gpus"]["details"]["gpus"] == []
        assert "no GPU found" in checks["gpus"]["summary"]
    text = lmserv("doctor", home=tmp_path, env=env)
    assert text.returncode == 0 and "ready" in text.stdout and "\x1b[" not in text.stdout


def test_doctor_with_broken_config_fails(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[build]\njobs = 'many'\n")
    proc = lmserv("doctor", "--json", home=tmp_path)
    assert proc.returncode == 1
    config = _checks(json.loads(proc.stdout))["config"]
    assert config["status"] == "fail" and "build.jobs" in config["fix"] and ":2" in config["fix"]
    text = lmserv("doctor", home=tmp_path)
    assert text.returncode == 1 and "not ready" in text.stdout


def test_doctor_accepts_the_pypi_cmake_wheel_like_the_builder(tmp_path: Path) -> None:
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler here: the toolchain check would fail for that reason")
    # The `cmake` wheel is a package whose CMAKE_BIN_DIR holds the binary; PATH has no cmake.
    wheel_bin = tmp_path / "site" / "cmake" / "data" / "bin"
    wheel_bin.mkdir(parents=True)
    (wheel_bin.parent.parent / "__init__.py").write_text(f"CMAKE_BIN_DIR = {str(wheel_bin)!r}\n")
    fake_cmake = wheel_bin / "cmake"
    fake_cmake.write_text("#!/bin/sh\necho 'cmake version 3.31.6'\n")
    fake_cmake.chmod(0o755)
    path_bin = tmp_path / "bin"
    path_bin.mkdir()
    (path_bin / "c++").symlink_to(compiler)
    env = {
        "PATH": str(path_bin),
        "PYTHONPATH": f"{cli_env(tmp_path)['PYTHONPATH']}:{tmp_path / 'site'}",
    }
    checks = _checks(json.loads(lmserv("doctor", "--json", home=tmp_path, env=env).stdout))
    assert checks["cmake"]["status"] == "ok", checks["cmake"]
    assert checks["cmake"]["details"]["path"] == str(fake_cmake)
    assert checks["toolchain"]["status"] == "ok", checks["toolchain"]  # the builder agrees


def test_doctor_without_toolchain_or_binaries_fails(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = lmserv("doctor", "--json", home=tmp_path, env={"PATH": str(empty)})
    assert proc.returncode == 1
    checks = _checks(json.loads(proc.stdout))
    assert checks["cmake"]["status"] == "fail" and "cmake" in checks["cmake"]["fix"]
    assert (
        checks["llama-server"]["status"] == "warn"
        and "lmserv build" in checks["llama-server"]["fix"]
    )


# --------------------------------------------------------------------------- colour


def _on_a_tty(args: list[str], env: dict[str, str]) -> str:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [PYTHON, "-m", "lmserv", *args], stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=120)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_colour_only_on_a_tty(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[build]\njobs = 'many'\n")  # a red 'fail' line
    env = cli_env(tmp_path)
    assert "\x1b[31m" in _on_a_tty(["doctor"], env)
    assert "\x1b[" not in _on_a_tty(["doctor"], {**env, "NO_COLOR": "1"})
    assert "\x1b[" not in lmserv("doctor", home=tmp_path).stdout


def test_plan_asks_the_real_llama_server_about_fit(tmp_path: Path, llama_build: LlamaBuild) -> None:
    model = write_llama_gguf(tmp_path / "tiny.gguf")
    env = {"LLAMA_BIN_DIR": str(llama_build.bin_dir), "PATH": str(tmp_path)}
    data = as_json(lmserv("plan", str(model), "--json", home=tmp_path, env=env))
    assert data["llama_fit"] is True  # the pinned build has --fit
    assert data["server_args"] == ["-c", "2048", "-np", "1"]
    # An older llama-server whose --help has no --fit gets the explicit plan.
    old = tmp_path / "old-bin"
    old.mkdir()
    script = old / "llama-server"
    script.write_text(
        "#!/bin/sh\necho '-ngl, --gpu-layers N   number of layers to store in VRAM'\n"
    )
    script.chmod(0o755)
    data = as_json(
        lmserv("plan", str(model), "--json", home=tmp_path, env={**env, "LLAMA_BIN_DIR": str(old)})
    )
    assert data["llama_fit"] is False and data["server_args"] == data["explicit_args"]
