"""Spreading a model over several GPUs: validate the options, assemble llama.cpp's flags.

lmserv does not distribute anything itself; llama.cpp does (``layer``: pipeline parallel,
``tensor``: tensor parallel over a "meta device", with NCCL for the reductions when the CUDA
build found it). This module turns Python options into the flags of ``llama-server`` /
``llama-cli`` at the pinned commit, and refuses combinations that llama.cpp would only reject
after loading (or silently ignore). The checks are pure functions, testable on recorded
inventories; only :func:`auto_split` and :func:`llama_server_args` (when an option needs the
inventory) call ``detect_gpus()`` / ``plan_offload()``.

Flags at the pinned commit (``common/arg.cpp``, ``llama-server --help``, ``docs/multi-gpu.md``):

==================  ===========================  =====================================================
option              flag                         value
==================  ===========================  =====================================================
``split_mode``      ``-sm/--split-mode``         ``none`` | ``layer`` (default) | ``tensor``
                                                 (``row`` exists but is deprecated upstream)
``tensor_split``    ``-ts/--tensor-split``       proportions ``3,1``; fewer than 16 entries
                                                 (``llama_max_devices()`` is 16 and 16 entries
                                                 are refused); order = devices, RPC workers first
``main_gpu``        ``-mg/--main-gpu``           index of the single GPU with ``split_mode=none``
``devices``         ``-dev/--device``            ``CUDA0,CUDA1`` (names from ``--list-devices``;
                                                 RPC devices are ``RPC0[host:port]``) or ``none``
==================  ===========================  =====================================================

Tensor mode needs flash attention (``-fa on``; ``off``, or ``auto`` resolving to off, is a hard
error after loading) and an unquantized KV cache (``-ctk/-ctv`` in ``f32``, ``f16``, ``bf16``).
llama.cpp's ``--fit`` is not implemented for tensor mode, and ``--fit`` gives up as soon as a
tensor split is set by hand, so lmserv only passes a tensor split when asked to or planned.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from lmserv._net import normalize_endpoints
from lmserv.errors import ConfigError, LmservError
from lmserv.gpu._detect import GPU, detect_gpus
from lmserv.gpu._plan import OffloadPlan, plan_offload

__all__ = [
    "SPLIT_MODES",
    "GPULike",
    "SplitMode",
    "SplitOptions",
    "arg_value",
    "auto_split",
    "check_no_conflict",
    "check_tensor_mode",
    "default_split",
    "device_names",
    "llama_server_args",
    "normalize_endpoints",
    "server_split_args",
    "split_options",
    "tensor_mode_args",
]

logger = logging.getLogger(__name__)

SplitMode = Literal["layer", "tensor", "none"]
SPLIT_MODES: tuple[str, ...] = ("layer", "tensor", "none")

# llama_max_devices() == 16 and `--tensor-split` refuses `size() >= llama_max_devices()`.
MAX_TENSOR_SPLIT = 15

# ggml backend device-name prefixes per lmserv GPU backend ("CUDA0", "ROCm1", "MTL0", "Vulkan0").
_DEVICE_PREFIX = {"cuda": "CUDA", "rocm": "ROCm", "metal": "MTL", "vulkan": "Vulkan"}

UNQUANTIZED_KV = ("f32", "f16", "bf16")
_TRUTHY = ("on", "enabled", "true", "1")
_FALSEY = ("off", "disabled", "false", "0")

# The flags (and their environment variables, which llama.cpp reads when the flag is absent).
_FLAGS: dict[str, tuple[tuple[str, ...], str]] = {
    "split_mode": (("-sm", "--split-mode"), "LLAMA_ARG_SPLIT_MODE"),
    "tensor_split": (("-ts", "--tensor-split"), "LLAMA_ARG_TENSOR_SPLIT"),
    "main_gpu": (("-mg", "--main-gpu"), "LLAMA_ARG_MAIN_GPU"),
    "devices": (("-dev", "--device"), "LLAMA_ARG_DEVICE"),
    "flash_attn": (("-fa", "--flash-attn"), "LLAMA_ARG_FLASH_ATTN"),
    "cache_type_k": (("-ctk", "--cache-type-k"), "LLAMA_ARG_CACHE_TYPE_K"),
    "cache_type_v": (("-ctv", "--cache-type-v"), "LLAMA_ARG_CACHE_TYPE_V"),
}


class GPULike(Protocol):
    """What this module needs from a detected GPU (``lmserv.gpu.GPU`` satisfies it)."""

    @property
    def index(self) -> int: ...

    @property
    def backend(self) -> str: ...


@dataclass(frozen=True)
class SplitOptions:
    """Validated multi-GPU options; ``None`` fields are left to llama.cpp's defaults."""

    split_mode: SplitMode | None = None
    tensor_split: tuple[float, ...] | None = None
    main_gpu: int | None = None
    devices: tuple[str, ...] | None = None

    def args(self) -> list[str]:
        """The ``llama-server`` / ``llama-cli`` flags for these options.

        >>> SplitOptions("layer", (3.0, 1.0), None, ("CUDA0", "CUDA1")).args()
        ['--split-mode', 'layer', '--tensor-split', '3,1', '--device', 'CUDA0,CUDA1']
        """
        out: list[str] = []
        if self.split_mode is not None:
            out += ["--split-mode", self.split_mode]
        if self.tensor_split is not None:
            out += ["--tensor-split", ",".join(_number(v) for v in self.tensor_split)]
        if self.main_gpu is not None:
            out += ["--main-gpu", str(self.main_gpu)]
        if self.devices is not None:
            out += ["--device", ",".join(self.devices)]
        return out

    def model_params(self) -> dict[str, object]:
        """The matching ``llama_model_params`` fields, for in-process bindings (``Llama``).

        ``split_mode`` as the ``enum llama_split_mode`` value, ``main_gpu``, and ``tensor_split``
        padded with zeros to ``llama_max_devices()`` (16). The mapping lives with the C
        declarations (:func:`lmserv._bindings._split.model_params`); this method forwards to it.

        >>> SplitOptions("tensor", (3.0, 1.0)).model_params()["split_mode"]
        3
        """
        from lmserv._bindings._split import model_params  # the C side; loads no library

        return model_params(self)

    @property
    def is_default(self) -> bool:
        return self == SplitOptions()


def _number(value: float) -> str:
    return f"{value:g}"


def device_names(gpus: Sequence[GPULike]) -> list[str]:
    """The ggml device names llama.cpp gives ``gpus`` (``CUDA0``, ``ROCm1``, ``MTL0``...)."""
    return [f"{_DEVICE_PREFIX.get(g.backend, g.backend.upper())}{g.index}" for g in gpus]


def _parse_tensor_split(value: str | Sequence[float]) -> tuple[float, ...]:
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,/]+", value.strip()) if p]
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            raise ConfigError(
                f"tensor_split {value!r} is not a list of numbers; use proportions such as "
                "'3,1' or [3, 1]"
            ) from None
    else:
        numbers = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ConfigError(
                    f"tensor_split {list(value)!r} has a non-number {item!r}; use proportions "
                    "such as [3, 1]"
                )
            numbers.append(float(item))
    if not numbers:
        raise ConfigError(f"tensor_split {value!r} is empty; use proportions such as [3, 1]")
    if any(not math.isfinite(v) or v < 0 for v in numbers):
        raise ConfigError(
            f"tensor_split {value!r} has a negative or non-finite entry; every proportion must "
            "be a number >= 0, e.g. [3, 1]"
        )
    if sum(numbers) <= 0:
        raise ConfigError(f"tensor_split {value!r} is all zeros; give at least one positive share")
    if len(numbers) > MAX_TENSOR_SPLIT:
        raise ConfigError(
            f"tensor_split has {len(numbers)} entries; llama.cpp accepts at most "
            f"{MAX_TENSOR_SPLIT} (it supports 16 devices and refuses a 16-entry split)"
        )
    return tuple(numbers)


def _parse_devices(
    value: str | Sequence[str | int], gpus: Sequence[GPULike] | None
) -> tuple[str, ...]:
    items: list[str | int] = (
        [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    )
    if not items:
        raise ConfigError("devices=[] is empty; list device names such as ['CUDA0', 'CUDA1']")
    names: list[str] = []
    known = device_names(gpus) if gpus is not None else None
    for item in items:
        if isinstance(item, bool):
            raise ConfigError(f"devices entry {item!r} is not a device name or GPU index")
        if isinstance(item, int):
            if gpus is None:
                raise ConfigError(
                    f"devices entry {item} is a GPU index but no GPU inventory is available to "
                    "name it; pass names such as 'CUDA0' (see `llama-server --list-devices`)"
                )
            by_index = {g.index: name for g, name in zip(gpus, device_names(gpus), strict=True)}
            if item not in by_index:
                raise ConfigError(
                    f"devices entry {item} is not a detected GPU index; detected: "
                    f"{sorted(by_index) or 'none'}"
                )
            names.append(by_index[item])
            continue
        name = str(item).strip()
        if not name or any(c.isspace() or c == "," for c in name):
            raise ConfigError(
                f"devices entry {item!r} is not a device name; use names such as 'CUDA0' or "
                "'RPC0[host:port]' (see `llama-server --list-devices`)"
            )
        match = re.fullmatch(r"(CUDA|ROCm|MTL|Vulkan)(\d+)", name)
        if known is not None and match and known and name not in known:
            prefixes = {re.sub(r"\d+$", "", k) for k in known}
            if match.group(1) in prefixes:
                raise ConfigError(
                    f"device {name!r} is not among the detected GPUs {known}; pick one of those"
                )
        names.append(name)
    if "none" in names and len(names) > 1:
        raise ConfigError(f"devices {names!r}: 'none' (no offload) cannot be combined with devices")
    if len(set(names)) != len(names):
        raise ConfigError(f"devices {names!r} lists a device twice")
    return tuple(names)


def split_options(
    split_mode: str | None = None,
    tensor_split: str | Sequence[float] | None = None,
    main_gpu: int | None = None,
    devices: str | Sequence[str | int] | None = None,
    *,
    gpus: Sequence[GPULike] | None = None,
    rpc_devices: int | None = 0,
) -> SplitOptions:
    """Validate multi-GPU options against an inventory and return them normalised.

    ``gpus`` is the detected inventory (``None``: unknown, so counts are not checked);
    ``rpc_devices`` the number of devices RPC workers add (one per CPU-only worker; ``None``:
    unknown, as a worker may expose several GPUs, so counts are not checked). Integer
    ``devices`` are GPU indices, named from the inventory. ``main_gpu`` without ``split_mode``
    means ``split_mode="none"`` (one GPU), the only mode in which llama.cpp uses it.

    Raises :class:`ConfigError` (a ``ValueError``) naming the option, the bad value and the
    accepted form.

    >>> split_options(tensor_split="3,1").args()
    ['--tensor-split', '3,1']
    >>> split_options(main_gpu=1).args()
    ['--split-mode', 'none', '--main-gpu', '1']
    """
    mode: SplitMode | None = None
    if split_mode is not None:
        text = str(split_mode).strip().lower()
        if text == "row":
            raise ConfigError(
                "split_mode='row' is deprecated in llama.cpp (superseded by 'tensor'); use "
                "'layer' (default), 'tensor' or 'none'"
            )
        if text not in SPLIT_MODES:
            raise ConfigError(
                f"split_mode {split_mode!r} is not one of {', '.join(repr(m) for m in SPLIT_MODES)}"
            )
        mode = text  # type: ignore[assignment]  # checked against SPLIT_MODES just above
    split = _parse_tensor_split(tensor_split) if tensor_split is not None else None
    names = _parse_devices(devices, gpus) if devices is not None else None

    if main_gpu is not None:
        if isinstance(main_gpu, bool) or not isinstance(main_gpu, int) or main_gpu < 0:
            raise ConfigError(f"main_gpu {main_gpu!r} must be a GPU index >= 0")
        if mode is None:
            mode = "none"
        elif mode != "none":
            raise ConfigError(
                f"main_gpu={main_gpu} only applies with split_mode='none' (llama.cpp ignores it "
                f"with split_mode={mode!r}); to choose GPUs for {mode!r}, pass devices=[...]"
            )
    if mode == "none" and split is not None:
        raise ConfigError(
            "tensor_split has no effect with split_mode='none' (one GPU); drop it, or use "
            "split_mode='layer' or 'tensor'"
        )
    if names == ("none",) and (split is not None or mode == "tensor"):
        raise ConfigError("devices='none' disables offloading; it cannot be split across GPUs")

    # Counts, when the inventory is known.
    available: int | None = None
    if names is not None and names != ("none",):
        available = len(names)
    elif gpus is not None and rpc_devices is not None:
        available = len(gpus) + rpc_devices
    if available is not None:
        if split is not None and available == 0:
            raise ConfigError(
                f"tensor_split {[_number(v) for v in split]} was given but no GPU was detected "
                "on this machine (see `lmserv gpu`), so it would have no effect; drop it"
            )
        if split is not None and len(split) > available:
            raise ConfigError(
                f"tensor_split {[_number(v) for v in split]} has {len(split)} entries but only "
                f"{available} device(s) are in use; give one proportion per device"
                + (" (RPC workers come first)" if rpc_devices else "")
            )
        if main_gpu is not None and available == 0:
            raise ConfigError(
                f"main_gpu={main_gpu} was given but no GPU was detected on this machine (see "
                "`lmserv gpu`); drop it to run on the CPU"
            )
        if main_gpu is not None and main_gpu >= available:
            raise ConfigError(
                f"main_gpu={main_gpu} but only {available} device(s) are in use "
                f"(indices 0..{available - 1})"
            )
        if mode == "tensor" and available == 0:
            raise ConfigError(
                "split_mode='tensor' needs at least one GPU or RPC device, and none was found; "
                "use the default split_mode, or check `lmserv gpu`"
            )
    return SplitOptions(mode, split, main_gpu, names)


def _last_value(args: Sequence[str], flags: tuple[str, ...]) -> str | None:
    """The value of the last occurrence of ``flags`` in ``args`` (``--flag value``/``--flag=value``)."""
    found: str | None = None
    for i, arg in enumerate(args):
        if arg in flags:
            found = args[i + 1] if i + 1 < len(args) else ""
        else:
            head, sep, tail = arg.partition("=")
            if sep and head in flags:
                found = tail
    return found


def arg_value(option: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> str | None:
    """What ``args`` (else the ``LLAMA_ARG_*`` variable in ``env``) sets for ``option``."""
    flags, var = _FLAGS[option]
    value = _last_value(args, flags)
    if value is None and env is not None:
        value = env.get(var)
    return value


def check_tensor_mode(
    flash_attn: str | None,
    cache_types: Mapping[str, str | None],
    *,
    flash_name: str = "--flash-attn",
) -> bool:
    """The tensor-mode rules, once for ``LlamaServer`` and ``Llama``: raise or return.

    Tensor parallelism needs flash attention and an unquantized KV cache (``f32``, ``f16``,
    ``bf16``). ``flash_attn`` is the setting as given (``None``: unset); ``cache_types`` maps
    the name the caller knows each cache type by (``--cache-type-k``, ``type_k``) to its ggml
    name (``None``: unset). Raises :class:`ConfigError` naming the setting; returns whether
    flash attention must be turned on explicitly (it was left unset or ``auto``-free).

    >>> check_tensor_mode(None, {"--cache-type-k": "f16"})
    True
    """
    if flash_attn is not None and flash_attn.strip().lower() not in _TRUTHY:
        how = (
            "is off"
            if flash_attn.strip().lower() in _FALSEY
            else f"is {flash_attn!r} (auto turns it off where unsupported)"
        )
        raise ConfigError(
            f"split_mode='tensor' requires flash attention, but {flash_name} {how}. Use "
            f"{flash_name} on (or leave it unset: lmserv then turns it on), or use "
            "split_mode='layer'."
        )
    for name, kind in cache_types.items():
        if kind is not None and kind.strip().lower() not in UNQUANTIZED_KV:
            raise ConfigError(
                f"split_mode='tensor' requires an unquantized KV cache, but {name} is {kind!r}. "
                f"Use one of {', '.join(UNQUANTIZED_KV)} (f16 is the default), or use "
                "split_mode='layer' to keep the quantized cache."
            )
    return flash_attn is None


def tensor_mode_args(
    extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> list[str]:
    """Check that tensor mode can work with ``extra_args`` / ``env``; return flags to add.

    :func:`check_tensor_mode` on what ``--flash-attn`` and ``--cache-type-k/-v`` (or their
    ``LLAMA_ARG_*`` variables) say, rather than letting llama-server fail after loading.
    Returns ``["--flash-attn", "on"]`` when flash attention was left unset, to make it explicit.

    >>> tensor_mode_args([])
    ['--flash-attn', 'on']
    """
    env = os.environ if env is None else env
    caches = {
        flag: arg_value(option, extra_args, env)
        for option, flag in (("cache_type_k", "--cache-type-k"), ("cache_type_v", "--cache-type-v"))
    }
    unset = check_tensor_mode(arg_value("flash_attn", extra_args, env), caches)
    return ["--flash-attn", "on"] if unset else []


def check_no_conflict(options: SplitOptions, extra_args: Sequence[str]) -> None:
    """Refuse an option given both as a keyword and in ``extra_args``; which should win is unclear."""
    for option in ("split_mode", "tensor_split", "main_gpu", "devices"):
        if getattr(options, option) is None:
            continue
        flags = _FLAGS[option][0]
        if _last_value(extra_args, flags) is not None:
            raise ConfigError(
                f"{option} is given twice: as {option}= and as {flags[-1]} in extra_args; keep one"
            )


def default_split(
    gpus: Sequence[GPULike],
    plan: OffloadPlan | None,
    *,
    rpc: bool = False,
    split_mode: str | None = None,
) -> SplitOptions:
    """The tensor split lmserv passes when the caller sets none (pure; see :func:`auto_split`).

    Nothing with fewer than two GPUs. Nothing with RPC workers: the plan covers the local GPUs
    only, while llama.cpp orders the workers' devices first and splits by each device's free
    memory itself. Nothing when the plan defers to llama.cpp's ``--fit`` (``plan.llama_fit``),
    which measures the real buffers and gives up if a split is set by hand; except in tensor
    mode, where ``--fit`` is not implemented, so the plan's split (shares proportional to what
    fits in free memory) is used. Otherwise the plan's per-GPU layer counts.
    """
    if len(gpus) < 2 or rpc or plan is None:
        return SplitOptions()
    split = tuple(float(v) for v in plan.tensor_split)
    if len(split) != len(gpus) or sum(split) <= 0:
        return SplitOptions()
    if plan.llama_fit and split_mode != "tensor":
        return SplitOptions()
    return SplitOptions(tensor_split=split)


def auto_split(
    model: str | os.PathLike[str],
    *,
    gpus: Sequence[GPU] | None = None,
    ctx_size: int | None = None,
    parallel: int | None = None,
    rpc: bool = False,
    split_mode: str | None = None,
) -> SplitOptions:
    """:func:`default_split` over ``detect_gpus()`` (or ``gpus``) and ``plan_offload``.

    Never raises for a model it cannot read: llama-server then reports the file's problem in
    its own words, so this returns the empty options (logged at DEBUG).
    """
    if gpus is None:
        gpus = detect_gpus()
    if len(gpus) < 2 or rpc:
        return SplitOptions()
    try:
        plan = plan_offload(model, gpus, ctx_size=ctx_size, parallel=parallel or 1)
    except (LmservError, ValueError, OSError) as exc:
        logger.debug("no offload plan for %s: %s", model, exc)
        return SplitOptions()
    logger.info("offload plan for %s:\n%s", model, plan.explanation)
    return default_split(gpus, plan, rpc=rpc, split_mode=split_mode)


def server_split_args(
    options: SplitOptions,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """All multi-GPU flags for a ``llama-server`` launch, checked against ``extra_args``/``env``.

    Raises :class:`ConfigError` for an option given twice or a tensor-mode conflict.
    """
    env = os.environ if env is None else env
    check_no_conflict(options, extra_args)
    out = options.args()
    mode = options.split_mode or arg_value("split_mode", extra_args, env)
    if mode is not None and mode.strip().lower() == "tensor":
        out += tensor_mode_args(extra_args, env)
    return out


def llama_server_args(
    model: str | os.PathLike[str],
    *,
    rpc: Sequence[str] = (),
    split_mode: str | None = None,
    tensor_split: str | Sequence[float] | None = None,
    main_gpu: int | None = None,
    devices: str | Sequence[str | int] | None = None,
    extra_args: Sequence[str] = (),
    ctx_size: int | None = None,
    parallel: int | None = None,
    gpus: Sequence[GPU] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The ``--rpc`` and multi-GPU flags of a ``llama-server`` launch, validated.

    GPUs are detected (``detect_gpus()``, unless ``gpus`` is given) only when an option needs
    the inventory; with no option set nothing is detected and nothing is added, which is what
    ``plan_offload`` advises at this llama.cpp commit (its ``--fit`` places layers itself).
    In tensor mode without a ``tensor_split``, the split comes from ``plan_offload``, since
    ``--fit`` is not implemented there. Raises :class:`ConfigError` before anything starts.
    """
    endpoints = normalize_endpoints(rpc)
    out = ["--rpc", ",".join(endpoints)] if endpoints else []
    options_given = any(v is not None for v in (split_mode, tensor_split, main_gpu, devices))
    if not options_given:
        return out + server_split_args(SplitOptions(), extra_args, env)
    if gpus is None:
        gpus = detect_gpus()
    opts = split_options(
        split_mode,
        tensor_split,
        main_gpu,
        devices,
        gpus=gpus,
        rpc_devices=None if endpoints else 0,
    )
    if opts.split_mode == "tensor" and opts.tensor_split is None and opts.devices is None:
        planned = auto_split(
            model,
            gpus=gpus,
            ctx_size=ctx_size,
            parallel=parallel,
            rpc=bool(endpoints),
            split_mode="tensor",
        )
        opts = replace(opts, tensor_split=planned.tensor_split)
    return out + server_split_args(opts, extra_args, env)
