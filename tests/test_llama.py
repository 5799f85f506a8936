"""The Pythonic ``Llama`` against the real libllama, with the counting model.

The counting model (``lmserv.testing``) continues ``"one two"`` greedily with exactly
``" three four five six seven eight nine ten"`` and then end of sequence.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lmserv import (
    ChatCompletion,
    Completion,
    ConfigError,
    ContextOverflow,
    InvalidModelFile,
    Llama,
    LlamaError,
    LlamaParams,
    ModelNotFound,
)
from lmserv._bindings._text import PieceAssembler
from lmserv.install import LlamaBuild
from lmserv.testing import COUNTING_CONTINUATION, COUNTING_PROMPT, write_counting_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def counting_model(tmp_path_factory: pytest.TempPathFactory, llama_build: LlamaBuild) -> Path:
    return write_counting_model(tmp_path_factory.mktemp("models") / "counting.gguf")


@pytest.fixture(scope="module")
def llm(counting_model: Path) -> Iterator[Llama]:
    with Llama(counting_model, n_ctx=256, n_threads=1, seed=7) as model:
        yield model


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _llama_server(build: LlamaBuild, model: Path, *extra: str) -> Iterator[str]:
    """A real llama-server on 127.0.0.1 and a free port; yields its base URL, then kills it."""
    port = _free_port()
    server = build.bin_dir / "llama-server"
    cmd = [str(server), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-c", "256", "-t", "1", "-np", "1", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "llama-server did not become ready"
            time.sleep(0.2)
        yield base
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    reply = httpx.post(url, content=json.dumps(body), timeout=60)
    reply.raise_for_status()
    result: dict[str, object] = reply.json()
    return result


# -- generation ----------------------------------------------------------------------------------


def test_greedy_generate_equals_llama_server(
    llm: Llama, llama_build: LlamaBuild, counting_model: Path
) -> None:
    ours = llm.generate(COUNTING_PROMPT, max_tokens=32, temperature=0)
    with _llama_server(llama_build, counting_model) as base:
        body = {"prompt": COUNTING_PROMPT, "n_predict": 32, "temperature": 0}
        theirs = _post(f"{base}/completion", body)["content"]
    assert ours == theirs == COUNTING_CONTINUATION


def test_max_tokens_and_stop(llm: Llama) -> None:
    assert llm.generate("one two", max_tokens=2, temperature=0) == " three four"
    assert llm.generate("one two", max_tokens=0, temperature=0) == ""
    assert llm.generate("one two", temperature=0, stop=" six") == " three four five"
    assert llm.generate("one two", temperature=0, stop=["ve", "xyz"]) == " three four fi"


def test_stream_pieces_join_to_generate(llm: Llama) -> None:
    pieces = list(llm.stream(COUNTING_PROMPT, temperature=0))
    assert pieces == [" three", " four", " five", " six", " seven", " eight", " nine", " ten"]
    assert "".join(pieces) == llm.generate(COUNTING_PROMPT, temperature=0)
    # Hot sampling over a mostly-bytes vocabulary: pieces still join to exactly the same text.
    hot = {"temperature": 10.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 11}
    streamed = list(llm.stream("one", max_tokens=40, **hot))  # type: ignore[arg-type]
    assert "".join(streamed) == llm.generate("one", max_tokens=40, **hot)  # type: ignore[arg-type]
    assert all(isinstance(p, str) and p for p in streamed)
    assert any(ord(c) > 127 for c in "".join(streamed)), "expected raw byte tokens in the output"


def test_seeded_sampling_is_reproducible(llm: Llama) -> None:
    hot = {"temperature": 10.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "max_tokens": 24}
    first = llm.generate("one", seed=1234, **hot)  # type: ignore[arg-type]
    assert llm.generate("one", seed=1234, **hot) == first  # type: ignore[arg-type]
    others = {llm.generate("one", seed=s, **hot) for s in range(5)}  # type: ignore[arg-type]
    assert len(others) > 1, "different seeds should give different text at temperature 10"
    # The constructor's seed is the default for every call.
    assert llm.generate("one", **hot) == llm.generate("one", seed=7, **hot)  # type: ignore[arg-type]


def test_multibyte_text_split_across_tokens_is_reassembled(llm: Llama) -> None:
    text = "héllo😀日本"
    tokens = llm.tokenize(text)
    pieces = [llm._piece(t) for t in tokens]
    assert any(_is_incomplete_utf8(p) for p in pieces), "the test needs split characters"
    assembler = PieceAssembler()
    out = [assembler.feed(p) for p in pieces] + [assembler.finish()]
    assert "".join(out) == llm.detokenize(tokens)
    assert "\ufffd" not in "".join(out)
    assert "😀" in "".join(out) and "日本" in "".join(out)


def _is_incomplete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_generation_stops_when_the_context_is_full(counting_model: Path) -> None:
    with Llama(counting_model, n_ctx=256, n_threads=1) as small:
        prompt = "one " * 240 + "one two"
        n_prompt = len(small.tokenize(prompt, add_special=True))
        done = small.complete(prompt, max_tokens=-1, temperature=0, ignore_eos=True)
        assert done.prompt_tokens == n_prompt
        assert done.completion_tokens == small.n_ctx - n_prompt + 1
        assert done.finish_reason == "length"
        assert done.text.startswith(COUNTING_CONTINUATION)


def test_complete_reports_usage(llm: Llama) -> None:
    done = llm.complete(COUNTING_PROMPT, temperature=0)
    assert isinstance(done, Completion)  # the same type the HTTP client returns
    # Eight words and </s>: the end-of-generation token counts, as llama-server counts it.
    assert (done.text, done.prompt_tokens, done.completion_tokens) == (COUNTING_CONTINUATION, 3, 9)
    assert (done.finish_reason, done.stop_type) == ("stop", "eos")
    assert done.model == "counting.gguf"
    assert done.timings is not None and done.timings.predicted_tokens == 9
    assert done.timings.prompt_ms > 0 and done.timings.predicted_ms > 0
    short = llm.complete(COUNTING_PROMPT, temperature=0, max_tokens=3)
    assert (short.finish_reason, short.stop_type, short.completion_tokens) == ("length", "limit", 3)
    cut = llm.complete(COUNTING_PROMPT, temperature=0, stop="five")
    assert (cut.finish_reason, cut.stop_type, cut.completion_tokens) == ("stop", "word", 3)


def test_reuse_prompt_keeps_the_common_prefix(counting_model: Path) -> None:
    params = LlamaParams(reuse_prompt=True)
    with Llama(counting_model, n_ctx=256, params=params) as model:
        first = model.complete("one two", temperature=0)
        assert first.timings is not None and first.timings.cached_tokens == 0
        # The previous prompt and its output are in the cache: all but the last prompt token
        # (decoded again for its logits) comes from it.
        prompt = "one two three four"
        again = model.complete(prompt, temperature=0)
        assert again.text == " five six seven eight nine ten"
        assert again.timings is not None and again.timings.cached_tokens == 4
        # Same prompt again: everything but its last token is reused.
        same = model.complete(prompt, temperature=0)
        assert same.text == again.text
        assert same.timings is not None and same.timings.cached_tokens == 4
        other = model.complete("two", temperature=0)  # shares only the start token
        assert other.timings is not None and other.timings.cached_tokens == 1
        assert other.text == COUNTING_CONTINUATION
    with Llama(counting_model, n_ctx=256) as plain:  # off by default
        plain.complete("one two", temperature=0)
        done = plain.complete("one two", temperature=0)
        assert done.timings is not None and done.timings.cached_tokens == 0


# -- tokens --------------------------------------------------------------------------------------


def test_tokenize_detokenize(llm: Llama) -> None:
    ids = llm.tokenize("one two", add_special=True)
    assert len(ids) == 3  # BOS, ▁one, ▁two
    assert llm.tokenize("one two") == ids[1:]  # no BOS unless asked, as llama-server's /tokenize
    assert llm.detokenize(ids[1:]) == "one two"
    assert llm.tokenize("", add_special=True) == ids[:1]
    with pytest.raises(ConfigError, match="outside this model's vocabulary"):
        llm.detokenize([10**6])


def test_metadata(llm: Llama) -> None:
    meta = llm.metadata
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.chat_template"] == llm.chat_template
    assert int(meta["llama.context_length"]) == llm.n_ctx_train
    assert int(meta["llama.embedding_length"]) == llm.n_embd


# -- chat ----------------------------------------------------------------------------------------


def test_chat_with_builtin_template(counting_model: Path) -> None:
    with Llama(counting_model, n_ctx=256, params=LlamaParams(chat_template="chatml")) as chat:
        messages = [{"role": "user", "content": "one two"}]
        assert chat.format_chat(messages) == (
            "<|im_start|>user\none two<|im_end|>\n<|im_start|>assistant\n"
        )
        reply = chat.chat(messages, max_tokens=4, temperature=0)
        assert isinstance(reply, ChatCompletion)
        assert reply.text == "".join(chat.chat_stream(messages, max_tokens=4, temperature=0))
        with pytest.raises(ConfigError, match="role"):
            chat.format_chat([{"content": "x"}])


def test_chat_with_a_template_llama_cpp_cannot_apply(llm: Llama) -> None:
    # The counting model's own template is Jinja that llama_chat_apply_template cannot detect.
    assert llm.chat_template is not None and "{%" in llm.chat_template
    with pytest.raises(LlamaError, match="chatml"):
        llm.chat([{"role": "user", "content": "one two"}])


def test_chat_falls_back_to_chatml_without_a_template(
    counting_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = counting_model.read_bytes()
    key = b"tokenizer.chat_template"
    assert data.count(key) == 1
    # Same length, so the GGUF stays valid; the model just has no chat template any more.
    plain = tmp_path / "no-template.gguf"
    plain.write_bytes(data.replace(key, b"tokenizer.chat_templatX"))
    with Llama(plain, n_ctx=256) as model, caplog.at_level(logging.WARNING):
        assert model.chat_template is None
        prompt = model.format_chat([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert any("chatml" in r.getMessage() for r in caplog.records)


# -- embeddings ----------------------------------------------------------------------------------


def test_embed(counting_model: Path) -> None:
    with Llama(counting_model, n_ctx=256, embedding=True) as emb:
        vec = emb.embed("one two")
        assert len(vec) == emb.n_embd
        assert abs(sum(v * v for v in vec) - 1.0) < 1e-4
        assert emb.embed("one two") == vec
        assert emb.embed("three") != vec
        raw = emb.embed("one two", normalize=False)
        assert abs(sum(v * v for v in raw) - 1.0) > 1e-6 or raw == vec
        # Generation still works in an embedding context.
        assert emb.generate("one two", temperature=0) == COUNTING_CONTINUATION
        with pytest.raises(ContextOverflow):
            emb.embed("one " * 600)


def test_embed_equals_llama_server(counting_model: Path, llama_build: LlamaBuild) -> None:
    with _llama_server(llama_build, counting_model, "--embeddings", "--pooling", "mean") as base:
        reply = _post(f"{base}/v1/embeddings", {"input": "one two three"})
    data = reply["data"]
    assert isinstance(data, list)
    theirs = data[0]["embedding"]
    for pooling in ("model", "mean"):  # the counting model has no pooling: we mean it too
        params = LlamaParams(pooling=pooling)  # type: ignore[arg-type]
        with Llama(counting_model, n_ctx=256, embedding=True, params=params) as emb:
            ours = emb.embed("one two three")
        assert len(ours) == len(theirs)
        assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-4


def test_embed_needs_embedding_mode(llm: Llama) -> None:
    with pytest.raises(LlamaError, match="embedding=True"):
        llm.embed("one")


# -- errors --------------------------------------------------------------------------------------


def test_prompt_longer_than_context(llm: Llama) -> None:
    with pytest.raises(ContextOverflow, match="n_ctx"):
        llm.generate("one " * 400)
    with pytest.raises(ContextOverflow):
        llm.stream("one " * 400)
    assert llm.generate(COUNTING_PROMPT, temperature=0) == COUNTING_CONTINUATION


@pytest.mark.parametrize("content", [None, b"", b"not a model at all", b"GGUF\xff\xff\xff\xffjunk"])
def test_bad_model_files(tmp_path: Path, content: bytes | None, llama_build: LlamaBuild) -> None:
    path = tmp_path / "bad.gguf"
    if content is not None:
        path.write_bytes(content)
    # A missing file is ModelNotFound, as from every entry point; a bad one InvalidModelFile.
    expected = ModelNotFound if content is None else InvalidModelFile
    with pytest.raises(expected, match=r"bad\.gguf"):
        Llama(path)


def test_truncated_model(tmp_path: Path, counting_model: Path) -> None:
    data = counting_model.read_bytes()
    for size in (300, len(data) // 2):
        path = tmp_path / f"cut{size}.gguf"
        path.write_bytes(data[:size])
        with pytest.raises(InvalidModelFile, match=r"llama\.cpp said"):
            Llama(path)


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFile, match="not a file"):
        Llama(tmp_path)


def test_bad_arguments(counting_model: Path, llm: Llama) -> None:
    with pytest.raises(ConfigError, match="n_gpu_layers"):
        Llama(counting_model, n_gpu_layers="many")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="n_ctx"):
        Llama(counting_model, n_ctx=-1)
    with pytest.raises(ConfigError, match="seed"):
        llm.generate("one", seed=-5)
    with pytest.raises(ConfigError, match="top_p"):
        llm.generate("one", top_p=2.0)
    with pytest.raises(ConfigError, match="flash_attn"):
        LlamaParams(flash_attn="maybe")  # type: ignore[arg-type]


def test_close_is_idempotent_and_use_after_close_raises(counting_model: Path) -> None:
    model = Llama(counting_model, n_ctx=256, n_gpu_layers=0)
    open_stream = model.stream(COUNTING_PROMPT, temperature=0)
    assert next(open_stream) == " three"
    model.close()
    model.close()
    assert model.closed
    with pytest.raises(LlamaError, match="closed"):
        model.generate("one two")
    with pytest.raises(LlamaError, match="closed"):
        model.tokenize("one")
    with pytest.raises(LlamaError, match="interrupted"):
        next(open_stream)
    with pytest.raises(LlamaError, match="closed"), model:
        pass


def test_dropping_a_llama_frees_it_at_once(counting_model: Path) -> None:
    """No reference cycles: the last reference going away frees the C memory, no GC needed."""
    model = Llama(counting_model, n_ctx=256)
    model.generate(COUNTING_PROMPT, max_tokens=1, temperature=0)
    finalizer = model._finalizer
    assert finalizer.alive
    del model
    assert not finalizer.alive


def test_an_open_stream_keeps_its_llama_alive(counting_model: Path) -> None:
    stream = Llama(counting_model, n_ctx=256, n_threads=1).stream(COUNTING_PROMPT, temperature=0)
    assert "".join(stream) == COUNTING_CONTINUATION  # no other reference to the Llama exists


def test_new_generation_interrupts_an_open_stream(llm: Llama) -> None:
    first = llm.stream(COUNTING_PROMPT, temperature=0)
    assert next(first) == " three"
    assert llm.generate(COUNTING_PROMPT, temperature=0) == COUNTING_CONTINUATION
    with pytest.raises(LlamaError, match="interrupted"):
        next(first)


def test_a_stream_created_before_another_is_interrupted(llm: Llama) -> None:
    first = llm.stream(COUNTING_PROMPT, temperature=0)
    second = llm.stream("one two three", temperature=0)
    with pytest.raises(LlamaError, match="interrupted"):
        next(first)
    assert "".join(second) == " four five six seven eight nine ten"


def test_gpu_layers_mapping() -> None:
    from lmserv._bindings.params import gpu_layers_value

    assert gpu_layers_value("auto", -1) == -1  # libllama's default, whatever it is
    assert gpu_layers_value("auto", 99) == 99
    assert gpu_layers_value("all", 0) == -1
    assert gpu_layers_value(0, -1) == 0
    assert gpu_layers_value(12, -1) == 12
    for bad in (-2, True, 1.5, "some"):
        with pytest.raises(ConfigError, match="n_gpu_layers"):
            gpu_layers_value(bad, -1)  # type: ignore[arg-type]


# -- logging -------------------------------------------------------------------------------------


def test_llama_cpp_log_goes_to_python_logging(
    counting_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="lmserv.llama_cpp"):
        Llama(counting_model, n_ctx=256).close()
    lines = [r.getMessage() for r in caplog.records if r.name == "lmserv.llama_cpp"]
    assert any("llama_model_loader" in line or "print_info" in line for line in lines), lines
    assert all(not line.endswith("\n") for line in lines)


def test_quiet_by_default(counting_model: Path, llama_build: LlamaBuild, tmp_path: Path) -> None:
    """Without logging configured, loading and generating print nothing at all."""
    script = (
        "import sys; from lmserv import Llama\n"
        f"llm = Llama({str(counting_model)!r}, n_ctx=256)\n"
        "print(llm.generate('one two', temperature=0), end='')\n"
        "llm.close()\n"
    )
    src = Path(__file__).resolve().parents[1] / "src"
    proc = subprocess.run(
        [_python(), "-c", script],
        capture_output=True,
        text=True,
        env=_env(src, LLAMA_LIB_DIR=str(llama_build.lib_dir)),
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == COUNTING_CONTINUATION
    assert proc.stderr == ""


def _python() -> str:
    import sys

    return sys.executable


def _env(src: Path, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
    env["PYTHONPATH"] = str(src)
    env.update(extra)
    return env


# -- resources -----------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_no_leak_across_100_load_close_cycles(counting_model: Path) -> None:
    def cycle() -> None:
        with Llama(counting_model, n_ctx=256, n_threads=1) as model:
            assert model.generate(COUNTING_PROMPT, max_tokens=2, temperature=0) == " three four"

    for _ in range(10):  # warm up allocator pools and caches
        cycle()
    before = _rss_bytes()
    for _ in range(100):
        cycle()
    grown = _rss_bytes() - before
    # One leaked context (KV cache + compute buffers) per cycle would add well over 100 MB.
    assert grown < 16 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB over 100 cycles"
