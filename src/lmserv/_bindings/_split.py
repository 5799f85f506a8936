"""Multi-GPU placement for the in-process ``Llama``: the same options as ``LlamaServer``.

Validation is shared with the server (``Llama`` calls :func:`lmserv.gpu._split.split_options`);
this module only turns the result into ``llama_model_params`` fields, which means ctypes arrays that must stay
alive while the model loads, and device names resolved through ggml's device registry.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from lmserv._bindings import _llama_h as h
from lmserv.errors import ConfigError
from lmserv.gpu._split import SplitOptions

__all__ = ["apply_split", "check_tensor_mode"]

# KV-cache types tensor mode accepts (F32, F16, BF16); quantized caches are refused upstream.
_UNQUANTIZED = {h.GGML_TYPE_F32, h.GGML_TYPE_F16, h.GGML_TYPE_BF16}


def check_tensor_mode(split: SplitOptions, flash_attn: str, type_k: int, type_v: int) -> str:
    """Refuse what tensor mode cannot run; return the flash-attention setting to use.

    Tensor parallelism needs flash attention and an unquantized KV cache; saying so here beats
    a failure deep inside llama.cpp.
    """
    if split.split_mode != "tensor":
        return flash_attn
    if flash_attn == "off":
        raise ConfigError(
            "split_mode='tensor' requires flash attention, but LlamaParams(flash_attn='off'). "
            "Use flash_attn='on' (or 'auto'), or split_mode='layer'."
        )
    quantized = [n for n, t in (("type_k", type_k), ("type_v", type_v)) if t not in _UNQUANTIZED]
    if quantized:
        raise ConfigError(
            f"split_mode='tensor' requires an unquantized KV cache, but {', '.join(quantized)} "
            "is quantized. Use F16 (LlamaParams(type_k=1, type_v=1)) or split_mode='layer'."
        )
    return "on"


def _device_handles(lib: h.LibLlama, names: Sequence[str]) -> list[int]:
    handles: list[int] = []
    for name in names:
        dev = lib.ggml_backend_dev_by_name(name.encode())
        if not dev:
            registered = (lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count()))
            known = [(lib.ggml_backend_dev_name(d) or b"?").decode() for d in registered if d]
            raise ConfigError(
                f"devices: no device named {name!r} in this llama.cpp build; it has "
                f"{', '.join(known) or 'none'}. Use those names (e.g. 'CUDA0')."
            )
        handles.append(int(dev))
    return handles


def apply_split(
    lib: h.LibLlama, mparams: h.llama_model_params, split: SplitOptions
) -> list[object]:
    """Set the split fields of ``mparams``; return the ctypes arrays to keep alive."""
    keep: list[object] = []
    fields = split.model_params()
    if "split_mode" in fields:
        mparams.split_mode = int(fields["split_mode"])  # type: ignore[call-overload]
    if "main_gpu" in fields:
        mparams.main_gpu = int(fields["main_gpu"])  # type: ignore[call-overload]
    if "tensor_split" in fields:
        values = [float(v) for v in fields["tensor_split"]]  # type: ignore[attr-defined]
        array = (ctypes.c_float * len(values))(*values)
        keep.append(array)
        mparams.tensor_split = ctypes.cast(array, ctypes.POINTER(ctypes.c_float))
    if split.devices:
        handles = _device_handles(lib, [str(d) for d in split.devices])
        devs = (ctypes.c_void_p * (len(handles) + 1))(*handles, None)  # NULL-terminated
        keep.append(devs)
        mparams.devices = ctypes.cast(devs, ctypes.c_void_p)
    return keep
