"""Multi-GPU options: validation and flag assembly on recorded inventories, flags checked
against the real pinned ``llama-server`` argument parser.

No GPU is needed: the inventories below are ``nvidia-smi --query-gpu=index,name,memory.total,
memory.free,compute_cap,driver_version --format=csv,noheader,nounits`` rows of two machines
(a desktop with two different cards, a server with 80 GB and 40 GB A100s).
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from lmserv._multigpu import (
    MAX_TENSOR_SPLIT,
    SplitOptions,
    default_split,
    device_names,
    server_split_args,
    split_options,
    tensor_mode_args,
)
from lmserv.errors import ConfigError
from lmserv.gpu import GPU, parse_nvidia_smi_csv
from lmserv.install import LlamaBuild

TWO_GPUS_CSV = """\
0, GPU-5f1c9a2e-1b7d-4c1e-9a53-0e6f2b8d7c11, NVIDIA GeForce RTX 4090, 24564, 23985, 8.9, 550.90.07
1, GPU-0a8e4f7b-6c2d-4e9f-8b1a-3d5c7e9f1a22, NVIDIA GeForce RTX 3060, 12288, 11855, 8.6, 550.90.07
"""

EIGHT_GPUS_CSV = """\
index, uuid, name, memory.total [MiB], memory.free [MiB], compute_cap, driver_version
0, GPU-11111111-0000-4000-8000-000000000000, NVIDIA A100-SXM4-80GB, 81920 MiB, 81042 MiB, 8.0, 535.183.01
1, GPU-11111111-0000-4000-8000-000000000001, NVIDIA A100-SXM4-80GB, 81920 MiB, 81042 MiB, 8.0, 535.183.01
2, GPU-11111111-0000-4000-8000-000000000002, NVIDIA A100-SXM4-80GB, 81920 MiB, 60311 MiB, 8.0, 535.183.01
3, GPU-11111111-0000-4000-8000-000000000003, NVIDIA A100-SXM4-80GB, 81920 MiB, 81042 MiB, 8.0, 535.183.01
4, GPU-11111111-0000-4000-8000-000000000004, NVIDIA A100-SXM4-40GB, 40960 MiB, 40370 MiB, 8.0, 535.183.01
5, GPU-11111111-0000-4000-8000-000000000005, NVIDIA A100-SXM4-40GB, 40960 MiB, 40370 MiB, 8.0, 535.183.01
6, GPU-11111111-0000-4000-8000-000000000006, NVIDIA A100-SXM4-40GB, 40960 MiB, 40370 MiB, 8.0, 535.183.01
7, GPU-11111111-0000-4000-8000-000000000007, NVIDIA A100-SXM4-40GB, 40960 MiB, 12007 MiB, 8.0, 535.183.01
"""

TWO = parse_nvidia_smi_csv(TWO_GPUS_CSV)
EIGHT = parse_nvidia_smi_csv(EIGHT_GPUS_CSV)
ROCM = [replace(g, backend="rocm") for g in TWO]


def free_split(gpus: list[GPU]) -> list[float]:
    return [float(g.free_memory // MIB) for g in gpus]


def test_recorded_inventories_parse() -> None:
    assert [g.index for g in EIGHT] == list(range(8))
    assert EIGHT[7].free_memory == 12007 * MIB and TWO[1].name == "NVIDIA GeForce RTX 3060"


# -- flag assembly ----------------------------------------------------------------------------


def test_no_options_add_no_flags() -> None:
    assert split_options(gpus=EIGHT).args() == []
    assert split_options().is_default


def test_layer_split_on_two_mixed_gpus() -> None:
    opts = split_options("layer", [2, 1], gpus=TWO)
    assert opts == SplitOptions("layer", (2.0, 1.0), None, None)
    assert opts.args() == ["--split-mode", "layer", "--tensor-split", "2,1"]


def test_tensor_split_string_forms_match_llama_cpp() -> None:
    # llama.cpp splits on ',' and '/'; fractions are kept exactly.
    assert split_options(tensor_split="3/1").tensor_split == (3.0, 1.0)
    assert split_options(tensor_split="0.75,0.25").args() == ["--tensor-split", "0.75,0.25"]


def test_eight_gpus_split_by_free_memory() -> None:
    opts = split_options("layer", free_split(EIGHT), gpus=EIGHT)
    assert opts.args()[3] == "81042,81042,60311,81042,40370,40370,40370,12007"


def test_devices_by_index_are_named_from_the_inventory() -> None:
    assert split_options(devices=[4, 7], gpus=EIGHT).args() == ["--device", "CUDA4,CUDA7"]
    assert device_names(ROCM) == ["ROCm0", "ROCm1"]


def test_devices_by_name_and_rpc_devices_pass_through() -> None:
    opts = split_options(devices="CUDA1, RPC0[10.0.0.2:50052]", gpus=TWO)
    assert opts.devices == ("CUDA1", "RPC0[10.0.0.2:50052]")


def test_tensor_split_counts_only_the_chosen_devices() -> None:
    split_options("layer", [1, 1], devices=[0, 5], gpus=EIGHT)
    with pytest.raises(ConfigError, match="3 entries but only 2 device"):
        split_options("layer", [1, 1, 1], devices=[0, 5], gpus=EIGHT)


def test_main_gpu_means_single_gpu_mode() -> None:
    assert split_options(main_gpu=1, gpus=TWO).args() == ["--split-mode", "none", "--main-gpu", "1"]


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split_mode": "rows"}, "not one of 'layer', 'tensor', 'none'"),
        ({"split_mode": "row"}, "deprecated"),
        ({"tensor_split": [1, -1]}, "negative"),
        ({"tensor_split": [0, 0]}, "all zeros"),
        ({"tensor_split": "3,x"}, "not a list of numbers"),
        ({"tensor_split": []}, "empty"),
        ({"tensor_split": [1, float("nan")]}, "non-finite"),
        ({"tensor_split": [True, 1]}, "non-number"),
        ({"tensor_split": [1, 1, 1]}, "3 entries but only 2 device"),
        ({"main_gpu": 2}, r"main_gpu=2 but only 2 device\(s\)"),
        ({"main_gpu": -1}, "must be a GPU index"),
        ({"main_gpu": 1, "split_mode": "layer"}, "only applies with split_mode='none'"),
        ({"split_mode": "none", "tensor_split": [1, 1]}, "no effect with split_mode='none'"),
        ({"devices": [2]}, "not a detected GPU index"),
        ({"devices": "CUDA2"}, "not among the detected GPUs"),
        ({"devices": "CUDA0,CUDA0"}, "twice"),
        ({"devices": "none,CUDA0"}, "cannot be combined"),
        ({"devices": "CUDA 0"}, "not a device name"),
        ({"devices": []}, "empty"),
    ],
)
def test_bad_options_are_clear_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        split_options(**kwargs, gpus=TWO)  # type: ignore[arg-type]


def test_limits_of_llama_cpp() -> None:
    split_options(tensor_split=[1] * MAX_TENSOR_SPLIT)  # no inventory: only llama.cpp's limit
    with pytest.raises(ConfigError, match="at most 15"):
        split_options(tensor_split=[1] * 16)
    with pytest.raises(ConfigError, match="9 entries but only 8"):
        split_options(tensor_split=[1] * 9, gpus=EIGHT)
    split_options(tensor_split=[1] * 10, gpus=EIGHT, rpc_devices=2)


def test_integer_devices_need_an_inventory() -> None:
    with pytest.raises(ConfigError, match="no GPU inventory"):
        split_options(devices=[0])


def test_tensor_mode_needs_a_device() -> None:
    with pytest.raises(ConfigError, match="needs at least one GPU or RPC device"):
        split_options("tensor", gpus=[])
    assert split_options("tensor", gpus=[], rpc_devices=2).split_mode == "tensor"


# -- tensor mode: flash attention and unquantized KV cache ------------------------------------


def test_tensor_mode_turns_flash_attention_on() -> None:
    opts = split_options("tensor", gpus=EIGHT)
    assert server_split_args(opts, [], env={}) == ["--split-mode", "tensor", "--flash-attn", "on"]
    assert server_split_args(opts, ["-fa", "on", "-ctk", "bf16"], env={}) == [
        "--split-mode",
        "tensor",
    ]


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--flash-attn", "off"], {}, "requires flash attention, but --flash-attn is off"),
        (["-fa", "auto"], {}, "requires flash attention"),
        ([], {"LLAMA_ARG_FLASH_ATTN": "0"}, "requires flash attention"),
        (["-ctk", "q8_0"], {}, "unquantized KV cache, but --cache-type-k is 'q8_0'"),
        (["--cache-type-v=q4_0"], {}, "unquantized KV cache, but --cache-type-v is 'q4_0'"),
        ([], {"LLAMA_ARG_CACHE_TYPE_V": "iq4_nl"}, "--cache-type-v is 'iq4_nl'"),
    ],
)
def test_tensor_mode_refuses_what_llama_cpp_would_reject(
    extra: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        tensor_mode_args(extra, env)
    # The same check runs when tensor mode comes from extra_args rather than split_mode=.
    with pytest.raises(ConfigError, match=message):
        server_split_args(SplitOptions(), ["-sm", "tensor", *extra], env=env)


def test_flag_over_environment() -> None:
    # llama.cpp: a flag wins over its LLAMA_ARG_* variable.
    assert tensor_mode_args(["-fa", "on"], {"LLAMA_ARG_FLASH_ATTN": "off"}) == []


def test_quantized_cache_is_fine_outside_tensor_mode() -> None:
    assert server_split_args(split_options("layer"), ["-ctk", "q8_0"], env={}) == [
        "--split-mode",
        "layer",
    ]


def test_option_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="split_mode is given twice"):
        server_split_args(split_options("layer"), ["--split-mode", "none"], env={})
    with pytest.raises(ConfigError, match="tensor_split is given twice"):
        server_split_args(split_options(tensor_split=[1, 1]), ["-ts=1,2"], env={})


# -- defaults ---------------------------------------------------------------------------------


def test_defaults_follow_the_plan_only_when_there_is_something_to_split() -> None:
    assert default_split([], None) == SplitOptions()
    assert default_split(TWO[:1], [1.0]) == SplitOptions()
    assert default_split(TWO, free_split(TWO)).args() == ["--tensor-split", "23985,11855"]
    assert default_split(TWO, free_split(TWO), rpc=True) == SplitOptions()  # order unknown
    assert default_split(EIGHT, [1.0, 2.0]) == SplitOptions()  # plan for other GPUs
    assert default_split(EIGHT, None) == SplitOptions()  # plan leaves it to llama.cpp


# -- the real parser accepts what we assemble -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "opts",
    [
        split_options("layer", [3, 1]),
        split_options("tensor", [1] * MAX_TENSOR_SPLIT),
        split_options(main_gpu=0),
    ],
    ids=["layer", "tensor-15", "none"],
)
def test_llama_server_parses_assembled_flags(
    llama_build: LlamaBuild, opts: SplitOptions, tmp_path: Path
) -> None:
    # A missing model makes llama-server exit right after argument parsing; a flag it rejected
    # would instead print "error while handling argument" and the usage.
    args = server_split_args(opts, [], env={})
    proc = subprocess.run(
        [str(llama_build.bin_dir / "llama-server"), "-m", str(tmp_path / "absent.gguf"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "error while handling argument" not in proc.stderr
    assert "failed to load model" in proc.stderr


@pytest.mark.slow
def test_llama_server_refuses_sixteen_split_entries(llama_build: LlamaBuild) -> None:
    # Pins MAX_TENSOR_SPLIT to the binary: 16 entries are an argument error there.
    proc = subprocess.run(
        [str(llama_build.bin_dir / "llama-server"), "--tensor-split", ",".join(["1"] * 16)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "got 16 input configs" in proc.stderr
