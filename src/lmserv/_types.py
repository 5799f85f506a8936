"""The vocabulary shared by :class:`~lmserv.Client`, :class:`~lmserv.AsyncClient` and
:class:`~lmserv.Llama`: what a generation is asked (:class:`SamplingOptions`, ``Messages``) and
what it answers (:class:`Completion`, :class:`ChatCompletion` with its :class:`ToolCall`,
:class:`Timings`). Structured output is part of the vocabulary: ``grammar``/``json_schema`` are
sampling options (a grammar is a sampler in llama.cpp), and a chat's ``tools``, ``tool_choice``
and ``response_format`` are declared once in :class:`ChatArgs`.

Results are frozen dataclasses built from llama-server's JSON (or, in process, from what
``Llama`` measured). Each keeps the JSON it came from in ``raw`` (excluded from equality and
``repr``), so a field llama-server adds later is never out of reach.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypedDict

from lmserv.errors import ConfigError

__all__ = [
    "ChatArgs",
    "ChatCompletion",
    "Completion",
    "Messages",
    "SamplingArgs",
    "SamplingOptions",
    "Timings",
    "ToolCall",
    "chat_values",
    "response_format_schema",
]

#: A conversation: ``[{"role": "user", "content": "..."}, ...]``; a ``str`` is one user turn.
Messages = str | Sequence[Mapping[str, Any]]

_SEED_LIMIT = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp reads this seed as "draw a random one"


def _int_at_least(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check(values: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` listing every value (of the set fields) no engine accepts.

    Written out field by field, without closures: it runs on every request.
    """
    problems = []
    if "max_tokens" in values and not _int_at_least(values["max_tokens"], -1):
        problems.append(
            f"max_tokens={values['max_tokens']!r} must be an int >= -1 "
            "(-1: no limit, None: the engine's default)"
        )
    temperature = values.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and math.isfinite(temperature)
    ):
        problems.append(f"temperature={temperature!r} must be a finite number (<= 0: greedy)")
    if "top_k" in values and not _int_at_least(values["top_k"], 0):
        problems.append(f"top_k={values['top_k']!r} must be an int >= 0 (0: off)")
    for name in ("top_p", "min_p"):
        value = values.get(name)
        if value is not None and not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
            problems.append(f"{name}={value!r} must be a number between 0 and 1")
    seed = values.get("seed")
    if seed is not None and not (_int_at_least(seed, 0) and seed < _SEED_LIMIT):
        problems.append(
            f"seed={seed!r} must be an int >= 0 and < {_SEED_LIMIT} (None: a random seed each call)"
        )
    stop = values.get("stop")
    if stop is not None and any(not isinstance(s, str) or not s for s in stop):
        problems.append(f"stop={stop!r} must be strings, none of them empty")
    ignore_eos = values.get("ignore_eos")
    if ignore_eos is not None and not isinstance(ignore_eos, bool):
        problems.append(f"ignore_eos={ignore_eos!r} must be True, False or None")
    grammar = values.get("grammar")
    if grammar is not None and not (isinstance(grammar, str) and grammar.strip()):
        problems.append(f'grammar={grammar!r} must be GBNF text, e.g. \'root ::= "yes" | "no"\'')
    schema = values.get("json_schema")
    if schema is not None and not isinstance(schema, Mapping):
        problems.append(f"json_schema={schema!r} must be a JSON schema object (a dict)")
    if grammar is not None and schema is not None:
        problems.append("grammar and json_schema cannot be used together (llama-server refuses it)")
    if problems:
        raise ConfigError("; ".join(problems))


def _stop_tuple(stop: str | Sequence[str]) -> tuple[str, ...]:
    return (stop,) if isinstance(stop, str) else tuple(stop)


@dataclass(frozen=True)
class SamplingOptions:
    """How a generation picks its tokens, declared once for every engine.

    ``Client``, ``AsyncClient`` and ``Llama`` take these as a ``sampling=`` object or as the
    same-named keyword arguments (a keyword wins over the object's field). A field left ``None``
    is not set: the engine's own default applies (llama-server's, or ``Llama``'s, which match:
    temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, a random seed), except ``max_tokens``,
    unlimited on llama-server and 256 in ``Llama``.

    - ``max_tokens``: most tokens to generate; ``-1`` means no limit (until the end-of-generation
      token or a full context).
    - ``temperature``: ``<= 0`` is greedy; ``top_k`` (0 = off), ``top_p``, ``min_p``: the usual
      filters, applied in llama.cpp's order.
    - ``seed``: makes sampled output repeatable, ``0 <= seed < 2**32 - 1``.
    - ``stop``: strings that end the text before they appear (a ``str`` is one).
    - ``ignore_eos``: keep going past the end-of-generation token.
    - ``grammar``: GBNF text every answer must match (llama.cpp's grammar sampler).
    - ``json_schema``: a JSON schema every answer must match (turned into a grammar: by
      llama-server on the server, by :func:`lmserv.json_schema_grammar` in ``Llama``, which
      raises :class:`~lmserv.errors.ConfigError` for a keyword it does not support). Not
      together with ``grammar``.

    Raises :class:`~lmserv.errors.ConfigError` for a value no engine accepts.

    >>> SamplingOptions(temperature=0, stop="six").stop
    ('six',)
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | Sequence[str] | None = None
    ignore_eos: bool | None = None
    grammar: str | None = None
    json_schema: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.stop is not None:
            object.__setattr__(self, "stop", _stop_tuple(self.stop))
        _check(self.given())

    @property
    def stops(self) -> tuple[str, ...]:
        """``stop`` as a tuple (empty when unset)."""
        return tuple(self.stop or ())

    def given(self) -> dict[str, Any]:
        """The fields that are set (not ``None``), by name."""
        values = ((name, getattr(self, name)) for name in _NAMES)
        return {name: value for name, value in values if value is not None}

    def merged(self, overrides: Mapping[str, Any]) -> SamplingOptions:
        """A copy with ``overrides`` (field name to value) applied; ``self`` when there are none."""
        return replace(self, **overrides) if overrides else self


class SamplingArgs(TypedDict, total=False):
    """The keyword form of :class:`SamplingOptions` (``**kwargs: Unpack[SamplingArgs]``)."""

    max_tokens: int | None
    temperature: float | None
    top_k: int | None
    top_p: float | None
    min_p: float | None
    seed: int | None
    stop: str | Sequence[str] | None
    ignore_eos: bool | None
    grammar: str | None
    json_schema: Mapping[str, Any] | None


class ChatArgs(SamplingArgs, total=False):
    """What a chat takes beyond the sampling options, in the OpenAI shapes llama-server reads.

    - ``tools``: ``[{"type": "function", "function": {"name", "description", "parameters"}}]``;
      the server needs ``--jinja`` (its chat templates parse the calls into
      :attr:`ChatCompletion.tool_calls`).
    - ``tool_choice``: ``"auto"``, ``"none"``, ``"required"`` or
      ``{"type": "function", "function": {"name": ...}}``.
    - ``response_format``: ``{"type": "json_object"}`` (any object, or ``"schema": {...}``),
      ``{"type": "json_schema", "json_schema": {"schema": {...}}}`` or ``{"type": "text"}``.
    """

    tools: Sequence[Mapping[str, Any]] | None
    tool_choice: str | Mapping[str, Any] | None
    response_format: Mapping[str, Any] | None


_CHAT_NAMES = ("tools", "tool_choice", "response_format")
_TOOL_CHOICES = ("auto", "none", "required")


def _check_chat(values: Mapping[str, Any]) -> None:
    problems = []
    tools = values.get("tools")
    if tools is not None:
        ok = isinstance(tools, Sequence) and not isinstance(tools, str)
        for tool in tools if ok else ():
            function = tool.get("function") if isinstance(tool, Mapping) else None
            if not (
                isinstance(function, Mapping)
                and tool.get("type", "function") == "function"
                and isinstance(function.get("name"), str)
                and function["name"]
            ):
                ok = False
        if not ok:
            problems.append(
                f"tools={tools!r} must be a list of "
                '{"type": "function", "function": {"name": ..., "parameters": {...}}}'
            )
    choice = values.get("tool_choice")
    if choice is not None and not (
        choice in _TOOL_CHOICES
        or (isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping))
    ):
        problems.append(
            f"tool_choice={choice!r} must be one of {', '.join(_TOOL_CHOICES)} or "
            '{"type": "function", "function": {"name": ...}}'
        )
    fmt = values.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, Mapping) else None
        if kind not in ("text", "json_object", "json_schema"):
            problems.append(
                f"response_format={fmt!r} must be {{'type': 'json_object'}}, "
                "{'type': 'json_schema', 'json_schema': {'schema': {...}}} or {'type': 'text'}"
            )
        elif kind == "json_schema" and not isinstance(
            (fmt.get("json_schema") or {}).get("schema", {}), Mapping
        ):
            problems.append(f"response_format={fmt!r}: json_schema.schema must be an object")
    if problems:
        raise ConfigError("; ".join(problems))


def chat_values(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a chat's keywords into the sampling ones and the :class:`ChatArgs` ones (the
    latter checked, ``None`` ones dropped). Raises :class:`ConfigError` for a bad value."""
    if not any(name in kwargs for name in _CHAT_NAMES):
        return dict(kwargs), {}
    sampling = {k: v for k, v in kwargs.items() if k not in _CHAT_NAMES}
    chat = {k: kwargs[k] for k in _CHAT_NAMES if kwargs.get(k) is not None}
    _check_chat(chat)
    return sampling, chat


def response_format_schema(
    response_format: Mapping[str, Any] | None, json_schema: Mapping[str, Any] | None = None
) -> Mapping[str, Any] | None:
    """The JSON schema a chat's answer must match, read as llama-server reads it: ``json_object``
    takes its ``schema`` (else ``json_schema`` if given), ``json_schema`` its
    ``json_schema.schema``, ``text`` adds nothing; an empty schema means any JSON object.

    >>> response_format_schema({"type": "json_object"})
    {'type': 'object'}
    >>> response_format_schema({"type": "json_object"}, {"enum": [1]})  # json_schema= kept
    {'enum': [1]}
    >>> response_format_schema({"type": "text"}) is None
    True
    >>> response_format_schema({"type": "json_schema", "json_schema": {"schema": {"enum": [1]}}})
    {'enum': [1]}
    """
    schema = json_schema
    if response_format is not None:
        kind = response_format.get("type")
        if kind == "json_object" and ("schema" in response_format or not schema):
            schema = response_format.get("schema") or {}
        elif kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
    if schema is not None and not schema:
        return {"type": "object"}
    return schema


_NAMES = tuple(f.name for f in fields(SamplingOptions))
_FIELDS = frozenset(_NAMES)


def sampling_values(
    sampling: SamplingOptions | None,
    kwargs: Mapping[str, Any],
    where: str,
    *,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The set sampling fields of one call: ``sampling``'s, with the call's keyword arguments
    (``kwargs``) applied on top (a keyword given as ``None`` unsets the field), checked as
    :class:`SamplingOptions` checks them. A plain dict, because this runs on every request.

    A keyword that is no sampling option raises :class:`TypeError` naming ``where``, unless
    ``extra`` is given: then it goes there, with a :class:`DeprecationWarning` (the clients used to
    put any keyword into the request body; ``extra_body=`` says so explicitly).
    """
    if sampling is not None and not isinstance(sampling, SamplingOptions):
        raise TypeError(
            f"{where}: sampling={sampling!r} must be a SamplingOptions (or pass the options as "
            "keyword arguments)"
        )
    values = sampling.given() if sampling is not None else {}
    if not kwargs:
        return values
    unknown = [k for k in kwargs if k not in _FIELDS]
    if unknown:
        if extra is None:
            raise TypeError(
                f"{where}() got unexpected keyword argument(s) {', '.join(sorted(unknown))}; the "
                f"sampling options are {', '.join(_NAMES)}"
            )
        warnings.warn(
            f"{where}(): passing {', '.join(sorted(unknown))} as keyword arguments to go into "
            "the request body is deprecated; use extra_body={...}",
            DeprecationWarning,
            stacklevel=4,
        )
        extra.update((k, kwargs[k]) for k in unknown)
    for name, value in kwargs.items():
        if name in _FIELDS:
            if value is None:
                values.pop(name, None)
            else:
                values[name] = _stop_tuple(value) if name == "stop" else value
    _check(values)
    return values


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


def _parse_arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return None


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for (``message.tool_calls[i]`` in OpenAI's shape).

    ``arguments`` is the JSON text as the server sent it; ``parsed`` is that text decoded
    (``{}`` for an empty text, ``None`` when it is not JSON: a model can write bad JSON).

    >>> ToolCall(id="a1", name="get_weather", arguments='{"city": "Paris"}').parsed
    {'city': 'Paris'}
    """

    id: str
    name: str
    arguments: str
    type: str = "function"
    parsed: Any = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parsed", _parse_arguments(self.arguments))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ToolCall:
        """Build from ``{"id", "type", "function": {"name", "arguments"}}``."""
        function = data.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):  # some servers send an object
            arguments = json.dumps(arguments) if arguments is not None else ""
        return cls(
            id=str(data.get("id") or ""),
            name=str(function.get("name") or ""),
            arguments=arguments,
            type=str(data.get("type") or "function"),
        )


@dataclass(frozen=True)
class ChatCompletion:
    """The first choice of an OpenAI-style ``/v1/chat/completions`` answer.

    ``tool_calls`` holds the calls the model asked for (``finish_reason`` is then
    ``"tool_calls"``); ``reasoning_content`` the model's thinking when the server splits it
    from the answer (``--reasoning-format``), ``""`` otherwise.
    """

    text: str
    role: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    timings: Timings | None
    model: str = ""
    id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning_content: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any],
        *,
        text: str | None = None,
        reasoning: str | None = None,
        tool_calls: Sequence[ToolCall] | None = None,
    ) -> ChatCompletion:
        """Build from a chat answer (or a stream's last chunk, with what the deltas carried:
        ``text``, ``reasoning`` and ``tool_calls`` assembled)."""
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
            tool_calls=tuple(ToolCall.from_json(call) for call in message.get("tool_calls") or ())
            if tool_calls is None
            else tuple(tool_calls),
            reasoning_content=str(message.get("reasoning_content") or "")
            if reasoning is None
            else reasoning,
            raw=data,
        )
