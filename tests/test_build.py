"""build_llama_cpp: the real llama.cpp build, and the builder's logic on a miniature project."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from _fake_llama import REAL_CMAKE, cmake_wrapper, make_fake_llama, needs_cmake
from lmserv.errors import BuildError, SourceError, ToolchainMissing, UnsafeArchive
from lmserv.install import LlamaBuild, _source, build_llama_cpp
from lmserv.install._source import PINNED_COMMIT
from lmserv.install.llama_build import CORE_TARGETS, RPC_TARGET

# --- the real build ---------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["llama-server", "llama-cli"])
def test_real_build_binaries_report_pinned_commit(llama_build: LlamaBuild, tool: str) -> None:
    out = subprocess.run(
        [str(llama_build.binary(tool)), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = out.stdout + out.stderr
    assert f"commit {PINNED_COMMIT[:7]}" in text
    assert llama_build.commit == PINNED_COMMIT


def test_real_build_has_everything_users_need(llama_build: LlamaBuild) -> None:
    for name in (*CORE_TARGETS, RPC_TARGET):
        assert os.access(llama_build.binaries[name], os.X_OK), name
    assert (llama_build.lib_dir / "libllama.so").is_file()
    assert (llama_build.lib_dir / "libggml.so").is_file()
    assert llama_build.cuda is False
    assert llama_build.options["GGML_RPC"] == "ON"
    assert llama_build.options["LLAMA_USE_PREBUILT_UI"] == "OFF"  # never stall on the network
    assert llama_build.source_dir is not None
    assert (llama_build.source_dir / "include" / "llama.h").is_file()


@needs_cmake
def test_real_build_second_call_skips_cmake(
    llama_build: LlamaBuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "cmake-calls"
    wrapper = cmake_wrapper(tmp_path / "bin", str(REAL_CMAKE), record)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    again = build_llama_cpp(
        llama_build.bin_dir.parent.parent,
        source="pypi",
        cuda=False,
        rpc=True,
        ui="auto",  # as build_shared: the page wherever npm is
        progress=False,
    )
    assert again.binaries == llama_build.binaries
    assert again.commit == llama_build.commit
    assert not record.exists(), "a matching stamp must not run cmake"


def test_default_source_falls_back_to_pypi_when_git_unreachable(
    llama_build: LlamaBuild,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("LMSERV_LLAMA_CPP_GIT_URL", f"file://{tmp_path}/nowhere/llama.cpp.git")
    with caplog.at_level(logging.WARNING):
        tree = _source.get_source(None, None, tmp_path / "work")
    assert tree.kind == "pypi"
    assert tree.commit == PINNED_COMMIT
    assert (tree.path / "include" / "llama.h").is_file()
    assert "falling back to llama-cpp-python==0.3.36" in caplog.text


def test_pypi_source_into_a_new_folder(llama_build: LlamaBuild, tmp_path: Path) -> None:
    tree = _source.get_source("pypi", None, tmp_path / "not" / "yet" / "there")
    assert tree.commit == PINNED_COMMIT
    assert tree.path.is_relative_to(tmp_path)
    with pytest.raises(SourceError, match=r"holds llama\.cpp commit 0c1e570 only"):
        _source.get_source("pypi", "deadbeef", tmp_path / "other")


# --- builder logic on the miniature project ---------------------------------------------------


@pytest.fixture()
def fake_src(tmp_path: Path) -> tuple[Path, str]:
    return make_fake_llama(tmp_path / "fake-llama")


@pytest.fixture()
def counting_cmake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    record = tmp_path / "cmake-calls"
    wrapper = cmake_wrapper(tmp_path / "wrapbin", str(REAL_CMAKE), record)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    return record


def _configures(record: Path) -> int:
    if not record.exists():
        return 0
    return sum(1 for line in record.read_text().splitlines() if line.startswith("-S "))


def test_build_idempotent_and_options_invalidate_stamp(
    fake_src: tuple[Path, str], tmp_path: Path, counting_cmake: Path
) -> None:
    src, commit = fake_src
    out = tmp_path / "out"
    seen: list[tuple[int, int]] = []
    first = build_llama_cpp(
        out, source=src, cuda=False, progress=lambda n, t, _l: seen.append((n, t))
    )
    assert first.commit == commit
    assert first.bin_dir == out / "build-cpu" / "bin"
    assert RPC_TARGET not in first.binaries
    assert subprocess.run(
        [str(first.binary("llama-server"))], capture_output=True, text=True, check=True
    ).stdout.startswith("llama-server version")
    assert seen and seen[-1][0] == seen[-1][1], "progress must reach n == N"
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)
    assert (out / "build-cpu.log").read_text().count("Linking C executable") >= 4
    assert _configures(counting_cmake) == 1

    started = time.monotonic()
    second = build_llama_cpp(out, source=src, cuda=False, progress=False)
    assert second.binaries == first.binaries
    assert _configures(counting_cmake) == 1, "unchanged options must not run cmake"
    assert time.monotonic() - started < 30  # sanity bound only; speed is benchmarked elsewhere

    third = build_llama_cpp(out, source=src, cuda=False, rpc=True, progress=False)
    assert _configures(counting_cmake) == 2, "changed options must rebuild"
    assert third.binaries[RPC_TARGET].is_file()
    assert third.options["GGML_RPC"] == "ON"


def test_two_processes_building_same_folder_are_serialized(
    fake_src: tuple[Path, str], tmp_path: Path, counting_cmake: Path
) -> None:
    src, _ = fake_src
    out = tmp_path / "out"
    script = (
        "import sys; from lmserv.install import build_llama_cpp; "
        "b = build_llama_cpp(sys.argv[1], source=sys.argv[2], cuda=False, progress=False); "
        "print(b.commit)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(out), str(src)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    # With the lock, the second process waits and then finds the finished stamp.
    assert _configures(counting_cmake) == 1


def test_failed_compile_raises_with_log_tail_and_leaves_no_stamp(tmp_path: Path) -> None:
    src, _ = make_fake_llama(tmp_path / "broken", broken=True)
    out = tmp_path / "out"
    with pytest.raises(BuildError) as info:
        build_llama_cpp(out, source=src, cuda=False, progress=False)
    err = info.value
    assert err.log_path == out / "build-cpu.log"
    assert "this is not C" in err.log_tail or "error" in err.log_tail
    assert str(out / "build-cpu.log") in str(err)
    assert not (out / "build-cpu" / "lmserv-build.json").exists()


def test_git_source_clones_once_then_reuses_checkout(
    fake_src: tuple[Path, str], tmp_path: Path
) -> None:
    src, commit = fake_src
    out = tmp_path / "out"
    built = build_llama_cpp(out, source=f"file://{src}", ref=commit, cuda=False, progress=False)
    assert built.commit == commit
    assert (out / "llama.cpp" / "main.c").is_file()
    shutil.rmtree(src)  # the origin is gone: a second call must not need it
    again = build_llama_cpp(out, source=f"file://{src}", ref=commit, cuda=False, progress=False)
    assert again.commit == commit


def test_wrong_commit_in_local_folder_with_explicit_ref_is_refused(
    fake_src: tuple[Path, str], tmp_path: Path
) -> None:
    src, _ = fake_src
    with pytest.raises(SourceError, match="not 0c1e57098bba"):
        build_llama_cpp(tmp_path / "out", source=src, ref=PINNED_COMMIT, cuda=False)


def test_tarball_source_and_unsafe_tarball(fake_src: tuple[Path, str], tmp_path: Path) -> None:
    src, commit = fake_src
    archive = tmp_path / "fake.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="fake-llama")
    tree = _source.get_source(archive, None, tmp_path / "work")
    assert tree.kind == "tarball"
    assert tree.commit == commit

    xz = tmp_path / "fake.tar.xz"
    with tarfile.open(xz, "w:xz") as tar:
        tar.add(src, arcname="fake-llama")
    assert _source.get_source(xz, None, tmp_path / "work-xz").commit == commit

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(SourceError, match=r"cannot extract the llama\.cpp source archive"):
        _source.get_source(truncated, None, tmp_path / "work-truncated")

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 0
        tar.addfile(info)
    with pytest.raises(UnsafeArchive, match=r"\.\./outside\.txt"):
        _source.get_source(evil, None, tmp_path / "work2")
    assert not (tmp_path / "outside.txt").exists()


@needs_cmake  # the toolchain is found before the source is read
def test_bad_source_value_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a git URL, an existing folder or tarball"):
        build_llama_cpp(tmp_path / "out", source="no-such-thing", cuda=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match=r"not a llama\.cpp source folder"):
        build_llama_cpp(tmp_path / "out", source=empty, cuda=False)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cuda must be"):
        build_llama_cpp(tmp_path, cuda="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="jobs must be"):
        build_llama_cpp(tmp_path, jobs=0, cuda=False)


def test_cuda_required_but_missing_names_what_is_missing(
    fake_src: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # This machine has nvcc but no cuBLAS; hide nvcc too so the message covers both cases.
    monkeypatch.setenv("PATH", str(Path(str(REAL_CMAKE)).parent))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    src, _ = fake_src
    with pytest.raises(ToolchainMissing, match="cuBLAS") as info:
        build_llama_cpp(tmp_path / "out", source=src, cuda=True)
    assert "lmserv build --cuda off" in str(info.value)
    with caplog.at_level(logging.WARNING):
        auto = build_llama_cpp(tmp_path / "out", source=src, cuda="auto", progress=False)
    assert auto.cuda is False
    assert "building for the CPU instead" in caplog.text


def test_quantized_model_runs_on_this_cpu(llama_build: LlamaBuild, tmp_path: Path) -> None:
    """A Q8_0 model must run: ggml's AMX kernels trap (SIGILL) at this commit where AMX exists."""
    from lmserv.testing import write_synthetic_model

    model = write_synthetic_model(tmp_path / "q8.gguf", params=20_000_000, quant="q8_0")
    out = subprocess.run(
        [
            str(llama_build.binary("llama-bench")),
            "-m",
            str(model),
            "-p",
            "16",
            "-n",
            "4",
            "-r",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, f"llama-bench exited {out.returncode}:\n{out.stderr[-2000:]}"
    assert "q8_0" in out.stdout.lower()


def test_cpu_options_leave_out_amx_on_recorded_xeon() -> None:
    from lmserv.install._toolchain import cpu_feature_options

    recorded = (Path(__file__).parent / "data" / "cpuinfo-xeon-amx.txt").read_text()
    opts = cpu_feature_options(recorded, platform="linux")
    assert opts["GGML_NATIVE"] == "OFF"
    assert {opts[k] for k in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")} == {"OFF"}
    assert opts["GGML_AVX512"] == opts["GGML_AVX512_VNNI"] == opts["GGML_AVX2"] == "ON"
    no_amx = recorded.replace("amx_tile", "").replace("amx_int8", "").replace("amx_bf16", "")
    assert cpu_feature_options(no_amx, platform="linux") == {}
    assert cpu_feature_options(recorded, platform="win32") == {}


@needs_cmake
def test_fast_path_needs_every_option_to_match(tmp_path: Path) -> None:
    import json

    from lmserv.install import llama_build as lb
    from lmserv.install._toolchain import find_toolchain

    toolchain = find_toolchain()
    targets = [*CORE_TARGETS, "llama", "ggml"]
    bin_dir = tmp_path / "build-cpu" / "bin"
    bin_dir.mkdir(parents=True)
    for name in CORE_TARGETS:
        (bin_dir / name).write_text("")
    for lib in ("libllama.so", "libggml.so"):
        (bin_dir / lib).write_text("")
    options = {"GGML_RPC": "OFF", "GGML_NATIVE": "OFF", "LLAMA_USE_PREBUILT_UI": "ON"}
    stamp = {**lb._stamp_key(PINNED_COMMIT, options, targets), "cuda": False}
    (tmp_path / "build-cpu" / "lmserv-build.json").write_text(json.dumps(stamp))

    def fast(opts: dict[str, str], any_ui: bool) -> LlamaBuild | None:
        return lb._fast_path(
            tmp_path / "build-cpu",
            PINNED_COMMIT,
            opts,
            any_ui=any_ui,
            targets=targets,
            toolchain=toolchain,
            platform="linux",
            log_path=tmp_path / "log",
        )

    assert fast(options, any_ui=False) is not None
    assert fast({**options, "GGML_NATIVE": "ON"}, any_ui=False) is None
    ui_off = {**options, "LLAMA_USE_PREBUILT_UI": "OFF"}
    assert fast(ui_off, any_ui=False) is None, "source='pypi' never uses a UI build"
    assert fast(ui_off, any_ui=True) is not None, "the default source accepts either"
    (bin_dir / "llama-cli").unlink()
    assert fast(options, any_ui=False) is None, "a missing binary means rebuild"
