"""The decoding loop under :class:`~lmserv.Llama`: prompt decode, token picking, text pieces.

:class:`Handles` holds a ``Llama``'s model and context pointers. :class:`Decoder` works on that
context (``Handles.live`` raises once it is freed) and numbers generations with ``serial`` so a
stream left open notices that the context moved on to another generation, or was freed, and
raises instead of touching it. Neither refers back to the ``Llama``.

Thread safety: every libllama call on a context happens under ``Handles.lock``, including
freeing it. A generation takes the lock for each step (pick a token, decode it) and lets go
between steps, so a stream open in one thread never blocks another thread for good (a stream
abandoned mid-way would otherwise hold the lock until garbage-collected); a generation started
by another thread meanwhile makes that stream raise :func:`interrupted` at its next step.
"""

from __future__ import annotations

import ctypes
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lmserv._bindings import _llama_h as h
from lmserv._bindings._log import LogRouter, capture_stderr
from lmserv._bindings._text import PieceAssembler
from lmserv._bindings.params import SamplingParams
from lmserv.errors import ConfigError, ContextOverflow, LlamaError

__all__ = ["Decoder", "Handles", "Tally", "interrupted"]


@dataclass
class Tally:
    """What a generation did, filled in as it runs (for :class:`~lmserv.Completion`)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    stop_type: str = "limit"  # llama-server's words: "eos", "word" (stop string), "limit"
    prompt_ms: float = 0.0
    predicted_ms: float = 0.0
    cached_tokens: int = 0  # prompt tokens found in the KV cache (not decoded again)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def interrupted() -> LlamaError:
    """The error of a stream whose context was taken over or freed."""
    return LlamaError(
        "this stream was interrupted: the Llama was closed or started another generation "
        "(or embed); finish a stream before starting the next"
    )


class Handles:
    """The C objects of one ``Llama``, freed exactly once (by ``close`` or its finalizer).

    ``lock`` serializes every use of them: libllama's context is not thread-safe (two threads
    decoding on one context crash or corrupt each other's output). Reentrant, because a call
    such as ``generate`` holds it while the stream it consumes takes it again per step.
    """

    def __init__(self, lib: h.LibLlama, model_path: Path) -> None:
        self.lib = lib
        self.model_path = model_path
        self.model: h.llama_model_p | None = None
        self.ctx: h.llama_context_p | None = None
        self.lock = threading.RLock()

    def live(self) -> h.llama_context_p:
        """The context; :class:`~lmserv.errors.LlamaError` once freed."""
        ctx = self.ctx
        if ctx is None:
            raise LlamaError(
                f"this Llama ({str(self.model_path)!r}) is closed; create a new Llama to use it"
            )
        return ctx

    def free(self) -> None:
        with self.lock:  # waits for a step running in another thread
            ctx, model = self.ctx, self.model
            self.ctx = self.model = None
            if ctx:
                self.lib.llama_free(ctx)
            if model:
                self.lib.llama_model_free(model)


class Decoder:
    """Generation and prompt decoding on one context (see the module docstring)."""

    def __init__(
        self,
        lib: h.LibLlama,
        handles: Handles,
        *,
        embedding: bool,
        reuse: bool = False,
        log: LogRouter | None = None,
    ) -> None:
        self._lib = lib
        self._log = log
        self._reuse = reuse
        self._handles = handles
        self._live = handles.live
        self.lock = handles.lock
        self._pieces: dict[int, bytes] = {}
        self._embedding = embedding
        self._vocab = h.llama_vocab_p(0)
        self._n_vocab = self._n_ctx = 0
        self._n_batch = 1
        self._cached: list[int] = []  # the tokens whose KV the context holds, in order
        self.serial = 0

    def attach(self, vocab: h.llama_vocab_p, n_vocab: int, n_ctx: int, n_batch: int) -> None:
        """Record the vocabulary and context sizes once the context exists."""
        self._vocab, self._n_vocab, self._n_ctx, self._n_batch = vocab, n_vocab, n_ctx, n_batch

    def start(self, tokens: list[int], sampling: SamplingParams, tally: Tally) -> Iterator[str]:
        """Decode the prompt now, then return the (lazy) iterator of generated text pieces.

        Problems with the prompt raise here: :class:`~lmserv.errors.ContextOverflow` when it
        does not fit, :class:`~lmserv.errors.LlamaError` when it is empty or decoding fails.
        """
        with self.lock:
            ctx = self._live()
            if not tokens:
                raise LlamaError("the prompt is empty (no tokens); give some text to continue")
            if len(tokens) > self._n_ctx:
                raise ContextOverflow(
                    f"the prompt has {len(tokens)} tokens but the context holds {self._n_ctx}; "
                    "shorten the prompt or create the Llama with a larger n_ctx"
                )
            self.serial += 1
            grammar = self._grammar(sampling.grammar) if sampling.grammar is not None else None
            try:
                sampler = self._make_sampler(sampling)
            except BaseException:
                if grammar:
                    self._lib.llama_sampler_free(grammar)
                raise
            started = time.perf_counter()
            try:
                if self._embedding:
                    self._lib.llama_set_embeddings(ctx, False)
                tally.cached_tokens = self.decode_prompt(ctx, tokens, reuse=self._reuse)
            except BaseException:
                for owned in (sampler, grammar):
                    if owned:
                        self._lib.llama_sampler_free(owned)
                raise
            tally.prompt_tokens = len(tokens)
            tally.prompt_ms = (time.perf_counter() - started) * 1000.0
            return self._generation(ctx, sampler, grammar, sampling, self.serial, tally)

    def _generation(
        self,
        ctx: h.llama_context_p,
        sampler: h.llama_sampler_p | None,
        grammar: h.llama_sampler_p | None,
        sampling: SamplingParams,
        serial: int,
        tally: Tally,
    ) -> Iterator[str]:
        lib, lock, handles = self._lib, self.lock, self._handles
        decode, is_eog = lib.llama_decode, lib.llama_vocab_is_eog
        vocab, n_ctx, piece_of = self._vocab, self._n_ctx, self.piece
        pick = self._picker(ctx, sampler)
        if grammar is not None:
            pick = self._constrained(ctx, sampler, grammar, pick)
        limit = sampling.max_tokens
        one = (ctypes.c_int32 * 1)()
        batch = lib.llama_batch_get_one(one, 1)
        assembler = PieceAssembler(sampling.stop)
        produced = 0
        n_past = tally.prompt_tokens
        cached = self._cached
        started = time.perf_counter()
        try:
            while limit is None or produced < limit:
                # The lock is held for one step, never across a yield (see the module docstring).
                # Checked under it: another thread may have started a generation or freed ctx.
                with lock:
                    if serial != self.serial or handles.ctx is None:
                        raise interrupted()
                    token = pick()
                    if is_eog(vocab, token) and not sampling.ignore_eos:
                        tally.stop_type = "eos"
                        tally.completion_tokens = produced + 1  # counted, as llama-server does
                        break
                    produced += 1
                    tally.completion_tokens = produced
                    text = assembler.feed(piece_of(token))
                if text:
                    yield text
                if assembler.stopped:
                    tally.stop_type = "word"
                    break
                if produced == limit or n_past >= n_ctx:
                    break
                with lock:  # the context may have moved on while we yielded
                    if serial != self.serial or handles.ctx is None:
                        raise interrupted()
                    one[0] = token
                    rc = decode(ctx, batch)
                    if rc != 0:
                        self._decode_failed(rc, n_past)
                    cached.append(token)
                n_past += 1
            tail = assembler.finish()
            if tail:
                yield tail
        finally:
            tally.predicted_ms = (time.perf_counter() - started) * 1000.0
            for owned in (sampler, grammar):
                if owned:
                    lib.llama_sampler_free(owned)

    def piece(self, token: int) -> bytes:
        """The bytes of ``token`` as generated text (control tokens give ``b""``), cached."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        piece = buf.raw[: max(n, 0)]
        self._pieces[token] = piece
        return piece

    def _picker(
        self, ctx: h.llama_context_p, sampler: h.llama_sampler_p | None
    ) -> Callable[[], int]:
        """The function that chooses the next token from the last decode's logits."""
        if sampler is not None:
            sample = self._lib.llama_sampler_sample
            return lambda: int(sample(sampler, ctx, -1))
        # Greedy: an argmax over the logits in numpy is ~10x cheaper per token than llama.cpp's
        # greedy sampler, which first copies every logit into a candidates array. Both pick the
        # first maximum.
        import numpy as np

        logits_of, as_array = self._lib.llama_get_logits_ith, np.ctypeslib.as_array
        shape = (self._n_vocab,)

        def argmax() -> int:
            logits = logits_of(ctx, -1)
            if not logits:  # pragma: no cover - only after a failed decode
                raise LlamaError("llama.cpp produced no logits for the last token")
            return int(as_array(logits, shape=shape).argmax())

        return argmax

    def _grammar(self, grammar: str) -> h.llama_sampler_p:
        """libllama's grammar sampler for GBNF ``grammar`` (root rule ``root``).

        libllama returns ``NULL`` for a grammar that does not parse and says why only on stderr
        and in its log, so those lines go into the :class:`~lmserv.errors.ConfigError`.
        """
        mark = self._log.mark() if self._log else 0
        with capture_stderr() as printed:  # the parser's reason goes to stderr, not the log
            sampler = self._lib.llama_sampler_init_grammar(
                self._vocab, grammar.encode("utf-8"), b"root"
            )
        if not sampler:
            said = [line for line in printed if "error" in line]
            said += self._log.problems_since(mark) if self._log else []
            first = grammar.strip().splitlines()[0] if grammar.strip() else ""
            raise ConfigError(
                f"llama.cpp could not parse the grammar (starting {first[:80]!r}); write it in "
                'GBNF with a rule named root, e.g. \'root ::= "yes" | "no"\''
                + ("; llama.cpp said: " + " | ".join(said[-3:]) if said else "")
            )
        return sampler

    def _constrained(
        self,
        ctx: h.llama_context_p,
        sampler: h.llama_sampler_p | None,
        grammar: h.llama_sampler_p,
        pick: Callable[[], int],
    ) -> Callable[[], int]:
        """``pick`` kept to the tokens ``grammar`` allows, as llama.cpp's own sampling does it.

        Checking the whole vocabulary against a grammar costs more than the rest of a step, so
        the token is picked freely first and checked alone; only when the grammar refuses it
        is every candidate checked and the pick made again among those left (greedy: the
        largest logit; else the sampler chain). Either way the grammar then accepts the token,
        which moves it along.
        """
        import numpy as np

        lib, n_vocab = self._lib, self._n_vocab
        apply, accept = lib.llama_sampler_apply, lib.llama_sampler_accept
        one = h.llama_token_data(0, 0.0, 0.0)
        single = h.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        # A numpy array with llama_token_data's layout (int32, float, float; 12 bytes).
        layout = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        every = np.zeros(n_vocab, dtype=layout)
        every["id"] = np.arange(n_vocab, dtype=np.int32)
        data = every.ctypes.data_as(ctypes.POINTER(h.llama_token_data))
        full = h.llama_token_data_array(data, n_vocab, -1, False)
        logits_of, as_array = lib.llama_get_logits_ith, np.ctypeslib.as_array

        def constrained() -> int:
            token = pick()
            one.id, one.logit = token, 0.0
            apply(grammar, ctypes.byref(single))
            if one.logit != -math.inf:
                accept(grammar, token)
                return token
            logits = logits_of(ctx, -1)
            if not logits:  # pragma: no cover - only after a failed decode
                raise LlamaError("llama.cpp produced no logits for the last token")
            every["id"] = np.arange(n_vocab, dtype=np.int32)
            every["logit"] = as_array(logits, shape=(n_vocab,))
            full.data, full.size, full.selected, full.sorted = data, n_vocab, -1, False
            apply(grammar, ctypes.byref(full))
            if sampler is None:
                best = int(every["logit"].argmax())
                token, logit = int(every["id"][best]), float(every["logit"][best])
            else:
                apply(sampler, ctypes.byref(full))
                chosen = full.data[full.selected] if full.selected >= 0 else one
                token, logit = int(chosen.id), float(chosen.logit)
            if logit == -math.inf:
                # Accepting a token the grammar refuses throws a C++ exception through the C
                # API, which aborts the process: refuse here instead.
                raise LlamaError(
                    "the grammar allows no token of this model's vocabulary here; check that "
                    "the vocabulary can write what the grammar asks for"
                )
            if sampler is not None:
                accept(sampler, token)
            accept(grammar, token)
            return token

        return constrained

    def _make_sampler(self, s: SamplingParams) -> h.llama_sampler_p | None:
        """A sampler chain for ``s``, or ``None`` for greedy (see :meth:`_picker`)."""
        if s.temperature <= 0:
            return None
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if not chain:  # pragma: no cover - allocation failure
            raise LlamaError("llama_sampler_chain_init failed")
        parts: list[h.llama_sampler_p | None] = []
        if s.top_k > 0:
            parts.append(lib.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            parts.append(lib.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            parts.append(lib.llama_sampler_init_min_p(s.min_p, 1))
        parts.append(lib.llama_sampler_init_temp(s.temperature))
        seed = h.LLAMA_DEFAULT_SEED if s.seed is None else s.seed
        parts.append(lib.llama_sampler_init_dist(seed))
        for part in parts:
            if part:
                lib.llama_sampler_chain_add(chain, part)  # the chain owns it now
        if not all(parts):  # pragma: no cover - allocation failure
            lib.llama_sampler_free(chain)
            raise LlamaError("could not create a sampler")
        return chain

    def decode_prompt(
        self,
        ctx: h.llama_context_p,
        tokens: list[int],
        *,
        all_outputs: bool = False,
        reuse: bool = False,
    ) -> int:
        """Decode ``tokens`` from position 0 in ``n_batch`` chunks; return how many were reused.

        With ``reuse``, the longest common prefix with what the context already holds (the
        previous prompt and its output) stays in the KV cache and only the rest is decoded --
        always at least the last token, whose logits are needed. Otherwise the context is
        cleared first. Only the last token's logits are kept, unless ``all_outputs``
        (embeddings need a vector for every token).
        """
        lib = self._lib
        memory = lib.llama_get_memory(ctx)
        keep = 0
        if reuse and memory:
            keep = min(_common_prefix(self._cached, tokens), len(tokens) - 1)
            if keep > 0 and not lib.llama_memory_seq_rm(memory, 0, keep, -1):
                keep = 0  # e.g. a recurrent model cannot drop a partial sequence
        if keep == 0 and memory:
            lib.llama_memory_clear(memory, False)
        self._cached = tokens[:keep]
        arr = (ctypes.c_int32 * len(tokens))(*tokens)
        step = self._n_batch
        for start in range(keep, len(tokens), step):
            count = min(step, len(tokens) - start)
            chunk = (ctypes.c_int32 * count).from_buffer(arr, start * ctypes.sizeof(ctypes.c_int32))
            batch = lib.llama_batch_get_one(chunk, count)
            flags = (ctypes.c_int8 * count)(*([1] * count)) if all_outputs else None
            if flags is not None:
                batch.logits = ctypes.cast(flags, ctypes.POINTER(ctypes.c_int8))
            rc = lib.llama_decode(ctx, batch)
            if rc != 0:
                self._decode_failed(rc, start)
            self._cached += tokens[start : start + count]
        return keep

    def forget(self) -> None:
        """Never reuse what the context holds now (e.g. after an embedding pass)."""
        self._cached = [h.LLAMA_TOKEN_NULL]

    def _decode_failed(self, rc: int, n_past: int) -> None:
        if rc != 1:  # the memory may hold part of the batch: never reuse it
            self.forget()
        if rc == 1:
            raise ContextOverflow(
                f"no room left in the context ({self._n_ctx} tokens, {n_past} used); "
                "create the Llama with a larger n_ctx"
            )
        raise LlamaError(f"llama_decode failed with code {rc} at position {n_past}")
