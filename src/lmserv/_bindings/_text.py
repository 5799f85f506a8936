"""Turning a stream of token pieces (bytes) into text pieces, honouring stop strings.

A token's piece may end in the middle of a UTF-8 character (byte-fallback vocabularies split
emoji and CJK into single bytes); :class:`PieceAssembler` holds such bytes back until the
character is complete. Text that could be the start of a stop string is held back too, so a
stop string never leaks out half-emitted.
"""

from __future__ import annotations

import codecs

__all__ = ["PieceAssembler"]


class PieceAssembler:
    """Feed token bytes with :meth:`feed`; emit what it returns; call :meth:`finish` at the end.

    >>> a = PieceAssembler(stop=("END",))
    >>> a.feed(b"caf\\xc3"), a.feed(b"\\xa9 E"), a.feed(b"ND more"), a.stopped
    ('caf', 'é ', '', True)
    """

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stop = stop
        self._pending = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Add one token's bytes; return the text that is now certain (possibly empty)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(data)
        return self._release(final=False)

    def finish(self) -> str:
        """Flush at the end of generation (an incomplete trailing character becomes U+FFFD)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        text = self._pending
        if not self._stop:
            self._pending = ""
            return text
        cut = min((i for i in (text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        hold = 0 if final else self._partial_stop_suffix(text)
        self._pending = text[len(text) - hold :]
        return text[: len(text) - hold]

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        best = 0
        for stop in self._stop:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best
