"""Verified, resumable downloads: :func:`download_file`.

The order of things, and why:

1. A sidecar ``.<name>.lmserv.json`` beside a finished file records its verified digest, size and
   mtime; when it still matches, the file is returned with no network access and no re-hash.
2. A file lock ``.<name>.lock`` serializes processes fetching the same file: the second waits,
   then finds the first one's verified file. Where the filesystem's lock is a no-op (some network
   filesystems), the digest check below still keeps a bad file from being renamed into place.
3. Bytes go to ``<name>.part``; the SHA-256 is computed in the same pass (bytes already in a
   ``.part`` are hashed first), and the final name appears only after verification, by atomic
   rename. Ctrl-C leaves the ``.part`` (and ``.part.json`` for parallel chunks) for the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from filelock import FileLock
from filelock import Timeout as LockTimeout

from lmserv._fs import atomic_write
from lmserv._units import human_bytes
from lmserv.errors import ChecksumMismatch, ConfigError, DownloadError, InsufficientDiskSpace
from lmserv.install import _parallel
from lmserv.install._archive import archive_kind, extract_archive, extraction_target
from lmserv.install._http import Fetcher, Retryable, content_range
from lmserv.install._parallel import RetryPolicy

__all__ = [
    "DEFAULT_CONNECTIONS",
    "PARALLEL_MIN_SIZE",
    "download_file",
    "is_verified",
    "read_sidecar",
    "sidecar_path",
]

log = logging.getLogger(__name__)

DEFAULT_CONNECTIONS = 8
PARALLEL_MIN_SIZE = 32 << 20  # below this one connection is as fast as several
_HASH_BLOCK = 1 << 20
_SIDECAR_VERSION = 1


def sidecar_path(dest: Path) -> Path:
    """Where the verification record of ``dest`` lives."""
    return dest.with_name(f".{dest.name}.lmserv.json")


def _lock_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.lock")


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _state_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.json")


def read_sidecar(dest: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar_path(dest).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == _SIDECAR_VERSION else None


def _write_sidecar(dest: Path, digest: str, size: int, url: str, **extra: Any) -> None:
    record: dict[str, Any] = {"version": _SIDECAR_VERSION, "sha256": digest, "size": size}
    if dest.exists():
        st = dest.stat()
        record["mtime_ns"] = st.st_mtime_ns
    record.update(url=url, verified_at=time.time(), **extra)
    atomic_write(sidecar_path(dest), json.dumps(record, indent=1))


def is_verified(dest: Path, sha256: str | None = None) -> bool:
    """Whether ``dest`` carries a sidecar that still matches it (and ``sha256`` if given).

    Cheap: a stat and a small JSON read, never a hash.
    """
    record = read_sidecar(dest)
    if record is None or (sha256 is not None and record.get("sha256") != sha256):
        return False
    if "extracted_to" in record:
        return (dest.parent / str(record["extracted_to"])).is_dir()
    try:
        st = dest.stat()
    except OSError:
        return False
    return st.st_size == record.get("size") and st.st_mtime_ns == record.get("mtime_ns")


def _hash_file(path: Path, on_progress: Callable[[int], None] | None = None) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            hasher.update(block)
            if on_progress:
                on_progress(len(block))
    return hasher.hexdigest()


def _already_there(dest: Path, sha256: str | None, size: int | None, url: str) -> bool:
    """True when ``dest`` is a verified copy; re-hashes only a file without a valid sidecar."""
    if is_verified(dest, sha256):
        record = read_sidecar(dest) or {}
        return size is None or "extracted_to" in record or record.get("size") == size
    if not dest.is_file():
        return False
    actual_size = dest.stat().st_size
    if size is not None and actual_size != size:
        return False
    log.info("verifying existing %s", dest)
    digest = _hash_file(dest)
    if sha256 is not None and digest != sha256:
        log.warning(
            "existing %s has SHA-256 %s, expected %s; downloading again", dest, digest, sha256
        )
        return False
    _write_sidecar(dest, digest, actual_size, url)
    return True


def _check_disk(folder: Path, needed: int) -> None:
    if needed <= 0:
        return
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise InsufficientDiskSpace(
            f"not enough disk space in {folder}: the download needs {human_bytes(needed)} more, "
            f"only {human_bytes(free)} is free; free some space or download to another folder "
            "(lmserv pull --dir DIR, or set LMSERV_PATHS_MODELS)"
        )


class _Bar:
    """A tqdm bar on a TTY (or when asked), nothing otherwise."""

    def __init__(self, show: bool | None, total: int | None, desc: str) -> None:
        if show is None:
            show = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self._bar: Any = None
        if show:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                mininterval=0.2,
                dynamic_ncols=True,
            )

    def total(self, total: int) -> None:
        if self._bar is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def reset(self) -> None:
        if self._bar is not None:
            self._bar.reset()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _HashPipe:
    """SHA-256 on a helper thread, fed in order: hashing overlaps the network and the disk.

    hashlib releases the GIL on large buffers, so this is real parallelism. The queue is
    bounded (64 pieces of at most 64 KiB), so memory stays flat.
    """

    def __init__(self) -> None:
        self._open = False
        self.reset()

    def reset(self) -> None:
        """Start over from zero bytes (the server ignored Range)."""
        self.close()
        self._hasher = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._thread = threading.Thread(target=self._run, name="lmserv-sha256", daemon=True)
        self._thread.start()
        self._open = True

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._hasher.update(item)

    def update(self, data: bytes) -> None:
        self._queue.put(data)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._queue.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        return self._hasher.hexdigest()


def _single(
    fetcher: Fetcher,
    part: Path,
    *,
    size: int | None,
    policy: RetryPolicy,
    bar: _Bar,
    describe: Callable[[str], str],
) -> tuple[str, int]:
    """One connection, appending to ``part``; returns (sha256, bytes). Hashes as it writes."""
    hasher = _HashPipe()
    try:
        return _single_stream(
            fetcher, part, hasher, size=size, policy=policy, bar=bar, describe=describe
        )
    finally:
        hasher.close()


def _single_stream(
    fetcher: Fetcher,
    part: Path,
    hasher: _HashPipe,
    *,
    size: int | None,
    policy: RetryPolicy,
    bar: _Bar,
    describe: Callable[[str], str],
) -> tuple[str, int]:
    pos = 0
    if part.exists():
        pos = part.stat().st_size
        if size is not None and pos > size:
            part.unlink()
            pos = 0
        elif pos:
            log.info("resuming %s at byte %d", part, pos)
            pos = 0
            with open(part, "rb") as f:
                while block := f.read(_HASH_BLOCK):
                    hasher.update(block)
                    pos += len(block)
                    bar.update(len(block))
    total: int | None = size
    disk_checked = size is not None
    attempt = 0
    with open(part, "ab" if pos else "wb", buffering=0) as out:
        while True:
            before = pos
            try:
                with fetcher.get(pos if pos else None) as response:
                    if response.status_code == 416:
                        _s, _e, reported = content_range(response.headers.get("content-range"))
                        known = reported if reported is not None else total
                        if known is not None and pos == known:
                            return hasher.hexdigest(), pos  # the .part was already complete
                        log.info("server refused resuming at %d; starting over", pos)
                    elif response.status_code == 206:
                        start, _e, reported = content_range(response.headers.get("content-range"))
                        if start == pos:
                            total = reported if reported is not None else total
                        else:
                            raise Retryable(f"server sent bytes from {start}, asked for {pos}")
                    elif pos:
                        log.info("server ignored Range for %s; starting over", fetcher.url)
                    if response.status_code != 206 and pos:
                        out.seek(0)
                        out.truncate(0)
                        hasher.reset()
                        bar.reset()
                        pos = 0
                        if response.status_code == 416:
                            continue
                    if response.status_code == 200:
                        length = response.headers.get("content-length")
                        total = int(length) if length and length.isdigit() else total
                    if total is not None:
                        if size is not None and total != size:
                            raise DownloadError(
                                describe(f"the server reports {total} bytes, expected {size}")
                            )
                        bar.total(total)
                        if not disk_checked:
                            _check_disk(part.parent, total - pos)
                            disk_checked = True
                    # No chunk_size: re-chunking would hold back received bytes on a drop.
                    for data in response.iter_raw():
                        view = memoryview(data)
                        while view:
                            written = out.write(view)
                            view = view[written:]
                        hasher.update(data)
                        pos += len(data)
                        bar.update(len(data))
                if total is None or pos == total:
                    return hasher.hexdigest(), pos
                if pos > total:
                    raise DownloadError(describe(f"the server sent {pos} bytes of {total}"))
                raise Retryable(f"connection closed at byte {pos} of {total}")
            except (httpx.TransportError, Retryable) as exc:
                attempt = 1 if pos > before else attempt + 1
                delay = policy.pause_after(exc, attempt, describe)
                log.info("%s: %s; retrying in %.1fs", fetcher.url, exc, delay)
                time.sleep(delay)


def _probe(fetcher: Fetcher) -> int | None:
    """The file's size when the server honours Range, else None (one 1-byte request)."""
    with fetcher.get(0, 0) as response:
        if response.status_code != 206:
            return None
        _s, _e, total = content_range(response.headers.get("content-range"))
        return total


def _with_retries(
    action: Callable[[], int | None], policy: RetryPolicy, describe: Callable[[str], str]
) -> int | None:
    attempt = 0
    while True:
        try:
            return action()
        except (httpx.TransportError, Retryable) as exc:
            attempt += 1
            time.sleep(policy.pause_after(exc, attempt, describe))


def _fetch(
    fetcher: Fetcher,
    dest: Path,
    *,
    sha256: str | None,
    size: int | None,
    connections: int | None,
    policy: RetryPolicy,
    bar: _Bar,
    describe: Callable[[str], str],
) -> tuple[str, int]:
    """Fill ``<dest>.part``; returns (sha256, bytes). Picks parallel or single connection."""
    part, state = _part_path(dest), _state_path(dest)

    def single() -> tuple[str, int]:
        return _single(fetcher, part, size=size, policy=policy, bar=bar, describe=describe)

    total = size
    chunks: list[_parallel.Chunk] | None = None
    if state.exists():
        # A parallel run was interrupted: its .part is preallocated, so only the recorded
        # chunk progress says which bytes are real. Resume it chunk by chunk, or start over.
        if total is None:
            total = _with_retries(lambda: _probe(fetcher), policy, describe)
        if total is not None:
            chunks = _parallel.load_state(state, fetcher.url, total, sha256)
        if chunks is None or not part.exists() or part.stat().st_size != total:
            log.info("discarding stale partial download %s", part)
            state.unlink(missing_ok=True)
            part.unlink(missing_ok=True)
            chunks = None
        else:
            log.info("resuming %s: %d chunks", part, sum(not c.complete for c in chunks))
    if chunks is None:
        if connections == 1:
            return single()
        total = _with_retries(lambda: _probe(fetcher), policy, describe)
        if total is not None and size is not None and total != size:
            raise DownloadError(describe(f"the server reports {total} bytes, expected {size}"))
        wanted = connections or (DEFAULT_CONNECTIONS if (total or 0) >= PARALLEL_MIN_SIZE else 1)
        if total is None or wanted == 1 or total < 2 * _parallel.MIN_CHUNK:
            return single()
        # A .part left by a single-connection run is a verified-so-far prefix: the chunks it
        # covers count as done, so switching to parallel ranges loses nothing.
        present = part.stat().st_size if part.exists() else 0
        if present > total:
            part.unlink()
            present = 0
        _check_disk(dest.parent, total - present)
        chunks = _parallel.plan_chunks(total, wanted)
        for chunk in chunks:
            chunk.done = max(0, min(present - chunk.start, chunk.end - chunk.start))
    assert total is not None
    _check_disk(dest.parent, total - sum(c.done for c in chunks))
    bar.total(total)
    try:
        digest = _parallel.run_parallel(
            fetcher,
            part,
            state,
            total=total,
            chunks=chunks,
            connections=connections or DEFAULT_CONNECTIONS,
            sha256=sha256,
            policy=policy,
            on_progress=bar.update,
            describe=describe,
        )
    except _parallel.RangeIgnored:
        log.info("%s stopped honouring Range; downloading with one connection", fetcher.url)
        part.unlink(missing_ok=True)
        state.unlink(missing_ok=True)
        bar.reset()
        return single()
    return digest, total


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    size: int | None = None,
    connections: int | None = None,
    progress: bool | None = None,
    headers: Mapping[str, str] | None = None,
    stall_timeout: float = 30.0,
    retries: int = 5,
    backoff: float = 1.0,
    extract: bool | None = None,
    resume_hint: str | None = None,
) -> Path:
    """Download ``url`` to ``dest``, verified, resumable, in parallel where it pays.

    ``sha256`` (hex) and ``size`` (bytes) are checked when given. ``connections`` is the number
    of parallel Range connections (default: 8 for files of 32 MiB or more on servers that accept
    Range, else 1; ``1`` turns parallelism off). ``progress``: a tqdm bar; ``None`` shows it only
    when stderr is a TTY. ``headers`` are sent with every request; an ``Authorization`` among
    them (or from ``HF_TOKEN`` for huggingface.co URLs) goes only to the URL's own origin, never
    to a host a redirect leads to. A connection silent for ``stall_timeout`` seconds is dropped
    and its range retried; ``retries`` bounds consecutive failed tries (with exponential backoff
    from ``backoff`` seconds, or the server's ``Retry-After``). Archives (``.tar.gz``,
    ``.tar.zst``; ``extract=None`` decides by name) are extracted after verification into a
    folder named like the archive without its suffix, and removed; that folder is returned.

    Returns the final path. Raises :class:`ChecksumMismatch` (the bad bytes are deleted),
    :class:`InsufficientDiskSpace`, :class:`UnsafeArchive`, or :class:`DownloadError` after the
    last retry (the ``.part`` is kept; calling again resumes).
    """
    dest = Path(dest)
    sha = sha256.lower() if sha256 else None
    if connections is not None and connections < 1:
        raise ConfigError(f"connections must be at least 1, got {connections}; 1 turns it off")
    is_archive = archive_kind(dest.name) is not None if extract is None else extract
    final = extraction_target(dest) if is_archive else dest
    dest.parent.mkdir(parents=True, exist_ok=True)

    def ready() -> bool:
        return _already_there(dest, sha, size, url) and (not is_archive or final.is_dir())

    if ready():
        log.debug("%s is already verified", dest)
        return final
    part = _part_path(dest)
    if size is not None:
        have = part.stat().st_size if part.exists() and not _state_path(dest).exists() else 0
        _check_disk(dest.parent, size - have)

    hint = resume_hint or "call download_file again with the same arguments"

    def describe(reason: str) -> str:
        return (
            f"downloading {url} failed: {reason}; the partial file {part} is kept, {hint} to resume"
        )

    lock = FileLock(str(_lock_path(dest)))
    try:
        lock.acquire(timeout=0)
    except LockTimeout:
        log.warning("waiting for another process downloading %s", dest)
        lock.acquire()
    try:
        if ready():
            return final
        if is_archive and dest.is_file() and _already_there(dest, sha, size, url):
            return _extract(dest, final, url)  # verified earlier, extraction interrupted
        bar = _Bar(progress, size, dest.name)
        policy = RetryPolicy(retries=retries, backoff=backoff)
        try:
            with Fetcher(
                url,
                headers=headers,
                stall_timeout=stall_timeout,
                connections=connections or DEFAULT_CONNECTIONS,
            ) as fetcher:
                digest, nbytes = _fetch(
                    fetcher,
                    dest,
                    sha256=sha,
                    size=size,
                    connections=connections,
                    policy=policy,
                    bar=bar,
                    describe=describe,
                )
        finally:
            bar.close()
        if sha is not None and digest != sha:
            _discard(dest)
            raise ChecksumMismatch(
                f"{url} downloaded to {dest} has SHA-256 {digest}, expected {sha}; the bytes "
                "were deleted. Download again; if it repeats, the file upstream changed or the "
                "expected digest is wrong",
                expected=sha,
                actual=digest,
            )
        held = part.stat().st_size
        if (size is not None and nbytes != size) or held != nbytes:
            # Two writers on a filesystem whose lock is a no-op leave a longer .part.
            _discard(dest)
            raise DownloadError(
                f"{url} gave {nbytes} bytes but {part} held {held} (expected "
                f"{size if size is not None else nbytes}); the partial file was deleted, "
                "download again"
            )
        os.replace(part, dest)
        _state_path(dest).unlink(missing_ok=True)
        _write_sidecar(dest, digest, nbytes, url)
        log.info("downloaded %s (%d bytes, sha256 %s)", dest, nbytes, digest)
        return _extract(dest, final, url) if is_archive else final
    finally:
        lock.release()


def _extract(archive: Path, folder: Path, url: str) -> Path:
    """Unpack a verified archive, record it as extracted, remove it; an unsafe one is deleted."""
    record = read_sidecar(archive) or {}
    try:
        extract_archive(archive, folder)
    except Exception:
        _discard(archive)
        archive.unlink(missing_ok=True)
        raise
    _write_sidecar(
        archive,
        str(record.get("sha256", "")),
        int(record.get("size", 0)),
        url,
        extracted_to=folder.name,
    )
    archive.unlink()
    return folder


def _discard(dest: Path) -> None:
    for path in (_part_path(dest), _state_path(dest), sidecar_path(dest)):
        with contextlib.suppress(OSError):
            path.unlink()
