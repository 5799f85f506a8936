"""Helpers for the gpu/config/system tests: GGUF writers, fake GPU tools, a fake pynvml."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

DATA = Path(__file__).parent / "data" / "gpu"
REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def write_llama_gguf(
    path: Path,
    *,
    n_layer: int = 4,
    n_embd: int = 64,
    n_ff: int = 128,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_vocab: int = 300,
    ctx: int = 2048,
    tied: bool = False,
) -> Path:
    """A tiny llama-architecture GGUF with zero F32 weights (headers and sizes are what matter)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layer)
    w.add_context_length(ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    head_dim = n_embd // n_head

    def zeros(*shape: int) -> np.ndarray[Any, Any]:
        return np.zeros(shape, dtype=np.float32)

    w.add_tensor("token_embd.weight", zeros(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", zeros(n_embd))
        w.add_tensor(f"blk.{i}.attn_q.weight", zeros(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", zeros(head_dim * n_head_kv, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", zeros(head_dim * n_head_kv, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", zeros(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", zeros(n_embd))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", zeros(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", zeros(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", zeros(n_embd, n_ff))
    w.add_tensor("output_norm.weight", zeros(n_embd))
    if not tied:
        w.add_tensor("output.weight", zeros(n_vocab, n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def fake_tool(
    bin_dir: Path,
    name: str,
    output: str,
    *,
    code: int = 0,
    reject: str | None = None,
    reject_output: str = "",
    reject_code: int = 2,
) -> Path:
    """A shell script ``name`` in ``bin_dir`` that prints file ``output`` (from tests/data/gpu)
    and exits ``code``; when its arguments contain ``reject``, it prints ``reject_output`` and
    exits ``reject_code`` instead (an old driver refusing a field)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / name
    lines = ["#!/bin/sh"]
    if reject:
        lines.append(
            f'case "$*" in *{reject}*) cat "{DATA / reject_output}"; exit {reject_code};; esac'
        )
    lines += [f'cat "{DATA / output}"', f"exit {code}"]
    script.write_text("\n".join(lines) + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """Shaped like the ``pynvml`` module, answering with recorded values."""

    NVMLError = FakeNVMLError

    def __init__(self, key: str, *, as_bytes: bool = False, fail_init: bool = False) -> None:
        record = json.loads((DATA / "nvml-recorded.json").read_text())[key]
        self.driver = record["driver"]
        self.devices = record["devices"]
        self.as_bytes = as_bytes
        self.fail_init = fail_init
        self.initialised = False
        self.shutdowns = 0

    def _s(self, text: str) -> str | bytes:
        return text.encode() if self.as_bytes else text

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise FakeNVMLError("NVML Shared Library Not Found")
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        return self._s(self.driver)

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return dict(self.devices[index])

    def nvmlDeviceGetName(self, handle: dict[str, Any]) -> str | bytes:
        return self._s(handle["name"])

    def nvmlDeviceGetUUID(self, handle: dict[str, Any]) -> str | bytes:
        return self._s(handle["uuid"])

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(total=handle["total"], free=handle["free"], used=handle["used"])

    def nvmlDeviceGetCudaComputeCapability(self, handle: dict[str, Any]) -> tuple[int, int]:
        return tuple(handle["cc"])  # type: ignore[return-value]
