"""The client against one real llama-server serving the real counting model.

One server (``parallel=4``) is shared by the module; exact greedy answers are checked through
every path: native completion, streaming, chat, the async client and the OpenAI SDK. Request
bodies, retries and stream parsing are checked without a build in ``test_client_http.py``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from lmserv import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    ChatCompletion,
    Client,
    Completion,
    LlamaServer,
    NotFoundError,
)
from lmserv.install import LlamaBuild
from lmserv.testing import (
    COUNTING_CONTINUATION,
    COUNTING_PROMPT,
    COUNTING_WORDS,
)

GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def server(llama_build: LlamaBuild, model: Path) -> Iterator[LlamaServer]:
    with LlamaServer(model, parallel=4, extra_args=("-t", "1")) as running:
        yield running


@pytest.fixture
def client(server: LlamaServer) -> Iterator[Client]:
    with server.client() as c:
        yield c


def test_complete_is_exact(client: Client) -> None:
    answer = client.complete(COUNTING_PROMPT, max_tokens=32, **GREEDY)
    assert isinstance(answer, Completion)
    assert answer.text == COUNTING_CONTINUATION
    assert (answer.finish_reason, answer.stop_type) == ("stop", "eos")
    assert answer.completion_tokens == 9  # eight words and </s>
    assert answer.timings is not None and answer.timings.predicted_tokens == 9


def test_max_tokens_and_stop(client: Client) -> None:
    short = client.complete(COUNTING_PROMPT, max_tokens=2, **GREEDY)
    assert (short.text, short.finish_reason) == (" three four", "length")
    stopped = client.complete(COUNTING_PROMPT, stop=" six", **GREEDY)
    assert (stopped.text, stopped.stop_type) == (" three four five", "word")


def test_stream_chunks_join_to_the_same_text(client: Client) -> None:
    with client.stream(COUNTING_PROMPT, **GREEDY) as stream:
        chunks = list(stream)
    assert chunks == [" three", " four", " five", " six", " seven", " eight", " nine", " ten"]
    assert stream.result is not None
    assert stream.result.text == "".join(chunks)
    assert stream.result.finish_reason == "stop"


def test_chat_and_chat_stream(client: Client) -> None:
    answer = client.chat([{"role": "user", "content": COUNTING_PROMPT}], **GREEDY)
    assert isinstance(answer, ChatCompletion)
    assert (answer.text, answer.role, answer.finish_reason) == (
        COUNTING_CONTINUATION,
        "assistant",
        "stop",
    )
    assert answer.completion_tokens == 9
    stream = client.chat_stream(COUNTING_PROMPT, **GREEDY)
    assert "".join(stream) == COUNTING_CONTINUATION
    assert stream.result is not None
    assert (stream.result.finish_reason, stream.result.completion_tokens) == ("stop", 9)


def test_default_sampling_still_counts(client: Client) -> None:
    # The counting model's margins make llama-server's default sampler deterministic too.
    assert client.complete("seven", seed=123).text == " eight nine ten"


def test_tokenize_detokenize_round_trip(client: Client) -> None:
    ids = client.tokenize("one two three")
    assert len(ids) == 3  # whole words, no byte fallback
    assert client.tokenize("one two three", add_special=True) == [1, *ids]  # <s> first
    text = client.detokenize(ids)
    assert text.strip() == "one two three"
    assert client.tokenize(text.strip()) == ids


def test_health_props_models_metrics(client: Client, server: LlamaServer) -> None:
    assert client.health() == {"status": "ok"}
    props = client.props()
    assert props["total_slots"] == 4
    assert props["model_path"] == str(server.model)
    assert [m["id"] for m in client.models()] == [str(server.model)]
    client.complete(COUNTING_PROMPT, **GREEDY)
    assert client.metrics()["llamacpp:tokens_predicted_total"] >= 9


def test_info_reports_what_the_server_did(server: LlamaServer) -> None:
    info = server.info
    assert (info.n_ctx, info.slots, info.base_url) == (2048, 4, server.base_url)
    assert info.build == "0c1e570"
    assert info.devices[0] == "CPU"
    assert info.weights_on and all(b.startswith("CPU") for b in info.weights_on)
    assert not info.gpu_unused  # no GPU on this machine, so nothing unused
    assert "4 slots" in info.summary()


def test_errors_carry_status_and_server_message(client: Client) -> None:
    too_long = "one " * 3000  # 3000 tokens, context 2048
    with pytest.raises(BadRequestError) as bad:
        client.complete(too_long, **GREEDY)
    assert bad.value.status_code == 400
    assert bad.value.error_type == "exceed_context_size_error"
    assert "exceeds the available context size" in str(bad.value)
    with pytest.raises(BadRequestError, match="exceeds the available context size"):
        list(client.stream(too_long, **GREEDY))
    with pytest.raises(BadRequestError, match="'n_predict'"):
        client.complete(COUNTING_PROMPT, extra_body={"n_predict": "many"})
    with pytest.raises(NotFoundError, match="404"):
        client._get("/no-such-route")


def test_concurrent_requests_are_all_exact(server: LlamaServer) -> None:
    prompts = list(COUNTING_WORDS[:8])  # 8 requests on 4 slots: half of them queue
    expected = [" " + " ".join(COUNTING_WORDS[i + 1 :]) for i in range(8)]

    async def main() -> list[str]:
        async with AsyncClient(server.base_url) as aclient:
            answers = await asyncio.gather(
                *(aclient.complete(p, max_tokens=16, **GREEDY) for p in prompts)
            )
        return [a.text for a in answers]

    assert asyncio.run(main()) == expected
    assert expected[0] == " two three four five six seven eight nine ten"


def test_async_client_same_surface(server: LlamaServer) -> None:
    async def main() -> tuple[str, list[str], str, str]:
        async with AsyncClient(server.base_url) as aclient:
            done = await aclient.complete(COUNTING_PROMPT, **GREEDY)
            stream = await aclient.stream(COUNTING_PROMPT, **GREEDY)
            chunks = [c async for c in stream]
            chat = await aclient.chat(COUNTING_PROMPT, **GREEDY)
            chat_stream = await aclient.chat_stream(COUNTING_PROMPT, **GREEDY)
            streamed_chat = "".join([c async for c in chat_stream])
            assert (await aclient.health())["status"] == "ok"
            assert await aclient.detokenize(await aclient.tokenize("four")) == " four"
        return done.text, chunks, chat.text, streamed_chat

    text, chunks, chat, streamed_chat = asyncio.run(main())
    assert text == "".join(chunks) == chat == streamed_chat == COUNTING_CONTINUATION


def test_openai_sdk_against_our_server(server: LlamaServer) -> None:
    sdk = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    answer = sdk.chat.completions.create(
        model="counting", messages=[{"role": "user", "content": COUNTING_PROMPT}], temperature=0
    )
    assert answer.choices[0].message.content == COUNTING_CONTINUATION
    assert answer.choices[0].finish_reason == "stop"
    stream = sdk.chat.completions.create(
        model="counting",
        messages=[{"role": "user", "content": COUNTING_PROMPT}],
        temperature=0,
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == COUNTING_CONTINUATION
    legacy = sdk.completions.create(model="counting", prompt=COUNTING_PROMPT, temperature=0)
    assert legacy.choices[0].text == COUNTING_CONTINUATION
    sdk.close()


def test_api_key_enforced_and_embeddings(llama_build: LlamaBuild, model: Path) -> None:
    key = "s3cret-" + os.urandom(4).hex()
    extra = ("--embeddings", "--pooling", "mean", "-t", "1")
    with LlamaServer(model, api_key=key, parallel=1, extra_args=extra) as server:
        assert key not in " ".join(server.command())  # the key goes by environment, not argv
        with Client(server.base_url) as anonymous:
            assert anonymous.health()["status"] == "ok"  # /health is exempt from the key
            with pytest.raises(AuthenticationError) as denied:
                anonymous.tokenize("one")
            assert denied.value.status_code == 401
            assert "Invalid API Key" in str(denied.value)
        with Client(server.base_url, api_key="wrong") as wrong, pytest.raises(AuthenticationError):
            wrong.props()
        with server.client() as client:
            vectors = client.embed(["one two", "three"])
            assert len(vectors) == 2 and len(vectors[0]) == 64
            norm = sum(x * x for x in vectors[0]) ** 0.5
            assert abs(norm - 1.0) < 1e-3  # llama-server normalizes embeddings
            assert vectors[0] != vectors[1]


def test_public_names_are_exported() -> None:
    import lmserv
    import lmserv.client

    for name in ("LlamaServer", "ServerInfo", "Client", "AsyncClient", "Completion"):
        assert name in lmserv.__all__ and getattr(lmserv, name) is not None
    for name in ("ChatCompletion", "Timings", "TextStream", "AsyncTextStream"):
        assert name in lmserv.__all__ and name in lmserv.client.__all__
    assert "testing" not in lmserv.__all__  # test models stay a submodule
