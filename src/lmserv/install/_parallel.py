"""Parallel Range download into a preallocated ``.part``, resumable chunk by chunk.

The file is cut into chunks handed out in order to ``connections`` worker threads, each with its
own HTTP connection (per-connection rate caps on hubs are what make this worthwhile). Each chunk's
progress is recorded in ``<dest>.part.json`` (after an fsync of the data), so an interrupted
download resumes every chunk where it stopped instead of redoing finished ones.

Hashing: chunks finish out of order, so the main thread follows a frontier: it hashes, in file
order, bytes that workers have already written, reading them back just behind the writers (they
are still in the page cache). This is the only read; there is no second pass after the
download. On resume the frontier starts at zero, which hashes the bytes already in the ``.part``
first.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from lmserv._fs import atomic_write
from lmserv.errors import DownloadError
from lmserv.install._http import Fetcher, Retryable, content_range

__all__ = ["Chunk", "RangeIgnored", "load_state", "plan_chunks", "run_parallel"]

log = logging.getLogger(__name__)

_STATE_VERSION = 1
_READ_BLOCK = 1 << 20
_SAVE_EVERY = 1.0
MIN_CHUNK = 1 << 20
_MAX_CHUNK = 64 << 20


class RangeIgnored(Exception):
    """The server answered a chunk's Range request with the whole file (HTTP 200)."""


@dataclass
class Chunk:
    """Bytes ``start`` (inclusive) to ``end`` (exclusive); ``done`` of them are on disk."""

    start: int
    end: int
    done: int = 0

    @property
    def complete(self) -> bool:
        return self.start + self.done >= self.end


def plan_chunks(total: int, connections: int) -> list[Chunk]:
    """Cut ``total`` bytes into about four chunks per connection (1 MiB to 64 MiB each)."""
    size = max(MIN_CHUNK, min(_MAX_CHUNK, -(-total // (connections * 4))))
    return [Chunk(start, min(start + size, total)) for start in range(0, total, size)]


def load_state(path: Path, url: str, total: int, sha256: str | None) -> list[Chunk] | None:
    """Chunks recorded by an earlier run for the same file, or None if absent or stale."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("version") != _STATE_VERSION
        or data.get("total") != total
        or data.get("sha256") != sha256
    ):
        return None
    try:
        chunks = [Chunk(int(a), int(b), int(d)) for a, b, d in data["chunks"]]
    except (KeyError, TypeError, ValueError):
        return None
    if not chunks or chunks[0].start != 0 or chunks[-1].end != total:
        return None
    for prev, nxt in itertools.pairwise(chunks):
        if prev.end != nxt.start:
            return None
    if any(c.done < 0 or c.done > c.end - c.start for c in chunks):
        return None
    del url  # a signed CDN URL may differ run to run; size + digest identify the file
    return chunks


def save_state(path: Path, url: str, total: int, sha256: str | None, chunks: list[Chunk]) -> None:
    data = {
        "version": _STATE_VERSION,
        "url": url,
        "total": total,
        "sha256": sha256,
        "chunks": [[c.start, c.end, c.done] for c in chunks],
    }
    atomic_write(path, json.dumps(data))


@dataclass
class _Shared:
    chunks: list[Chunk]
    lock: threading.Lock
    stop: threading.Event
    errors: list[BaseException]
    next_index: int = 0

    def take(self) -> Chunk | None:
        with self.lock:
            while self.next_index < len(self.chunks):
                chunk = self.chunks[self.next_index]
                self.next_index += 1
                if not chunk.complete:
                    return chunk
            return None


@dataclass(frozen=True)
class RetryPolicy:
    retries: int
    backoff: float
    cap: float = 10.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base: float = min(self.cap, self.backoff * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)

    def pause_after(self, exc: Exception, attempt: int, describe: Callable[[str], str]) -> float:
        """Seconds to wait before try ``attempt`` after ``exc`` (the server's ``Retry-After``
        when it sent one); :class:`DownloadError` once the retries are spent."""
        if attempt > self.retries:
            raise DownloadError(describe(f"{exc} (after {self.retries} retries)")) from exc
        return self.delay(attempt, exc.retry_after if isinstance(exc, Retryable) else None)


def fetch_range(
    fetcher: Fetcher,
    chunk: Chunk,
    out: Any,
    policy: RetryPolicy,
    stop: threading.Event,
    describe: Callable[[str], str],
) -> None:
    """Fill ``chunk`` from the network into file object ``out``, retrying with backoff.

    The retry count is of consecutive tries without progress, so a server that drops every few
    megabytes still finishes, while one that delivers nothing fails after ``policy.retries``.
    """
    attempt = 0
    while not chunk.complete and not stop.is_set():
        before = chunk.done
        try:
            pos = chunk.start + chunk.done
            with fetcher.get(pos, chunk.end - 1) as response:
                if response.status_code == 200:
                    raise RangeIgnored(f"{fetcher.url} answered a Range request with 200")
                start, _end, _total = content_range(response.headers.get("content-range"))
                if response.status_code != 206 or start != pos:
                    raise Retryable(
                        f"unexpected answer to Range bytes={pos}-{chunk.end - 1}: "
                        f"HTTP {response.status_code} {response.headers.get('content-range')}"
                    )
                out.seek(pos)
                for data in response.iter_raw():
                    if stop.is_set():
                        return
                    room = chunk.end - (chunk.start + chunk.done)
                    view = memoryview(data)[:room]
                    while view:
                        written = out.write(view)
                        view = view[written:]
                        chunk.done += written
                    if chunk.complete:
                        break
            if not chunk.complete:
                raise Retryable(f"connection closed at byte {chunk.start + chunk.done}")
        except (httpx.TransportError, Retryable) as exc:
            attempt = 1 if chunk.done > before else attempt + 1
            delay = policy.pause_after(exc, attempt, describe)
            log.info("range %d-%d: %s; retrying in %.1fs", chunk.start, chunk.end, exc, delay)
            if stop.wait(delay):
                return


def _worker(
    fetcher: Fetcher,
    part: Path,
    shared: _Shared,
    policy: RetryPolicy,
    describe: Callable[[str], str],
) -> None:
    try:
        with open(part, "r+b", buffering=0) as out:
            while not shared.stop.is_set():
                chunk = shared.take()
                if chunk is None:
                    return
                fetch_range(fetcher, chunk, out, policy, shared.stop, describe)
    except BaseException as exc:  # handed to the main thread, which re-raises it
        shared.errors.append(exc)
        shared.stop.set()


def run_parallel(
    fetcher: Fetcher,
    part: Path,
    state_path: Path,
    *,
    total: int,
    chunks: list[Chunk],
    connections: int,
    sha256: str | None,
    policy: RetryPolicy,
    on_progress: Callable[[int], None],
    describe: Callable[[str], str],
) -> str:
    """Download every incomplete chunk; return the SHA-256 of the whole ``part``.

    Raises :class:`RangeIgnored` if the server stops honouring Range (the caller restarts with
    one connection), :class:`DownloadError` after a chunk's last retry. The state file is
    written on every exit, Ctrl-C included.
    """
    # The state goes first: a preallocated .part without it would look complete to a resume.
    save_state(state_path, fetcher.url, total, sha256, chunks)
    mode = "r+b" if part.exists() else "w+b"
    with open(part, mode) as f:
        f.truncate(total)  # sparse where the filesystem allows
    shared = _Shared(chunks, threading.Lock(), threading.Event(), [])
    threads = [
        threading.Thread(
            target=_worker,
            args=(fetcher, part, shared, policy, describe),
            name=f"lmserv-download-{i}",
            daemon=True,
        )
        for i in range(min(connections, sum(not c.complete for c in chunks)))
    ]
    hasher = hashlib.sha256()
    frontier = 0
    reported = 0
    last_save = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        with open(part, "rb", buffering=0) as reader:  # no read-ahead of unwritten bytes
            while True:
                watermark = 0
                for chunk in chunks:
                    watermark = chunk.start + chunk.done
                    if not chunk.complete:
                        break
                while frontier < watermark:
                    reader.seek(frontier)
                    block = reader.read(min(_READ_BLOCK, watermark - frontier))
                    if not block:
                        raise DownloadError(describe(f"{part} is shorter than recorded"))
                    hasher.update(block)
                    frontier += len(block)
                done = sum(c.done for c in chunks)
                if done != reported:
                    on_progress(done - reported)
                    reported = done
                if shared.errors:
                    raise shared.errors[0]
                if frontier >= total:
                    break
                if not any(t.is_alive() for t in threads) and not shared.errors:
                    if all(c.complete for c in chunks):
                        continue
                    raise DownloadError(describe("download workers stopped early"))
                if time.monotonic() - last_save > _SAVE_EVERY:
                    _checkpoint(part, state_path, fetcher.url, total, sha256, chunks)
                    last_save = time.monotonic()
                time.sleep(0.01)
        return hasher.hexdigest()
    finally:
        shared.stop.set()
        # Workers notice the stop at their next read; one stuck on a silent connection is a
        # daemon thread and is left behind (its progress counts stay a lower bound).
        deadline = time.monotonic() + 2.0
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            _checkpoint(part, state_path, fetcher.url, total, sha256, chunks)


def _checkpoint(
    part: Path, state_path: Path, url: str, total: int, sha256: str | None, chunks: list[Chunk]
) -> None:
    # Record progress only for bytes that are on disk: fsync first, then write the state.
    snapshot = [Chunk(c.start, c.end, c.done) for c in chunks]
    fd = os.open(part, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    save_state(state_path, url, total, sha256, snapshot)
