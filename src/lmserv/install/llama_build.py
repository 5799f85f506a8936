"""Compile llama.cpp with CMake: :func:`build_llama_cpp`.

The build is idempotent (a stamp of commit + options beside the binaries makes a repeat call
return at once), serialized across processes by a file lock, shows progress from ninja's
``[n/N]`` lines, and never waits on the network: the web UI download is off unless the source
came over the network and the UI host answers. With npm on the machine the chat page is built
from the source instead (:mod:`lmserv.install._ui`, cached) and the download stays off.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from filelock import FileLock

from lmserv import config
from lmserv._fs import atomic_write
from lmserv.errors import BuildError, ConfigError, ToolchainMissing
from lmserv.gpu import cuda_compute_capabilities
from lmserv.install import _source, _toolchain, _ui
from lmserv.install._runner import Progress, Runner, default_progress
from lmserv.install._source import PINNED_COMMIT, SourceTree
from lmserv.install._toolchain import Toolchain
from lmserv.install.finder import shared_build_dir

__all__ = [
    "CORE_TARGETS",
    "RPC_TARGET",
    "LlamaBuild",
    "build_llama_cpp",
    "build_shared",
    "cmake_commands",
    "shared_build_dir",
]

log = logging.getLogger(__name__)

CORE_TARGETS = ("llama-server", "llama-cli", "llama-bench", "llama-quantize")
LIBRARY_TARGETS = ("llama", "ggml")
RPC_TARGET = "ggml-rpc-server"
_STAMP = "lmserv-build.json"
_STAMP_VERSION = 1
# Stamp fields added later, with the value older stamps mean by leaving them out.
_STAMP_DEFAULTS: dict[str, object] = {"ui": False}

CudaChoice = bool | Literal["auto"]


@dataclass(frozen=True)
class LlamaBuild:
    """What :func:`build_llama_cpp` produced."""

    bin_dir: Path
    lib_dir: Path
    binaries: dict[str, Path]
    commit: str
    cuda: bool
    options: dict[str, str]
    nccl: bool | None = None
    source: str = ""
    log_path: Path | None = None
    libraries: dict[str, Path] = field(default_factory=dict)
    source_dir: Path | None = None  # the llama.cpp tree compiled (``include/llama.h`` is there)
    ui: bool = False  # llama-server embeds the chat page built by lmserv (see lmserv.install._ui)

    def binary(self, name: str) -> Path:
        """Path of binary ``name`` (e.g. ``"llama-server"``) in this build."""
        return self.binaries[name]


def _exe(name: str, platform: str) -> str:
    return name + ".exe" if platform == "win32" else name


def _lib_name(name: str, platform: str) -> str:
    return {"win32": f"{name}.dll", "darwin": f"lib{name}.dylib"}.get(platform, f"lib{name}.so")


def _ui_host_reachable(timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _options(
    *,
    cuda: bool,
    rpc: bool,
    want_ui: bool,
    toolchain: Toolchain,
    cuda_archs: str | None,
    nccl: tuple[str, str] | None,
    cpu_opts: dict[str, str],
) -> dict[str, str]:
    opts = {
        "CMAKE_BUILD_TYPE": "Release",
        "BUILD_SHARED_LIBS": "ON",  # the ctypes bindings load libllama / libggml*
        "LLAMA_BUILD_TESTS": "OFF",
        "LLAMA_BUILD_EXAMPLES": "OFF",
        "LLAMA_BUILD_UI": "OFF",  # never run npm during a build
        "LLAMA_USE_PREBUILT_UI": "ON" if want_ui else "OFF",
        "GGML_RPC": "ON" if rpc else "OFF",
        "GGML_CUDA": "ON" if cuda else "OFF",
    }
    opts.update(cpu_opts)
    if cuda:
        opts["CMAKE_CUDA_ARCHITECTURES"] = cuda_archs or _toolchain.DEFAULT_CUDA_ARCHITECTURES
        opts["GGML_CUDA_NCCL"] = "ON" if nccl else "OFF"
        if nccl:
            opts["NCCL_INCLUDE_DIR"], opts["NCCL_LIBRARY"] = nccl
    if toolchain.compiler_launcher:
        opts["CMAKE_C_COMPILER_LAUNCHER"] = toolchain.compiler_launcher
        opts["CMAKE_CXX_COMPILER_LAUNCHER"] = toolchain.compiler_launcher
        if cuda:
            opts["CMAKE_CUDA_COMPILER_LAUNCHER"] = toolchain.compiler_launcher
    return opts


def cmake_commands(
    tree: Path,
    build_dir: Path,
    options: dict[str, str],
    targets: Sequence[str],
    toolchain: Toolchain,
    jobs: int | None,
) -> tuple[list[str], list[str]]:
    """The configure and build argument lists (no shell) for ``toolchain``'s platform."""
    configure = [toolchain.cmake, "-S", str(tree), "-B", str(build_dir), "-G", toolchain.generator]
    if toolchain.multi_config:
        configure += ["-A", "x64"]
    if toolchain.ninja:
        configure.append(f"-DCMAKE_MAKE_PROGRAM={toolchain.ninja}")
    configure += [f"-D{k}={v}" for k, v in sorted(options.items())]
    build = [toolchain.cmake, "--build", str(build_dir), "--target", *targets]
    if toolchain.multi_config:
        build += ["--config", "Release"]
    build += ["--parallel", str(jobs or os.cpu_count() or 2)]
    return configure, build


def _output_dirs(build_dir: Path, toolchain: Toolchain) -> Path:
    # The Visual Studio generator puts outputs in bin/Release.
    return build_dir / "bin" / "Release" if toolchain.multi_config else build_dir / "bin"


def _read_stamp(build_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((build_dir / _STAMP).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _expected_outputs(
    bin_dir: Path, targets: Sequence[str], platform: str
) -> tuple[dict[str, Path], dict[str, Path]]:
    binaries = {t: bin_dir / _exe(t, platform) for t in targets if t not in LIBRARY_TARGETS}
    libraries = {t: bin_dir / _lib_name(t, platform) for t in LIBRARY_TARGETS}
    return binaries, libraries


def _result(
    stamp: dict[str, object], bin_dir: Path, targets: Sequence[str], platform: str, log_path: Path
) -> LlamaBuild:
    binaries, libraries = _expected_outputs(bin_dir, targets, platform)
    options = stamp.get("options")
    nccl = stamp.get("nccl")
    return LlamaBuild(
        bin_dir=bin_dir,
        lib_dir=bin_dir,
        binaries=binaries,
        libraries=libraries,
        commit=str(stamp.get("commit", "")),
        cuda=bool(stamp.get("cuda")),
        options=dict(options) if isinstance(options, dict) else {},
        nccl=nccl if isinstance(nccl, bool) else None,
        source=str(stamp.get("source", "")),
        log_path=log_path,
        source_dir=Path(str(stamp["source_dir"])) if stamp.get("source_dir") else None,
        ui=bool(stamp.get("ui")),
    )


def _resolve_cuda(cuda: CudaChoice) -> _toolchain.CudaToolkit | None:
    if cuda is False:
        return None
    try:
        return _toolchain.find_cuda()
    except ToolchainMissing as exc:
        if cuda == "auto":
            log.warning("CUDA build not possible, building for the CPU instead: %s", exc)
            return None
        raise


def _stamp_key(
    commit: str, options: dict[str, str], targets: Sequence[str], *, ui: bool = False
) -> dict[str, object]:
    # The compiler launcher does not change the binaries; leave it out so adding ccache
    # does not force a rebuild.
    opts = {k: v for k, v in options.items() if not k.endswith("_COMPILER_LAUNCHER")}
    return {
        "version": _STAMP_VERSION,
        "commit": commit,
        "options": opts,
        "targets": sorted(targets),
        "ui": ui,
    }


def _previous_build(
    stamp: dict[str, object] | None,
    key: dict[str, object],
    *,
    build_dir: Path,
    toolchain: Toolchain,
    targets: Sequence[str],
    platform: str,
    log_path: Path,
) -> LlamaBuild | None:
    """The build in ``build_dir`` when its stamp matches ``key`` and every output exists."""
    if stamp is None or any(stamp.get(k, _STAMP_DEFAULTS.get(k)) != v for k, v in key.items()):
        return None
    bin_dir = _output_dirs(build_dir, toolchain)
    binaries, libraries = _expected_outputs(bin_dir, targets, platform)
    if not all(p.exists() for p in [*binaries.values(), *libraries.values()]):
        return None
    log.info("llama.cpp %s already built in %s (stamp matches)", str(key["commit"])[:12], bin_dir)
    return _result(stamp, bin_dir, targets, platform, log_path)


def _clear_stale_cache(build_dir: Path, tree: Path) -> None:
    """CMake refuses a build folder configured from another source path; start that one over."""
    cache = build_dir / "CMakeCache.txt"
    if not cache.exists():
        return
    for line in cache.read_text(errors="replace").splitlines():
        if line.startswith("CMAKE_HOME_DIRECTORY:"):
            configured = Path(line.split("=", 1)[1])
            if configured.resolve() != tree.resolve():
                log.info("build folder was configured from %s; reconfiguring", configured)
                cache.unlink()
                shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)
            return


def build_llama_cpp(
    output_dir: str | os.PathLike[str],
    *,
    cuda: CudaChoice = True,
    source: str | os.PathLike[str] | None = None,
    ref: str | None = None,
    rpc: bool = False,
    jobs: int | None = None,
    progress: Progress | bool | None = None,
    ui: _ui.UiChoice = "auto",
) -> LlamaBuild:
    """Build llama.cpp's binaries and shared libraries into ``output_dir/build-{cpu,cuda}/bin``.

    ``source``: ``None`` (upstream git, falling back to the PyPI sdist when unreachable), a git
    URL, a local folder or tarball, or ``"pypi"``. ``ref`` defaults to the pinned commit
    ``0c1e570``; the tree's commit is verified after it is obtained. ``cuda``: ``True`` requires
    nvcc and cuBLAS, ``"auto"`` uses them when present, ``False`` builds for the CPU. ``rpc``
    adds ``ggml-rpc-server``. ``progress``: a ``(done, total, line)`` callback, ``False`` for
    none, default a tqdm bar on a TTY and log lines otherwise. ``ui``: embed llama-server's chat
    page, built from the source with npm (``True`` requires npm, ``"auto"`` when npm is found);
    npm's packages and the built page are cached under lmserv's cache folder, so a rebuild runs
    no npm and works offline.

    Returns at once when a previous build with the same commit and options is complete.

    Raises :class:`~lmserv.errors.ToolchainMissing`, :class:`~lmserv.errors.SourceError` or
    :class:`~lmserv.errors.BuildError` (with the log path and its last lines).
    """
    if cuda not in (True, False, "auto"):
        raise ConfigError(f"cuda must be True, False or 'auto', not {cuda!r}")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"jobs must be a positive number, not {jobs!r}")
    npm = _ui.find_npm()
    page = _ui.resolve_ui(ui, npm)  # ToolchainMissing for ui=True without npm
    platform = sys.platform
    work = config.expand_path(os.fspath(output_dir), what="output_dir").resolve()
    work.mkdir(parents=True, exist_ok=True)
    toolchain = _toolchain.find_toolchain()
    cuda_kit = _resolve_cuda(cuda)
    flavour = "cuda" if cuda_kit else "cpu"
    build_dir = work / f"build-{flavour}"
    log_path = work / f"build-{flavour}.log"
    targets = [*CORE_TARGETS, *LIBRARY_TARGETS] + ([RPC_TARGET] if rpc else [])

    cpu_opts = _toolchain.cpu_feature_options(_toolchain.read_cpuinfo(), platform=platform)
    archs = nccl = None
    if cuda_kit:
        archs = _toolchain.cuda_architectures(cuda_compute_capabilities(), cuda_kit.version)
        nccl = _toolchain.find_nccl(cuda_kit.root)

    def options_for(want_ui: bool) -> dict[str, str]:
        return _options(
            cuda=cuda_kit is not None,
            rpc=rpc,
            want_ui=want_ui,
            toolchain=toolchain,
            cuda_archs=archs,
            nccl=nccl,
            cpu_opts=cpu_opts,
        )

    with FileLock(str(work / f".build-{flavour}.lock")):
        # Fast path: a pinned commit is known before fetching anything, so a stamp with the
        # same commit and options means nothing to do (no git, no cmake).
        if source is None or os.fspath(source) == "pypi":
            fast = _fast_path(
                build_dir,
                (ref or PINNED_COMMIT).lower(),
                options_for(False),
                any_ui=source is None,
                ui=page,
                targets=targets,
                toolchain=toolchain,
                platform=platform,
                log_path=log_path,
            )
            if fast is not None:
                return fast

        tree: SourceTree = _source.get_source(source, ref, work)
        log.info("llama.cpp source: %s at %s (%s)", tree.path, tree.commit[:12], tree.kind)
        page = page and _ui.has_page_source(tree.path, required=ui is True)
        # The prebuilt download only stands in when lmserv does not build the page itself.
        options = options_for(
            not page and ui is not False and tree.kind == "git" and _ui_host_reachable()
        )
        key = _stamp_key(tree.commit, options, targets, ui=page)
        previous = _previous_build(
            _read_stamp(build_dir),
            key,
            build_dir=build_dir,
            toolchain=toolchain,
            targets=targets,
            platform=platform,
            log_path=log_path,
        )
        if previous is not None:
            return previous
        bin_dir = _output_dirs(build_dir, toolchain)
        binaries, libraries = _expected_outputs(bin_dir, targets, platform)

        (build_dir / _STAMP).unlink(missing_ok=True)  # a failed rebuild must not look complete
        build_dir.mkdir(parents=True, exist_ok=True)
        _clear_stale_cache(build_dir, tree.path)
        log_path.write_text(
            f"lmserv build of llama.cpp {tree.commit} ({tree.kind}: {tree.origin})\n"
        )
        for note in toolchain.notes:
            log.info(note)
        if cpu_opts:
            log.info(
                "this CPU has AMX, whose ggml kernels crash at this llama.cpp commit; building "
                "with its other instruction sets instead of -march=native"
            )
        configure, build = cmake_commands(tree.path, build_dir, options, targets, toolchain, jobs)
        if progress is True or progress is None:
            report, close = default_progress()
        elif progress is False:
            report, close = None, lambda: None
        else:
            report, close = progress, lambda: None
        runner = Runner(log_path, report)
        started = time.monotonic()
        # npm builds the page (minutes, once) while the C++ compiles: llama.cpp embeds it at
        # build time (llama-ui-assets runs on every build), so a second short build adds it.
        page_dir = _ui.cached_page(tree.path, config.cache_dir()) if page else None
        page_job = None
        if page and page_dir is None:
            assert npm is not None
            ui_log = log_path.with_name(log_path.stem + ".ui.log")
            ui_runner = Runner(ui_log, None, own_group=True)
            page_job = _ui.PageJob(tree.path, config.cache_dir(), npm, ui_runner, log_path)
        _ui.place_assets(page_dir, build_dir)
        try:
            configure_out = runner.run(configure, "CMake configure")
            runner.run(build, "compile")
            if page_job is not None:
                _ui.place_assets(page_job.result(), build_dir)
                runner.run(build, "compile (embedding the chat page)")
        except BuildError as exc:
            if page_job is None or not page_job.failed or ui is True:
                raise
            log.warning("building llama-server without its chat page: %s", exc)
            key = _stamp_key(tree.commit, options, targets, ui=False)
        finally:
            if page_job is not None:
                page_job.cancel()
            close()
        missing = [str(p) for p in [*binaries.values(), *libraries.values()] if not p.exists()]
        if missing:
            raise BuildError(
                f"the build finished but did not produce {', '.join(missing)}. "
                f"Full log: {log_path}",
                log_path=log_path,
                log_tail="\n".join(runner.tail),
            )
        nccl_found: bool | None = None
        if cuda_kit:
            nccl_found = bool(nccl) and "NCCL not found" not in configure_out
            if not nccl_found:
                log.warning(
                    "NCCL not found: multi-GPU tensor parallelism will be slower. "
                    "Install it with `pip install nvidia-nccl-cu12` and rebuild."
                )
        stamp_data: dict[str, object] = {
            **key,
            "compiler_launcher": toolchain.compiler_launcher,
            "cuda": cuda_kit is not None,
            "nccl": nccl_found,
            "source": f"{tree.kind}:{tree.origin}",
            "source_dir": str(tree.path),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        # The stamp is written last and atomically: it is the "build complete" marker.
        atomic_write(build_dir / _STAMP, json.dumps(stamp_data, indent=2))
        log.info(
            "built llama.cpp %s in %.0f s into %s",
            tree.commit[:12],
            time.monotonic() - started,
            bin_dir,
        )
        return _result(stamp_data, bin_dir, targets, platform, log_path)


def _fast_path(
    build_dir: Path,
    commit: str,
    options: dict[str, str],
    *,
    any_ui: bool,
    ui: bool = False,
    targets: Sequence[str],
    toolchain: Toolchain,
    platform: str,
    log_path: Path,
) -> LlamaBuild | None:
    """The previous build, when it is of ``commit`` with the options this call would use.

    ``commit`` may be a prefix of the stamp's; with ``any_ui`` the stamp's web-UI choice is
    accepted whatever it was (the default source may have come from git, with the UI).
    """
    stamp = _read_stamp(build_dir)
    if not stamp or not str(stamp.get("commit", "")).startswith(commit):
        return None
    built = stamp.get("options")
    if any_ui and isinstance(built, dict) and "LLAMA_USE_PREBUILT_UI" in built:
        options = {**options, "LLAMA_USE_PREBUILT_UI": str(built["LLAMA_USE_PREBUILT_UI"])}
    return _previous_build(
        stamp,
        _stamp_key(str(stamp["commit"]), options, targets, ui=ui),
        build_dir=build_dir,
        toolchain=toolchain,
        targets=targets,
        platform=platform,
        log_path=log_path,
    )


def build_shared(
    output_dir: str | os.PathLike[str] | None = None, *, progress: Progress | bool | None = None
) -> LlamaBuild:
    """The one build the demo, the test suite and the benchmarks share, in one place.

    The pinned commit from the PyPI sdist, for the CPU, with the RPC worker and (when npm is
    found) the chat page, into
    :func:`shared_build_dir`: the same folder and options everywhere, so running the demo and
    then ``scripts/test.sh`` compiles llama.cpp once. Returns at once when that build is
    complete; otherwise compiles (a few minutes), waiting on the build's file lock if another
    process is compiling it.
    """
    folder = shared_build_dir() if output_dir is None else output_dir
    return build_llama_cpp(
        folder,
        source="pypi",
        cuda=False,
        rpc=True,
        ui="auto",  # the chat page when npm is here (its build is cached), else without it
        progress=progress,
    )
