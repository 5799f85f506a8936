"""The client's own logic against a local stand-in of llama-server's API (no llama.cpp build).

What the client sends (exact request bodies), how it retries, and how it reads streams and errors
are checked here against ``_api_server.ApiServer``, a real HTTP server on 127.0.0.1 that records
every request and answers as llama-server does. ``test_client.py`` checks the same client against
the real llama-server.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from typing import Any

import pytest

from _api_server import ApiServer, Reply, error_body
from lmserv import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    ChatCompletion,
    Client,
    Completion,
    ConfigError,
    LmservError,
    SamplingOptions,
    ServerUnavailable,
)

# -- request bodies ------------------------------------------------------------------------------


def test_unset_options_are_not_sent(api: ApiServer, client: Client) -> None:
    client.complete("one two")
    client.chat("one two")
    assert api.bodies("/completion") == [{"prompt": "one two"}]
    assert api.bodies("/v1/chat/completions") == [
        {"messages": [{"role": "user", "content": "one two"}]}
    ]


def test_every_sampling_option_has_its_wire_name(api: ApiServer, client: Client) -> None:
    every = SamplingOptions(
        max_tokens=2, temperature=0.5, top_k=5, top_p=0.9, min_p=0.1, seed=7, stop="x",
        ignore_eos=True,
    )  # fmt: skip
    client.complete("one", every)
    client.chat([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], every)
    sampling = {"temperature": 0.5, "top_k": 5, "top_p": 0.9, "min_p": 0.1, "seed": 7,
                "stop": ["x"], "ignore_eos": True}  # fmt: skip
    assert api.bodies("/completion") == [{"prompt": "one", "n_predict": 2, **sampling}]
    assert api.bodies("/v1/chat/completions") == [
        {
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            "max_tokens": 2,
            **sampling,
        }
    ]


def test_keywords_and_the_options_object_are_one_thing(api: ApiServer, client: Client) -> None:
    client.complete("one", SamplingOptions(temperature=0, top_k=5, stop=["a", "b"]))
    client.complete("one", temperature=0, top_k=5, stop=("a", "b"))
    client.complete(
        "one", SamplingOptions(temperature=0.7, top_k=5), temperature=0, stop=["a", "b"]
    )
    first, *others = api.bodies("/completion")
    assert first == {"prompt": "one", "temperature": 0, "top_k": 5, "stop": ["a", "b"]}
    assert others == [first, first]  # a keyword wins over the object's field


def test_streams_ask_for_a_stream_and_the_usage_chunk(api: ApiServer, client: Client) -> None:
    list(client.stream("one", max_tokens=2))
    list(client.chat_stream("one", max_tokens=2))
    list(client.chat_stream("one", extra_body={"stream_options": {"include_usage": False}}))
    assert api.bodies("/completion") == [{"prompt": "one", "n_predict": 2, "stream": True}]
    chat, no_usage = api.bodies("/v1/chat/completions")
    assert chat == {
        "messages": [{"role": "user", "content": "one"}],
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert no_usage["stream_options"] == {"include_usage": False}


def test_extra_body_goes_in_last(api: ApiServer, client: Client) -> None:
    client.complete("one", temperature=0.5, extra_body={"n_probs": 3, "temperature": 0})
    assert api.bodies("/completion") == [{"prompt": "one", "temperature": 0, "n_probs": 3}]


def test_unknown_keywords_still_reach_the_body_with_a_warning(
    api: ApiServer, client: Client
) -> None:
    with pytest.warns(DeprecationWarning, match="extra_body") as caught:
        client.complete("one", n_probs=3)  # type: ignore[call-arg]
    assert caught[0].filename == __file__  # the warning points at the caller
    assert api.bodies("/completion") == [{"prompt": "one", "n_probs": 3}]


def test_bad_options_raise_before_any_request(api: ApiServer, client: Client) -> None:
    with pytest.raises(ConfigError, match=r"top_p=2 .*between 0 and 1"):
        client.complete("one", top_p=2)
    with pytest.raises(ConfigError, match=r"seed=-1"):
        client.chat("one", SamplingOptions(seed=-1))
    with pytest.raises(ConfigError, match="stop="):
        client.complete("one", stop=[""])
    with pytest.raises(TypeError, match="SamplingOptions"):
        client.complete("one", {"temperature": 0})  # type: ignore[arg-type]
    assert api.recorded == []


def test_tokenize_and_embed_shapes(api: ApiServer, client: Client) -> None:
    assert client.tokenize("one two") == [13, 13]
    assert client.tokenize(["one", "one two"], add_special=True) == [[1, 13], [1, 13, 13]]
    assert api.bodies("/tokenize") == [
        {"content": "one two", "add_special": False, "parse_special": True},
        {"content": "one", "add_special": True, "parse_special": True},
        {"content": "one two", "add_special": True, "parse_special": True},
    ]
    assert client.embed("abc") == [3.0, 1.0]  # a str gives one vector
    assert client.embed(["a", "abc"], normalize=False) == [[1.0, 1.0], [3.0, 1.0]]
    assert client.embed(["a"]) == [[1.0, 1.0]]  # a list gives a list, even of one
    assert api.bodies("/v1/embeddings") == [
        {"input": ["abc"], "embd_normalize": 2},
        {"input": ["a", "abc"], "embd_normalize": -1},
        {"input": ["a"], "embd_normalize": 2},
    ]
    assert client.detokenize([1, 2]) == "w1 w2"
    assert api.bodies("/detokenize") == [{"tokens": [1, 2]}]


def test_async_client_sends_the_same_bodies(api: ApiServer, client: Client) -> None:
    def calls(c: Any) -> list[Any]:
        return [
            c.complete("one", temperature=0, max_tokens=3),
            c.chat("one", SamplingOptions(seed=1, stop="x")),
            c.tokenize(["a", "b c"]),
            c.embed("abc"),
        ]

    sync_results = calls(client)
    sync_bodies = [r.body for r in api.recorded]
    api.recorded.clear()

    async def main() -> list[Any]:
        async with AsyncClient(api.base_url, timeout=5.0) as aclient:
            return list(await asyncio.gather(*calls(aclient)))

    async_results = asyncio.run(main())
    assert sorted(map(json.dumps, (r.body for r in api.recorded))) == sorted(
        map(json.dumps, sync_bodies)
    )
    assert async_results == sync_results


def test_api_key_goes_in_the_authorization_header(api: ApiServer) -> None:
    with Client(api.base_url, api_key="k3y") as keyed:
        keyed.health()
    with Client(api.base_url) as anonymous:
        anonymous.health()
    keyed_headers, anonymous_headers = (r.headers for r in api.recorded)
    assert keyed_headers["Authorization"] == "Bearer k3y"
    assert "Authorization" not in anonymous_headers


# -- results and streams -------------------------------------------------------------------------


def test_results_are_parsed(client: Client) -> None:
    done = client.complete("one two")
    assert isinstance(done, Completion)
    assert (done.text, done.finish_reason, done.stop_type) == (" three four", "length", "limit")
    assert (done.prompt_tokens, done.completion_tokens) == (3, 2)
    assert done.timings is not None and done.timings.predicted_per_second == 500.0
    chat = client.chat("one two")
    assert isinstance(chat, ChatCompletion)
    assert (chat.text, chat.role, chat.finish_reason, chat.id) == (
        " three four", "assistant", "length", "chatcmpl-1",
    )  # fmt: skip
    assert client.health() == {"status": "ok"}
    assert client.metrics() == {"llamacpp:tokens_predicted_total": 9.0}
    assert [m["id"] for m in client.models()] == ["counting.gguf"]


def test_streams_join_to_the_result(client: Client) -> None:
    with client.stream("one two") as stream:
        assert list(stream) == [" three", " four"]
    assert stream.result == client.complete("one two")
    chat_stream = client.chat_stream("one two")
    assert list(chat_stream) == [" three", " four"]
    result = chat_stream.result
    assert result is not None
    assert (result.text, result.finish_reason) == (" three four", "length")
    assert (result.prompt_tokens, result.completion_tokens) == (3, 2)  # from the usage chunk
    assert result.timings is not None and result.timings.predicted_tokens == 2


def test_an_error_event_mid_stream_raises_its_class(api: ApiServer, client: Client) -> None:
    events = (
        json.dumps({"content": " three", "stop": False}),
        json.dumps(error_body(400, "the request exceeds the context", "exceed_context_size_error")),
    )
    api.reply("POST", "/completion", Reply(events=events))
    stream = client.stream("one")
    chunks = []
    with pytest.raises(BadRequestError, match="exceeds the context") as err:
        for chunk in stream:
            chunks.append(chunk)
    assert chunks == [" three"]
    assert err.value.error_type == "exceed_context_size_error"


def test_a_stream_cut_short_is_unavailable(api: ApiServer, client: Client) -> None:
    api.faults.drop_stream_after = 2  # two text events, then the connection closes
    with pytest.raises(ServerUnavailable, match="log_tail"):
        list(client.stream("one"))
    api.faults.drop_stream_after = 3  # everything but [DONE] and the usage chunk ...
    chat = client.chat_stream("one")
    with pytest.raises(ServerUnavailable):
        list(chat)


def test_an_unreadable_event_is_an_api_error(api: ApiServer, client: Client) -> None:
    api.reply("POST", "/completion", Reply(events=("{not json",)))
    with pytest.raises(LmservError, match="unreadable event"):
        list(client.stream("one"))


# -- errors and retries --------------------------------------------------------------------------


def test_status_errors_carry_the_servers_words(api: ApiServer, client: Client) -> None:
    api.reply(
        "POST", "/tokenize", Reply(401, error_body(401, "Invalid API Key", "authentication_error"))
    )
    with pytest.raises(AuthenticationError, match="Invalid API Key") as denied:
        client.tokenize("one")
    assert (denied.value.status_code, denied.value.error_type) == (401, "authentication_error")
    assert "api_key=" in str(denied.value)
    api.reply(
        "POST", "/completion", Reply(400, error_body(400, "bad n_predict", "invalid_request_error"))
    )
    with pytest.raises(BadRequestError, match="bad n_predict"):
        list(client.stream("one"))


def test_gets_retry_a_dropped_connection(api: ApiServer, client: Client) -> None:
    api.faults.drop = 2
    assert client.health() == {"status": "ok"}
    assert [r.path for r in api.recorded] == ["/health"] * 3
    api.recorded.clear()
    api.faults.drop = 3  # one more than the client tries
    with pytest.raises(ServerUnavailable, match="dropped"):
        client.props()
    assert len(api.recorded) == 3


def test_posts_and_statuses_are_not_retried(api: ApiServer, client: Client) -> None:
    api.faults.drop = 1
    with pytest.raises(ServerUnavailable):
        client.complete("one")  # a generation is not idempotent: never sent twice
    api.reply("GET", "/health", Reply(503, error_body(503, "Loading model", "unavailable_error")))
    with pytest.raises(ServerUnavailable, match="Loading model") as loading:
        client.health()
    assert loading.value.status_code == 503
    assert [r.path for r in api.recorded] == ["/completion", "/health"]


def test_idle_connections_are_given_up_before_llama_server_closes_them(api: ApiServer) -> None:
    # llama-server (cpp-httplib) closes a connection idle for 5 s; a POST written on it at that
    # moment fails with "Server disconnected" and is not retried. The clients drop idle
    # connections at KEEPALIVE_EXPIRY (4 s), so a request after 4-5 s idle opens a new one,
    # while requests close together share one.
    from lmserv._net import KEEPALIVE_EXPIRY

    assert KEEPALIVE_EXPIRY < 5.0

    async def two_async() -> None:
        async with AsyncClient(api.base_url, timeout=5.0) as aclient:
            await aclient.complete("one")
            await asyncio.sleep(KEEPALIVE_EXPIRY + 0.3)
            await aclient.complete("one")

    with Client(api.base_url, timeout=5.0) as sync:
        sync.complete("one")
        sync.complete("one")
        time.sleep(KEEPALIVE_EXPIRY + 0.3)
        sync.complete("one")
    asyncio.run(two_async())
    peers = [r.peer for r in api.recorded]
    assert peers[0] == peers[1], "back-to-back requests should share a connection"
    assert peers[2] != peers[1], "an idle connection was reused at llama-server's close time"
    assert peers[4] != peers[3], "the async client reused an idle connection"


def test_a_request_meeting_a_connection_the_server_closed_is_sent_again(
    api: ApiServer, client: Client
) -> None:
    # The model service closes the connection after every answer (see lmserv._net.RequestTrace);
    # a request already sent on it is lost unanswered and must go again on a new connection.
    # A drop on a connection opened for the request is not retried (the test above).
    api.faults.close_after_answer = 4
    assert client.complete("one").text == " three four"
    assert client.complete("one").text == " three four"
    assert "".join(client.stream("one")) == " three four"

    async def main() -> str:
        async with AsyncClient(api.base_url, timeout=5.0) as aclient:
            await aclient.tokenize("one two")  # answered, then its connection closes
            return (await aclient.complete("one")).text

    assert asyncio.run(main()) == " three four"
    peers = [r.peer for r in api.recorded]
    # sync: answered on A; dropped on A, answered on B; dropped on B, streamed on C
    assert peers[0] == peers[1] != peers[2] == peers[3] != peers[4], peers
    assert peers[5] == peers[6] != peers[7], peers  # async: the same
    assert len(peers) == 8


def test_a_timeout_is_not_retried(api: ApiServer) -> None:
    api.faults.delay = 1.0
    with Client(api.base_url, timeout=0.2) as slow, pytest.raises(LmservError, match="timed out"):
        slow.health()
    assert len(api.recorded) == 1


def test_async_client_retries_too(api: ApiServer) -> None:
    api.faults.drop = 2

    async def main() -> dict[str, Any]:
        async with AsyncClient(api.base_url, timeout=5.0) as aclient:
            return await aclient.health()

    assert asyncio.run(main()) == {"status": "ok"}
    assert len(api.recorded) == 3


def test_refused_connection_says_what_to_do() -> None:
    with (
        Client("http://127.0.0.1:9", timeout=2.0) as client,
        pytest.raises(ServerUnavailable) as err,
    ):
        client.health()
    assert "is the server running?" in str(err.value)
    assert "lmserv serve" in str(err.value)


def test_no_warning_on_the_plain_path(client: Client) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.complete("one", SamplingOptions(temperature=0), max_tokens=2, extra_body={})
