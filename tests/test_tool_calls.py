"""Tool calls, reasoning text and structured-output options on the client, without a build.

No model that writes tool calls can run on this machine, so the answers below are llama-server's
at the pinned commit, written field for field from the code that produces them (paths under the
sdist's ``vendor/llama.cpp``), and served by ``_api_server.ApiServer`` over a real socket:

- a chat answer: ``server_task_result_cmpl_final::to_json_oaicompat_chat`` (tools/server/
  server-task.cpp) with the message of ``common_chat_msg::to_json_oaicompat`` (common/chat.cpp):
  ``content`` is ``""`` beside tool calls, ``finish_reason`` is ``"tool_calls"``, each call is
  ``{"type", "function": {"name", "arguments"}, "id"}`` with ``arguments`` JSON *text* and the id
  a random 32-character string (``gen_tool_call_id``);
- a streamed one: the first chunk ``{"role": "assistant", "content": null}``
  (``to_json_oaicompat_chat`` of the partial result), then one chunk per diff as
  ``server_chat_msg_diff_to_json_oaicompat`` (tools/server/server-chat.cpp) writes it:
  ``{"tool_calls": [{"index", "id", "type", "function": {"name"}}]}`` for a new call (ids and
  names are sent once, by ``task_result_state::update_chat_msg``), then
  ``{"tool_calls": [{"index", "function": {"arguments": piece}}]}`` per piece of arguments;
  ``reasoning_content`` pieces the same way; then the finish chunk and the usage chunk;
- the tools, the call arguments and the weather question are the ones of the server's own test
  tools/server/tests/unit/test_tool_call.py (``TEST_TOOL``, ``WEATHER_TOOL``), and the stream is
  assembled exactly as its tests/utils.py does.

A live recording was tried: llama-server with the counting model, ``tool_choice="required"`` and
a tool-calling chat template (Qwen 2.5's, Llama 3.2's from the sdist's models/templates) answers
400 "Failed to initialize samplers": its tool-call grammar is prefilled with the template's
generation prompt, which the counting vocabulary tokenizes into bytes the grammar refuses; with
a template of no generation prompt the server detects no tool-call format and ignores the tools.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from _api_server import ApiServer, Reply
from lmserv import AsyncClient, ChatCompletion, Client, ConfigError, SamplingOptions, ToolCall

WEATHER_TOOL = {  # tools/server/tests/unit/test_tool_call.py
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The city and country/state, e.g. 'San Francisco, CA', or "
                    "'Paris, France'",
                }
            },
            "required": ["location"],
        },
    },
}
TEST_TOOL = {
    "type": "function",
    "function": {
        "name": "test",
        "description": "",
        "parameters": {
            "type": "object",
            "properties": {"success": {"type": "boolean", "const": True}},
            "required": ["success"],
        },
    },
}
_ID1, _ID2 = "Xw3m0bJq2Hf1fZKc9yTNr5eLpA7sGdVu", "aP4kR8nQ1tYc6WzE0mLx3HbJ9vUfS2oD"
_USAGE = {"completion_tokens": 21, "prompt_tokens": 194, "total_tokens": 215}
_TIMINGS = {"prompt_n": 194, "prompt_ms": 310.2, "predicted_n": 21, "predicted_ms": 402.9}
_HEAD = {"created": 1764750000, "id": "chatcmpl-7Q2", "model": "gpt-3.5-turbo"}

TOOL_ANSWER = {
    "choices": [
        {
            "finish_reason": "tool_calls",
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {
                            "name": "get_current_weather",
                            "arguments": '{"location":"Istanbul, Turkey"}',
                        },
                        "id": _ID1,
                    },
                    {
                        "type": "function",
                        "function": {"name": "test", "arguments": '{"success":true}'},
                        "id": _ID2,
                    },
                ],
            },
        }
    ],
    **_HEAD,
    "system_fingerprint": "b1-0000000",
    "object": "chat.completion",
    "usage": _USAGE,
    "timings": _TIMINGS,
}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    choice = {"finish_reason": finish, "index": 0, "delta": delta}
    return json.dumps({"choices": [choice], **_HEAD, "object": "chat.completion.chunk"})


def _call(index: int, **fields: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, **fields}]}


TOOL_EVENTS = (
    _chunk({"role": "assistant", "content": None}),
    _chunk({"reasoning_content": "The user asks"}),
    _chunk({"reasoning_content": " for the weather."}),
    _chunk(_call(0, id=_ID1, type="function", function={"name": "get_current_weather"})),
    _chunk(_call(0, function={"arguments": '{"location":'})),
    _chunk(_call(0, function={"arguments": '"Istanbul, Turkey"}'})),
    _chunk(_call(1, id=_ID2, type="function", function={"name": "test"})),
    _chunk(_call(1, function={"arguments": '{"success":true}'})),
    _chunk({}, finish="tool_calls"),
    json.dumps({"choices": [], **_HEAD, "usage": _USAGE, "timings": _TIMINGS}),
    "[DONE]",
)
CALLS = (
    ToolCall(id=_ID1, name="get_current_weather", arguments='{"location":"Istanbul, Turkey"}'),
    ToolCall(id=_ID2, name="test", arguments='{"success":true}'),
)


# -- parsing -------------------------------------------------------------------------------------


def test_tool_calls_are_parsed(api: ApiServer, client: Client) -> None:
    api.reply("POST", "/v1/chat/completions", Reply(body=TOOL_ANSWER))
    reply = client.chat("What is the weather in Istanbul?", tools=[WEATHER_TOOL, TEST_TOOL])
    assert reply.tool_calls == CALLS
    assert reply.tool_calls[0].parsed == {"location": "Istanbul, Turkey"}
    assert reply.tool_calls[1].parsed == {"success": True}
    assert reply.tool_calls[0].type == "function"
    assert (reply.text, reply.finish_reason, reply.reasoning_content) == ("", "tool_calls", "")


def test_a_stream_assembles_tool_calls_and_reasoning(api: ApiServer, client: Client) -> None:
    api.reply("POST", "/v1/chat/completions", Reply(events=TOOL_EVENTS))
    with client.chat_stream("What is the weather in Istanbul?", tools=[WEATHER_TOOL]) as stream:
        chunks = list(stream)
    assert chunks == []  # no answer text: only thinking and calls
    result = stream.result
    assert isinstance(result, ChatCompletion)
    assert result.tool_calls == CALLS
    assert result.tool_calls[0].parsed == {"location": "Istanbul, Turkey"}
    assert result.reasoning_content == "The user asks for the weather."
    assert (result.finish_reason, result.completion_tokens) == ("tool_calls", 21)


def test_the_async_stream_assembles_the_same(api: ApiServer) -> None:
    api.reply("POST", "/v1/chat/completions", Reply(events=TOOL_EVENTS))

    async def run() -> ChatCompletion | None:
        async with AsyncClient(api.base_url, timeout=5.0) as client:
            stream = await client.chat_stream("weather?", tools=[WEATHER_TOOL])
            async for _ in stream:
                pass
            return stream.result

    result = asyncio.run(run())
    assert result is not None and result.tool_calls == CALLS


def test_reasoning_content_of_a_plain_answer() -> None:
    # The message shape of common_chat_msg::to_json_oaicompat with --reasoning-format deepseek.
    data = {"choices": [{"finish_reason": "stop", "index": 0, "message": {
        "role": "assistant", "content": "4", "reasoning_content": "2 + 2 is 4."}}]}  # fmt: skip
    reply = ChatCompletion.from_json(data)
    assert (reply.text, reply.reasoning_content, reply.tool_calls) == ("4", "2 + 2 is 4.", ())


def test_tool_call_arguments_that_are_not_json() -> None:
    assert ToolCall(id="", name="f", arguments="{oops").parsed is None
    assert ToolCall(id="", name="f", arguments="").parsed == {}
    # Some servers send the arguments as an object: kept as its JSON text.
    call = ToolCall.from_json({"id": "1", "function": {"name": "f", "arguments": {"a": 1}}})
    assert (call.arguments, call.parsed) == ('{"a": 1}', {"a": 1})


# -- what reaches the server ---------------------------------------------------------------------


def test_chat_options_reach_the_body_as_the_api_names_them(api: ApiServer, client: Client) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    client.chat("hi", tools=[WEATHER_TOOL], tool_choice="required", temperature=0)
    client.chat("hi", response_format=fmt)
    forced = {"type": "function", "function": {"name": "test"}}
    client.chat_stream("hi", tools=[TEST_TOOL], tool_choice=forced).close()
    client.chat("hi", response_format={"type": "json_object"}, tools=None)  # None: not sent
    user = [{"role": "user", "content": "hi"}]
    assert api.bodies("/v1/chat/completions") == [
        {"messages": user, "temperature": 0, "tools": [WEATHER_TOOL], "tool_choice": "required"},
        {"messages": user, "response_format": fmt},
        {"messages": user, "tools": [TEST_TOOL], "tool_choice": forced, "stream": True,
         "stream_options": {"include_usage": True}},
        {"messages": user, "response_format": {"type": "json_object"}},
    ]  # fmt: skip


def test_grammar_and_json_schema_are_native_completion_fields(
    api: ApiServer, client: Client
) -> None:
    schema = {"enum": ["three", "four"]}
    client.complete("one two", grammar='root ::= " three"', max_tokens=4)
    client.stream("one two", SamplingOptions(json_schema=schema)).close()
    client.chat("one two", json_schema=schema)  # llama-server reads them on the chat route too
    assert api.bodies("/completion") == [
        {"prompt": "one two", "n_predict": 4, "grammar": 'root ::= " three"'},
        {"prompt": "one two", "json_schema": schema, "stream": True},
    ]
    assert api.bodies("/v1/chat/completions")[0]["json_schema"] == schema


def test_the_async_client_sends_the_same(api: ApiServer, client: Client) -> None:
    async def run() -> None:
        async with AsyncClient(api.base_url, timeout=5.0) as ac:
            await ac.chat("hi", tools=[TEST_TOOL], tool_choice="auto")
            await ac.complete("one", grammar="root ::= [a-z]")

    asyncio.run(run())
    client.chat("hi", tools=[TEST_TOOL], tool_choice="auto")
    client.complete("one", grammar="root ::= [a-z]")
    bodies = [r.body for r in api.recorded]
    assert bodies[:2] == bodies[2:]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"tools": [{"type": "function"}]}, "tools="),
        ({"tools": "get_weather"}, "tools="),
        ({"tool_choice": "always"}, "tool_choice='always'"),
        ({"response_format": {"type": "yaml"}}, "response_format="),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}},
         "json_schema.schema must be an object"),
        ({"grammar": ""}, "grammar=''"),
        ({"json_schema": "[1]"}, "json_schema='[1]'"),
        ({"grammar": "root ::= [a]", "json_schema": {}}, "cannot be used together"),
    ],
)  # fmt: skip
def test_bad_options_raise_before_any_request(
    api: ApiServer, client: Client, kwargs: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        client.chat("hi", **kwargs)
    assert words in str(caught.value)
    assert api.recorded == []
