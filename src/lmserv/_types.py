"""Results the client returns: frozen dataclasses built from llama-server's JSON.

Each keeps the full JSON it came from in ``raw`` (excluded from equality and ``repr``), so a
field llama-server adds later is never out of reach.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChatCompletion", "Completion", "Timings"]


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


@dataclass(frozen=True)
class Timings:
    """How long llama-server spent, as it reports in ``timings``.

    ``prompt_*`` covers reading the prompt (tokens not found in the cache), ``predicted_*``
    the generated tokens.
    """

    prompt_tokens: int
    prompt_ms: float
    predicted_tokens: int
    predicted_ms: float
    cached_tokens: int = 0

    @property
    def prompt_per_second(self) -> float:
        """Prompt tokens read per second (0.0 when nothing was read)."""
        return self.prompt_tokens * 1000.0 / self.prompt_ms if self.prompt_ms > 0 else 0.0

    @property
    def predicted_per_second(self) -> float:
        """Generated tokens per second (0.0 when nothing was generated)."""
        return self.predicted_tokens * 1000.0 / self.predicted_ms if self.predicted_ms > 0 else 0.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Timings | None:
        """Parse llama-server's ``timings`` object; ``None`` when absent.

        >>> Timings.from_json({"prompt_n": 3, "prompt_ms": 1.5, "predicted_n": 9,
        ...                    "predicted_ms": 4.5}).predicted_per_second
        2000.0
        """
        if not data:
            return None
        return cls(
            prompt_tokens=_int(data.get("prompt_n")),
            prompt_ms=_float(data.get("prompt_ms")),
            predicted_tokens=_int(data.get("predicted_n")),
            predicted_ms=_float(data.get("predicted_ms")),
            cached_tokens=_int(data.get("cache_n")),
        )


# llama-server's native stop_type, in OpenAI's finish_reason vocabulary.
_FINISH = {"eos": "stop", "word": "stop", "limit": "length"}


@dataclass(frozen=True)
class Completion:
    """The answer of native ``/completion``.

    ``finish_reason`` is ``"stop"`` (end of sequence or a stop string) or ``"length"``
    (``max_tokens`` reached); ``stop_type`` is llama-server's own word (``eos``, ``word``,
    ``limit``).
    """

    text: str
    finish_reason: str | None
    stop_type: str | None
    prompt_tokens: int
    completion_tokens: int
    timings: Timings | None
    model: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, text: str | None = None) -> Completion:
        """Build from a ``/completion`` answer (or a stream's last event, with ``text`` joined)."""
        stop_type = data.get("stop_type")
        return cls(
            text=str(data.get("content", "")) if text is None else text,
            finish_reason=_FINISH.get(str(stop_type)) if stop_type else None,
            stop_type=str(stop_type) if stop_type else None,
            prompt_tokens=_int(data.get("tokens_evaluated")),
            completion_tokens=_int(data.get("tokens_predicted")),
            timings=Timings.from_json(data.get("timings")),
            model=str(data.get("model", "")),
            raw=data,
        )


@dataclass(frozen=True)
class ChatCompletion:
    """The first choice of an OpenAI-style ``/v1/chat/completions`` answer."""

    text: str
    role: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    timings: Timings | None
    model: str = ""
    id: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, text: str | None = None) -> ChatCompletion:
        """Build from a chat answer (or a stream's last chunk, with ``text`` joined)."""
        choices = data.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], Mapping) else {}
        message = choice.get("message") or choice.get("delta") or {}
        usage = data.get("usage") or {}
        return cls(
            text=str(message.get("content") or "") if text is None else text,
            role=str(message.get("role") or "assistant"),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
            timings=Timings.from_json(data.get("timings")),
            model=str(data.get("model", "")),
            id=str(data.get("id", "")),
            raw=data,
        )
