"""Estimate how a GGUF model fits on GPUs: :func:`plan_offload` (re-exported by :mod:`lmserv.gpu`).

The estimate mirrors how llama.cpp (pinned commit 0c1e570) places a model: the token embedding
always stays in host memory; ``-ngl N`` puts the last ``N`` of the ``n_layer + 1`` "layers" on
GPUs (the extra one is the output layer: final norm and vocabulary projection); each offloaded
layer keeps its KV cache beside its weights; ``--tensor-split`` gives each GPU a contiguous run of
layers in proportion to its share. The plan's split is the exact layer count per GPU, so
llama.cpp reproduces the planned placement.

It is an estimate from the file's header: tensor sizes are exact, the KV cache follows from
context x heads x head size, and the compute buffer is a conservative formula. llama-server
at the pinned commit can do better itself: ``--fit on`` (its default, with ``-ngl auto``)
measures the real buffers on the real devices before loading. :attr:`OffloadPlan.server_args`
therefore leaves ``-ngl``/``-ts`` to llama.cpp when ``llama_fit`` is true; the explicit values
are in :attr:`OffloadPlan.explicit_args` for builds without ``--fit`` or for full control.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmserv._fs import require_model_file
from lmserv._units import human_bytes
from lmserv.errors import ConfigError, InvalidModelFile

if TYPE_CHECKING:
    from lmserv.gpu._detect import GPU

__all__ = ["DevicePlan", "ModelShape", "OffloadPlan", "plan_offload", "read_model_shape"]

MIB = 1024 * 1024
DEFAULT_RESERVE = 1024 * MIB  # llama.cpp's own --fit-target default margin per device
DEFAULT_UBATCH = 512  # llama-server's default -ub

# Bytes per element of the KV cache types llama-server accepts (-ctk/-ctv); blocks of 32.
KV_TYPE_BYTES: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "iq4_nl": 18 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
}

_OUTPUT_TENSORS = re.compile(r"^(output|output_norm)\.")
_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from a GGUF header. Byte counts are the tensors' sizes in the file."""

    path: Path
    architecture: str
    n_layer: int
    n_ctx_train: int | None
    n_embd: int
    n_ff: int
    n_head: int
    n_vocab: int
    kv_values_per_token: tuple[int, ...]  # per layer: n_head_kv x (key_length + value_length)
    layer_bytes: tuple[int, ...]
    output_bytes: int  # output + output_norm (a copy of token_embd when the model ties them)
    input_bytes: int  # token_embd, kept in host memory by llama.cpp
    other_bytes: int
    tied_output: bool

    @property
    def weights_bytes(self) -> int:
        return (
            sum(self.layer_bytes)
            + self.input_bytes
            + self.other_bytes
            + (0 if self.tied_output else self.output_bytes)
        )


def _field(reader: Any, key: str) -> Any:
    fld = reader.fields.get(key)
    if fld is None:
        return None
    value = fld.contents()
    return value


def _ints(value: Any, n: int, default: int) -> list[int]:
    if value is None:
        return [default] * n
    if isinstance(value, list):
        vals = [int(v) for v in value] or [default]
        return (vals + [vals[-1]] * n)[:n]
    return [int(value)] * n


def read_model_shape(model_path: str | os.PathLike[str]) -> ModelShape:
    """Read layer count, tensor sizes, context length and KV geometry from a GGUF file.

    Raises :class:`~lmserv.errors.ModelNotFound` when the file is missing, and
    :class:`~lmserv.errors.InvalidModelFile` when it is not GGUF or lacks
    the keys every llama.cpp model has (``general.architecture``, ``<arch>.block_count``).
    """
    path = require_model_file(model_path)  # ModelNotFound, as from every entry point
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path, "r")
    except Exception as exc:  # gguf raises ValueError/struct.error/etc. on bad files
        raise InvalidModelFile(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}). "
            "Check that the download finished and verified (`lmserv pull` re-checks it)."
        ) from exc
    arch = _field(reader, "general.architecture")
    n_layer = _field(reader, f"{arch}.block_count")
    if not isinstance(arch, str) or n_layer is None:
        raise InvalidModelFile(
            f"{path} has no general.architecture / <arch>.block_count keys: not a llama.cpp "
            "model file (maybe a LoRA adapter or a vocabulary-only file)."
        )
    n_layer = int(n_layer)
    n_embd = int(_field(reader, f"{arch}.embedding_length") or 0)
    heads = _ints(_field(reader, f"{arch}.attention.head_count"), n_layer, 0)
    heads_kv = _ints(_field(reader, f"{arch}.attention.head_count_kv"), n_layer, 0)
    heads_kv = [kv or h for kv, h in zip(heads_kv, heads, strict=True)]
    n_head = max(heads) if heads else 0
    default_dim = n_embd // n_head if n_head else 0
    k_len = int(_field(reader, f"{arch}.attention.key_length") or default_dim)
    v_len = int(_field(reader, f"{arch}.attention.value_length") or default_dim)
    lora_rank = _field(reader, f"{arch}.attention.kv_lora_rank")
    if lora_rank:  # MLA (DeepSeek-style): one compressed latent plus the RoPE part per token
        rope = int(_field(reader, f"{arch}.rope.dimension_count") or 0)
        kv_per_token = [int(lora_rank) * 2 + rope] * n_layer
    else:
        kv_per_token = [kv * (k_len + v_len) for kv in heads_kv]
    n_ff = max(_ints(_field(reader, f"{arch}.feed_forward_length"), n_layer, 0) or [0])
    ctx_train = _field(reader, f"{arch}.context_length")

    layer_bytes = [0] * n_layer
    output_bytes = input_bytes = other_bytes = 0
    has_output = False
    n_vocab = int(_field(reader, f"{arch}.vocab_size") or 0)
    for tensor in reader.tensors:
        name = str(tensor.name)
        size = int(tensor.n_bytes)
        m = _LAYER_TENSOR.match(name)
        if m and int(m.group(1)) < n_layer:
            layer_bytes[int(m.group(1))] += size
        elif _OUTPUT_TENSORS.match(name):
            output_bytes += size
            has_output = has_output or name.startswith("output.weight")
        elif name.startswith("token_embd."):
            input_bytes += size
            if name == "token_embd.weight" and not n_vocab:
                n_vocab = int(tensor.shape[-1]) if len(tensor.shape) > 1 else 0
        else:
            other_bytes += size
    if not n_vocab:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        n_vocab = len(tokens.data) if tokens is not None else 0
    tied = not has_output
    if tied:  # llama.cpp duplicates token_embd as the output projection
        output_bytes += input_bytes
    return ModelShape(
        path=path,
        architecture=arch,
        n_layer=n_layer,
        n_ctx_train=int(ctx_train) if ctx_train else None,
        n_embd=n_embd,
        n_ff=n_ff,
        n_head=n_head,
        n_vocab=n_vocab,
        kv_values_per_token=tuple(kv_per_token),
        layer_bytes=tuple(layer_bytes),
        output_bytes=output_bytes,
        input_bytes=input_bytes,
        other_bytes=other_bytes,
        tied_output=tied,
    )


@dataclass(frozen=True)
class DevicePlan:
    """What one GPU gets: ``layers`` (output layer counted as one), and the bytes planned."""

    index: int
    name: str
    free_memory: int
    layers: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    holds_output: bool

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes


@dataclass(frozen=True)
class OffloadPlan:
    """The result of :func:`plan_offload`.

    ``n_gpu_layers`` is llama.cpp's ``-ngl`` value (``n_layer + 1`` offloads everything,
    output layer included); ``tensor_split`` the layer count per GPU (``-ts``); ``devices``
    the per-GPU bytes; ``host_bytes`` the weights and KV cache left in system memory.
    ``compute_bytes`` is the compute-buffer estimate of a device holding the whole model.
    ``explanation`` shows the arithmetic. ``llama_fit``: llama-server's own ``--fit`` is
    available and :attr:`server_args` defers to it.
    """

    model_path: Path
    n_layer: int
    ctx_size: int
    parallel: int
    n_gpu_layers: int
    tensor_split: tuple[int, ...]
    devices: tuple[DevicePlan, ...]
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    host_bytes: int
    fits_fully: bool
    llama_fit: bool
    explanation: str
    explicit_args: tuple[str, ...] = field(default=())

    @property
    def server_args(self) -> tuple[str, ...]:
        """Arguments for ``llama-server``: context and slots always; ``-ngl``/``-ts`` only when
        llama.cpp cannot fit by itself."""
        base = ("-c", str(self.ctx_size * self.parallel), "-np", str(self.parallel))
        return base if self.llama_fit else self.explicit_args

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``lmserv plan --json`` prints)."""
        return {
            "model_path": str(self.model_path),
            "n_layer": self.n_layer,
            "ctx_size": self.ctx_size,
            "parallel": self.parallel,
            "n_gpu_layers": self.n_gpu_layers,
            "tensor_split": list(self.tensor_split),
            "devices": [{**vars(d), "total_bytes": d.total_bytes} for d in self.devices],
            "weights_bytes": self.weights_bytes,
            "kv_bytes": self.kv_bytes,
            "compute_bytes": self.compute_bytes,
            "host_bytes": self.host_bytes,
            "fits_fully": self.fits_fully,
            "llama_fit": self.llama_fit,
            "server_args": list(self.server_args),
            "explicit_args": list(self.explicit_args),
            "explanation": self.explanation,
        }


@dataclass(frozen=True)
class _Costs:
    unit_bytes: tuple[int, ...]  # weights + KV per unit (0..n_layer; the last is the output)
    unit_kv: tuple[int, ...]
    activations: int  # per used device
    logits: int  # on the device holding the output layer
    attention: int  # per used device: the KQ mask (and, without flash attention, KQ scores)


def _fits(
    counts: list[int], start: int, costs: _Costs, budgets: list[int]
) -> list[tuple[int, int, int]] | None:
    """Per-device (weights+kv, kv, compute) for ``counts`` layers each from unit ``start``,
    or ``None`` when a device would exceed its budget."""
    out: list[tuple[int, int, int]] = []
    unit = start
    last = len(costs.unit_bytes) - 1
    for count, budget in zip(counts, budgets, strict=True):
        units = range(unit, unit + count)
        unit += count
        if not count:
            out.append((0, 0, 0))
            continue
        compute = costs.activations + costs.attention + (costs.logits if last in units else 0)
        used = sum(costs.unit_bytes[u] for u in units)
        if used + compute > budget:
            return None
        out.append((used, sum(costs.unit_kv[u] for u in units), compute))
    return out


def _proportional(n: int, weights: list[int]) -> list[int]:
    total = sum(weights)
    if total <= 0:
        return [0] * len(weights)
    exact = [n * w / total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _greedy(start: int, costs: _Costs, budgets: list[int]) -> list[int]:
    counts = [0] * len(budgets)
    unit, last = start, len(costs.unit_bytes) - 1
    for d, budget in enumerate(budgets):
        used = costs.activations + costs.attention
        while unit <= last:
            extra = costs.unit_bytes[unit] + (costs.logits if unit == last else 0)
            if used + extra > budget:
                break
            used += extra
            counts[d] += 1
            unit += 1
    return counts


def plan_offload(
    model_path: str | os.PathLike[str],
    gpus: Sequence[GPU],
    *,
    ctx_size: int | None = None,
    parallel: int = 1,
    cache_type: str = "f16",
    flash_attn: bool = True,
    reserve_bytes: int = DEFAULT_RESERVE,
    ubatch: int = DEFAULT_UBATCH,
    llama_fit: bool = True,
) -> OffloadPlan:
    """Plan how many layers of ``model_path`` go to which of ``gpus``.

    ``ctx_size`` is the context of each of the ``parallel`` slots (default: the model's
    training context); llama-server then gets ``-c ctx_size*parallel -np parallel``.
    ``cache_type`` is the KV cache type (``-ctk``/``-ctv``), ``reserve_bytes`` the margin left
    free per GPU, ``flash_attn=False`` adds the attention-score buffer. ``llama_fit`` says the
    llama-server that will run has ``--fit`` (the pinned commit does).

    The plan never puts more on a GPU than its free memory minus the reserve; when nothing
    fits, it offloads fewer layers, down to none. No GPU gives a CPU-only plan.

    Raises :class:`~lmserv.errors.ModelNotFound` for a missing model file,
    :class:`~lmserv.errors.InvalidModelFile` for an unreadable one, and
    :class:`~lmserv.errors.ConfigError` (a ``ValueError``) for a non-positive
    ``ctx_size``/``parallel`` or an unknown ``cache_type``.
    """
    if ctx_size is not None and ctx_size < 1:
        raise ConfigError(f"ctx_size must be at least 1, not {ctx_size}")
    if parallel < 1:
        raise ConfigError(f"parallel must be at least 1, not {parallel}")
    if cache_type not in KV_TYPE_BYTES:
        raise ConfigError(
            f"cache_type {cache_type!r} is not one of {', '.join(KV_TYPE_BYTES)} (llama-server -ctk)"
        )
    shape = read_model_shape(model_path)
    ctx = ctx_size or shape.n_ctx_train or 4096
    tokens = ctx * parallel
    per_value = KV_TYPE_BYTES[cache_type]
    unit_kv = [int(tokens * v * per_value) for v in shape.kv_values_per_token] + [0]
    unit_bytes = [
        w + kv for w, kv in zip([*shape.layer_bytes, shape.output_bytes], unit_kv, strict=True)
    ]
    costs = _Costs(
        unit_bytes=tuple(unit_bytes),
        unit_kv=tuple(unit_kv),
        activations=ubatch * (4 * shape.n_embd + 2 * shape.n_ff) * 4,
        logits=ubatch * shape.n_vocab * 4,
        # Measured on llama-server 0c1e570: an f16 mask of ctx x ubatch per sequence with flash
        # attention; without it also f32 scores for every head (and the mask in f32).
        attention=ubatch * ctx * (2 if flash_attn else 4 * shape.n_head + 4),
    )
    budgets = [max(g.free_memory - reserve_bytes, 0) for g in gpus]
    n_units = shape.n_layer + 1
    counts: list[int] = [0] * len(gpus)
    placed: list[tuple[int, int, int]] = [(0, 0, 0)] * len(gpus)
    ngl = 0
    for n in range(n_units if gpus else 0, 0, -1):
        start = n_units - n
        share = [max(b - costs.activations - costs.attention, 0) for b in budgets]
        for candidate in (_proportional(n, share), _greedy(start, costs, budgets)):
            if sum(candidate) != n:
                continue
            result = _fits(candidate, start, costs, budgets)
            if result is not None:
                counts, placed, ngl = candidate, result, n
                break
        if ngl:
            break

    start = n_units - ngl
    devices = tuple(
        DevicePlan(
            index=g.index,
            name=g.name,
            free_memory=g.free_memory,
            layers=c,
            weights_bytes=used - kv,
            kv_bytes=kv,
            compute_bytes=compute,
            holds_output=bool(c) and sum(counts[: i + 1]) == ngl,
        )
        for i, (g, c, (used, kv, compute)) in enumerate(zip(gpus, counts, placed, strict=True))
    )
    host = shape.input_bytes + shape.other_bytes + sum(unit_bytes[:start])
    kv_total = sum(unit_kv)
    split = tuple(counts) if len(gpus) > 1 and ngl else ()
    explicit = ["-ngl", str(ngl)]
    if split:
        explicit += ["-ts", ",".join(str(c) for c in split)]
    explicit += ["-c", str(tokens), "-np", str(parallel)]
    plan_text = _explain(shape, gpus, costs, budgets, devices, ngl, ctx, parallel, cache_type)
    if gpus:
        plan_text += _fit_note(llama_fit, explicit)
    return OffloadPlan(
        model_path=shape.path,
        n_layer=shape.n_layer,
        ctx_size=ctx,
        parallel=parallel,
        n_gpu_layers=ngl,
        tensor_split=split,
        devices=devices,
        weights_bytes=shape.weights_bytes,
        kv_bytes=kv_total,
        compute_bytes=costs.activations + costs.attention + costs.logits,
        host_bytes=host,
        fits_fully=bool(gpus) and ngl == n_units,
        llama_fit=llama_fit,
        explanation=plan_text,
        explicit_args=tuple(explicit),
    )


def _explain(
    shape: ModelShape,
    gpus: Sequence[GPU],
    costs: _Costs,
    budgets: list[int],
    devices: tuple[DevicePlan, ...],
    ngl: int,
    ctx: int,
    parallel: int,
    cache_type: str,
) -> str:
    n_units = shape.n_layer + 1
    kv_layer = max(costs.unit_kv[:-1] or (0,))
    per_token = max(shape.kv_values_per_token or (0,))
    lines = [
        f"model: {shape.path.name} ({shape.architecture}, {shape.n_layer} layers, "
        f"{human_bytes(shape.weights_bytes)} of weights, trained context {shape.n_ctx_train or '?'})",
        f"context: {ctx} tokens x {parallel} slot(s) = {ctx * parallel} KV cells",
        f"per layer: weights {human_bytes(max(shape.layer_bytes or (0,)))} (largest) + KV cache "
        f"{ctx * parallel} cells x {per_token} values x {KV_TYPE_BYTES[cache_type]:g} B "
        f"({cache_type}) = {human_bytes(kv_layer)}",
        f"output layer: {human_bytes(shape.output_bytes)}"
        + (" (tied to the token embedding, copied)" if shape.tied_output else "")
        + f"; token embedding {human_bytes(shape.input_bytes)} stays in host memory",
        f"compute buffer per GPU used: activations {human_bytes(costs.activations)} + attention "
        f"{human_bytes(costs.attention)}; + logits {human_bytes(costs.logits)} on the GPU holding the output",
    ]
    if not gpus:
        lines.append("no GPU: everything runs on the CPU (-ngl 0)")
        host = sum(costs.unit_bytes) + shape.input_bytes + shape.other_bytes
        compute = costs.activations + costs.attention + costs.logits
        lines.append(
            f"host memory needed: weights + KV {human_bytes(host)} + compute {human_bytes(compute)} "
            f"= about {human_bytes(host + compute)}"
        )
        return "\n".join(lines) + "\n"
    for g, budget in zip(gpus, budgets, strict=True):
        lines.append(
            f"GPU {g.index} {g.name}: free {human_bytes(g.free_memory)} - reserve "
            f"{human_bytes(g.free_memory - budget if budget else g.free_memory)} = usable {human_bytes(budget)}"
        )
    for d in devices:
        lines.append(
            f"  GPU {d.index}: {d.layers} layer(s){' incl. output' if d.holds_output else ''}: "
            f"weights {human_bytes(d.weights_bytes)} + KV {human_bytes(d.kv_bytes)} + compute "
            f"{human_bytes(d.compute_bytes)} = {human_bytes(d.total_bytes)} of {human_bytes(d.free_memory)} free"
        )
    if ngl == n_units:
        lines.append(f"result: all {n_units} layers (incl. output) on GPU: -ngl {ngl}")
    elif ngl:
        lines.append(
            f"result: {ngl} of {n_units} layers on GPU, {n_units - ngl} in host memory "
            f"(slower): -ngl {ngl}"
        )
    else:
        lines.append("result: not even one layer fits in free GPU memory: -ngl 0 (CPU only)")
    return "\n".join(lines) + "\n"


def _fit_note(llama_fit: bool, explicit: list[str]) -> str:
    if llama_fit:
        return (
            "llama-server's own --fit (on by default, with -ngl auto) measures the real buffers "
            "on each device and is more exact than this estimate, so lmserv leaves -ngl/-ts to "
            f"it; to force this plan instead: {' '.join(explicit)} --fit off\n"
        )
    return f"this llama-server has no --fit: pass {' '.join(explicit)}\n"
