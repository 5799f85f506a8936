"""Getting the llama.cpp source tree: a git clone, a local folder or tarball, or the PyPI sdist.

Every source must end at the same commit (``PINNED_COMMIT`` unless the caller asks for another
``ref``), so a build says exactly which code it compiled whichever way the tree arrived.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lmserv import config
from lmserv.errors import DownloadError, SourceError, ToolchainMissing, UnsafeArchive
from lmserv.install._archive import extract_archive

__all__ = [
    "DEFAULT_GIT_URL",
    "PINNED_COMMIT",
    "PYPI_SDIST",
    "SourceTree",
    "get_source",
    "read_commit",
]

log = logging.getLogger(__name__)

PINNED_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
DEFAULT_GIT_URL = "https://github.com/ggml-org/llama.cpp.git"
PYPI_SDIST = "llama-cpp-python==0.3.36"
_SDIST_FILE = "llama_cpp_python-0.3.36.tar.gz"
_SDIST_TOP = "llama_cpp_python-0.3.36"

# Bounded network waits: a dead mirror fails in seconds instead of hanging the build.
_GIT_NET = ["-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=30"]


@dataclass(frozen=True)
class SourceTree:
    """A llama.cpp checkout ready to configure."""

    path: Path
    commit: str
    kind: str  # "git", "pypi", "folder" or "tarball"
    origin: str  # URL, path or sdist requirement it came from


def _git(
    args: list[str], cwd: Path | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    git = shutil.which("git")
    if git is None:
        raise ToolchainMissing("git was not found on PATH; install git, or use source='pypi'.")
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")  # never block on a credentials prompt
    return subprocess.run(
        [git, *_GIT_NET, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def read_commit(tree: Path) -> str | None:
    """The commit a tree is at, or ``None`` when it carries no git metadata.

    Reads ``.git`` directly when git is absent: the sdist's ``vendor/llama.cpp/.git`` is a
    ``gitdir:`` file pointing into the sdist's own ``.git/modules``.
    """
    dotgit = tree / ".git"
    if not dotgit.exists():
        return None
    if shutil.which("git"):
        result = _git(["rev-parse", "HEAD"], cwd=tree, timeout=60)
        if result.returncode == 0:
            return result.stdout.strip()
    gitdir = dotgit
    if dotgit.is_file():
        text = dotgit.read_text().strip()
        if text.startswith("gitdir:"):
            gitdir = (tree / text.split(":", 1)[1].strip()).resolve()
    head = gitdir / "HEAD"
    if not head.exists():
        return None
    value = head.read_text().strip()
    if value.startswith("ref:"):
        ref_file = gitdir / value.split(":", 1)[1].strip()
        return ref_file.read_text().strip() if ref_file.exists() else None
    return value


def _matches(commit: str | None, ref: str) -> bool:
    return bool(commit) and (commit or "").startswith(ref.lower())


def _is_full_sha(ref: str) -> bool:
    return len(ref) == 40 and all(c in "0123456789abcdef" for c in ref.lower())


def _extract(archive: Path, dest: Path) -> None:
    """Extract a source tarball into ``dest`` (replacing it) with the download's archive checks.

    Members that would land outside ``dest`` raise :class:`UnsafeArchive`; an unreadable
    archive is a :class:`SourceError`.
    """
    try:
        extract_archive(archive, dest)
    except UnsafeArchive:
        raise
    except DownloadError as exc:
        raise SourceError(f"cannot extract the llama.cpp source archive {archive}: {exc}") from exc


def _fetch_sdist() -> Path:
    """The llama-cpp-python sdist, from lmserv's cache or through pip (the user's index settings)."""
    cached = config.cache_dir() / "sdist" / _SDIST_FILE
    if cached.exists():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s through pip (this takes about a minute)", PYPI_SDIST)
    with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
            tmp,
            PYPI_SDIST,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        got = Path(tmp) / _SDIST_FILE
        if result.returncode != 0 or not got.exists():
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise SourceError(
                f"could not download {PYPI_SDIST} with pip (exit {result.returncode}):\n{tail}\n"
                "Check your package index settings (PIP_INDEX_URL, proxies), or pass "
                "source= a local llama.cpp folder or tarball."
            )
        os.replace(got, cached)  # atomic: a half-downloaded sdist is never cached
    return cached


def _from_pypi(work: Path, ref: str) -> SourceTree:
    if not _matches(PINNED_COMMIT, ref):
        raise SourceError(
            f"source='pypi' holds llama.cpp commit {PINNED_COMMIT[:7]} only, not ref {ref!r}. "
            "Use a git source for other commits, or drop ref."
        )
    root = work / "src" / _SDIST_TOP
    tree = root / "vendor" / "llama.cpp"
    if not _matches(read_commit(tree), ref):
        sdist = _fetch_sdist()
        if root.exists():
            shutil.rmtree(root)
        staging = work / ".sdist-extract"
        try:
            _extract(sdist, staging)
            root.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / _SDIST_TOP, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    commit = read_commit(tree)
    if not _matches(commit, ref):
        raise SourceError(
            f"the vendored llama.cpp in {PYPI_SDIST} is at commit {commit!r}, expected {ref}. "
            f"Delete {config.cache_dir() / 'sdist'} and retry."
        )
    assert commit is not None
    return SourceTree(tree, commit, "pypi", PYPI_SDIST)


def _from_git(url: str, work: Path, ref: str) -> SourceTree:
    tree = work / "llama.cpp"
    if _matches(read_commit(tree), ref):
        log.info("llama.cpp checkout %s is already at %s; skipping clone", tree, ref[:12])
    else:
        if not (tree / ".git").exists():
            if tree.exists():
                shutil.rmtree(tree)
            tree.mkdir(parents=True)
            for args in (["init", "-q"], ["remote", "add", "origin", url]):
                _git(args, cwd=tree)
        # A full SHA can be fetched shallowly; a branch or tag name too.
        depth = ["--depth", "1"] if _is_full_sha(ref) or not ref else []
        fetch = _git(["fetch", "-q", *depth, "origin", ref], cwd=tree)
        if fetch.returncode != 0 and depth:
            fetch = _git(["fetch", "-q", "origin"], cwd=tree)
        if fetch.returncode != 0:
            raise SourceError(
                f"could not fetch llama.cpp ref {ref!r} from {url}: {fetch.stderr.strip()[-500:]}\n"
                "Check the URL and your network, or use source='pypi' (works through any "
                "PyPI mirror)."
            )
        target = "FETCH_HEAD" if _is_full_sha(ref) or depth else ref
        checkout = _git(["checkout", "-q", "--force", target], cwd=tree)
        if checkout.returncode != 0:
            checkout = _git(["checkout", "-q", "--force", ref], cwd=tree)
        if checkout.returncode != 0:
            raise SourceError(f"could not check out {ref!r} in {tree}: {checkout.stderr.strip()}")
    commit = read_commit(tree)
    if commit is None or (_is_full_sha(ref) and not _matches(commit, ref)):
        raise SourceError(f"{tree} is at {commit!r} after checkout, expected {ref}.")
    return SourceTree(tree, commit, "git", url)


def _llama_root(folder: Path) -> Path | None:
    for candidate in (folder, folder / "vendor" / "llama.cpp", *sorted(folder.glob("*/"))):
        if (candidate / "CMakeLists.txt").exists() and (candidate / "include" / "llama.h").exists():
            return candidate
        nested = candidate / "vendor" / "llama.cpp"
        if (nested / "include" / "llama.h").exists():
            return nested
    return None


def _check_local(tree: Path, ref: str, kind: str, origin: str, explicit_ref: bool) -> SourceTree:
    commit = read_commit(tree)
    if commit is None:
        log.warning("%s has no git metadata; cannot verify it is llama.cpp %s", tree, ref[:12])
        return SourceTree(tree, "unknown", kind, origin)
    if not _matches(commit, ref):
        message = f"llama.cpp source {origin} is at commit {commit[:12]}, not {ref[:12]}"
        if explicit_ref:
            raise SourceError(message + "; check out that ref there, or pass ref=None.")
        log.warning("%s; building it as it is", message)
    return SourceTree(tree, commit, kind, origin)


def get_source(source: str | os.PathLike[str] | None, ref: str | None, work: Path) -> SourceTree:
    """Obtain the tree for ``source`` at ``ref`` under the work folder ``work``.

    ``source=None`` is the upstream git repository; when it is unreachable the PyPI sdist is used
    instead (logged), since it vendors the same pinned commit.
    """
    wanted = (ref or PINNED_COMMIT).lower() if ref is None or _is_full_sha(ref) else ref
    work.mkdir(parents=True, exist_ok=True)
    if source is None:
        try:
            return _from_git(
                os.environ.get("LMSERV_LLAMA_CPP_GIT_URL", DEFAULT_GIT_URL), work, wanted
            )
        except (SourceError, ToolchainMissing, subprocess.TimeoutExpired) as exc:
            if ref is not None and not _matches(PINNED_COMMIT, wanted):
                raise
            log.warning(
                "upstream llama.cpp git is unreachable (%s); falling back to %s",
                str(exc).splitlines()[0],
                PYPI_SDIST,
            )
            return _from_pypi(work, wanted)
    text = os.fspath(source)
    if text == "pypi":
        return _from_pypi(work, wanted)
    path = config.expand_path(text, what="source")
    if path.is_dir():
        tree = _llama_root(path)
        if tree is None:
            raise SourceError(
                f"{path} is not a llama.cpp source folder (no CMakeLists.txt and include/llama.h "
                "found there or in vendor/llama.cpp)."
            )
        return _check_local(tree, wanted, "folder", str(path), ref is not None)
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise SourceError(f"{path} is not a tar archive (.tar.gz, .tgz, .tar.xz).")
        dest = work / "src" / path.name.split(".tar")[0].removesuffix(".tgz")
        if _llama_root(dest) is None:
            _extract(path, dest)
        tree = _llama_root(dest)
        if tree is None:
            raise SourceError(f"archive {path} does not contain a llama.cpp tree.")
        return _check_local(tree, wanted, "tarball", str(path), ref is not None)
    if "://" in text or text.startswith("git@") or text.endswith(".git"):
        return _from_git(text, work, wanted)
    raise SourceError(
        f"source {text!r} is not a git URL, an existing folder or tarball, or 'pypi'. "
        "Examples: source='pypi', source='~/src/llama.cpp', "
        f"source='{DEFAULT_GIT_URL}'."
    )
