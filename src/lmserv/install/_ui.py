"""llama-server's chat page: llama.cpp's ``tools/ui`` built with npm, once, into lmserv's cache.

llama.cpp embeds the page's built files into llama-server at compile time
(``scripts/ui-assets.cmake``). Its two ways of getting them do not suit us: ``LLAMA_BUILD_UI``
runs ``npm ci`` in every fresh build folder (a network install each time), and the prebuilt
download comes from a host that may be unreachable. So lmserv builds the page itself, keyed by
the content of ``tools/ui``, and keeps two things under ``<cache>/ui``:

- ``npm/``: npm's package cache, so a later ``npm ci`` (a new commit) works offline;
- ``<key>/dist/``: the built files, so a rebuild of the same source runs no npm at all.

The builder then copies ``dist`` into ``<build>/tools/ui/dist``, where the CMake script embeds
whatever it finds (its "stale assets" fallback) when neither npm nor the download is enabled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Protocol

from filelock import FileLock

from lmserv.errors import BuildError, ToolchainMissing

__all__ = [
    "PageJob",
    "UiChoice",
    "assets_for",
    "cached_page",
    "find_npm",
    "has_page_source",
    "place_assets",
    "resolve_ui",
    "ui_key",
]

log = logging.getLogger(__name__)

UiChoice = bool | Literal["auto"]

# Folders npm or a previous build writes inside tools/ui: not part of the source.
_NOT_SOURCE = frozenset({"node_modules", "dist", "build", ".svelte-kit", "test-results"})
_NPM_FLAGS = ["--no-audit", "--no-fund", "--prefer-offline"]


class Run(Protocol):
    """The builder's command runner: logs the output, raises :class:`BuildError` on failure."""

    def __call__(
        self,
        cmd: list[str],
        what: str,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> str: ...


def find_npm(which: Callable[[str], str | None] = shutil.which) -> str | None:
    """The ``npm`` on PATH (``npm.cmd`` on Windows), or ``None``."""
    return which("npm") or which("npm.cmd")


def resolve_ui(ui: UiChoice, npm: str | None) -> bool:
    """Whether to build the page: ``True`` needs npm, ``"auto"`` builds it when npm is there.

    Raises :class:`~lmserv.errors.ToolchainMissing` for ``ui=True`` without npm.
    """
    if ui not in (True, False, "auto"):
        raise ValueError(f"ui must be True, False or 'auto', not {ui!r}")
    if ui is False:
        return False
    if npm is None:
        if ui is True:
            raise ToolchainMissing(
                "npm was not found on PATH, and it builds llama-server's chat page (ui=True). "
                "Install Node.js 20 or later with npm (e.g. `apt-get install nodejs npm`), or "
                "build without the page: `lmserv build --no-ui` / ui=False."
            )
        log.warning(
            "npm not found: building llama-server without its chat page. Install Node.js and "
            "npm, then run `lmserv build` again to add it (or pass --no-ui to silence this)."
        )
        return False
    return True


def has_page_source(tree: Path, *, required: bool) -> bool:
    """Whether llama.cpp source ``tree`` has the page's source (``tools/ui/package.json``).

    Older commits and trimmed trees do not; with ``required`` that is a
    :class:`~lmserv.errors.BuildError`, otherwise a log line.
    """
    package = tree / "tools" / "ui" / "package.json"
    if package.is_file():
        return True
    message = f"this llama.cpp source has no chat page to build ({package} is missing)"
    if required:
        raise BuildError(f"{message}; build without it: `lmserv build --no-ui` / ui=False")
    log.info("%s: building llama-server without it", message)
    return False


def _source_files(ui_dir: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(ui_dir):
        dirs[:] = sorted(d for d in dirs if d not in _NOT_SOURCE)
        files += [Path(root, n) for n in sorted(names)]
    return files


def ui_key(ui_dir: Path) -> str:
    """A digest of the page's source (names and bytes): built files are reused only for it."""
    digest = hashlib.sha256()
    for path in _source_files(ui_dir):
        digest.update(path.relative_to(ui_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def assets_for(tree: Path, cache: Path, *, npm: str, run: Run) -> Path:
    """The built page for llama.cpp source ``tree``: a folder with ``index.html`` and the rest.

    Reuses ``cache/ui/<key>/dist`` when it exists; otherwise copies ``tree/tools/ui`` to a
    scratch folder, runs ``npm ci`` (npm's cache under ``cache/ui/npm``, network only for
    packages not in it) and ``npm run build``, and moves the result into place atomically.
    Concurrent builders wait on a file lock. Raises :class:`~lmserv.errors.BuildError`
    (no ``tools/ui``; ``npm ci`` offline without the packages cached; a failed build).
    """
    has_page_source(tree, required=True)
    ui_dir = tree / "tools" / "ui"
    root = cache / "ui"
    key = ui_key(ui_dir)
    dist = root / key / "dist"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        if (dist / "index.html").is_file():
            log.info("chat page: reusing the build in %s (no npm run)", dist)
            return dist
        work = root / key / "work"
        staging = root / key / "dist.tmp"
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(ui_dir, work, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
        env = dict(os.environ, LLAMA_UI_OUT_DIR=str(staging))
        npm_cache = ["--cache", str(root / "npm")]
        started = time.monotonic()
        log.info("chat page: building llama.cpp's tools/ui with npm (a few minutes, once)")
        try:
            run([npm, "ci", *_NPM_FLAGS, *npm_cache], "npm ci (chat page)", cwd=work, env=env)
            run([npm, "run", "build", *npm_cache], "npm run build (chat page)", cwd=work, env=env)
            if not (staging / "index.html").is_file():
                raise BuildError(
                    f"npm run build finished but wrote no {staging / 'index.html'}; see the "
                    "build log, or build without the page: `lmserv build --no-ui`"
                )
            os.replace(staging, dist)
        finally:
            # node_modules is hundreds of MB; npm's own cache keeps what a rebuild needs.
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
        log.info("chat page built in %.0f s into %s", time.monotonic() - started, dist)
        return dist


def place_assets(dist: Path | None, build_dir: Path) -> None:
    """Put ``dist`` where llama.cpp's CMake script embeds it, or clear it (``None``).

    The script embeds ``<build>/tools/ui/dist`` whatever its origin, so a build without the
    page must not find an earlier build's files there.
    """
    target = build_dir / "tools" / "ui" / "dist"
    shutil.rmtree(target, ignore_errors=True)
    if dist is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(dist, target)


def cached_page(tree: Path, cache: Path) -> Path | None:
    """The page :func:`assets_for` would return without running npm, or ``None``."""
    dist = cache / "ui" / ui_key(tree / "tools" / "ui") / "dist"
    return dist if (dist / "index.html").is_file() else None


class _Runner(Protocol):
    """The builder's runner: ``run`` (a :class:`Run`), ``kill`` and the log it writes."""

    log_path: Path

    @property
    def run(self) -> Run: ...

    def kill(self) -> None: ...


class PageJob:
    """:func:`assets_for` in a thread, so that npm runs while the C++ compiles. ``runner`` runs
    its commands into its own log, appended to ``build_log`` when the job ends."""

    def __init__(self, tree: Path, cache: Path, npm: str, runner: _Runner, build_log: Path) -> None:
        self.failed = False
        self._build_log = build_log
        self._runner = runner
        runner.log_path.write_text("")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lmserv-page")
        self._future = self._pool.submit(assets_for, tree, cache, npm=npm, run=runner.run)

    def result(self) -> Path:
        """The page folder; the page build's :class:`BuildError` (``failed`` set) if it failed."""
        try:
            return self._future.result()
        except BuildError:
            self.failed = True
            raise
        finally:
            self._append_log()

    def cancel(self) -> None:
        """Stop npm if it still runs (the compile failed or was interrupted) and wait for it."""
        self._runner.kill()
        self._pool.shutdown(wait=True)
        self._append_log()

    def _append_log(self) -> None:
        ui_log = self._runner.log_path
        if ui_log.exists():
            with self._build_log.open("a", encoding="utf-8", errors="replace") as logf:
                logf.write(ui_log.read_text(encoding="utf-8", errors="replace"))
            ui_log.unlink()
