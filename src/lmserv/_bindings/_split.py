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
from lmserv.gpu import _split as rules
from lmserv.gpu._split import MAX_TENSOR_SPLIT, SplitOptions

__all__ = ["apply_split", "check_tensor_mode", "model_params"]

# enum llama_split_mode for each split mode lmserv accepts (``row`` is refused upstream of here).
_SPLIT_MODE_ENUM = {
    "none": h.LLAMA_SPLIT_MODE_NONE,
    "layer": h.LLAMA_SPLIT_MODE_LAYER,
    "tensor": h.LLAMA_SPLIT_MODE_TENSOR,
}
# The ggml names of the KV-cache types lmserv names; any other type is a quantized one.
_GGML_TYPE_NAMES = {h.GGML_TYPE_F32: "f32", h.GGML_TYPE_F16: "f16", h.GGML_TYPE_BF16: "bf16"}
# llama_max_devices() at the pinned commit; tensor_split is an array of that many floats.
_MAX_DEVICES = MAX_TENSOR_SPLIT + 1


def check_tensor_mode(split: SplitOptions, flash_attn: str, type_k: int, type_v: int) -> str:
    """Refuse what tensor mode cannot run; return the flash-attention setting to use.

    The rules are :func:`lmserv.gpu._split.check_tensor_mode`, shared with ``LlamaServer``;
    this only names the ``LlamaParams`` fields.
    """
    if split.split_mode != "tensor":
        return flash_attn
    caches = {
        f"LlamaParams.{field}": _GGML_TYPE_NAMES.get(value, f"ggml type {value}")
        for field, value in (("type_k", type_k), ("type_v", type_v))
    }
    given = None if flash_attn == "auto" else flash_attn
    rules.check_tensor_mode(given, caches, flash_name="LlamaParams.flash_attn")
    return "on"


def model_params(split: SplitOptions) -> dict[str, object]:
    """The ``llama_model_params`` fields ``split`` sets (those it leaves unset are absent).

    ``split_mode`` as its ``enum llama_split_mode`` value, ``main_gpu``, and ``tensor_split``
    padded with zeros to ``llama_max_devices()``. Devices are not included: they are handles
    looked up by name (:func:`apply_split`).
    """
    out: dict[str, object] = {}
    if split.split_mode is not None:
        out["split_mode"] = _SPLIT_MODE_ENUM[split.split_mode]
    if split.main_gpu is not None:
        out["main_gpu"] = split.main_gpu
    if split.tensor_split is not None:
        pad = _MAX_DEVICES - len(split.tensor_split)
        out["tensor_split"] = (*split.tensor_split, *([0.0] * pad))
    return out


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
    fields = model_params(split)
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
