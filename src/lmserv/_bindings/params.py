"""Options of :class:`~lmserv.Llama` beyond its five keyword arguments, and sampling settings.

Grouped in frozen dataclasses instead of forty constructor keywords: the common knobs are
``Llama``'s own arguments, everything else is :class:`LlamaParams`; each ``generate``/``stream``/
``chat`` call resolves its :class:`~lmserv.SamplingOptions` into a :class:`SamplingParams`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lmserv._bindings import _llama_h as h
from lmserv._grammar import json_schema_grammar
from lmserv.errors import ConfigError

__all__ = ["GpuLayers", "LlamaParams", "SamplingParams", "default_threads"]

GpuLayers = int | Literal["auto", "all"]
Pooling = Literal["model", "none", "mean", "cls", "last"]
FlashAttention = Literal["auto", "on", "off"]

_POOLING = {
    "model": h.LLAMA_POOLING_TYPE_UNSPECIFIED,
    "none": h.LLAMA_POOLING_TYPE_NONE,
    "mean": h.LLAMA_POOLING_TYPE_MEAN,
    "cls": h.LLAMA_POOLING_TYPE_CLS,
    "last": h.LLAMA_POOLING_TYPE_LAST,
}
_FLASH = {
    "auto": h.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": h.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": h.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


def default_threads() -> int:
    """CPUs this process may run on (respects ``taskset``/cgroup affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class LlamaParams:
    """Advanced model and context options; every field has llama.cpp's usual default.

    - ``n_batch``: most tokens handed to one ``llama_decode`` call (prompt chunking).
    - ``n_ubatch``: physical batch; ``None`` means 512, or ``n_batch`` when ``embedding=True``
      (pooled embeddings need the whole text in one micro-batch).
    - ``n_threads_batch``: threads for prompt processing; ``None`` means ``n_threads``.
    - ``main_gpu``: the device used when the model is not split.
    - ``use_mmap`` / ``use_mlock``: how the weights are read (``mmap`` is llama.cpp's default).
    - ``flash_attn``: ``"auto"`` (llama.cpp decides), ``"on"`` or ``"off"``.
    - ``pooling``: how ``embed`` pools token vectors; ``"model"`` uses the GGUF's choice and
      means the tokens when the model has none.
    - ``chat_template``: a template name llama.cpp knows (``"chatml"``, ``"llama3"``, …) or
      template text, used instead of the model's own.
    - ``type_k`` / ``type_v``: KV-cache ``ggml_type`` numbers (1 = F16, 8 = Q8_0).
    - ``reuse_prompt``: keep the KV cache of the part of a prompt that repeats the previous
      prompt and output (llama-server's ``cache_prompt``), so a growing chat only decodes what
      is new. Off by default: decoding a prefix in other batch sizes may change the last bits
      of the logits, so seeded runs are only bit-reproducible with it off.
    """

    n_batch: int = 2048
    n_ubatch: int | None = None
    n_threads_batch: int | None = None
    main_gpu: int = 0
    use_mmap: bool = True
    use_mlock: bool = False
    flash_attn: FlashAttention = "auto"
    pooling: Pooling = "model"
    chat_template: str | None = None
    type_k: int = h.GGML_TYPE_F16
    type_v: int = h.GGML_TYPE_F16
    reuse_prompt: bool = False

    def __post_init__(self) -> None:
        if self.n_batch < 1:
            raise ConfigError(f"n_batch={self.n_batch} must be at least 1")
        if self.n_ubatch is not None and self.n_ubatch < 1:
            raise ConfigError(f"n_ubatch={self.n_ubatch} must be at least 1 (or None)")
        if self.n_threads_batch is not None and self.n_threads_batch < 1:
            raise ConfigError(f"n_threads_batch={self.n_threads_batch} must be at least 1")
        if self.flash_attn not in _FLASH:
            raise ConfigError(f"flash_attn={self.flash_attn!r}; use one of {sorted(_FLASH)}")
        if self.pooling not in _POOLING:
            raise ConfigError(f"pooling={self.pooling!r}; use one of {sorted(_POOLING)}")

    def model_params(self, defaults: h.llama_model_params, n_gpu_layers: GpuLayers) -> None:
        """Fill ``defaults`` (from ``llama_model_default_params``) in place."""
        defaults.n_gpu_layers = gpu_layers_value(n_gpu_layers, defaults.n_gpu_layers)
        defaults.main_gpu = self.main_gpu
        if self.use_mlock:
            defaults.load_mode = (
                h.LLAMA_LOAD_MODE_MMAP_MLOCK if self.use_mmap else h.LLAMA_LOAD_MODE_MLOCK
            )
        elif not self.use_mmap:
            defaults.load_mode = h.LLAMA_LOAD_MODE_NONE

    def context_params(
        self,
        defaults: h.llama_context_params,
        *,
        n_ctx: int,
        n_threads: int,
        embedding: bool,
    ) -> None:
        """Fill ``defaults`` (from ``llama_context_default_params``) in place."""
        defaults.n_ctx = n_ctx
        defaults.n_batch = self.n_batch
        defaults.n_ubatch = self.n_ubatch or (self.n_batch if embedding else min(512, self.n_batch))
        defaults.n_threads = n_threads
        defaults.n_threads_batch = self.n_threads_batch or n_threads
        defaults.flash_attn_type = _FLASH[self.flash_attn]
        defaults.pooling_type = _POOLING[self.pooling]
        defaults.embeddings = embedding
        defaults.type_k = self.type_k
        defaults.type_v = self.type_v


def gpu_layers_value(n_gpu_layers: GpuLayers, default: int) -> int:
    """Translate ``n_gpu_layers`` to llama.cpp's number.

    ``"auto"`` is libllama's own default (``llama_model_default_params().n_gpu_layers``, -1 at
    the pinned commit: offload every layer to the GPUs present, none when the build or machine
    has no GPU). ``"all"`` is -1 too; an ``int`` >= 0 is that many layers (0 = CPU only).
    """
    if n_gpu_layers == "auto":
        return default
    if n_gpu_layers == "all":
        return -1
    if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < 0:
        raise ConfigError(
            f"n_gpu_layers={n_gpu_layers!r} is not valid; use 'auto', 'all' or a layer count >= 0"
        )
    return n_gpu_layers


@dataclass(frozen=True)
class SamplingParams:
    """One generation's sampling, resolved: every :class:`~lmserv.SamplingOptions` field set.

    The defaults are llama-server's (top-k, top-p, min-p, temperature, then a seeded draw, in
    llama.cpp's order), except ``max_tokens``: at most 256 new tokens here, where llama-server
    has no limit (``None`` here, ``max_tokens=-1`` in the options). ``temperature <= 0`` is
    greedy (the other fields are ignored). ``seed=None`` draws a fresh random seed each call.
    ``grammar`` is GBNF text (a ``json_schema`` option arrives here converted to one by
    :func:`lmserv._grammar.json_schema_grammar`). Values are checked by ``SamplingOptions``.
    """

    max_tokens: int | None = 256
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    grammar: str | None = None

    @classmethod
    def resolve(cls, given: Mapping[str, Any], default_seed: int | None) -> SamplingParams:
        """The set :class:`~lmserv.SamplingOptions` fields ``given`` (checked, ``stop`` a
        tuple; see ``lmserv._types.sampling_values``), every other field from the defaults
        above, and the seed given to the ``Llama`` unless one is given."""
        values = dict(given)
        if values.get("max_tokens") == -1:
            values["max_tokens"] = None
        values.setdefault("seed", default_seed)
        schema = values.pop("json_schema", None)
        if schema is not None:
            values["grammar"] = json_schema_grammar(schema)
        return cls(**values)
