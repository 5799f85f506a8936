"""Test models written on the spot: one whose greedy output is known exactly, one for speed.

Both are real GGUF files of the ``llama`` architecture, so every path that runs a model
(``llama-server``, the in-process bindings, RPC workers) loads them like any downloaded model.

:func:`write_counting_model` counts. Its vocabulary is SentencePiece style (``<unk> <s> </s>``,
the 256 byte tokens, the words ``▁one`` … ``▁ten`` and every prefix of them, so the tokenizer
merges letters into whole words). Its one transformer block has zero attention and FFN output
projections, so the residual stream leaving the block is the token embedding itself; the output
matrix row of word *k + 1* (and of ``</s>`` for word ten) is word *k*'s embedding. Greedy decoding
therefore continues any prompt ending in a number word with the following words and then stops:

>>> # "one two" -> " three four five six seven eight nine ten", then end of sequence

:func:`write_synthetic_model` writes random weights of a realistic shape and size, for
benchmarks where the values do not matter but the arithmetic does.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lmserv._fs import atomic_path
from lmserv.errors import ConfigError

if TYPE_CHECKING:  # numpy and gguf are imported where models are written: the CLI starts faster
    import gguf
    import numpy as np

__all__ = [
    "COUNTING_CONTINUATION",
    "COUNTING_PROMPT",
    "COUNTING_WORDS",
    "write_counting_model",
    "write_synthetic_model",
]

#: The words the counting model knows, in order.
COUNTING_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
#: A prompt and its exact greedy continuation (which ends with end of sequence).
COUNTING_PROMPT = "one two"
COUNTING_CONTINUATION = " three four five six seven eight nine ten"

_SPACE = "\u2581"  # SentencePiece's visible space
# llama.cpp token types (llama_token_attr order in gguf: NORMAL=1, UNKNOWN=2, CONTROL=3, BYTE=6)
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6
# Renders the conversation as its messages' text joined by spaces, so the prompt the model sees
# for a chat ends in the user's words and the counting carries on exactly as with /completion.
_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if not loop.first %} {% endif %}"
    "{{ message['content'] }}{% endfor %}"
)


def _counting_vocab() -> tuple[list[str], list[float], list[int], dict[str, int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [_UNKNOWN, _CONTROL, _CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    word_ids: dict[str, int] = {}
    seen = set(tokens)
    for word in COUNTING_WORDS:
        piece = _SPACE + word
        for end in range(2, len(piece) + 1):  # "▁o", "▁on", "▁one": merges lead to whole words
            prefix = piece[:end]
            if prefix not in seen:
                seen.add(prefix)
                tokens.append(prefix)
                types.append(_NORMAL)
        word_ids[word] = tokens.index(piece)
    # Longer pieces score higher, so when two merges compete the longer one wins.
    scores = [0.0] * 259 + [float(len(t)) for t in tokens[259:]]
    return tokens, scores, types, word_ids


@contextlib.contextmanager
def _llama_gguf(path: Path) -> Iterator[gguf.GGUFWriter]:
    """A GGUF writer for a llama model at ``path``: the caller adds metadata and tensors, then
    the file is written beside ``path`` and renamed into place; on an error nothing is left."""
    import gguf

    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        try:
            yield writer
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()


def write_counting_model(path: str | Path, *, seed: int = 0) -> Path:
    """Write the counting model (about 200 KB) to ``path`` and return the path.

    Greedy decoding of ``"one two"`` gives exactly :data:`COUNTING_CONTINUATION` and then
    end of sequence, whatever the backend; the chat template joins message texts with spaces,
    so a chat whose last message is ``"one two"`` answers the same.
    Parent folders are created; an existing file is replaced atomically.
    """
    import gguf
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, scores, types, word_ids = _counting_vocab()
    n_vocab, n_embd, n_ff, n_head = len(tokens), 64, 128, 4
    rng = np.random.default_rng(seed)

    embd = rng.standard_normal((n_vocab, n_embd)).astype(np.float32)
    embd /= np.linalg.norm(embd, axis=1, keepdims=True)  # unit rows: self dot 1, others ~0.12
    output = np.zeros((n_vocab, n_embd), dtype=np.float32)
    ids = [word_ids[w] for w in COUNTING_WORDS]
    # Scaled by 4 so the right word's logit (32) towers over every other (below ~12): even
    # llama-server's default sampling (temperature 0.8, min_p 0.05) can only pick it.
    for prev, nxt in itertools.pairwise(ids):
        output[nxt] = 4.0 * embd[prev]
    output[2] = 4.0 * embd[ids[-1]]  # after "ten" comes </s>

    with _llama_gguf(path) as writer:
        writer.add_name("lmserv counting model")
        writer.add_context_length(2048)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(1)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head)
        writer.add_rope_dimension_count(n_embd // n_head)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_chat_template(_CHAT_TEMPLATE)

        def small(*shape: int) -> np.ndarray[tuple[int, ...], np.dtype[np.float32]]:
            return (rng.standard_normal(shape) * 0.02).astype(np.float32)

        zeros = np.zeros
        writer.add_tensor("token_embd.weight", embd)
        writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor("output.weight", output)
        writer.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor("blk.0.attn_q.weight", small(n_embd, n_embd))
        writer.add_tensor("blk.0.attn_k.weight", small(n_embd, n_embd))
        writer.add_tensor("blk.0.attn_v.weight", small(n_embd, n_embd))
        writer.add_tensor("blk.0.attn_output.weight", zeros((n_embd, n_embd), dtype=np.float32))
        writer.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor("blk.0.ffn_gate.weight", small(n_ff, n_embd))
        writer.add_tensor("blk.0.ffn_up.weight", small(n_ff, n_embd))
        writer.add_tensor("blk.0.ffn_down.weight", zeros((n_embd, n_ff), dtype=np.float32))
    return path


_QUANTS = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}


def _synthetic_shape(params: int) -> tuple[int, int, int, int]:
    """(n_embd, n_layer, n_ff, n_head) for about ``params`` weights, shaped like small llamas."""
    n_vocab = 32000
    best = (256, 1, 1024, 4)
    for n_embd in (256, 384, 512, 640, 768, 1024, 1536, 2048, 2560, 3072, 4096):
        n_ff = (n_embd * 8 // 3 + 255) // 256 * 256
        per_layer = 4 * n_embd * n_embd + 3 * n_embd * n_ff
        n_layer = round((params - 2 * n_vocab * n_embd) / per_layer)
        if n_layer < 1:
            break
        best = (n_embd, n_layer, n_ff, max(1, n_embd // 64))
        if n_layer <= 4 * n_embd // 64:  # deep enough for this width, like real models
            break
    return best


def write_synthetic_model(
    path: str | Path, *, params: int = 50_000_000, quant: str = "f16", seed: int = 0
) -> Path:
    """Write a llama-architecture model of about ``params`` random weights and return its path.

    ``quant`` is ``"f32"``, ``"f16"`` (default) or ``"q8_0"``. The vocabulary has 32000 byte
    and filler tokens, so any text tokenizes; the output is gibberish by design. Use it to
    measure speed; the default (about 50M weights, 100 MB) is written in a few seconds.

    Raises :class:`~lmserv.errors.ConfigError` (a ``ValueError``) for an unknown ``quant`` or ``params`` below 20 million.
    """
    import gguf
    import numpy as np

    if quant.lower() not in _QUANTS:
        raise ConfigError(f"quant={quant!r} is not supported; use one of {sorted(_QUANTS)}")
    if params < 20_000_000:  # the 32000-token embedding and output matrices alone are 16M
        raise ConfigError(f"params={params} is too small; use at least 20_000_000")
    qtype = getattr(gguf.GGMLQuantizationType, _QUANTS[quant.lower()])
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[quant.lower()]
    n_embd, n_layer, n_ff, n_head = _synthetic_shape(params)
    n_vocab = 32000
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"{_SPACE}w{i}" for i in range(n_vocab - len(tokens))]
    types = [_UNKNOWN, _CONTROL, _CONTROL] + [_BYTE] * 256 + [_NORMAL] * (n_vocab - 259)
    scale = 1.0 / math.sqrt(n_embd)

    def weight(*shape: int) -> np.ndarray[tuple[int, ...], np.dtype[np.float32]]:
        data = (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)
        return data

    with _llama_gguf(path) as writer:
        writer.add_name(f"lmserv synthetic {params // 1_000_000}M {quant}")
        writer.add_context_length(4096)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head)
        writer.add_rope_dimension_count(n_embd // n_head)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_file_type(file_type)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores([0.0] * n_vocab)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_chat_template(_CHAT_TEMPLATE)

        def add(name: str, data: np.ndarray[tuple[int, ...], np.dtype[np.float32]]) -> None:
            # Norm vectors stay F32 as in converted models; matrices take the requested type.
            if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(name, data)
            elif qtype == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(name, data.astype(np.float16))
            else:
                writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

        ones = np.ones(n_embd, dtype=np.float32)
        add("token_embd.weight", weight(n_vocab, n_embd))
        add("output_norm.weight", ones)
        add("output.weight", weight(n_vocab, n_embd))
        for i in range(n_layer):
            add(f"blk.{i}.attn_norm.weight", ones)
            for part in ("q", "k", "v", "output"):
                add(f"blk.{i}.attn_{part}.weight", weight(n_embd, n_embd))
            add(f"blk.{i}.ffn_norm.weight", ones)
            add(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
            add(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
            add(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
    return path
