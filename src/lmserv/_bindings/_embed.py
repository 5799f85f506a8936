"""One text's embedding from a decoded batch: pooled as the model says, then normalised.

Kept apart from :mod:`lmserv._bindings.llama` so that the Pythonic layer stays about the API;
the caller holds the ``Llama``'s lock and has checked that the tokens fit one micro-batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lmserv._bindings import _llama_h as h
from lmserv._bindings._generate import Decoder
from lmserv.errors import LlamaError

__all__ = ["embed_tokens"]


def embed_tokens(
    lib: h.LibLlama,
    ctx: h.llama_context_p,
    decoder: Decoder,
    tokens: Sequence[int],
    n_embd: int,
    normalize: bool,
) -> list[float]:
    """Decode ``tokens`` with every output on and return their embedding (``n_embd`` floats).

    Models that pool nothing (``LLAMA_POOLING_TYPE_NONE``) get the mean of the token rows, what
    llama-server's ``--pooling mean`` gives; others return llama.cpp's pooled vector.
    L2-normalised when ``normalize`` (a zero vector stays zero).
    """
    decoder.serial += 1  # the context no longer holds a generation: open streams must stop
    lib.llama_set_embeddings(ctx, True)
    decoder.decode_prompt(ctx, list(tokens), all_outputs=True)
    decoder.forget()
    if lib.llama_pooling_type(ctx) == h.LLAMA_POOLING_TYPE_NONE:
        rows = lib.llama_get_embeddings(ctx)
        if not rows:  # pragma: no cover - llama.cpp always outputs them here
            raise LlamaError("llama.cpp returned no token embeddings")
        flat = rows[: n_embd * len(tokens)]
        vector = [
            sum(flat[r * n_embd + i] for r in range(len(tokens))) / len(tokens)
            for i in range(n_embd)
        ]
    else:
        pooled = lib.llama_get_embeddings_seq(ctx, 0)
        if not pooled:  # pragma: no cover
            raise LlamaError("llama.cpp returned no pooled embedding")
        vector = list(pooled[:n_embd])
    if normalize:
        norm = math.sqrt(sum(v * v for v in vector))
        if norm > 0:
            vector = [v / norm for v in vector]
    return vector
