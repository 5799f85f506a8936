"""One connection: stream a file into its ``.part``, resuming with ``If-Range``, hashing as it goes.

The single-connection half of :mod:`lmserv.install._download` (the parallel half is
:mod:`lmserv.install._parallel`), with what both halves share: the progress :class:`Bar`.
Bytes already in a ``.part`` are hashed first; the validators of the version being written are
recorded in the ``.part.json`` before its first byte lands, so the next run can tell whether the
server still offers the same file. A known size is enforced while streaming: a body that runs
past it is cut off, and the ``.part`` deleted.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from lmserv.errors import DownloadError
from lmserv.install._files import check_disk, open_nofollow
from lmserv.install._http import Fetcher, Retryable, Validators, content_range, redact
from lmserv.install._parallel import RetryPolicy, save_state

__all__ = ["HASH_BLOCK", "Bar", "HashPipe", "Overrun", "fetch_single"]

log = logging.getLogger(__name__)

HASH_BLOCK = 1 << 20


class Bar:
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


class HashPipe:
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

    def __enter__(self) -> HashPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Overrun(Exception):
    """The server sent more bytes than the file's known size (``args[0]``)."""


def fetch_single(
    fetcher: Fetcher,
    part: Path,
    state: Path,
    *,
    size: int | None,
    sha256: str | None,
    known: Validators | None,
    policy: RetryPolicy,
    bar: Bar,
    describe: Callable[[str], str],
) -> tuple[str, int]:
    """One connection, appending to ``part``; returns (sha256, bytes).

    Hashes as it writes. ``known``: the validators recorded with the ``.part`` (None when
    unknown). Raises :class:`Overrun` when the server sends more than the known size (the
    caller deletes the ``.part``).
    """
    with HashPipe() as hasher:
        pos = 0
        if part.exists():
            pos = part.stat().st_size
            if size is not None and pos > size:
                part.unlink()
                pos = 0
            elif pos:
                log.info("resuming %s at byte %d", part, pos)
                pos = 0
                with open_nofollow(part, "rb") as f:
                    while block := f.read(HASH_BLOCK):
                        hasher.update(block)
                        pos += len(block)
                        bar.update(len(block))
        # The bytes on disk belong to the version ``known`` names: ask for the rest of that version
        # only (If-Range); a server whose file changed answers 200 with the whole new file.
        fetcher.if_range = known.if_range() if known is not None and pos else None
        recorded = known
        total: int | None = size
        disk_checked = size is not None
        attempt = 0
        with open_nofollow(part, "ab" if pos else "wb", buffering=0) as out:
            while True:
                before = pos
                try:
                    with fetcher.get(pos if pos else None) as response:
                        current = Validators.of(response)
                        changed = (
                            response.status_code == 206
                            and known is not None
                            and known.differs(current)
                        )
                        if changed:
                            log.warning(
                                "%s changed upstream since %s was started; downloading it again "
                                "from the start",
                                redact(fetcher.url),
                                part,
                            )
                        if response.status_code == 416:
                            _s, _e, reported = content_range(response.headers.get("content-range"))
                            length = reported if reported is not None else total
                            if length is not None and pos == length:
                                return hasher.hexdigest(), pos  # the .part was already complete
                            log.info("server refused resuming at %d; starting over", pos)
                        elif response.status_code == 206 and not changed:
                            start, _e, reported = content_range(
                                response.headers.get("content-range")
                            )
                            if start == pos:
                                total = reported if reported is not None else total
                            else:
                                raise Retryable(f"server sent bytes from {start}, asked for {pos}")
                        elif pos and not changed:
                            log.info(
                                "%s sent the whole file (Range ignored, or the file changed "
                                "upstream); starting over",
                                redact(fetcher.url),
                            )
                        if (response.status_code != 206 or changed) and pos:
                            out.seek(0)
                            out.truncate(0)
                            hasher.reset()
                            bar.reset()
                            pos = 0
                            if response.status_code == 416 or changed:
                                known = recorded = None
                                fetcher.if_range = None
                                continue
                        if response.status_code in (200, 206) and current != recorded:
                            # Before the first byte of this version lands: what a resume checks.
                            save_state(state, fetcher.url, total, sha256, None, current)
                            recorded = known = current
                            fetcher.if_range = current.if_range()
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
                                check_disk(part.parent, total - pos)
                                disk_checked = True
                        # No chunk_size: re-chunking would hold back received bytes on a drop.
                        for data in response.iter_raw():
                            if total is not None and pos + len(data) > total:
                                raise Overrun(total)  # an endless body must not fill the disk
                            view = memoryview(data)
                            while view:
                                written = out.write(view)
                                view = view[written:]
                            hasher.update(data)
                            pos += len(data)
                            bar.update(len(data))
                    if total is None or pos == total:
                        return hasher.hexdigest(), pos
                    if pos > total:  # cannot happen past the cut above; a retry would loop forever
                        raise Overrun(total)
                    raise Retryable(f"connection closed at byte {pos} of {total}")
                except (httpx.TransportError, Retryable) as exc:
                    attempt = 1 if pos > before else attempt + 1
                    delay = policy.pause_after(exc, attempt, describe)
                    log.info("%s: %s; retrying in %.1fs", redact(fetcher.url), exc, delay)
                    time.sleep(delay)
