"""Every ``libllama`` declaration lmserv uses, mirroring ``include/llama.h`` of the pinned commit.

Nothing here loads a library. Structs are plain :mod:`ctypes` classes laid out exactly as in the
header (``tests/test_bindings_structs.py`` compares every ``sizeof``/``offsetof`` with a C compiler).
Functions are declared once as typed stubs on :class:`LibLlama`, each under its C prototype; the
decorator records ``argtypes``/``restype``, and :func:`bind` puts the real C function objects on a
namespace, so calls go straight to C while type checkers and IDEs see the Python signatures.

Opaque handles (``llama_model *`` and friends) are ``NewType`` over ``int`` for hints and
``c_void_p`` for ctypes; a function returning ``NULL`` returns ``None``.
"""

from __future__ import annotations

import ctypes
import types
from collections.abc import Callable
from ctypes import (
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_int8,
    c_int32,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import TYPE_CHECKING, Any, NewType, Protocol, TypeVar, cast

if TYPE_CHECKING:
    from ctypes import _CFunctionType, _Pointer

    FloatPtr = _Pointer[c_float]
    TokenArray = ctypes.Array[c_int32]
    CharBuffer = ctypes.Array[ctypes.c_char]
else:
    FloatPtr = TokenArray = CharBuffer = Any

__all__ = [
    "LLAMA_DEFAULT_SEED",
    "LLAMA_TOKEN_NULL",
    "STRUCTS",
    "LibLlama",
    "bind",
    "declared_functions",
    "ggml_log_callback",
    "llama_batch",
    "llama_chat_message",
    "llama_context_p",
    "llama_context_params",
    "llama_logit_bias",
    "llama_memory_t",
    "llama_model_p",
    "llama_model_params",
    "llama_perf_context_data",
    "llama_sampler_chain_params",
    "llama_sampler_p",
    "llama_sampler_seq_config",
    "llama_token_data",
    "llama_token_data_array",
    "llama_vocab_p",
]

# #define LLAMA_DEFAULT_SEED 0xFFFFFFFF
LLAMA_DEFAULT_SEED = 0xFFFFFFFF
# #define LLAMA_TOKEN_NULL -1
LLAMA_TOKEN_NULL = -1

# enum ggml_log_level
GGML_LOG_LEVEL_NONE = 0
GGML_LOG_LEVEL_DEBUG = 1
GGML_LOG_LEVEL_INFO = 2
GGML_LOG_LEVEL_WARN = 3
GGML_LOG_LEVEL_ERROR = 4
GGML_LOG_LEVEL_CONT = 5

# enum llama_split_mode
LLAMA_SPLIT_MODE_NONE = 0
LLAMA_SPLIT_MODE_LAYER = 1
LLAMA_SPLIT_MODE_ROW = 2
LLAMA_SPLIT_MODE_TENSOR = 3

# enum llama_load_mode
LLAMA_LOAD_MODE_AUTO = -1
LLAMA_LOAD_MODE_NONE = 0
LLAMA_LOAD_MODE_MMAP = 1
LLAMA_LOAD_MODE_MLOCK = 2
LLAMA_LOAD_MODE_MMAP_MLOCK = 3

# enum llama_pooling_type
LLAMA_POOLING_TYPE_UNSPECIFIED = -1
LLAMA_POOLING_TYPE_NONE = 0
LLAMA_POOLING_TYPE_MEAN = 1
LLAMA_POOLING_TYPE_CLS = 2
LLAMA_POOLING_TYPE_LAST = 3
LLAMA_POOLING_TYPE_RANK = 4

# enum llama_flash_attn_type
LLAMA_FLASH_ATTN_TYPE_AUTO = -1
LLAMA_FLASH_ATTN_TYPE_DISABLED = 0
LLAMA_FLASH_ATTN_TYPE_ENABLED = 1

# enum ggml_type (the ones lmserv names: the defaults, and the unquantized KV-cache types)
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_BF16 = 30

# Opaque handles: struct llama_model *, struct llama_context *, ...
llama_model_p = NewType("llama_model_p", int)
llama_context_p = NewType("llama_context_p", int)
llama_vocab_p = NewType("llama_vocab_p", int)
llama_sampler_p = NewType("llama_sampler_p", int)
# typedef struct llama_memory_i * llama_memory_t;
llama_memory_t = NewType("llama_memory_t", int)
ggml_backend_dev_t = NewType("ggml_backend_dev_t", int)

# typedef int32_t llama_pos; typedef int32_t llama_token; typedef int32_t llama_seq_id;
llama_pos = c_int32
llama_token = c_int32
llama_seq_id = c_int32

# typedef void (*ggml_log_callback)(enum ggml_log_level level, const char * text, void * user_data);
ggml_log_callback = ctypes.CFUNCTYPE(None, c_int, c_char_p, c_void_p)
# typedef bool (*llama_progress_callback)(float progress, void * user_data);
llama_progress_callback = ctypes.CFUNCTYPE(c_bool, c_float, c_void_p)
# typedef bool (*ggml_backend_sched_eval_callback)(struct ggml_tensor * t, bool ask, void * user_data);
ggml_backend_sched_eval_callback = ctypes.CFUNCTYPE(c_bool, c_void_p, c_bool, c_void_p)
# typedef bool (*ggml_abort_callback)(void * data);
ggml_abort_callback = ctypes.CFUNCTYPE(c_bool, c_void_p)


class llama_token_data(Structure):
    """``typedef struct llama_token_data { llama_token id; float logit; float p; }``."""

    _fields_ = [
        ("id", llama_token),
        ("logit", c_float),
        ("p", c_float),
    ]


class llama_token_data_array(Structure):
    """``typedef struct llama_token_data_array``: candidates handed to a sampler."""

    _fields_ = [
        ("data", POINTER(llama_token_data)),
        ("size", c_size_t),
        ("selected", c_int64),
        ("sorted", c_bool),
    ]


class llama_batch(Structure):
    """``typedef struct llama_batch``: input of ``llama_decode`` (passed by value)."""

    _fields_ = [
        ("n_tokens", c_int32),
        ("token", POINTER(llama_token)),
        ("embd", POINTER(c_float)),
        ("pos", POINTER(llama_pos)),
        ("n_seq_id", POINTER(c_int32)),
        ("seq_id", POINTER(POINTER(llama_seq_id))),
        ("logits", POINTER(c_int8)),
    ]


class llama_model_params(Structure):
    """``struct llama_model_params`` (passed by value to ``llama_model_load_from_file``)."""

    _fields_ = [
        ("devices", c_void_p),  # ggml_backend_dev_t *
        ("tensor_buft_overrides", c_void_p),  # const struct llama_model_tensor_buft_override *
        ("n_gpu_layers", c_int32),
        ("split_mode", c_int),  # enum llama_split_mode
        ("load_mode", c_int),  # enum llama_load_mode
        ("lazy_mode", c_int),  # enum llama_lazy_mode
        ("main_gpu", c_int32),
        ("tensor_split", POINTER(c_float)),
        ("progress_callback", llama_progress_callback),
        ("progress_callback_user_data", c_void_p),
        ("kv_overrides", c_void_p),  # const struct llama_model_kv_override *
        ("vocab_only", c_bool),
        ("check_tensors", c_bool),
        ("use_extra_bufts", c_bool),
        ("no_host", c_bool),
        ("no_alloc", c_bool),
        ("load_mtp", c_bool),
    ]


class llama_sampler_seq_config(Structure):
    """``struct llama_sampler_seq_config { llama_seq_id seq_id; struct llama_sampler * sampler; }``."""

    _fields_ = [
        ("seq_id", llama_seq_id),
        ("sampler", c_void_p),
    ]


class llama_context_params(Structure):
    """``struct llama_context_params`` (passed by value to ``llama_init_from_model``)."""

    _fields_ = [
        ("n_ctx", c_uint32),
        ("n_batch", c_uint32),
        ("n_ubatch", c_uint32),
        ("n_seq_max", c_uint32),
        ("n_rs_seq", c_uint32),
        ("n_outputs_max", c_uint32),
        ("n_outputs_max_per_seq", c_uint32),
        ("n_threads", c_int32),
        ("n_threads_batch", c_int32),
        ("ctx_type", c_int),  # enum llama_context_type
        ("rope_scaling_type", c_int),  # enum llama_rope_scaling_type
        ("pooling_type", c_int),  # enum llama_pooling_type
        ("attention_type", c_int),  # enum llama_attention_type
        ("flash_attn_type", c_int),  # enum llama_flash_attn_type
        ("rope_freq_base", c_float),
        ("rope_freq_scale", c_float),
        ("yarn_ext_factor", c_float),
        ("yarn_attn_factor", c_float),
        ("yarn_beta_fast", c_float),
        ("yarn_beta_slow", c_float),
        ("yarn_orig_ctx", c_uint32),
        ("defrag_thold", c_float),
        ("cb_eval", ggml_backend_sched_eval_callback),
        ("cb_eval_user_data", c_void_p),
        ("type_k", c_int),  # enum ggml_type
        ("type_v", c_int),  # enum ggml_type
        ("abort_callback", ggml_abort_callback),
        ("abort_callback_data", c_void_p),
        ("embeddings", c_bool),
        ("offload_kqv", c_bool),
        ("no_perf", c_bool),
        ("op_offload", c_bool),
        ("swa_full", c_bool),
        ("kv_unified", c_bool),
        ("samplers", POINTER(llama_sampler_seq_config)),
        ("n_samplers", c_size_t),
        ("ctx_other", c_void_p),  # struct llama_context *
    ]


class llama_logit_bias(Structure):
    """``typedef struct llama_logit_bias { llama_token token; float bias; }``."""

    _fields_ = [
        ("token", llama_token),
        ("bias", c_float),
    ]


class llama_sampler_chain_params(Structure):
    """``typedef struct llama_sampler_chain_params { bool no_perf; }``."""

    _fields_ = [
        ("no_perf", c_bool),
    ]


class llama_chat_message(Structure):
    """``typedef struct llama_chat_message { const char * role; const char * content; }``."""

    _fields_ = [
        ("role", c_char_p),
        ("content", c_char_p),
    ]


class llama_perf_context_data(Structure):
    """``struct llama_perf_context_data``: timings of a context (milliseconds)."""

    _fields_ = [
        ("t_start_ms", c_double),
        ("t_load_ms", c_double),
        ("t_p_eval_ms", c_double),
        ("t_eval_ms", c_double),
        ("n_p_eval", c_int32),
        ("n_eval", c_int32),
        ("n_reused", c_int32),
    ]


# Every struct above, by its C name (``struct X`` in llama.h); the layout test walks this.
STRUCTS: dict[str, type[Structure]] = {
    cls.__name__: cls
    for cls in (
        llama_token_data,
        llama_token_data_array,
        llama_batch,
        llama_model_params,
        llama_sampler_seq_config,
        llama_context_params,
        llama_logit_bias,
        llama_sampler_chain_params,
        llama_chat_message,
        llama_perf_context_data,
    )
}

_F = TypeVar("_F", bound=Callable[..., Any])
_DECLS: dict[str, tuple[list[Any], Any]] = {}


def _c(argtypes: list[Any], restype: Any) -> Callable[[_F], _F]:
    """Record the ctypes signature of the stub it decorates (named like the C function)."""

    def record(stub: _F) -> _F:
        _DECLS[stub.__name__] = (argtypes, restype)
        return stub

    return record


def declared_functions() -> dict[str, tuple[list[Any], Any]]:
    """Name -> (argtypes, restype) of every declared C function."""
    return dict(_DECLS)


_model = c_void_p
_ctx = c_void_p
_vocab = c_void_p
_smpl = c_void_p
_mem = c_void_p
_tokens = POINTER(llama_token)


class LibLlama(Protocol):
    """The typed face of ``libllama``: one stub per C function, the prototype above it."""

    # const char * llama_version(void);
    @_c([], c_char_p)
    def llama_version(self) -> bytes | None: ...

    # const char * llama_print_system_info(void);
    @_c([], c_char_p)
    def llama_print_system_info(self) -> bytes | None: ...

    # void llama_backend_init(void);
    @_c([], None)
    def llama_backend_init(self) -> None: ...

    # void llama_log_set(ggml_log_callback log_callback, void * user_data);
    @_c([ggml_log_callback, c_void_p], None)
    def llama_log_set(self, log_callback: _CFunctionType | None, user_data: int | None) -> None: ...

    # bool llama_supports_gpu_offload(void);
    @_c([], c_bool)
    def llama_supports_gpu_offload(self) -> bool: ...

    # bool llama_supports_mmap(void);
    @_c([], c_bool)
    def llama_supports_mmap(self) -> bool: ...

    # size_t llama_max_devices(void);
    @_c([], c_size_t)
    def llama_max_devices(self) -> int: ...

    # struct llama_model_params llama_model_default_params(void);
    @_c([], llama_model_params)
    def llama_model_default_params(self) -> llama_model_params: ...

    # struct llama_context_params llama_context_default_params(void);
    @_c([], llama_context_params)
    def llama_context_default_params(self) -> llama_context_params: ...

    # struct llama_sampler_chain_params llama_sampler_chain_default_params(void);
    @_c([], llama_sampler_chain_params)
    def llama_sampler_chain_default_params(self) -> llama_sampler_chain_params: ...

    # struct llama_model * llama_model_load_from_file(const char * path_model,
    #                                                 struct llama_model_params params);
    @_c([c_char_p, llama_model_params], _model)
    def llama_model_load_from_file(
        self, path_model: bytes, params: llama_model_params
    ) -> llama_model_p | None: ...

    # void llama_model_free(struct llama_model * model);
    @_c([_model], None)
    def llama_model_free(self, model: llama_model_p) -> None: ...

    # struct llama_context * llama_init_from_model(struct llama_model * model,
    #                                              struct llama_context_params params);
    @_c([_model, llama_context_params], _ctx)
    def llama_init_from_model(
        self, model: llama_model_p, params: llama_context_params
    ) -> llama_context_p | None: ...

    # void llama_free(struct llama_context * ctx);
    @_c([_ctx], None)
    def llama_free(self, ctx: llama_context_p) -> None: ...

    # uint32_t llama_n_ctx(const struct llama_context * ctx);
    @_c([_ctx], c_uint32)
    def llama_n_ctx(self, ctx: llama_context_p) -> int: ...

    # uint32_t llama_n_batch(const struct llama_context * ctx);
    @_c([_ctx], c_uint32)
    def llama_n_batch(self, ctx: llama_context_p) -> int: ...

    # uint32_t llama_n_ubatch(const struct llama_context * ctx);
    @_c([_ctx], c_uint32)
    def llama_n_ubatch(self, ctx: llama_context_p) -> int: ...

    # llama_memory_t llama_get_memory(const struct llama_context * ctx);
    @_c([_ctx], _mem)
    def llama_get_memory(self, ctx: llama_context_p) -> llama_memory_t | None: ...

    # enum llama_pooling_type llama_pooling_type(const struct llama_context * ctx);
    @_c([_ctx], c_int)
    def llama_pooling_type(self, ctx: llama_context_p) -> int: ...

    # const struct llama_vocab * llama_model_get_vocab(const struct llama_model * model);
    @_c([_model], _vocab)
    def llama_model_get_vocab(self, model: llama_model_p) -> llama_vocab_p | None: ...

    # int32_t llama_model_n_ctx_train(const struct llama_model * model);
    @_c([_model], c_int32)
    def llama_model_n_ctx_train(self, model: llama_model_p) -> int: ...

    # int32_t llama_model_n_embd_out(const struct llama_model * model);
    @_c([_model], c_int32)
    def llama_model_n_embd_out(self, model: llama_model_p) -> int: ...

    # int32_t llama_model_n_layer(const struct llama_model * model);
    @_c([_model], c_int32)
    def llama_model_n_layer(self, model: llama_model_p) -> int: ...

    # int32_t llama_model_desc(const struct llama_model * model, char * buf, size_t buf_size);
    @_c([_model, c_char_p, c_size_t], c_int32)
    def llama_model_desc(self, model: llama_model_p, buf: CharBuffer, buf_size: int) -> int: ...

    # int32_t llama_model_meta_count(const struct llama_model * model);
    @_c([_model], c_int32)
    def llama_model_meta_count(self, model: llama_model_p) -> int: ...

    # int32_t llama_model_meta_key_by_index(const struct llama_model * model, int32_t i,
    #                                       char * buf, size_t buf_size);
    @_c([_model, c_int32, c_char_p, c_size_t], c_int32)
    def llama_model_meta_key_by_index(
        self, model: llama_model_p, i: int, buf: CharBuffer, buf_size: int
    ) -> int: ...

    # int32_t llama_model_meta_val_str_by_index(const struct llama_model * model, int32_t i,
    #                                           char * buf, size_t buf_size);
    @_c([_model, c_int32, c_char_p, c_size_t], c_int32)
    def llama_model_meta_val_str_by_index(
        self, model: llama_model_p, i: int, buf: CharBuffer, buf_size: int
    ) -> int: ...

    # uint64_t llama_model_n_params(const struct llama_model * model);
    @_c([_model], c_uint64)
    def llama_model_n_params(self, model: llama_model_p) -> int: ...

    # const char * llama_model_chat_template(const struct llama_model * model, const char * name);
    @_c([_model, c_char_p], c_char_p)
    def llama_model_chat_template(
        self, model: llama_model_p, name: bytes | None
    ) -> bytes | None: ...

    # bool llama_model_has_encoder(const struct llama_model * model);
    @_c([_model], c_bool)
    def llama_model_has_encoder(self, model: llama_model_p) -> bool: ...

    # bool llama_model_has_decoder(const struct llama_model * model);
    @_c([_model], c_bool)
    def llama_model_has_decoder(self, model: llama_model_p) -> bool: ...

    # int32_t llama_vocab_n_tokens(const struct llama_vocab * vocab);
    @_c([_vocab], c_int32)
    def llama_vocab_n_tokens(self, vocab: llama_vocab_p) -> int: ...

    # bool llama_vocab_is_eog(const struct llama_vocab * vocab, llama_token token);
    @_c([_vocab, llama_token], c_bool)
    def llama_vocab_is_eog(self, vocab: llama_vocab_p, token: int) -> bool: ...

    # llama_token llama_vocab_bos(const struct llama_vocab * vocab);
    @_c([_vocab], llama_token)
    def llama_vocab_bos(self, vocab: llama_vocab_p) -> int: ...

    # llama_token llama_vocab_eos(const struct llama_vocab * vocab);
    @_c([_vocab], llama_token)
    def llama_vocab_eos(self, vocab: llama_vocab_p) -> int: ...

    # int32_t llama_tokenize(const struct llama_vocab * vocab, const char * text, int32_t text_len,
    #                        llama_token * tokens, int32_t n_tokens_max,
    #                        bool add_special, bool parse_special);
    @_c([_vocab, c_char_p, c_int32, _tokens, c_int32, c_bool, c_bool], c_int32)
    def llama_tokenize(
        self,
        vocab: llama_vocab_p,
        text: bytes,
        text_len: int,
        tokens: TokenArray,
        n_tokens_max: int,
        add_special: bool,
        parse_special: bool,
    ) -> int: ...

    # int32_t llama_token_to_piece(const struct llama_vocab * vocab, llama_token token, char * buf,
    #                              int32_t length, int32_t lstrip, bool special);
    @_c([_vocab, llama_token, c_char_p, c_int32, c_int32, c_bool], c_int32)
    def llama_token_to_piece(
        self,
        vocab: llama_vocab_p,
        token: int,
        buf: CharBuffer,
        length: int,
        lstrip: int,
        special: bool,
    ) -> int: ...

    # int32_t llama_detokenize(const struct llama_vocab * vocab, const llama_token * tokens,
    #                          int32_t n_tokens, char * text, int32_t text_len_max,
    #                          bool remove_special, bool unparse_special);
    @_c([_vocab, _tokens, c_int32, c_char_p, c_int32, c_bool, c_bool], c_int32)
    def llama_detokenize(
        self,
        vocab: llama_vocab_p,
        tokens: TokenArray,
        n_tokens: int,
        text: CharBuffer,
        text_len_max: int,
        remove_special: bool,
        unparse_special: bool,
    ) -> int: ...

    # int32_t llama_chat_apply_template(const char * tmpl, const struct llama_chat_message * chat,
    #                                   size_t n_msg, bool add_ass, char * buf, int32_t length);
    @_c([c_char_p, POINTER(llama_chat_message), c_size_t, c_bool, c_char_p, c_int32], c_int32)
    def llama_chat_apply_template(
        self,
        tmpl: bytes | None,
        chat: ctypes.Array[llama_chat_message],
        n_msg: int,
        add_ass: bool,
        buf: CharBuffer | None,
        length: int,
    ) -> int: ...

    # int32_t llama_chat_builtin_templates(const char ** output, size_t len);
    @_c([POINTER(c_char_p), c_size_t], c_int32)
    def llama_chat_builtin_templates(
        self, output: ctypes.Array[c_char_p] | None, len: int
    ) -> int: ...

    # struct llama_batch llama_batch_get_one(llama_token * tokens, int32_t n_tokens);
    @_c([_tokens, c_int32], llama_batch)
    def llama_batch_get_one(self, tokens: TokenArray, n_tokens: int) -> llama_batch: ...

    # int32_t llama_decode(struct llama_context * ctx, struct llama_batch batch);
    @_c([_ctx, llama_batch], c_int32)
    def llama_decode(self, ctx: llama_context_p, batch: llama_batch) -> int: ...

    # int32_t llama_encode(struct llama_context * ctx, struct llama_batch batch);
    @_c([_ctx, llama_batch], c_int32)
    def llama_encode(self, ctx: llama_context_p, batch: llama_batch) -> int: ...

    # void llama_set_n_threads(struct llama_context * ctx, int32_t n_threads,
    #                          int32_t n_threads_batch);
    @_c([_ctx, c_int32, c_int32], None)
    def llama_set_n_threads(
        self, ctx: llama_context_p, n_threads: int, n_threads_batch: int
    ) -> None: ...

    # void llama_set_embeddings(struct llama_context * ctx, bool embeddings);
    @_c([_ctx, c_bool], None)
    def llama_set_embeddings(self, ctx: llama_context_p, embeddings: bool) -> None: ...

    # float * llama_get_embeddings(struct llama_context * ctx);
    @_c([_ctx], POINTER(c_float))
    def llama_get_embeddings(self, ctx: llama_context_p) -> FloatPtr: ...

    # float * llama_get_embeddings_seq(struct llama_context * ctx, llama_seq_id seq_id);
    @_c([_ctx, llama_seq_id], POINTER(c_float))
    def llama_get_embeddings_seq(self, ctx: llama_context_p, seq_id: int) -> FloatPtr: ...

    # float * llama_get_logits_ith(struct llama_context * ctx, int32_t i);
    @_c([_ctx, c_int32], POINTER(c_float))
    def llama_get_logits_ith(self, ctx: llama_context_p, i: int) -> FloatPtr: ...

    # void llama_memory_clear(llama_memory_t mem, bool data);
    @_c([_mem, c_bool], None)
    def llama_memory_clear(self, mem: llama_memory_t, data: bool) -> None: ...

    # bool llama_memory_seq_rm(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1);
    @_c([_mem, llama_seq_id, llama_pos, llama_pos], c_bool)
    def llama_memory_seq_rm(self, mem: llama_memory_t, seq_id: int, p0: int, p1: int) -> bool: ...

    # llama_pos llama_memory_seq_pos_max(llama_memory_t mem, llama_seq_id seq_id);
    @_c([_mem, llama_seq_id], llama_pos)
    def llama_memory_seq_pos_max(self, mem: llama_memory_t, seq_id: int) -> int: ...

    # struct llama_sampler * llama_sampler_chain_init(struct llama_sampler_chain_params params);
    @_c([llama_sampler_chain_params], _smpl)
    def llama_sampler_chain_init(
        self, params: llama_sampler_chain_params
    ) -> llama_sampler_p | None: ...

    # void llama_sampler_chain_add(struct llama_sampler * chain, struct llama_sampler * smpl);
    @_c([_smpl, _smpl], None)
    def llama_sampler_chain_add(self, chain: llama_sampler_p, smpl: llama_sampler_p) -> None: ...

    # struct llama_sampler * llama_sampler_init_greedy(void);
    @_c([], _smpl)
    def llama_sampler_init_greedy(self) -> llama_sampler_p | None: ...

    # struct llama_sampler * llama_sampler_init_dist(uint32_t seed);
    @_c([c_uint32], _smpl)
    def llama_sampler_init_dist(self, seed: int) -> llama_sampler_p | None: ...

    # struct llama_sampler * llama_sampler_init_top_k(int32_t k);
    @_c([c_int32], _smpl)
    def llama_sampler_init_top_k(self, k: int) -> llama_sampler_p | None: ...

    # struct llama_sampler * llama_sampler_init_top_p(float p, size_t min_keep);
    @_c([c_float, c_size_t], _smpl)
    def llama_sampler_init_top_p(self, p: float, min_keep: int) -> llama_sampler_p | None: ...

    # struct llama_sampler * llama_sampler_init_min_p(float p, size_t min_keep);
    @_c([c_float, c_size_t], _smpl)
    def llama_sampler_init_min_p(self, p: float, min_keep: int) -> llama_sampler_p | None: ...

    # struct llama_sampler * llama_sampler_init_temp(float t);
    @_c([c_float], _smpl)
    def llama_sampler_init_temp(self, t: float) -> llama_sampler_p | None: ...

    # struct llama_sampler * llama_sampler_init_penalties(int32_t n_vocab, int32_t penalty_last_n,
    #         float penalty_repeat, float penalty_freq, float penalty_present);
    @_c([c_int32, c_int32, c_float, c_float, c_float], _smpl)
    def llama_sampler_init_penalties(
        self,
        n_vocab: int,
        penalty_last_n: int,
        penalty_repeat: float,
        penalty_freq: float,
        penalty_present: float,
    ) -> llama_sampler_p | None: ...

    # struct llama_sampler * llama_sampler_init_grammar(const struct llama_vocab * vocab,
    #         const char * grammar_str, const char * grammar_root);
    # Returns NULL when grammar_str does not parse (the reason goes to the log).
    @_c([_vocab, c_char_p, c_char_p], _smpl)
    def llama_sampler_init_grammar(
        self, vocab: llama_vocab_p, grammar_str: bytes, grammar_root: bytes
    ) -> llama_sampler_p | None: ...

    # void llama_sampler_accept(struct llama_sampler * smpl, llama_token token);
    @_c([_smpl, llama_token], None)
    def llama_sampler_accept(self, smpl: llama_sampler_p, token: int) -> None: ...

    # void llama_sampler_apply(struct llama_sampler * smpl, llama_token_data_array * cur_p);
    @_c([_smpl, POINTER(llama_token_data_array)], None)
    def llama_sampler_apply(self, smpl: llama_sampler_p, cur_p: Any) -> None: ...

    # llama_token llama_sampler_sample(struct llama_sampler * smpl, struct llama_context * ctx,
    #                                  int32_t idx);
    @_c([_smpl, _ctx, c_int32], llama_token)
    def llama_sampler_sample(
        self, smpl: llama_sampler_p, ctx: llama_context_p, idx: int
    ) -> int: ...

    # void llama_sampler_free(struct llama_sampler * smpl);
    @_c([_smpl], None)
    def llama_sampler_free(self, smpl: llama_sampler_p) -> None: ...

    # --- ggml-backend.h: the device registry, for ``llama_model_params.devices``. These live in
    # libggml-base, which libllama links, so they resolve through libllama's handle.

    # size_t ggml_backend_dev_count(void);
    @_c([], c_size_t)
    def ggml_backend_dev_count(self) -> int: ...

    # ggml_backend_dev_t ggml_backend_dev_get(size_t index);
    @_c([c_size_t], c_void_p)
    def ggml_backend_dev_get(self, index: int) -> ggml_backend_dev_t | None: ...

    # const char * ggml_backend_dev_name(ggml_backend_dev_t device);
    @_c([c_void_p], c_char_p)
    def ggml_backend_dev_name(self, device: ggml_backend_dev_t) -> bytes | None: ...

    # ggml_backend_dev_t ggml_backend_dev_by_name(const char * name);
    @_c([c_char_p], c_void_p)
    def ggml_backend_dev_by_name(self, name: bytes) -> ggml_backend_dev_t | None: ...

    # struct llama_perf_context_data llama_perf_context(const struct llama_context * ctx);
    @_c([_ctx], llama_perf_context_data)
    def llama_perf_context(self, ctx: llama_context_p) -> llama_perf_context_data: ...


def bind(cdll: ctypes.CDLL) -> tuple[LibLlama, list[str]]:
    """Attach every declared C function of ``cdll``; also return the names it lacks.

    The result is a namespace whose attributes are the ctypes function objects themselves
    (no Python wrapper in between); a missing symbol is left off and reported.
    """
    namespace = types.SimpleNamespace()
    missing: list[str] = []
    for name, (argtypes, restype) in _DECLS.items():
        try:
            fn = getattr(cdll, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.argtypes = argtypes
        fn.restype = restype
        setattr(namespace, name, fn)
    return cast(LibLlama, namespace), missing
