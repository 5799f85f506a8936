"""Verified, resumable downloads: :func:`download_file`.

The order of things, and why:

1. A sidecar ``.<name>.lmserv.json`` beside a finished file records its verified digest, size and
   mtime; when it still matches, the file is returned with no network access and no re-hash.
2. A file lock ``.<name>.lock`` serializes processes fetching the same file: the second waits,
   then finds the first one's verified file. Where the filesystem's lock is a no-op (some network
   filesystems), the digest check below still keeps a bad file from being renamed into place.
3. Bytes go to ``<name>.part``; the SHA-256 is computed in the same pass (bytes already in a
   ``.part`` are hashed first), and the final name appears only after verification, by atomic
   rename. Ctrl-C leaves the ``.part`` and its ``.part.json`` (the file's ETag and Last-Modified,
   and for parallel runs each chunk's progress) for the next run, which resumes with ``If-Range``
   and starts over if the file changed upstream.
4. A known size (``size=``, or the server's own) is enforced while streaming: a server that keeps
   sending past it is cut off. Every file is opened without following symbolic links
   (:mod:`lmserv.install._files`), and operating-system errors become lmserv errors there.

One connection is :mod:`lmserv.install._single`, several are :mod:`lmserv.install._parallel`;
this module decides between them and owns the sidecar, the lock and the final rename. The
guarantees, with the test that holds each, are listed in docs/faults.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from filelock import FileLock
from filelock import Timeout as LockTimeout

from lmserv.errors import (
    ChecksumMismatch,
    ConfigError,
    DownloadError,
    LmservError,
)
from lmserv.install import _parallel
from lmserv.install._archive import archive_kind, extract_archive, extraction_target
from lmserv.install._files import (
    ELSEWHERE,
    check_disk,
    filesystem_error,
    planted_link,
    write_json,
)
from lmserv.install._http import (
    Fetcher,
    Retryable,
    Validators,
    check_url,
    content_range,
    redact,
)
from lmserv.install._parallel import RetryPolicy
from lmserv.install._single import HASH_BLOCK, Bar, Overrun, fetch_single

# The layout helpers (sidecar, lock, part and state paths) and the retry loop are shared with
# the other sources (the hub, PyPI packages): one place decides where a download's files live.
__all__ = [
    "DEFAULT_CONNECTIONS",
    "PARALLEL_MIN_SIZE",
    "download_file",
    "is_verified",
    "lock_path",
    "part_path",
    "read_sidecar",
    "sidecar_path",
    "state_path",
    "with_retries",
    "write_sidecar",
]

log = logging.getLogger(__name__)

DEFAULT_CONNECTIONS = 8
PARALLEL_MIN_SIZE = 32 << 20  # below this one connection is as fast as several
_SIDECAR_VERSION = 1
_T = TypeVar("_T")


def sidecar_path(dest: Path) -> Path:
    """Where the verification record of ``dest`` lives."""
    return dest.with_name(f".{dest.name}.lmserv.json")


def lock_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.lock")


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def state_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.json")


def read_sidecar(dest: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar_path(dest).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == _SIDECAR_VERSION else None


def _read_state(dest: Path) -> dict[str, Any] | None:
    """The resume record ``<name>.part.json`` (``chunks`` is None for one connection)."""
    try:
        data = json.loads(state_path(dest).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_sidecar(dest: Path, digest: str, size: int, url: str, **extra: Any) -> None:
    record: dict[str, Any] = {"version": _SIDECAR_VERSION, "sha256": digest, "size": size}
    if dest.exists():
        st = dest.stat()
        record["mtime_ns"] = st.st_mtime_ns
    record.update(url=redact(url), verified_at=time.time(), **extra)
    write_json(sidecar_path(dest), record)


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
        while block := f.read(HASH_BLOCK):
            hasher.update(block)
            if on_progress:
                on_progress(len(block))
    return hasher.hexdigest()


def _already_there(dest: Path, sha256: str | None, size: int | None, url: str) -> bool:
    """True when ``dest`` is a verified copy; re-hashes only a file without a valid sidecar.

    Raises :class:`DownloadError` when ``dest`` was downloaded from another URL and no digest
    says whether the two are the same file: returning it would hand over the wrong model.
    """
    if is_verified(dest, sha256):
        record = read_sidecar(dest) or {}
        source = record.get("url")
        if sha256 is None and isinstance(source, str) and source != redact(url):
            raise DownloadError(
                f"{dest} was downloaded from {source}, not from {redact(url)}: two URLs for one "
                f"file name. Delete {dest} (`lmserv rm {dest.name}`) to replace it, download to "
                f"another folder {ELSEWHERE}, or give the expected SHA-256 (#sha256=<hex>) "
                "so that a copy with the same content is recognised"
            )
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
    write_sidecar(dest, digest, actual_size, url)
    return True


def _probe(fetcher: Fetcher) -> tuple[int | None, Validators]:
    """The file's size when the server honours Range (else None), and its validators.

    One 1-byte request, sent without ``If-Range``: the answer names the version on offer now.
    """
    if_range, fetcher.if_range = fetcher.if_range, None
    try:
        with fetcher.get(0, 0) as response:
            if response.status_code != 206:
                return None, Validators.of(response)
            _s, _e, total = content_range(response.headers.get("content-range"))
            return total, Validators.of(response)
    finally:
        fetcher.if_range = if_range


def with_retries(
    action: Callable[[], _T], policy: RetryPolicy, describe: Callable[[str], str]
) -> _T:
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
    bar: Bar,
    describe: Callable[[str], str],
) -> tuple[str, int]:
    """Fill ``<dest>.part``; returns (sha256, bytes). Picks parallel or single connection."""
    part, state = part_path(dest), state_path(dest)
    record = _read_state(dest)
    known = Validators.from_record(record) if record is not None else None

    def single() -> tuple[str, int]:
        try:
            return fetch_single(
                fetcher,
                part,
                state,
                size=size,
                sha256=sha256,
                known=known,
                policy=policy,
                bar=bar,
                describe=describe,
            )
        except Overrun as exc:
            part.unlink(missing_ok=True)
            state.unlink(missing_ok=True)
            raise DownloadError(
                f"downloading {redact(fetcher.url)} failed: the server sent more than the {exc} "
                "bytes the file has, so it was cut off and the partial file was deleted; check "
                "the URL, and if it repeats the server is broken"
            ) from None

    def start_over(why: str) -> None:
        nonlocal known
        log.info("discarding partial download %s: %s", part, why)
        state.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        known = None

    total = size
    chunks: list[_parallel.Chunk] | None = None
    if state.exists() and (record is None or record.get("chunks") is not None):
        # A parallel run was interrupted: its .part is preallocated, so only the recorded
        # chunk progress says which bytes are real. Resume it chunk by chunk, or start over.
        current = None
        if total is None:
            total, current = with_retries(lambda: _probe(fetcher), policy, describe)
        if total is not None:
            chunks = _parallel.load_state(state, fetcher.url, total, sha256)
        if chunks is None or not part.exists() or part.stat().st_size != total:
            start_over("its record does not match")
            chunks = None
        elif known is not None and current is not None and known.differs(current):
            start_over("the file changed upstream")
            chunks = None
        else:
            log.info("resuming %s: %d chunks", part, sum(not c.complete for c in chunks))
    if chunks is None:
        if connections == 1:
            return single()
        total, current = with_retries(lambda: _probe(fetcher), policy, describe)
        if total is not None and size is not None and total != size:
            raise DownloadError(describe(f"the server reports {total} bytes, expected {size}"))
        if known is not None and known.differs(current):
            start_over("the file changed upstream")
        wanted = connections or (DEFAULT_CONNECTIONS if (total or 0) >= PARALLEL_MIN_SIZE else 1)
        if total is None or wanted == 1 or total < 2 * _parallel.MIN_CHUNK:
            return single()
        # A .part left by a single-connection run is a verified-so-far prefix: the chunks it
        # covers count as done, so switching to parallel ranges loses nothing.
        present = part.stat().st_size if part.exists() else 0
        if present > total:
            part.unlink()
            present = 0
        check_disk(dest.parent, total - present)
        chunks = _parallel.plan_chunks(total, wanted)
        for chunk in chunks:
            chunk.done = max(0, min(present - chunk.start, chunk.end - chunk.start))
        known = current
    assert total is not None
    check_disk(dest.parent, total - sum(c.done for c in chunks))
    bar.total(total)
    fetcher.if_range = known.if_range() if known is not None else None
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
            validators=known,
        )
    except _parallel.RangeIgnored as exc:
        log.info("%s; downloading again with one connection", exc)
        start_over(str(exc))
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

    Returns the final path. Raises :class:`ConfigError` for a malformed URL or an archive name
    with nothing before its suffix, :class:`ChecksumMismatch` (the bad bytes are deleted),
    :class:`InsufficientDiskSpace` (before the download, or when the disk fills during it),
    :class:`UnsafeArchive`, or :class:`DownloadError` after the last retry (the ``.part`` is kept;
    calling again resumes), for a file name already downloaded from another URL, for a symbolic
    link planted at the name of one of its files, and for a folder it cannot write.
    """
    check_url(url)
    dest = Path(dest)
    sha = sha256.lower() if sha256 else None
    if connections is not None and connections < 1:
        raise ConfigError(f"connections must be at least 1, got {connections}; 1 turns it off")
    is_archive = archive_kind(dest.name) is not None if extract is None else extract
    final = extraction_target(dest) if is_archive else dest
    hint = resume_hint or "call download_file again with the same arguments"
    part = part_path(dest)
    try:
        return _download(
            url,
            dest,
            final,
            sha=sha,
            size=size,
            connections=connections,
            progress=progress,
            headers=headers,
            stall_timeout=stall_timeout,
            policy=RetryPolicy(retries=retries, backoff=backoff),
            is_archive=is_archive,
            hint=hint,
        )
    except LmservError:
        raise
    except OSError as exc:  # the folder, not the network: say which file and what to do
        raise filesystem_error(exc, dest.parent, _kept(part, hint)) from exc


def _kept(part: Path, hint: str) -> str:
    """What became of the partial file, truthfully, and how to go on."""
    if part.is_file() and not part.is_symlink() and part.stat().st_size:
        return f"the partial file {part} is kept, {hint} to resume"
    return f"no partial file was kept, {hint} to try again"


def _download(
    url: str,
    dest: Path,
    final: Path,
    *,
    sha: str | None,
    size: int | None,
    connections: int | None,
    progress: bool | None,
    headers: Mapping[str, str] | None,
    stall_timeout: float,
    policy: RetryPolicy,
    is_archive: bool,
    hint: str,
) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)

    def ready() -> bool:
        return _already_there(dest, sha, size, url) and (not is_archive or final.is_dir())

    if ready():
        log.debug("%s is already verified", dest)
        return final
    part = part_path(dest)
    for own in (part, state_path(dest), lock_path(dest)):
        if own.is_symlink():
            raise planted_link(own)
    if size is not None:
        record = _read_state(dest)
        parallel = record is not None and record.get("chunks") is not None
        have = part.stat().st_size if part.exists() and not parallel else 0
        check_disk(dest.parent, size - have)

    def describe(reason: str) -> str:
        return f"downloading {redact(url)} failed: {reason}; {_kept(part, hint)}"

    lock = FileLock(str(lock_path(dest)))
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
        bar = Bar(progress, size, dest.name)
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
                f"{redact(url)} downloaded to {dest} has SHA-256 {digest}, expected {sha}; the bytes "
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
                f"{redact(url)} gave {nbytes} bytes but {part} held {held} (expected "
                f"{size if size is not None else nbytes}); the partial file was deleted, "
                "download again"
            )
        os.replace(part, dest)
        state_path(dest).unlink(missing_ok=True)
        write_sidecar(dest, digest, nbytes, url)
        log.info("downloaded %s (%d bytes, sha256 %s)", dest, nbytes, digest)
        return _extract(dest, final, url) if is_archive else final
    finally:
        lock.release()


def _extract(archive: Path, folder: Path, url: str) -> Path:
    """Unpack a verified archive, record it as extracted, remove it; an unsafe one is deleted."""
    record = read_sidecar(archive) or {}
    try:
        extract_archive(archive, folder)
    except Exception as exc:
        _discard(archive)
        archive.unlink(missing_ok=True)
        if type(exc) is DownloadError:  # a corrupt archive: say that it is gone
            raise DownloadError(f"{exc}; the archive was deleted, download it again") from exc
        raise
    write_sidecar(
        archive,
        str(record.get("sha256", "")),
        int(record.get("size", 0)),
        url,
        extracted_to=folder.name,
    )
    archive.unlink()
    return folder


def _discard(dest: Path) -> None:
    for path in (part_path(dest), state_path(dest), sidecar_path(dest)):
        with contextlib.suppress(OSError):
            path.unlink()
