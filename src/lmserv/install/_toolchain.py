"""Finding the tools a llama.cpp build needs, per platform, without running a build.

Kept apart from :mod:`lmserv.install.llama_build` so the decisions (which cmake, which generator,
is CUDA usable, where is NCCL) are plain functions that tests can drive with a fake ``which`` and
a ``platform`` argument: CI is Linux, but the Windows branch must be right too.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmserv.errors import ToolchainMissing

__all__ = [
    "DEFAULT_CUDA_ARCHITECTURES",
    "CudaToolkit",
    "Toolchain",
    "cpu_feature_options",
    "cuda_architectures",
    "find_cmake",
    "find_cuda",
    "find_cxx",
    "find_nccl",
    "find_ninja",
    "find_toolchain",
    "nvcc_version",
]

log = logging.getLogger(__name__)

Which = Callable[[str], "str | None"]
PypiTool = Callable[[str, str, str], "str | None"]

# Used when no GPU can be queried (a build machine without a GPU). nvcc 13 dropped everything
# before Turing; 12.8 added Blackwell (100, 120).
DEFAULT_CUDA_ARCHITECTURES = "75;80;86;89;90;100;120"
_LEGACY_CUDA_ARCHITECTURES = "61;70;75;80;86;89;90"

_VSWHERE = r"C:\Program Files (x86)\Microsoft Visual Studio\Installer\vswhere.exe"


@dataclass(frozen=True)
class Toolchain:
    """The programs a build will run: ``cmake``, the generator, and an optional compiler cache."""

    cmake: str
    generator: str
    ninja: str | None
    compiler_launcher: str | None
    platform: str
    notes: tuple[str, ...] = field(default=())

    @property
    def multi_config(self) -> bool:
        """Visual Studio generators pick the configuration at build time, not configure time."""
        return self.generator.startswith("Visual Studio")


def _pypi_tool(module: str, attr: str, exe: str) -> str | None:
    """The ``cmake`` / ``ninja`` PyPI wheels ship their binary inside the package."""
    try:
        mod = __import__(module)
    except ImportError:
        return None
    folder = getattr(mod, attr, None)
    if not folder:
        return None
    candidate = Path(folder) / exe
    return str(candidate) if candidate.exists() else None


def find_cmake(
    *, platform: str | None = None, which: Which = shutil.which, pypi_tool: PypiTool = _pypi_tool
) -> str | None:
    """cmake on PATH, else the one inside the PyPI ``cmake`` wheel; ``None`` when neither."""
    exe = ".exe" if (platform or sys.platform) == "win32" else ""
    return which("cmake") or pypi_tool("cmake", "CMAKE_BIN_DIR", "cmake" + exe)


def find_ninja(
    *, platform: str | None = None, which: Which = shutil.which, pypi_tool: PypiTool = _pypi_tool
) -> str | None:
    """ninja on PATH, else the one inside the PyPI ``ninja`` wheel; ``None`` when neither."""
    exe = ".exe" if (platform or sys.platform) == "win32" else ""
    return which("ninja") or pypi_tool("ninja", "BIN_DIR", "ninja" + exe)


def find_cxx(*, which: Which = shutil.which) -> str | None:
    """The C++ compiler a non-Windows build uses (c++, g++, clang++ on PATH), or ``None``."""
    return which("c++") or which("g++") or which("clang++")


def find_toolchain(
    *,
    platform: str | None = None,
    which: Which = shutil.which,
    exists: Callable[[str], bool] = os.path.exists,
    pypi_tool: PypiTool = _pypi_tool,
) -> Toolchain:
    """Pick cmake, a generator and ccache for ``platform`` (default: this one).

    Raises :class:`ToolchainMissing` naming the missing tool and how to install it.
    """
    platform = platform or sys.platform
    win = platform == "win32"
    notes: list[str] = []

    cmake = find_cmake(platform=platform, which=which, pypi_tool=pypi_tool)
    if cmake is None:
        raise ToolchainMissing(
            "cmake was not found on PATH nor as the PyPI 'cmake' package. "
            "Install it with `python -m pip install cmake ninja`"
            + ("" if win else " or your system package manager (e.g. `apt-get install cmake`)")
            + "."
        )
    ninja = find_ninja(platform=platform, which=which, pypi_tool=pypi_tool)

    if win:
        cl = which("cl") or which("cl.exe")
        has_vs = exists(_VSWHERE)
        if cl and ninja:
            generator = "Ninja"
        elif has_vs:
            # Outside a Developer Prompt cl.exe is not on PATH, but the VS generator finds MSVC.
            generator = "Visual Studio 17 2022"
            notes.append("cl.exe not on PATH: using the Visual Studio generator")
        else:
            raise ToolchainMissing(
                "MSVC (the Microsoft C++ compiler) was not found: no cl.exe on PATH and no "
                f"Visual Studio installation ({_VSWHERE} is missing). Install 'Build Tools for "
                "Visual Studio' with the 'Desktop development with C++' workload, then run "
                "lmserv from a 'x64 Native Tools Command Prompt'."
            )
    else:
        compiler = find_cxx(which=which)
        if compiler is None:
            raise ToolchainMissing(
                "no C++ compiler (c++, g++ or clang++) was found on PATH. Install one, e.g. "
                "`apt-get install build-essential` or `xcode-select --install`."
            )
        generator = "Ninja" if ninja else "Unix Makefiles"
        if not ninja:
            notes.append("ninja not found: using Makefiles (`pip install ninja` builds faster)")

    launcher = which("ccache") or which("sccache")
    return Toolchain(
        cmake=cmake,
        generator=generator,
        ninja=ninja if generator == "Ninja" else None,
        compiler_launcher=launcher,
        platform=platform,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class CudaToolkit:
    """A usable CUDA toolkit: nvcc, its version, and the cuBLAS headers and library."""

    nvcc: str
    version: tuple[int, int]
    root: str


def _cuda_roots(nvcc: str | None) -> list[Path]:
    roots: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            roots.append(Path(os.environ[var]))
    if nvcc:
        roots.append(Path(nvcc).resolve().parent.parent)
    roots += [Path("/usr/local/cuda"), Path("/usr")]
    return roots


def nvcc_version(nvcc: str) -> tuple[int, int]:
    """``(major, minor)`` from ``nvcc --version`` (``release 12.4``); ``(0, 0)`` if unreadable."""
    try:
        out = subprocess.run(
            [nvcc, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return (0, 0)
    match = re.search(r"release (\d+)\.(\d+)", out or "")
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def find_cuda(*, which: Which = shutil.which) -> CudaToolkit:
    """Return the CUDA toolkit, or raise :class:`ToolchainMissing` naming every missing part."""
    nvcc = which("nvcc")
    if nvcc is None:
        for root in _cuda_roots(None):
            candidate = root / "bin" / "nvcc"
            if candidate.exists():
                nvcc = str(candidate)
                break
    missing: list[str] = []
    if nvcc is None:
        missing.append(
            "nvcc (the CUDA compiler; not on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin)"
        )
    roots = _cuda_roots(nvcc)
    header_dirs = [r / "include" for r in roots] + [
        Path(p) for p in glob.glob("/usr/local/cuda*/targets/*/include")
    ]
    if not any((d / "cublas_v2.h").exists() for d in header_dirs):
        missing.append(
            "cuBLAS headers (cublas_v2.h, looked in "
            + ", ".join(str(d) for d in header_dirs[:4])
            + ")"
        )
    lib_dirs = [r / sub for r in roots for sub in ("lib64", "lib", "lib/x86_64-linux-gnu")]
    if not any(list(d.glob("libcublas.so*")) or (d / "cublas.lib").exists() for d in lib_dirs):
        missing.append("the cuBLAS library (libcublas.so)")
    if missing:
        raise ToolchainMissing(
            "a CUDA build needs "
            + "; ".join(missing)
            + ". Install the CUDA toolkit with cuBLAS (e.g. `apt-get install nvidia-cuda-toolkit`"
            " or NVIDIA's cuda-toolkit package), or build for the CPU with `cuda=False` / "
            "`lmserv build --cuda off`."
        )
    assert nvcc is not None
    return CudaToolkit(nvcc=nvcc, version=nvcc_version(nvcc), root=str(roots[0]))


def cuda_architectures(compute_caps: list[str], nvcc_version: tuple[int, int]) -> str:
    """The ``CMAKE_CUDA_ARCHITECTURES`` value: the detected GPUs, else a default list.

    >>> cuda_architectures(["9.0", "8.6", "9.0"], (12, 4))
    '86;90'
    >>> cuda_architectures([], (13, 0))
    '75;80;86;89;90;100;120'
    >>> cuda_architectures([], (12, 2))
    '61;70;75;80;86;89;90'
    """
    archs = sorted({cap.replace(".", "") for cap in compute_caps if cap.strip()}, key=int)
    if archs:
        return ";".join(archs)
    return DEFAULT_CUDA_ARCHITECTURES if nvcc_version >= (12, 8) else _LEGACY_CUDA_ARCHITECTURES


def find_nccl(cuda_root: str | None = None) -> tuple[str, str] | None:
    """``(include_dir, library_path)`` of NCCL, from the system or the ``nvidia-nccl-cu*`` wheel.

    The wheel ships only ``libnccl.so.2`` (no ``libnccl.so`` link), which CMake's
    ``find_library(nccl)`` misses, so the caller passes both paths explicitly.
    """
    candidates: list[Path] = []
    for var in ("NCCL_ROOT", "NCCL_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    if cuda_root:
        candidates.append(Path(cuda_root))
    candidates += [Path("/usr/local/cuda"), Path("/usr"), Path("/usr/local")]
    try:
        import nvidia.nccl  # type: ignore[import-not-found]

        candidates += [Path(p) for p in nvidia.nccl.__path__]
    except ImportError:
        pass
    for root in candidates:
        include = root / "include"
        if not (include / "nccl.h").exists():
            continue
        for sub in ("lib", "lib64", "lib/x86_64-linux-gnu"):
            libs = sorted((root / sub).glob("libnccl.so*"))
            if libs:
                return str(include), str(libs[0])
    return None


# cpuinfo flag(s) -> the ggml option that enables the same instructions without -march=native.
_X86_FEATURES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("sse4_2",), "GGML_SSE42"),
    (("f16c",), "GGML_F16C"),
    (("fma",), "GGML_FMA"),
    (("bmi2",), "GGML_BMI2"),
    (("avx",), "GGML_AVX"),
    (("avx2",), "GGML_AVX2"),
    (("avx_vnni",), "GGML_AVX_VNNI"),
    (("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"), "GGML_AVX512"),
    (("avx512vbmi",), "GGML_AVX512_VBMI"),
    (("avx512_vnni",), "GGML_AVX512_VNNI"),
    (("avx512_bf16",), "GGML_AVX512_BF16"),
)


def cpu_feature_options(cpuinfo: str, *, platform: str | None = None) -> dict[str, str]:
    """CMake options that keep a native-speed CPU build but leave out Intel AMX.

    At the pinned commit ggml's AMX kernels crash with SIGILL when built by GCC (the tile
    configuration it loads is built on the stack and optimized away; upstream PR #26954), on
    every CPU that advertises AMX, e.g. Sapphire Rapids cloud VMs, as soon as a Q8_0/Q4_0 model
    runs. On such CPUs ``-march=native`` would switch AMX on, so this returns ``GGML_NATIVE=OFF``
    plus each instruction set the CPU has; on others it returns nothing (native build).

    >>> cpu_feature_options("flags : fpu sse4_2 avx avx2 fma f16c bmi2", platform="linux")
    {}
    >>> opts = cpu_feature_options("flags : sse4_2 avx avx2 amx_tile amx_int8", platform="linux")
    >>> opts["GGML_NATIVE"], opts["GGML_AVX2"], opts["GGML_AMX_INT8"], opts["GGML_AVX512"]
    ('OFF', 'ON', 'OFF', 'OFF')
    """
    platform = platform or sys.platform
    if platform == "win32":
        return {}  # MSVC builds never enable AMX through GGML_NATIVE
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    if "amx_tile" not in flags:
        return {}
    opts = {
        "GGML_NATIVE": "OFF",
        "GGML_AMX_TILE": "OFF",
        "GGML_AMX_INT8": "OFF",
        "GGML_AMX_BF16": "OFF",
    }
    for needed, option in _X86_FEATURES:
        opts[option] = "ON" if all(flag in flags for flag in needed) else "OFF"
    return opts


def read_cpuinfo() -> str:
    """``/proc/cpuinfo`` on Linux, empty elsewhere."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""
