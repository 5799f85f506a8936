"""One vocabulary: the same operation has the same name, arguments and result everywhere.

``Client``/``AsyncClient`` (HTTP), ``Llama`` (in process) and ``LlamaServer``/``RpcWorker``
(processes) are compared with each other: signatures without a build, results with the real
libllama and llama-server on the counting model (those are slow).
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmserv import (
    AsyncClient,
    ChatCompletion,
    Client,
    Completion,
    ConfigError,
    Llama,
    LlamaParams,
    LlamaServer,
    LlamaStream,
    LmservError,
    ModelService,
    RpcWorker,
    SamplingOptions,
    split_options,
)
from lmserv._types import SamplingArgs
from lmserv.install import LlamaBuild
from lmserv.testing import COUNTING_CONTINUATION, COUNTING_PROMPT

GENERATION = ("complete", "stream", "chat", "chat_stream")
SHARED = (*GENERATION, "tokenize", "detokenize", "embed")


def _parameters(method: Any) -> list[tuple[str, Any, Any]]:
    """Name, kind and default of each parameter after the first (the text or messages), with
    deprecated old names left out."""
    params = list(inspect.signature(method).parameters.values())[2:]
    return [(p.name, p.kind, p.default) for p in params if p.name not in ("add_bos", "special")]


# -- without a build -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHARED)
def test_client_async_client_and_llama_share_signatures(name: str) -> None:
    expected = _parameters(getattr(Client, name))
    assert _parameters(getattr(AsyncClient, name)) == expected
    ours = _parameters(getattr(Llama, name))
    # The clients alone send raw request fields and route to a model of the model service.
    expected = [p for p in expected if p[0] not in ("extra_body", "model")]
    assert ours == expected


@pytest.mark.parametrize("name", GENERATION)
def test_generation_takes_sampling_options_or_their_keywords(name: str) -> None:
    for cls in (Client, AsyncClient, Llama):
        params = inspect.signature(getattr(cls, name)).parameters
        assert params["sampling"].annotation == "SamplingOptions | None", cls
        keywords = "ChatArgs" if name.startswith("chat") else "SamplingArgs"
        assert params["kwargs"].annotation == f"Unpack[{keywords}]", cls


def test_the_keyword_form_mirrors_the_options_object() -> None:
    fields = {f.name: f.type for f in dataclasses.fields(SamplingOptions)}
    keywords = {
        k: getattr(v, "__forward_arg__", v) for k, v in SamplingArgs.__annotations__.items()
    }
    assert keywords == fields
    assert SamplingOptions(stop="x").stop == ("x",)
    assert SamplingOptions(stop=["a", "b"]) == SamplingOptions(stop=("a", "b"))
    with pytest.raises(ConfigError, match="max_tokens=-2"):
        SamplingOptions(max_tokens=-2)
    with pytest.raises(ConfigError, match="temperature=nan"):
        SamplingOptions(temperature=float("nan"))


def test_one_name_for_the_context_size_and_gpu_layers() -> None:
    for cls in (LlamaServer, Llama):
        params = inspect.signature(cls).parameters
        assert "n_ctx" in params and "n_gpu_layers" in params, cls
        assert "split" in params, cls  # multi-GPU options as one SplitOptions
    assert inspect.signature(LlamaServer).parameters["n_gpu_layers"].default == "auto"
    assert inspect.signature(Llama).parameters["n_gpu_layers"].default == "all"


LIFECYCLE = ("start", "stop", "wait", "command", "log_tail", "__enter__", "__exit__")
STATE = ("running", "pid", "port", "returncode")


def test_llama_server_and_rpc_worker_share_lifecycle_names(tmp_path: Path) -> None:
    server = LlamaServer("model.gguf", port=8081)
    worker = RpcWorker(port=50099)
    (tmp_path / "llama-server").write_bytes(b"")  # command() needs a binary, not a build
    service = ModelService(tmp_path, port=8082, binary=tmp_path / "llama-server")
    for name in LIFECYCLE:
        for obj in (server, worker, service):
            assert callable(getattr(obj, name)), (type(obj).__name__, name)
    for obj in (server, worker, service):
        assert (obj.running, obj.pid, obj.returncode, obj.log_path) == (False, None, None, None)
        assert obj.log_tail() == ""
        assert obj.stop() is None  # never started: nothing to stop
        assert obj.start_timeout > 0 and obj.stop_timeout > 0
    assert (server.port, worker.port, service.port) == (8081, 50099, 8082)
    with pytest.raises(LmservError, match="never started"):
        service.wait()
    with pytest.warns(DeprecationWarning, match="command"):
        assert service.args() == service.command()
    for name in ("stop", "wait", "log_tail"):
        ours = inspect.signature(getattr(LlamaServer, name)).parameters
        theirs = inspect.signature(getattr(RpcWorker, name)).parameters
        shared = [p for p in theirs.values() if p.name != "grace"]  # grace: deprecated
        assert [(p.name, p.default) for p in ours.values()] == [
            (p.name, p.default) for p in shared
        ], name


def test_old_names_still_work_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="n_ctx"):
        old = LlamaServer("model.gguf", ctx_size=512)
    assert old.n_ctx == 512
    with pytest.warns(DeprecationWarning, match="n_ctx"):
        assert old.ctx_size == 512
    binary = tmp_path / "llama-server"
    binary.write_text("")
    server = LlamaServer("model.gguf", n_ctx=512, binary=binary)
    with pytest.warns(DeprecationWarning, match="command"):
        assert server.args() == server.command()
    assert server.command()[server.command().index("-c") + 1] == "512"
    with pytest.warns(DeprecationWarning, match="timeout"):
        assert RpcWorker(port=50099).stop(grace=1.0) is None
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match="disagree"):
        LlamaServer("model.gguf", n_ctx=256, ctx_size=512)


def test_llama_server_takes_split_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lmserv.gpu._split.detect_gpus", lambda: [])
    binary = tmp_path / "llama-server"
    binary.write_text("")
    options = split_options(tensor_split="3,1", devices="CUDA0,CUDA1")
    as_object = LlamaServer("model.gguf", binary=binary, split=options).command()
    as_keywords = LlamaServer(
        "model.gguf", binary=binary, tensor_split="3,1", devices="CUDA0,CUDA1"
    ).command()
    assert as_object == as_keywords
    assert as_object[as_object.index("--tensor-split") + 1] == "3,1"
    with pytest.raises(ConfigError, match="not both"):
        LlamaServer("model.gguf", split=options, main_gpu=0)


# -- with the real libllama and llama-server -----------------------------------------------------


@pytest.fixture(scope="module")
def llm(model: Path, llama_build: LlamaBuild) -> Iterator[Llama]:
    with Llama(model, n_ctx=256, n_threads=1, seed=7) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def server(model: Path, llama_build: LlamaBuild) -> Iterator[LlamaServer]:
    with LlamaServer(model, n_ctx=256, parallel=1, extra_args=("-t", "1")) as running:
        yield running


@pytest.fixture
def embedding_server(model: Path, llama_build: LlamaBuild) -> Iterator[LlamaServer]:
    extra = ("--embeddings", "--pooling", "mean", "-t", "1")  # it then serves only embeddings
    with LlamaServer(model, n_ctx=256, parallel=1, extra_args=extra) as running:
        yield running


def _without_timings(result: Any) -> Any:
    return dataclasses.replace(result, timings=None)


def test_llama_chat_returns_a_chat_completion(llm: Llama, model: Path) -> None:
    with Llama(model, n_ctx=256, params=LlamaParams(chat_template="chatml")) as chat:
        reply = chat.chat("one two", max_tokens=4, temperature=0)  # a str is one user turn
        assert isinstance(reply, ChatCompletion)
        assert (reply.role, reply.finish_reason, reply.completion_tokens) == (
            "assistant", "length", 4,
        )  # fmt: skip
        assert reply.prompt_tokens == len(
            chat.tokenize(chat.format_chat("one two"), add_special=True)
        )
        stream = chat.chat_stream(
            [{"role": "user", "content": "one two"}], max_tokens=4, temperature=0
        )
        assert isinstance(stream, LlamaStream)
        chunks = list(stream)
        assert all(isinstance(c, str) for c in chunks)  # the client's chunk type
        assert stream.result is not None and "".join(chunks) == stream.result.text
        assert _without_timings(stream.result) == _without_timings(reply)


def test_llama_stream_ends_with_the_completion(llm: Llama) -> None:
    with llm.stream(COUNTING_PROMPT, temperature=0) as stream:
        chunks = list(stream)
    assert isinstance(stream.result, Completion)
    assert "".join(chunks) == stream.result.text == COUNTING_CONTINUATION
    done = llm.complete(COUNTING_PROMPT, temperature=0)
    assert _without_timings(stream.result) == _without_timings(done)


def test_llama_and_client_answer_the_same(llm: Llama, server: LlamaServer) -> None:
    with server.client() as client:
        for options in (
            SamplingOptions(temperature=0),
            SamplingOptions(temperature=0, max_tokens=2),
        ):
            ours, theirs = (
                llm.complete(COUNTING_PROMPT, options),
                client.complete(COUNTING_PROMPT, options),
            )
            assert (ours.text, ours.finish_reason, ours.stop_type) == (
                theirs.text, theirs.finish_reason, theirs.stop_type,
            )  # fmt: skip
            assert (ours.prompt_tokens, ours.completion_tokens) == (
                theirs.prompt_tokens, theirs.completion_tokens,
            )  # fmt: skip
        cut = SamplingOptions(temperature=0, stop=" six")
        assert llm.complete(COUNTING_PROMPT, cut).text == client.complete(COUNTING_PROMPT, cut).text


def test_options_object_and_keywords_sample_the_same(llm: Llama) -> None:
    hot = SamplingOptions(temperature=10.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=16, seed=3)
    as_object = llm.generate("one", hot)
    assert llm.generate("one", **hot.given()) == as_object
    assert llm.generate("one", hot, seed=4) == llm.generate("one", hot.merged({"seed": 4}))
    with pytest.raises(TypeError, match="temprature"):
        llm.generate("one", temprature=0)  # type: ignore[call-arg]


def test_tokenize_same_shapes_and_ids_as_the_server(llm: Llama, server: LlamaServer) -> None:
    with server.client() as client:
        for kwargs in ({}, {"add_special": True}, {"parse_special": False}):
            one = llm.tokenize("one two three", **kwargs)
            assert one == client.tokenize("one two three", **kwargs), kwargs
            many = llm.tokenize(["one", "two three"], **kwargs)
            assert (
                many
                == client.tokenize(["one", "two three"], **kwargs)
                == [
                    llm.tokenize("one", **kwargs),
                    llm.tokenize("two three", **kwargs),
                ]
            )
    with pytest.warns(DeprecationWarning, match="add_special"):
        assert llm.tokenize("one two", add_bos=True) == llm.tokenize("one two", add_special=True)


def test_embed_same_shapes_and_vectors_as_the_server(
    model: Path, embedding_server: LlamaServer
) -> None:
    with Llama(model, n_ctx=256, embedding=True, params=LlamaParams(pooling="mean")) as emb:
        with embedding_server.client() as client:
            for normalize in (True, False):
                ours = emb.embed("one two", normalize=normalize)
                theirs = client.embed("one two", normalize=normalize)
                assert isinstance(ours[0], float) and isinstance(theirs[0], float)  # one vector
                assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-4
            ours_list = emb.embed(["one", "two three"])
            theirs_list = client.embed(["one", "two three"])
        assert len(ours_list) == len(theirs_list) == 2
        assert ours_list == [emb.embed("one"), emb.embed("two three")]
        for a_vec, b_vec in zip(ours_list, theirs_list, strict=True):
            assert max(abs(a - b) for a, b in zip(a_vec, b_vec, strict=True)) < 1e-4


def test_gpu_layers_auto_is_deprecated_in_process(model: Path, llama_build: LlamaBuild) -> None:
    with pytest.warns(DeprecationWarning, match='"all"'):
        old = Llama(model, n_ctx=256, n_gpu_layers="auto")
    with old, Llama(model, n_ctx=256) as new:
        assert old.generate(COUNTING_PROMPT, temperature=0) == new.generate(
            COUNTING_PROMPT, temperature=0
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Llama(model, n_ctx=256, n_gpu_layers="all").close()


def test_max_tokens_none_for_no_limit_is_deprecated(llm: Llama) -> None:
    with pytest.warns(DeprecationWarning, match="max_tokens=-1"):
        old = llm.complete("one " * 240, max_tokens=None, temperature=0, ignore_eos=True)
    new = llm.complete("one " * 240, max_tokens=-1, temperature=0, ignore_eos=True)
    assert old.text == new.text and new.completion_tokens > 0
    assert new.finish_reason == "length"  # the context filled up: no 256 limit applied
