"""A GGUF model running inside this Python process: :class:`Llama`.

>>> with Llama("model.gguf", n_ctx=2048) as llm:                      # doctest: +SKIP
...     print(llm.generate("The capital of France is", max_tokens=16, temperature=0))
...     for piece in llm.stream("Once upon a time", seed=1):
...         print(piece, end="", flush=True)

It speaks the client's vocabulary: ``complete``/``stream``/``chat``/``chat_stream`` take the same
:class:`~lmserv.SamplingOptions` (or keywords) and return the same :class:`~lmserv.Completion` /
:class:`~lmserv.ChatCompletion` as :class:`~lmserv.Client`; ``tokenize`` and ``embed`` take a
``str`` (one result) or a list (a list of results), as the client's do.

The C library is loaded on the first ``Llama(...)``; nothing happens at ``import lmserv``. One
``Llama`` owns one model and one context, which libllama cannot share between threads: calls on
one object take turns (a lock held across every libllama call, ``close`` included), so two
threads calling ``generate`` each get their own, correct text, one after the other. A
``stream`` holds the lock only while it computes a piece, and starting a new generation (from
any thread) makes a ``stream`` still open on the same object raise
:class:`~lmserv.errors.LlamaError` ("interrupted") at its next piece. Two ``Llama`` objects
share nothing and run in parallel (libllama releases the GIL).
"""

from __future__ import annotations

import ctypes
import logging
import os
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

from lmserv import config
from lmserv._bindings import _lib
from lmserv._bindings import _llama_h as h
from lmserv._bindings._chat import apply_chat_template, builtin_chat_templates, chat_options
from lmserv._bindings._embed import embed_tokens
from lmserv._bindings._generate import Decoder, Handles, Tally
from lmserv._bindings._split import apply_split, check_tensor_mode
from lmserv._bindings._stream import LlamaStream, chat_completion, completion, holding
from lmserv._bindings.params import GpuLayers, LlamaParams, SamplingParams, default_threads
from lmserv._fs import require_model_file
from lmserv._inputs import check_text
from lmserv._types import (
    ChatArgs,
    ChatCompletion,
    Completion,
    Messages,
    SamplingArgs,
    SamplingOptions,
    sampling_values,
)
from lmserv.errors import ConfigError, ContextOverflow, InvalidModelFile, LlamaError
from lmserv.gpu._split import SplitOptions, split_options

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Llama"]

log = logging.getLogger(__name__)

_GGUF_MAGIC = b"GGUF"


def _check_model_file(path: Path) -> None:
    """Refuse anything that is not a readable GGUF file before handing it to C."""
    require_model_file(path)  # ModelNotFound / InvalidModelFile, as from every entry point
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InvalidModelFile(f"cannot read model file {str(path)!r}: {exc}") from exc
    if magic != _GGUF_MAGIC:
        raise InvalidModelFile(
            f"{str(path)!r} is not a GGUF model (it starts with {magic!r}, not {_GGUF_MAGIC!r}); "
            "convert it with llama.cpp's convert_hf_to_gguf.py or download a .gguf file"
        )


def _read_string(fill: Callable[[h.CharBuffer, int], int]) -> str | None:
    """Call a llama.cpp "write a string into buf" function, growing the buffer if needed."""
    size = 256
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = fill(buf, size)
        if n < 0:
            return None
        if n < size:
            return buf.raw[:n].decode("utf-8", "replace")
        size = n + 1
    return None  # pragma: no cover - the string kept growing


def _renamed(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; its new name is {new}", DeprecationWarning, stacklevel=3)


def _explain(problems: list[str]) -> str:
    return ("; llama.cpp said: " + " | ".join(problems[-4:])) if problems else ""


class Llama:
    """A model loaded from a GGUF file, with one context of ``n_ctx`` tokens.

    Arguments:
        model_path: the ``.gguf`` file.
        n_ctx: context window in tokens (prompt plus generated text); 0 uses the model's
            training context.
        n_gpu_layers: ``"all"`` (every layer on the GPUs the build and machine have, plain CPU
            when there are none) or a number of layers (0 = CPU only). ``"auto"`` is deprecated
            here: on :class:`~lmserv.LlamaServer` it means "as many as fit in free memory",
            which libllama alone does not do; here it always meant ``"all"``.
        n_threads: CPU threads; ``None`` uses every CPU this process may run on.
        embedding: prepare the context for :meth:`embed`.
        seed: default sampling seed for every call; ``None`` draws a fresh one each call.
        params: everything else (batch sizes, mmap, flash attention, chat template, …).
        split_mode, tensor_split, main_gpu, devices: spreading the model over several GPUs,
            validated exactly as for :class:`~lmserv.LlamaServer` (``"layer"``, ``"tensor"``
            or ``"none"``; shares per device; the GPU used unsplit; device names such as
            ``"CUDA0"``). Tensor mode turns flash attention on and refuses a quantized KV cache.
        split: the same options as one :class:`~lmserv.SplitOptions` (``split_options(...)``),
            instead of the four keywords; ``LlamaServer`` takes it too.

    Raises :class:`~lmserv.errors.ModelNotFound` (missing file),
    :class:`~lmserv.errors.InvalidModelFile` (unreadable or not a model llama.cpp
    can load), :class:`~lmserv.errors.ConfigError` (a bad argument),
    :class:`~lmserv.errors.LlamaError` (the context could not be created), and
    :class:`~lmserv.errors.BinaryNotFound` / :class:`~lmserv.errors.LibraryMismatch` when
    ``libllama`` is missing or unusable.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = 4096,
        n_gpu_layers: GpuLayers = "all",
        n_threads: int | None = None,
        embedding: bool = False,
        seed: int | None = None,
        params: LlamaParams | None = None,
        split_mode: str | None = None,
        tensor_split: str | Sequence[float] | None = None,
        main_gpu: int | None = None,
        devices: str | Sequence[str | int] | None = None,
        split: SplitOptions | None = None,
    ) -> None:
        self._params = params or LlamaParams()
        # GPU counts are not checked here (no inventory is taken), exactly as LlamaServer does
        # when it has none.
        if split is None:
            split = split_options(split_mode, tensor_split, main_gpu, devices)
        elif any(v is not None for v in (split_mode, tensor_split, main_gpu, devices)):
            raise ConfigError(
                "pass the multi-GPU options either as split=SplitOptions(...) or as "
                "split_mode/tensor_split/main_gpu/devices keywords, not both"
            )
        flash = check_tensor_mode(
            split, self._params.flash_attn, self._params.type_k, self._params.type_v
        )
        if flash != self._params.flash_attn:
            self._params = replace(self._params, flash_attn=flash)  # type: ignore[arg-type]
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 0:
            raise ConfigError(f"n_ctx={n_ctx!r} must be an int >= 0 (0 = the model's own)")
        if n_threads is not None and n_threads < 1:
            raise ConfigError(f"n_threads={n_threads} must be at least 1 (or None: all CPUs)")
        if n_gpu_layers == "auto":
            warnings.warn(
                'Llama(n_gpu_layers="auto") is deprecated: it means "all" here (libllama does not '
                'fit layers to free memory as LlamaServer\'s "auto" does); pass "all" or a number',
                DeprecationWarning,
                stacklevel=2,
            )
            n_gpu_layers = "all"
        self._seed = SamplingOptions(seed=seed).seed
        self._embedding = embedding
        self._model_path = config.expand_path(os.fspath(model_path), what="model_path")
        _check_model_file(self._model_path)

        loaded = _lib.load()
        self._lib = lib = loaded.lib
        self._router = loaded.log_router
        # Nothing in _handles or _decoder refers back to this object, so dropping the last
        # reference to a Llama frees its C memory at once (through the finalizer).
        self._handles = Handles(lib, self._model_path)
        self._lock = self._handles.lock
        self._finalizer = weakref.finalize(self, self._handles.free)
        self._decoder = Decoder(
            lib,
            self._handles,
            embedding=embedding,
            reuse=self._params.reuse_prompt,
            log=self._router,
        )

        mparams = lib.llama_model_default_params()
        self._params.model_params(mparams, n_gpu_layers)
        self._split_arrays = apply_split(lib, mparams, split)  # read while the model loads
        mark = self._router.mark()
        model = lib.llama_model_load_from_file(os.fsencode(self._model_path), mparams)
        if not model:
            raise InvalidModelFile(
                f"llama.cpp could not load {str(self._model_path)!r} (a truncated file, or an "
                "architecture this llama.cpp does not know)"
                + _explain(self._router.problems_since(mark))
            )
        self._handles.model = model

        cparams = lib.llama_context_default_params()
        self._params.context_params(
            cparams,
            n_ctx=n_ctx,
            n_threads=n_threads or default_threads(),
            embedding=embedding,
        )
        mark = self._router.mark()
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            self.close()
            raise LlamaError(
                f"could not create a context of n_ctx={n_ctx} for {str(self._model_path)!r} "
                "(out of memory? try a smaller n_ctx or fewer n_gpu_layers)"
                + _explain(self._router.problems_since(mark))
            )
        self._handles.ctx = ctx
        vocab = lib.llama_model_get_vocab(model)
        if not vocab:  # pragma: no cover - every loaded model has a vocabulary
            self.close()
            raise LlamaError(f"{str(self._model_path)!r} has no vocabulary")
        self._vocab = vocab
        self._model = model
        self._ctx = ctx
        self._n_ctx = lib.llama_n_ctx(ctx)
        self._n_batch = lib.llama_n_batch(ctx)
        self._n_ubatch = lib.llama_n_ubatch(ctx)
        self._n_vocab = lib.llama_vocab_n_tokens(vocab)
        self._n_embd = lib.llama_model_n_embd_out(model)
        self._decoder.attach(vocab, self._n_vocab, self._n_ctx, self._n_batch)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Free the context and the model. Safe to call more than once.

        Waits for a call running in another thread to finish its current step.
        """
        with self._lock:
            self._decoder.serial += 1  # invalidates open streams
            self._finalizer()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return not self._finalizer.alive

    def __enter__(self) -> Llama:
        with self._lock:
            self._live()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"n_ctx={self._n_ctx}"
        return f"Llama({str(self._model_path)!r}, {state})"

    def _live(self) -> h.llama_context_p:
        return self._handles.live()

    # -- facts ---------------------------------------------------------------------------------

    @property
    def model_path(self) -> Path:
        """The GGUF file this model came from."""
        return self._model_path

    @property
    def n_ctx(self) -> int:
        """The context size llama.cpp actually allocated (it may round what was asked)."""
        return self._n_ctx

    @property
    def n_vocab(self) -> int:
        """Number of tokens in the vocabulary."""
        return self._n_vocab

    @property
    def n_embd(self) -> int:
        """Length of the vectors :meth:`embed` returns."""
        return self._n_embd

    @property
    def n_ctx_train(self) -> int:
        """The context length the model was trained with."""
        with self._lock:
            self._live()
            return self._lib.llama_model_n_ctx_train(self._model)

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF's scalar key/value pairs as text (arrays such as the vocabulary are left out)."""
        lib, model = self._lib, self._model
        out: dict[str, str] = {}
        with self._lock:
            self._live()
            for i in range(lib.llama_model_meta_count(model)):
                key = _read_string(partial(lib.llama_model_meta_key_by_index, model, i))
                value = _read_string(partial(lib.llama_model_meta_val_str_by_index, model, i))
                if key is not None and value is not None:
                    out[key] = value
        return out

    @property
    def chat_template(self) -> str | None:
        """The chat template stored in the model, or ``None`` when it has none."""
        with self._lock:
            self._live()
            raw = self._lib.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", "replace") if raw else None

    # -- tokens --------------------------------------------------------------------------------

    @overload
    def tokenize(  # type: ignore[overload-overlap]
        self,
        text: str,
        add_bos: bool | None = None,
        *,
        add_special: bool = False,
        parse_special: bool = True,
        special: bool | None = None,
    ) -> list[int]: ...
    @overload
    def tokenize(
        self,
        text: Sequence[str],
        add_bos: bool | None = None,
        *,
        add_special: bool = False,
        parse_special: bool = True,
        special: bool | None = None,
    ) -> list[list[int]]: ...
    def tokenize(
        self,
        text: str | Sequence[str],
        add_bos: bool | None = None,
        *,
        add_special: bool = False,
        parse_special: bool = True,
        special: bool | None = None,
    ) -> list[int] | list[list[int]]:
        """Token ids of ``text`` (a list gives one list of ids per text), as
        :meth:`Client.tokenize <lmserv.Client.tokenize>` gives them.

        ``add_special`` adds the model's start token (BOS) when the model wants one, as a prompt
        gets it; ``parse_special`` reads control-token text such as ``<|im_start|>`` as those
        tokens, as prompts are read. ``add_bos`` and ``special`` are their deprecated old names.
        """
        if add_bos is not None:
            _renamed("Llama.tokenize(add_bos=...)", "add_special")
            add_special = add_bos
        if special is not None:
            _renamed("Llama.tokenize(special=...)", "parse_special")
            parse_special = special
        if isinstance(text, str):
            return self._tokenize(text, add_special, parse_special)
        return [self._tokenize(t, add_special, parse_special) for t in text]

    def _tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = check_text(text, "the text").encode("utf-8")
        capacity = len(data) + 8
        with self._lock:
            self._live()
            for _ in range(2):
                buf = (ctypes.c_int32 * capacity)()
                n = self._lib.llama_tokenize(
                    self._vocab, data, len(data), buf, capacity, add_special, parse_special
                )
                if n >= 0:
                    return list(buf[:n])
                if n == -(2**31):
                    break
                capacity = -n
        raise LlamaError(f"could not tokenize a text of {len(data)} bytes (too many tokens)")

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ``ids`` (control tokens such as BOS render as nothing)."""
        self._check_ids(ids)
        arr = (ctypes.c_int32 * len(ids))(*ids)
        capacity = len(ids) * 8 + 16
        with self._lock:
            self._live()
            for _ in range(2):
                buf = ctypes.create_string_buffer(capacity)
                n = self._lib.llama_detokenize(
                    self._vocab, arr, len(ids), buf, capacity, False, False
                )
                if n >= 0:
                    return buf.raw[:n].decode("utf-8", "replace")
                capacity = -n
        raise LlamaError(f"could not detokenize {len(ids)} tokens")  # pragma: no cover

    def _check_ids(self, ids: Sequence[int]) -> None:
        bad = [t for t in ids if not 0 <= t < self._n_vocab]
        if bad:
            raise ConfigError(
                f"token id(s) {bad[:5]} are outside this model's vocabulary (0..{self._n_vocab - 1})"
            )

    def _piece(self, token: int) -> bytes:
        with self._lock:
            self._live()
            return self._decoder.piece(token)

    # -- generation ----------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        sampling: SamplingOptions | None = None,
        **kwargs: Unpack[SamplingArgs],
    ) -> str:
        """Continue ``prompt`` and return the generated text (without the prompt).

        Stops at the model's end-of-generation token (unless ``ignore_eos``), after
        ``max_tokens`` tokens (default 256, ``-1``: no limit), when the context is full, or
        before the first ``stop`` string (not included). ``grammar`` (GBNF) or ``json_schema``
        constrain the text (a bad one: ``ConfigError``). ``temperature <= 0`` is greedy. The
        options come as a :class:`~lmserv.SamplingOptions` and/or its keywords (a keyword wins);
        unset ones take ``SamplingParams``' defaults (llama-server's). Raises
        :class:`~lmserv.errors.ContextOverflow` when the prompt alone does not fit in ``n_ctx``.
        """
        with self._lock:  # the whole generation, so another thread cannot interrupt it
            return "".join(
                self._start(prompt, self._sampling(sampling, kwargs, "generate"), Tally())
            )

    def complete(
        self,
        prompt: str,
        sampling: SamplingOptions | None = None,
        **kwargs: Unpack[SamplingArgs],
    ) -> Completion:
        """Like :meth:`generate`, returning the same :class:`~lmserv.Completion` as the client.

        ``finish_reason`` is ``"stop"`` or ``"length"``; ``stop_type`` uses llama-server's words
        (``"eos"``, ``"word"`` for a stop string, ``"limit"`` for ``max_tokens`` or a full
        context); ``timings`` are measured here (prompt decode, then generation).
        """
        tally = Tally()
        with self._lock:  # the whole generation, so another thread cannot interrupt it
            text = "".join(self._start(prompt, self._sampling(sampling, kwargs, "complete"), tally))
        return completion(self._model_path.name, tally, text)

    def stream(
        self,
        prompt: str,
        sampling: SamplingOptions | None = None,
        **kwargs: Unpack[SamplingArgs],
    ) -> LlamaStream[Completion]:
        """Like :meth:`complete`, yielding text pieces as they are produced (``.result`` at the
        end), as :meth:`Client.stream <lmserv.Client.stream>` does.

        Pieces are whole characters (bytes of a character split across tokens are joined first)
        and ``"".join(pieces)`` equals what :meth:`generate` returns. Bad arguments and a prompt
        that does not fit raise here, before the first piece.
        """
        tally = Tally()
        options = self._sampling(sampling, kwargs, "stream")
        with self._lock:
            pieces = holding(self, self._start(prompt, options, tally))
        return LlamaStream(pieces, partial(completion, self._model_path.name, tally))

    def _start(self, prompt: str, sampling: SamplingParams, tally: Tally) -> Iterator[str]:
        tokens = self._tokenize(prompt, True, True)
        return self._decoder.start(tokens, sampling, tally)

    def _sampling(
        self, sampling: SamplingOptions | None, kwargs: Mapping[str, Any], method: str
    ) -> SamplingParams:
        if "max_tokens" in kwargs and kwargs["max_tokens"] is None:
            warnings.warn(
                f"Llama.{method}(max_tokens=None) for 'no limit' is deprecated: None now means "
                "'not set' (256 here) as in SamplingOptions; pass max_tokens=-1",
                DeprecationWarning,
                stacklevel=3,
            )
            kwargs = {**kwargs, "max_tokens": -1}
        return SamplingParams.resolve(
            sampling_values(sampling, kwargs, f"Llama.{method}"), self._seed
        )

    # -- chat ----------------------------------------------------------------------------------

    def format_chat(self, messages: Messages, *, add_generation_prompt: bool = True) -> str:
        """Render ``messages`` (``{"role": ..., "content": ...}``; a ``str`` is one user turn)
        with the chat template.

        The template is ``LlamaParams.chat_template`` if set, else the model's own, else
        ``"chatml"`` (with a logged warning). llama.cpp applies it with
        ``llama_chat_apply_template``, which knows a fixed list of template families (no Jinja
        engine); a template outside that list raises :class:`~lmserv.errors.LlamaError` naming
        the built-in ones to choose from.
        """
        self._live()
        template = self._params.chat_template
        if template is None:
            template = self.chat_template
            if template is None:
                log.warning("%s has no chat template; using 'chatml'", self._model_path.name)
                template = "chatml"
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return apply_chat_template(
            self._lib, template, messages, add_generation_prompt, self._model_path.name
        )

    def builtin_chat_templates(self) -> list[str]:
        """Names of the chat templates llama.cpp can apply without Jinja."""
        return builtin_chat_templates(self._lib)

    def chat(
        self,
        messages: Messages,
        sampling: SamplingOptions | None = None,
        **kwargs: Unpack[ChatArgs],
    ) -> ChatCompletion:
        """The assistant's reply to ``messages`` (a ``str`` is one user turn), as the same
        :class:`~lmserv.ChatCompletion` as :meth:`Client.chat <lmserv.Client.chat>`; see
        :meth:`format_chat` for the template and :meth:`generate` for the options.
        ``response_format`` works as on llama-server; ``tools`` raise ``ConfigError`` (no Jinja).
        """
        tally = Tally()
        options = self._sampling(sampling, chat_options(sampling, kwargs, "chat"), "chat")
        with self._lock:  # the whole generation, so another thread cannot interrupt it
            text = "".join(self._start(self.format_chat(messages), options, tally))
        return chat_completion(self._model_path.name, tally, text)

    def chat_stream(
        self,
        messages: Messages,
        sampling: SamplingOptions | None = None,
        **kwargs: Unpack[ChatArgs],
    ) -> LlamaStream[ChatCompletion]:
        """Like :meth:`chat`, yielding the reply in pieces (``.result`` at the end)."""
        tally = Tally()
        given = chat_options(sampling, kwargs, "chat_stream")
        options = self._sampling(sampling, given, "chat_stream")
        with self._lock:
            pieces = holding(self, self._start(self.format_chat(messages), options, tally))
        return LlamaStream(pieces, partial(chat_completion, self._model_path.name, tally))

    # -- embeddings ----------------------------------------------------------------------------

    @overload
    def embed(self, texts: str, *, normalize: bool = True) -> list[float]: ...  # type: ignore[overload-overlap]
    @overload
    def embed(self, texts: Sequence[str], *, normalize: bool = True) -> list[list[float]]: ...
    def embed(
        self, texts: str | Sequence[str], *, normalize: bool = True
    ) -> list[float] | list[list[float]]:
        """The embedding of a text (length :attr:`n_embd`): a ``str`` gives one vector, a list
        one vector per text, as :meth:`Client.embed <lmserv.Client.embed>` does; L2-normalised
        unless ``normalize=False``.

        Needs ``Llama(..., embedding=True)``. Tokens are pooled as the model says (mean when it
        says nothing). Raises :class:`~lmserv.errors.ContextOverflow` when a text does not fit
        in one micro-batch (``LlamaParams.n_ubatch``) or the context.
        """
        if isinstance(texts, str):
            return self._embed(texts, normalize)
        return [self._embed(text, normalize) for text in texts]

    def _embed(self, text: str, normalize: bool) -> list[float]:
        with self._lock:
            ctx = self._live()
            if not self._embedding:
                raise LlamaError("embed() needs a Llama created with embedding=True")
            tokens = self._tokenize(text, True, True)
            if not tokens:
                raise LlamaError("cannot embed an empty text")
            limit = min(self._n_ctx, self._n_ubatch)
            if len(tokens) > limit:
                raise ContextOverflow(
                    f"the text has {len(tokens)} tokens but one embedding batch holds {limit}; "
                    "shorten it or raise n_ctx / LlamaParams(n_batch=..., n_ubatch=...)"
                )
            return embed_tokens(self._lib, ctx, self._decoder, tokens, self._n_embd, normalize)
