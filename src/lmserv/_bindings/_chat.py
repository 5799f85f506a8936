"""Chat prompts through ``llama_chat_apply_template`` (llama.cpp's built-in template families).

llama.cpp recognises a template by its text (or takes a family name such as ``"chatml"``) and
renders it in C++; there is no Jinja engine, so a template outside the built-in list is refused
(-1), which :func:`apply_chat_template` turns into a :class:`~lmserv.errors.LlamaError` listing
the names that work.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from typing import Any

from lmserv._bindings import _llama_h as h
from lmserv._inputs import check_text
from lmserv._types import SamplingOptions, chat_values, response_format_schema, sampling_values
from lmserv.errors import ConfigError, LlamaError

__all__ = ["apply_chat_template", "builtin_chat_templates", "chat_options"]


def chat_options(
    sampling: SamplingOptions | None, kwargs: Mapping[str, Any], method: str
) -> dict[str, Any]:
    """The sampling keywords of an in-process chat call: ``response_format`` becomes the
    ``json_schema`` the reply must match, read as llama-server reads it; ``tools`` and
    ``tool_choice`` raise :class:`~lmserv.errors.ConfigError` (libllama has no Jinja templates
    to write and parse tool calls with)."""
    plain, chat = chat_values(kwargs)
    if "tools" in chat or "tool_choice" in chat:
        raise ConfigError(
            f"Llama.{method}() cannot take tools or tool_choice: tool calls are written and "
            "parsed by llama-server's Jinja chat templates, which libllama does not have; "
            "serve the model (`lmserv serve MODEL --jinja`) and use Client.chat(tools=...)"
        )
    fmt = chat.get("response_format")
    if fmt is not None:
        given = sampling_values(sampling, plain, f"Llama.{method}")
        schema = response_format_schema(fmt, given.get("json_schema"))
        if schema is not None:
            plain["json_schema"] = schema
    return plain


def builtin_chat_templates(lib: h.LibLlama) -> list[str]:
    """Names of the chat templates llama.cpp can apply without Jinja."""
    n = lib.llama_chat_builtin_templates(None, 0)
    out = (ctypes.c_char_p * max(n, 0))()
    n = lib.llama_chat_builtin_templates(out, n)
    return [name.decode() for name in out[:n] if name]


def apply_chat_template(
    lib: h.LibLlama,
    template: str,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool,
    model_name: str,
) -> str:
    """Render ``messages`` with ``template`` (a family name or template text).

    Raises :class:`~lmserv.errors.ConfigError` for a message without string ``role``/``content``
    and :class:`~lmserv.errors.LlamaError` for a template llama.cpp does not know.
    """
    keep: list[bytes] = []  # the C array points into these
    array = (h.llama_chat_message * len(messages))()
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise ConfigError(
                f"message {i} must have string 'role' and 'content', got {dict(message)!r}"
            )
        where = f"message {i}"
        keep += [check_text(role, f"{where}'s role").encode(), check_text(content, where).encode()]
        array[i].role, array[i].content = keep[-2], keep[-1]
    tmpl = template.encode("utf-8")
    capacity = 2 * sum(len(b) for b in keep) + 256
    for _ in range(2):
        buf = ctypes.create_string_buffer(capacity)
        n = lib.llama_chat_apply_template(
            tmpl, array, len(messages), add_generation_prompt, buf, capacity
        )
        if n < 0:
            raise LlamaError(
                f"llama.cpp does not recognise the chat template of {model_name!r} "
                "(llama_chat_apply_template has no Jinja engine); pass "
                "LlamaParams(chat_template=NAME) with one of: "
                + ", ".join(builtin_chat_templates(lib))
                + " -- or serve the model with llama-server --jinja"
            )
        if n <= capacity:
            return buf.raw[:n].decode("utf-8", "replace")
        capacity = n + 1
    raise LlamaError("the chat template output kept growing")  # pragma: no cover
