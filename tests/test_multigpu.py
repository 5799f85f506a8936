"""Multi-GPU options: validation and flag assembly on recorded inventories, flags checked
against the real pinned ``llama-server`` argument parser.

No GPU is needed (none was available to this work): the inventories are the GPU-tool outputs in
``tests/data/gpu`` (2 mixed GeForce cards, 8 mixed 80/40 GB A100s, 2 MI210s), in the tools' exact
layouts with real cards' memory sizes, hand-written as that folder's README says, parsed by
``lmserv.gpu`` as on a real machine.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lmserv.errors import ConfigError
from lmserv.gpu import GPU, parse_nvidia_smi_csv, parse_rocm_smi_json, plan_offload
from lmserv.gpu._split import (
    MAX_TENSOR_SPLIT,
    SplitOptions,
    default_split,
    device_names,
    llama_server_args,
    server_split_args,
    split_options,
    tensor_mode_args,
)
from lmserv.install import LlamaBuild
from lmserv.server import LlamaServer
from lmserv.testing import write_counting_model

DATA = Path(__file__).parent / "data" / "gpu"  # shared with test_gpu.py; see its README

MIB = 1024 * 1024
TWO = parse_nvidia_smi_csv((DATA / "nvidia-smi-2gpu-units.csv").read_text())
EIGHT = parse_nvidia_smi_csv((DATA / "nvidia-smi-8gpu-nounits.csv").read_text())
ROCM = parse_rocm_smi_json((DATA / "rocm-smi-2gpu.json").read_text())


def free_split(gpus: list[GPU]) -> list[float]:
    return [float(g.free_memory // MIB) for g in gpus]


def test_recorded_inventories_parse() -> None:
    assert [g.index for g in EIGHT] == list(range(8))
    assert EIGHT[6].free_memory == 2150 * MIB and TWO[1].name == "NVIDIA GeForce RTX 3060"
    assert [g.backend for g in ROCM] == ["rocm", "rocm"]


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
    assert opts.args()[3] == "81050,40217,81050,81050,40326,40326,2150,40326"


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


def test_model_params_for_in_process_bindings() -> None:
    # enum llama_split_mode in include/llama.h: NONE 0, LAYER 1, ROW 2, TENSOR 3.
    params = split_options("tensor", [3, 1], gpus=TWO).model_params()
    assert params["split_mode"] == 3
    assert params["tensor_split"] == (3.0, 1.0, *[0.0] * 14)  # llama_max_devices() == 16
    assert split_options(main_gpu=1).model_params() == {"split_mode": 0, "main_gpu": 1}
    assert SplitOptions().model_params() == {}


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


def test_split_without_gpus_is_refused() -> None:
    with pytest.raises(ConfigError, match="no GPU was detected"):
        split_options(tensor_split=[3, 1], gpus=[])


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


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real GGUF (the tiny counting model: one layer plus the output), for plan_offload."""
    return write_counting_model(tmp_path_factory.mktemp("m") / "counting.gguf")


def test_defaults_follow_the_plan_only_when_there_is_something_to_split(tiny_model: Path) -> None:
    fit = plan_offload(tiny_model, TWO, ctx_size=512)
    explicit = plan_offload(tiny_model, TWO, ctx_size=512, llama_fit=False)
    assert fit.llama_fit and not explicit.llama_fit
    assert len(explicit.tensor_split) == 2 and sum(explicit.tensor_split) > 0
    planned = ",".join(str(n) for n in explicit.tensor_split)

    assert default_split([], None) == SplitOptions()
    assert default_split(TWO[:1], plan_offload(tiny_model, TWO[:1])) == SplitOptions()
    # llama.cpp's --fit does better (and a manual split would switch it off) ...
    assert default_split(TWO, fit) == SplitOptions()
    # ... except in tensor mode, where --fit is not implemented.
    assert default_split(TWO, fit, split_mode="tensor").args() == ["--tensor-split", planned]
    assert default_split(TWO, explicit).args() == ["--tensor-split", planned]
    assert default_split(TWO, explicit, rpc=True) == SplitOptions()  # workers come first
    assert default_split(EIGHT, explicit) == SplitOptions()  # a plan for other GPUs


def test_server_args_detect_nothing_without_options(tiny_model: Path) -> None:
    # gpus=[] would make tensor mode fail: proof that no inventory is consulted here.
    assert llama_server_args(tiny_model, gpus=[], env={}) == []
    assert llama_server_args(tiny_model, rpc="10.0.0.2:50052, gpu-2:50053", gpus=[], env={}) == [
        "--rpc",
        "10.0.0.2:50052,gpu-2:50053",
    ]


def test_server_args_on_eight_gpus(tiny_model: Path) -> None:
    args = llama_server_args(
        tiny_model, split_mode="tensor", gpus=EIGHT, ctx_size=512, parallel=2, env={}
    )
    plan = plan_offload(tiny_model, EIGHT, ctx_size=512, parallel=2)
    split = ",".join(str(n) for n in plan.tensor_split)
    assert args == ["--split-mode", "tensor", "--tensor-split", split, "--flash-attn", "on"]
    assert llama_server_args(tiny_model, devices=[6, 7], gpus=EIGHT, env={}) == [
        "--device",
        "CUDA6,CUDA7",
    ]


def test_server_args_with_rpc_skip_device_counts(tiny_model: Path) -> None:
    # A worker may expose several GPUs: a 4-way split over 1 local GPU + 2 workers is allowed.
    args = llama_server_args(
        tiny_model,
        rpc=["10.0.0.2:50052", "10.0.0.3:50052"],
        tensor_split=[1, 1, 1, 1],
        gpus=TWO[:1],
        env={},
    )
    assert args == ["--rpc", "10.0.0.2:50052,10.0.0.3:50052", "--tensor-split", "1,1,1,1"]
    with pytest.raises(ConfigError, match="listed twice"):
        llama_server_args(tiny_model, rpc=["h:1", "h:1"], gpus=[], env={})
    with pytest.raises(ConfigError, match="needs at least one GPU"):
        llama_server_args(tiny_model, split_mode="tensor", gpus=[], env={})


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


# -- through LlamaServer, on a recorded inventory ----------------------------------------------


@pytest.fixture
def eight_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine has no GPU: LlamaServer sees the recorded 8-GPU server instead."""
    monkeypatch.setattr("lmserv.gpu._split.detect_gpus", lambda: list(EIGHT))


@pytest.mark.slow
def test_llama_server_passes_split_options(
    eight_gpus: None, tiny_model: Path, llama_build: LlamaBuild
) -> None:
    server = LlamaServer(tiny_model, devices=[0, 2], tensor_split=[1, 1], n_ctx=512)
    argv = server.command()
    assert argv[argv.index("--device") + 1] == "CUDA0,CUDA2"
    assert argv[argv.index("--tensor-split") + 1] == "1,1"
    tensor = LlamaServer(tiny_model, split_mode="tensor", n_ctx=512).command()
    assert tensor[tensor.index("--split-mode") + 1] == "tensor"
    assert tensor[tensor.index("--flash-attn") + 1] == "on"
    assert "--tensor-split" in tensor  # from plan_offload: --fit does not work in tensor mode


@pytest.mark.slow
def test_llama_server_refuses_tensor_mode_with_quantized_cache_before_starting(
    eight_gpus: None, tiny_model: Path, llama_build: LlamaBuild
) -> None:
    server = LlamaServer(tiny_model, split_mode="tensor", extra_args=["-ctk", "q8_0"])
    with pytest.raises(ConfigError, match="requires an unquantized KV cache"):
        server.start()
    assert server.pid is None  # nothing was launched


def test_no_gpu_messages(tiny_model: Path) -> None:
    with pytest.raises(ConfigError, match="main_gpu=0 was given but no GPU was detected"):
        llama_server_args(tiny_model, main_gpu=0, gpus=[], env={})
