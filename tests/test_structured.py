"""Structured output with real models: every path returns what the grammar or schema allows.

Server (``Client`` on a real llama-server) and in process (``Llama`` on the real libllama),
streamed and not. The model comes from ``MODELS``, one fixture parameter each: the counting
model (whose free output is never JSON: it counts) is always there; add a downloaded model as
another entry. The schema and grammar are ones any model's vocabulary can write (number words,
JSON punctuation from byte tokens) and that bound the answer, so it ends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lmserv import BadRequestError, Client, ConfigError, Llama, LlamaParams, LlamaServer
from lmserv.install import LlamaBuild
from lmserv.testing import write_counting_model

#: name -> how to get the model into a folder, and the chat template ``Llama`` needs for it
#: (``None``: the model's own). The counting model's Jinja template is not one libllama knows.
MODELS: dict[str, tuple[Callable[[Path], Path], str | None]] = {
    "counting": (lambda folder: write_counting_model(folder / "counting.gguf"), "chatml"),
}
PROMPT = "one two"
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["three", "four"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
}
GRAMMAR = 'root ::= " three" | " four"'
SHORT = {" three", " four"}


def _check(text: str) -> None:
    """``text`` is one JSON document matching ``SCHEMA``."""
    data = json.loads(text)
    assert set(data) == {"answer", "sure"}, text
    assert data["answer"] in ("three", "four") and isinstance(data["sure"], bool), text


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request: pytest.FixtureRequest, model_dir: Path) -> tuple[Path, str | None]:
    write, template = MODELS[request.param]
    return write(model_dir), template


@pytest.fixture(scope="module")
def llm(case: tuple[Path, str | None], llama_build: LlamaBuild) -> Iterator[Llama]:
    path, template = case
    with Llama(path, n_ctx=512, n_threads=1, params=LlamaParams(chat_template=template)) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def served(case: tuple[Path, str | None], llama_build: LlamaBuild) -> Iterator[Client]:
    with (
        LlamaServer(case[0], n_ctx=512, parallel=1, extra_args=("-t", "1")) as server,
        Client(server.base_url, timeout=120) as client,
    ):
        yield client


ENGINES = ("server", "in-process")


def _engine(name: str, served: Client, llm: Llama) -> Any:
    return served if name == "server" else llm


@pytest.mark.parametrize("engine", ENGINES)
def test_every_path_returns_json_matching_the_schema(
    engine: str, served: Client, llm: Llama
) -> None:
    e = _engine(engine, served, llm)
    options: dict[str, Any] = {"temperature": 0, "max_tokens": 64}
    free = e.complete(PROMPT, **options).text
    with pytest.raises(ValueError):
        json.loads(free)  # the model left alone writes no JSON
    _check(e.complete(PROMPT, json_schema=SCHEMA, **options).text)
    with e.stream(PROMPT, json_schema=SCHEMA, **options) as stream:
        text = "".join(stream)
    assert stream.result is not None and stream.result.text == text
    _check(text)
    wrapped = {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}}
    reply = e.chat(PROMPT, response_format=wrapped, **options)
    _check(reply.text)
    assert reply.finish_reason == "stop"
    inline = {"type": "json_object", "schema": SCHEMA}  # llama-server's own variant
    with e.chat_stream(PROMPT, response_format=inline, **options) as stream:
        text = "".join(stream)
    _check(text)
    _check(e.chat(PROMPT, json_schema=SCHEMA, **options).text)


@pytest.mark.parametrize("engine", ENGINES)
def test_sampled_output_follows_the_schema_too(engine: str, served: Client, llm: Llama) -> None:
    e = _engine(engine, served, llm)
    for seed in (1, 2, 3):
        _check(e.complete(PROMPT, json_schema=SCHEMA, seed=seed, temperature=1.5).text)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_grammar_constrains_a_short_answer(engine: str, served: Client, llm: Llama) -> None:
    e = _engine(engine, served, llm)
    assert e.complete(PROMPT, temperature=0, max_tokens=8).text not in SHORT
    done = e.complete(PROMPT, grammar=GRAMMAR, temperature=0, max_tokens=8)
    assert done.text in SHORT and done.finish_reason == "stop"
    with e.stream(PROMPT, grammar=GRAMMAR, temperature=0.7, seed=5, max_tokens=8) as stream:
        assert "".join(stream) in SHORT
    assert e.chat(PROMPT, grammar=GRAMMAR, temperature=0, max_tokens=8).text in SHORT


def test_a_bad_grammar_is_a_clear_error_on_both_sides(
    served: Client, llm: Llama, capfd: pytest.CaptureFixture[str]
) -> None:
    before = llm.complete(PROMPT, temperature=0, max_tokens=2)
    with pytest.raises(ConfigError, match=r"could not parse the grammar.*expecting"):
        llm.complete(PROMPT, grammar='root ::= ( " three"')
    assert "error parsing grammar" not in capfd.readouterr().err  # logged, not printed
    with pytest.raises(ConfigError, match="could not parse the grammar"):
        llm.complete(PROMPT, grammar='answer ::= " three"')  # no root rule
    with pytest.raises(ConfigError, match="could not parse the grammar"):
        llm.chat_stream(PROMPT, grammar="root ::= [")
    again = llm.complete(PROMPT, temperature=0, max_tokens=2)  # the Llama is still fine
    assert again.text == before.text and again.completion_tokens == 2
    with pytest.raises(BadRequestError, match="failed to parse grammar"):
        served.complete(PROMPT, grammar='root ::= ( " three"')
    with pytest.raises(BadRequestError, match="failed to parse grammar"):
        served.chat(PROMPT, grammar="root ::= [")


def test_a_bad_schema_is_a_clear_error_on_both_sides(served: Client, llm: Llama) -> None:
    with pytest.raises(ConfigError, match="pattern at #/properties/a"):
        llm.complete(PROMPT, json_schema={"properties": {"a": {"pattern": "x+"}}})
    with pytest.raises(ConfigError, match="response_format="):
        llm.chat(PROMPT, response_format={"type": "xml"})
    with pytest.raises(ConfigError, match="tools or tool_choice"):
        llm.chat(PROMPT, tools=[{"type": "function", "function": {"name": "f"}}])
    unresolvable = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(BadRequestError, match=r"cannot resolve \$ref #/\$defs/missing"):
        served.complete(PROMPT, json_schema=unresolvable)


def test_the_same_grammar_gives_the_same_greedy_answer_on_both_sides(
    served: Client, llm: Llama
) -> None:
    # A grammar the model fights (it would rather continue the count): both sides pick the
    # allowed token with the largest logit, through their different sampling code.
    against = 'root ::= ( " five" | " seven" | " nine" ) ( " two" | " one" )'
    options: dict[str, Any] = {"temperature": 0, "max_tokens": 8}
    ours = llm.complete(PROMPT, grammar=against, **options)
    theirs = served.complete(PROMPT, grammar=against, **options)
    assert ours.text == theirs.text
    assert (ours.completion_tokens, ours.stop_type) == (theirs.completion_tokens, "eos")
