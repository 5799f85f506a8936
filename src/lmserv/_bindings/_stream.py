"""What an in-process generation gives back: the client's result types, and the in-process
twin of its ``TextStream`` (text pieces, then ``result``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from lmserv._bindings._generate import Tally
from lmserv._types import ChatCompletion, Completion, Timings

__all__ = ["LlamaStream", "chat_completion", "completion", "holding"]

R = TypeVar("R", Completion, ChatCompletion)


def _timings(tally: Tally) -> Timings:
    return Timings(
        prompt_tokens=tally.prompt_tokens,
        prompt_ms=tally.prompt_ms,
        predicted_tokens=tally.completion_tokens,
        predicted_ms=tally.predicted_ms,
        cached_tokens=tally.cached_tokens,
    )


def _finish_reason(tally: Tally) -> str:
    return "stop" if tally.stop_type in ("eos", "word") else "length"


def completion(model: str, tally: Tally, text: str) -> Completion:
    """The :class:`~lmserv.Completion` of a finished generation, as llama-server words it."""
    return Completion(
        text=text,
        finish_reason=_finish_reason(tally),
        stop_type=tally.stop_type,
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        timings=_timings(tally),
        model=model,
    )


def chat_completion(model: str, tally: Tally, text: str) -> ChatCompletion:
    """The :class:`~lmserv.ChatCompletion` of a finished chat reply."""
    return ChatCompletion(
        text=text,
        role="assistant",
        finish_reason=_finish_reason(tally),
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        timings=_timings(tally),
        model=model,
    )


class LlamaStream(Generic[R]):
    """Text pieces of :meth:`~lmserv.Llama.stream` / :meth:`~lmserv.Llama.chat_stream` as they
    are produced; ``result`` (a :class:`~lmserv.Completion` or :class:`~lmserv.ChatCompletion`,
    as the non-streaming call returns) once the last piece is read.

    Used as :class:`~lmserv.TextStream` is: iterate it once (``"".join(stream)`` equals
    ``result.text``), and ``close()`` it or use ``with`` to stop early. It is also an iterator
    (``next(stream)``).
    """

    def __init__(self, pieces: Iterator[str], finish: Callable[[str], R]) -> None:
        self._pieces = pieces
        self._finish: Callable[[str], R] = finish
        self._parts: list[str] = []
        self.result: R | None = None

    def __iter__(self) -> LlamaStream[R]:
        return self

    def __next__(self) -> str:
        try:
            piece = next(self._pieces)
        except StopIteration:
            if self.result is None:
                self.result = self._finish("".join(self._parts))
            raise
        self._parts.append(piece)
        return piece

    def close(self) -> None:
        """Stop generating (the context is free for the next call)."""
        close = getattr(self._pieces, "close", None)  # a generator: runs its cleanup now
        if close is not None:
            close()

    def __enter__(self) -> LlamaStream[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def holding(owner: object, pieces: Iterator[str]) -> Iterator[str]:
    """``pieces``, keeping ``owner`` alive while they are read.

    The decoder refers to the context, not to its ``Llama``, so ``Llama(path).stream(...)``
    would otherwise free the model under its own open stream.
    """
    yield from pieces
    del owner
