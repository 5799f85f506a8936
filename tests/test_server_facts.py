"""ServerInfo at llama-server's default log level: the GGUF header, the build, the GPUs present.

No llama.cpp build needed: real GGUF files from :mod:`lmserv.testing`, real folders of
libraries, and the start-up facts a GPU machine would gather (this one has no GPU).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lmserv._gguf_meta import read_gguf_scalars
from lmserv._server_facts import ModelHeader, StartFacts, gpu_backend, model_header
from lmserv._server_info import ServerInfo, _parse_info, _with_facts
from lmserv.errors import InvalidModelFile
from lmserv.testing import write_counting_model

SLOTS = "0.00.009.663 I srv    load_model: initializing, n_slots = 4, n_ctx_slot = 2048, kv_unified = 'true'"


def test_header_scalars_match_what_was_written(tmp_path: Path) -> None:
    model = write_counting_model(tmp_path / "counting.gguf")
    values = read_gguf_scalars(model)
    assert values["general.architecture"] == "llama"
    assert isinstance(values["llama.block_count"], int)
    assert isinstance(values["tokenizer.ggml.tokens"], int)  # an array: its length
    assert isinstance(values["tokenizer.chat_template"], str)
    header = model_header(model)
    assert header == ModelHeader(layers=int(values["llama.block_count"]) + 1, chat_template=True)


def test_header_of_a_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(20))
    with pytest.raises(InvalidModelFile, match="not a GGUF file"):
        read_gguf_scalars(bad)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 5) + struct.pack("<Q", 1000))
    with pytest.raises(InvalidModelFile, match="truncated"):
        read_gguf_scalars(cut)
    assert model_header(bad) is None and model_header(tmp_path / "absent.gguf") is None


def test_gpu_backend_is_read_from_the_libraries_beside_the_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLAMA_LIB_DIR", raising=False)  # set by the llama_build fixture
    cpu, gpu, bare = tmp_path / "cpu", tmp_path / "gpu", tmp_path / "bare"
    for folder, libs in (
        (cpu, ["libggml-cpu.so", "libggml-base.so"]),
        (gpu, ["libggml-cuda.so"]),
        (bare, []),
    ):
        folder.mkdir()
        for lib in libs:
            (folder / lib).write_bytes(b"")
    assert gpu_backend(cpu / "llama-server") is False
    assert gpu_backend(gpu / "llama-server") is True
    assert gpu_backend(bare / "llama-server") is None


def _info() -> ServerInfo:
    return _parse_info([SLOTS], "http://127.0.0.1:1", 1, "m.gguf")


def test_default_level_cpu_build_puts_everything_on_the_cpu() -> None:
    facts = StartFacts(header=ModelHeader(layers=19, chat_template=False), gpus=(), gpu_build=False)
    info = _with_facts(_info(), facts, "auto")
    assert (info.devices, info.weights_on, info.gpu_layers, info.total_layers) == (
        ("CPU",),
        ("CPU",),
        0,
        19,
    )
    assert info.chat_template_fallback and not info.gpu_unused
    assert (info.n_ctx, info.slots) == (2048, 4)


def test_default_level_gpu_found_but_not_used_is_still_said() -> None:
    facts = StartFacts(
        header=ModelHeader(layers=33, chat_template=True), gpus=("CUDA0",), gpu_build=True
    )
    unused = _with_facts(_info(), facts, 0)
    assert unused.gpu_unused and "GPU found (CUDA0, CPU) but not used" in unused.summary()
    used = _with_facts(_info(), facts, "all")
    assert not used.gpu_unused and (used.gpu_layers, used.total_layers) == (33, 33)
    assert "33/33 layers on GPU" in used.summary() and not used.chat_template_fallback
    assert _with_facts(_info(), facts, 10).gpu_layers == 10
    assert _with_facts(_info(), facts, "auto").gpu_layers is None  # llama.cpp chose; not logged


def test_a_verbose_log_wins_over_the_facts() -> None:
    lines = [
        "0.00.002.695 I cmn  common_param:   - CUDA0   : NVIDIA H200 (143771 MiB, 143000 MiB free)",
        "0.00.007.670 I load_tensors: offloaded 20/33 layers to GPU",
        "0.00.007.672 I load_tensors:        CUDA0 model buffer size =  4403.49 MiB",
        SLOTS,
    ]
    logged = _parse_info(lines, "http://127.0.0.1:1", 1, "m.gguf")
    facts = StartFacts(
        header=ModelHeader(layers=33, chat_template=True), gpus=("CUDA0",), gpu_build=True
    )
    info = _with_facts(logged, facts, "all")
    assert (info.gpu_layers, info.devices, info.weights_on) == (20, ("CUDA0",), ("CUDA0",))
