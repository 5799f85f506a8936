"""Multi-GPU options of the in-process ``Llama``: validation shared with the server, and the
``llama_model_params`` fields they set, on the real libllama (this machine has no GPU)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from lmserv import ConfigError, Llama, LlamaParams
from lmserv._bindings import _lib
from lmserv._bindings._split import apply_split
from lmserv.gpu._split import SplitOptions
from lmserv.install import LlamaBuild
from lmserv.testing import write_counting_model

EXPECTED = " three four five six seven eight nine ten"


@pytest.fixture(scope="module")
def counting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_counting_model(tmp_path_factory.mktemp("split") / "counting.gguf")


def test_split_fields_reach_model_params(llama_build: LlamaBuild) -> None:
    lib = _lib.load().lib
    mparams = lib.llama_model_default_params()
    keep = apply_split(lib, mparams, SplitOptions("tensor", (3.0, 1.0), 1, ("CPU",)))
    assert mparams.split_mode == 3  # LLAMA_SPLIT_MODE_TENSOR
    assert mparams.main_gpu == 1
    assert [mparams.tensor_split[i] for i in range(3)] == [3.0, 1.0, 0.0]
    devs = ctypes.cast(mparams.devices, ctypes.POINTER(ctypes.c_void_p))
    assert devs[0] == lib.ggml_backend_dev_by_name(b"CPU")
    assert devs[1] is None, "the device list is NULL-terminated"
    assert keep, "the arrays must be kept alive by the caller"


def test_layer_split_on_a_machine_without_gpus_still_answers_exactly(
    llama_build: LlamaBuild, counting: Path
) -> None:
    with Llama(counting, n_ctx=128, split_mode="layer", tensor_split=[1.0]) as llm:
        assert llm.generate("one two", max_tokens=16, temperature=0) == EXPECTED


def test_unknown_device_names_the_ones_that_exist(llama_build: LlamaBuild, counting: Path) -> None:
    with pytest.raises(ConfigError, match=r"no device named 'CUDA7'.*CPU"):
        Llama(counting, n_ctx=128, devices=["CUDA7"])


def test_tensor_mode_refuses_what_it_cannot_run(llama_build: LlamaBuild, counting: Path) -> None:
    with pytest.raises(ConfigError, match="requires flash attention"):
        Llama(counting, split_mode="tensor", params=LlamaParams(flash_attn="off"))
    with pytest.raises(ConfigError, match="unquantized KV cache"):
        Llama(counting, split_mode="tensor", params=LlamaParams(type_k=8))


def test_bad_split_values_are_config_errors(llama_build: LlamaBuild, counting: Path) -> None:
    with pytest.raises(ConfigError, match="split_mode"):
        Llama(counting, split_mode="diagonal")
    with pytest.raises(ConfigError, match="tensor_split"):
        Llama(counting, tensor_split="3,x")
