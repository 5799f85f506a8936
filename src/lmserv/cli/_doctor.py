"""The checks behind ``lmserv doctor``: each says what it found and, when needed, what to do.

Every check runs even when an earlier one fails (a broken config file must not hide a missing
compiler). The essential chain is: a valid config, and either a toolchain that can build
llama.cpp (cmake + a C++ compiler) or an already built ``llama-server``.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmserv import __version__, config
from lmserv._units import human_bytes
from lmserv.cli._common import COUNTING
from lmserv.errors import BinaryNotFound, ConfigError, ModelError, ToolchainMissing
from lmserv.gpu import GPU, detect_gpus
from lmserv.install import _toolchain, finder
from lmserv.install._models import list_models, resolve_model
from lmserv.install._source import PINNED_COMMIT

__all__ = ["Check", "Report", "run_checks"]

Status = Literal["ok", "warn", "fail", "info"]
_TIMEOUT_S = 30
_BINARIES = ("llama-server", "llama-cli", "llama-bench", "llama-quantize", "ggml-rpc-server")
_OPTIONAL_BINARIES = {"llama-bench", "llama-quantize", "ggml-rpc-server"}


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    summary: str
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def _first_line(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False, errors="replace"
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def _check_config() -> Check:
    path = config.config_file()
    try:
        settings = config.load_settings()
    except ConfigError as exc:
        return Check(
            "config", "fail", f"{path} is invalid", fix=str(exc), details={"path": str(path)}
        )
    state = "in use" if settings.config_file_exists else "not present, defaults in use"
    extra = f", {len(settings.catalog)} catalog entries" if settings.catalog else ""
    return Check(
        "config",
        "ok",
        f"{path} ({state}{extra})",
        details={"path": str(path), "exists": settings.config_file_exists},
    )


def _check_toolchain() -> list[Check]:
    checks: list[Check] = []
    win = sys.platform == "win32"
    cmake = _toolchain.find_cmake()  # PATH or the PyPI wheel, exactly as the builder looks
    checks.append(
        Check(
            "cmake", "ok", f"{cmake} ({_first_line([cmake, '--version'])})", details={"path": cmake}
        )
        if cmake
        else Check(
            "cmake",
            "fail",
            "not found on PATH nor as the PyPI 'cmake' package",
            fix="install it: `python -m pip install cmake ninja` or `apt-get install cmake`",
        )
    )
    ninja = _toolchain.find_ninja()
    checks.append(
        Check("ninja", "ok", f"{ninja} ({_first_line([ninja, '--version'])})")
        if ninja
        else Check(
            "ninja", "info", "not found: builds use Makefiles", fix="`pip install ninja` is faster"
        )
    )
    if not win:
        cxx = _toolchain.find_cxx()
        checks.append(
            Check("compiler", "ok", f"{cxx} ({_first_line([cxx, '--version'])})")
            if cxx
            else Check(
                "compiler",
                "fail",
                "no C++ compiler (c++, g++, clang++) on PATH",
                fix="`apt-get install build-essential` or `xcode-select --install`",
            )
        )
    try:
        chain = _toolchain.find_toolchain()
        checks.append(
            Check(
                "toolchain",
                "ok",
                f"can build llama.cpp ({chain.generator}"
                + (
                    f", cache {Path(chain.compiler_launcher).name}"
                    if chain.compiler_launcher
                    else ""
                )
                + ")",
                details={"generator": chain.generator, "notes": list(chain.notes)},
            )
        )
    except ToolchainMissing as exc:
        checks.append(Check("toolchain", "fail", "cannot build llama.cpp", fix=str(exc)))
    return checks


def _release(version: tuple[int, int]) -> str:
    return ".".join(map(str, version)) if version != (0, 0) else "?"


def _check_cuda(gpus: list[GPU]) -> tuple[Check, str | None]:
    nvidia = [g for g in gpus if g.backend == "cuda"]
    try:
        kit = _toolchain.find_cuda()
    except ToolchainMissing as exc:
        nvcc = shutil.which("nvcc")
        missing = str(exc).split(". Install")[0].removeprefix("a CUDA build needs ")
        found = f"nvcc {_release(_toolchain.nvcc_version(nvcc))} at {nvcc}, but " if nvcc else ""
        status: Status = "warn" if nvidia else "info"
        summary = f"{found}missing {missing}: CUDA builds not possible"
        summary += "" if nvidia else " (no NVIDIA GPU here, so CPU builds are the right ones)"
        return Check("cuda", status, summary, fix=str(exc)), None
    version = _release(kit.version)
    return Check("cuda", "ok", f"nvcc {version} at {kit.nvcc}, cuBLAS found"), kit.root


def _check_gpus(gpus: list[GPU]) -> Check:
    if not gpus:
        return Check(
            "gpus",
            "info",
            "no GPU found (NVML, nvidia-smi, rocm-smi): llama.cpp runs on the CPU",
            details={"gpus": []},
        )
    lines = [
        f"[{g.index}] {g.name} ({g.backend}"
        + (f" {g.compute_capability}" if g.compute_capability else "")
        + f", {human_bytes(g.free_memory)} free of {human_bytes(g.total_memory)},"
        f" driver {g.driver or '?'})"
        for g in gpus
    ]
    return Check("gpus", "ok", "; ".join(lines), details={"gpus": [g.to_dict() for g in gpus]})


def _check_nccl(gpus: list[GPU], cuda_root: str | None) -> Check:
    nccl = _toolchain.find_nccl(cuda_root)
    several = len([g for g in gpus if g.backend == "cuda"]) > 1
    if nccl:
        return Check("nccl", "ok", f"{nccl[1]}", details={"include": nccl[0], "library": nccl[1]})
    return Check(
        "nccl",
        "warn" if several else "info",
        "not found" + ("" if several else " (only matters with 2+ NVIDIA GPUs)"),
        fix="`pip install nvidia-nccl-cu12`, then `lmserv build --cuda on` again"
        if several
        else "",
    )


def _server_version(binary: Path) -> tuple[str, str]:
    """``(version, commit)`` from ``llama-server --version`` (it prints to stderr)."""
    try:
        proc = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
            errors="replace",
        )
    except (OSError, subprocess.SubprocessError):
        return "", ""
    text = proc.stdout + proc.stderr
    m = re.search(
        r"version:\s*(\S+)(?:\s*\(build \d+,\s*commit ([0-9a-f]+)\)|\s*\(([0-9a-f]+)\))?", text
    )
    if not m:
        return "", ""
    return m.group(1), m.group(2) or m.group(3) or ""


def _check_binaries(gpus: list[GPU]) -> tuple[list[Check], bool]:
    checks: list[Check] = []
    server_ok = False
    for name in _BINARIES:
        try:
            path = finder.find_binary(name)
        except BinaryNotFound:
            optional = name in _OPTIONAL_BINARIES
            checks.append(
                Check(
                    name,
                    "info" if optional else "warn",
                    "not found",
                    fix="`lmserv build --rpc` builds it"
                    if name == "ggml-rpc-server"
                    else "`lmserv build` builds it, or set LLAMA_BIN_DIR to a folder that has it",
                )
            )
            continue
        if name != "llama-server":
            checks.append(Check(name, "ok", str(path)))
            continue
        version, commit = _server_version(path)
        server_ok = bool(version)
        details: dict[str, Any] = {"path": str(path), "version": version, "commit": commit}
        if not version:
            checks.append(
                Check(
                    name,
                    "fail",
                    f"{path} does not run (`--version` failed)",
                    fix="rebuild it with `lmserv build`",
                    details=details,
                )
            )
            continue
        pinned = commit and PINNED_COMMIT.startswith(commit[:7])
        summary = f"{path} (version {version}, commit {commit or '?'})"
        cuda_lib = any(path.parent.glob("*ggml-cuda*"))
        details["cuda"] = cuda_lib
        if [g for g in gpus if g.backend == "cuda"] and not cuda_lib:
            checks.append(
                Check(
                    name,
                    "warn",
                    summary + ": a CPU-only build, but an NVIDIA GPU is present",
                    fix="`lmserv build --cuda on` to use the GPU",
                    details=details,
                )
            )
        elif not pinned:
            checks.append(
                Check(
                    name,
                    "warn",
                    summary + f": not the pinned commit {PINNED_COMMIT[:7]}",
                    fix="`lmserv build` builds the tested commit",
                    details=details,
                )
            )
        else:
            checks.append(
                Check(name, "ok", summary + (", CUDA" if cuda_lib else ", CPU"), details=details)
            )
    try:
        checks.append(Check("libllama", "ok", str(finder.find_library("llama"))))
    except BinaryNotFound:
        checks.append(
            Check(
                "libllama",
                "warn",
                "not found (needed by lmserv.Llama)",
                fix="`lmserv build` builds the shared libraries, or set LLAMA_LIB_DIR",
            )
        )
    return checks, server_ok


def _check_models() -> Check:
    folder = config.models_dir()
    if not folder.is_dir():
        return Check(
            "models",
            "info",
            f"{folder} does not exist yet: no models",
            fix="`lmserv pull NAME` downloads one",
            details={"path": str(folder), "models": []},
        )
    # The same listing and the same "verified" as `lmserv list`: one answer per file.
    local = list_models(folder)
    models: list[dict[str, Any]] = [
        {
            "file": m.path.name,
            "size": m.size,
            "verified": m.verified,
            "catalog_name": m.catalog_name,
        }
        for m in local
        if not m.partial
    ]
    partial = sum(1 for m in local if m.partial)
    summary = f"{folder}: {len(models)} model(s)"
    if models:
        summary += ", " + ", ".join(
            f"{m['file']} ({human_bytes(m['size'])}{', verified' if m['verified'] else ''})"
            for m in models
        )
    if partial:
        summary += f"; {partial} unfinished download(s) (`lmserv pull` resumes them)"
    return Check(
        "models",
        "ok" if models else "info",
        summary,
        details={"path": str(folder), "models": models, "partial": partial},
    )


def _check_default_model() -> Check | None:
    """Whether the ``models.default`` setting names a model ``lmserv run`` finds without a pull;
    resolved by the same function as every command. ``None`` when the setting is unset."""
    default = config.load_settings().models.default
    if not default:
        return None
    if default == COUNTING:
        return Check("default-model", "ok", f"{COUNTING!r}: the built-in test model")
    try:
        path = resolve_model(default, pull=False)
    except (ModelError, ConfigError) as exc:
        return Check(
            "default-model",
            "warn",
            f"models.default = {default!r} is not available here",
            fix=str(exc),
            details={"spec": default},
        )
    return Check(
        "default-model",
        "ok",
        f"{default!r} -> {path}",
        details={"spec": default, "path": str(path)},
    )


def run_checks() -> Report:
    """Run every check; ``ok`` is the essential chain (config, and toolchain or binaries)."""
    checks = [
        Check(
            "lmserv",
            "info",
            f"{__version__} on Python {platform.python_version()}, {platform.system()} "
            f"{platform.machine()}",
        ),
        _check_config(),
    ]
    config_ok = checks[-1].status == "ok"
    toolchain = _check_toolchain()
    checks += toolchain
    gpus = detect_gpus()
    checks.append(_check_gpus(gpus))
    cuda, cuda_root = _check_cuda(gpus)
    checks += [cuda, _check_nccl(gpus, cuda_root)]
    binaries: list[Check] = []
    server_ok = False
    if config_ok:  # the finder and models folder read the config; a broken one is reported above
        binaries, server_ok = _check_binaries(gpus)
        checks += binaries
        checks.append(_check_models())
        default_model = _check_default_model()
        if default_model is not None:
            checks.append(default_model)
    can_build = all(
        c.status == "ok" for c in toolchain if c.name in ("cmake", "compiler", "toolchain")
    )
    return Report(tuple(checks), ok=config_ok and (can_build or server_ok))
