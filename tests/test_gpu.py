"""GPU detection on recorded tool outputs, and offload plans on real GGUF files."""

from __future__ import annotations

import bisect
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from _helpers import free_port
from _system_helpers import DATA, FakeNVML, fake_tool, write_llama_gguf
from lmserv import gpu
from lmserv.errors import InvalidModelFile, ModelNotFound
from lmserv.gpu import GPU, cuda_compute_capabilities, detect_gpus, plan_offload
from lmserv.gpu._plan import read_model_shape
from lmserv.install import LlamaBuild
from lmserv.testing import write_counting_model

MIB = 1024 * 1024
GIB = 1024 * MIB


def _path_with(monkeypatch: pytest.MonkeyPatch, bin_dir: Path) -> None:
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("HIP_VISIBLE_DEVICES", raising=False)


# --------------------------------------------------------------------------- this machine


def _real_nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True


def test_this_machine_without_gpu_tools_gives_an_empty_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if _real_nvml_works():
        pytest.skip("this machine has a working NVML")
    # The real pynvml is installed here but its library is not: NVML fails, no tool on PATH.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus(platform="linux") == []


def test_real_pynvml_failure_falls_back_to_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pynvml")
    if _real_nvml_works():
        pytest.skip("this machine has a working NVML; the fallback cannot be shown")
    fake_tool(tmp_path, "nvidia-smi", "nvidia-smi-1gpu-nounits.csv")
    _path_with(monkeypatch, tmp_path)
    (only,) = detect_gpus(platform="linux")  # nvml defaults to the real module
    assert only.source == "nvidia-smi"
    assert only.name == "NVIDIA H100 80GB HBM3"


# --------------------------------------------------------------------------- nvidia-smi


@pytest.mark.parametrize(
    ("output", "code"), [("nvidia-smi-0gpu.txt", 6), ("nvidia-smi-no-driver.txt", 9)]
)
def test_nvidia_smi_without_usable_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, code: int
) -> None:
    fake_tool(tmp_path, "nvidia-smi", output, code=code)
    _path_with(monkeypatch, tmp_path)
    assert detect_gpus(nvml=None, platform="linux") == []


def test_nvidia_smi_one_gpu_nounits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tool(tmp_path, "nvidia-smi", "nvidia-smi-1gpu-nounits.csv")
    _path_with(monkeypatch, tmp_path)
    assert detect_gpus(nvml=None, platform="linux") == [
        GPU(
            index=0,
            name="NVIDIA H100 80GB HBM3",
            backend="cuda",
            total_memory=81559 * MIB,
            free_memory=81008 * MIB,
            compute_capability="9.0",
            driver="550.54.15",
            uuid="GPU-9f3b1c2e-5d47-8a61-0c3e-7b2d4f6a8e10",
            source="nvidia-smi",
        )
    ]


def test_nvidia_smi_header_and_units_form() -> None:
    text = (DATA / "nvidia-smi-2gpu-units.csv").read_text()
    gpus = gpu.parse_nvidia_smi_csv(text)
    assert [
        (g.index, g.name, g.total_memory, g.free_memory, g.compute_capability) for g in gpus
    ] == [
        (0, "NVIDIA GeForce RTX 4090", 24564 * MIB, 23014 * MIB, "8.9"),
        (1, "NVIDIA GeForce RTX 3060", 12288 * MIB, 11822 * MIB, "8.6"),
    ]
    assert {g.driver for g in gpus} == {"535.183.01"}


def test_nvidia_smi_eight_mixed_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tool(tmp_path, "nvidia-smi", "nvidia-smi-8gpu-nounits.csv")
    _path_with(monkeypatch, tmp_path)
    gpus = detect_gpus(nvml=None, platform="linux")
    assert [g.index for g in gpus] == list(range(8))
    assert [g.total_memory // MIB for g in gpus] == [81920] * 4 + [40960] * 4
    assert gpus[6].free_memory == 2150 * MIB  # a busy card keeps its real free figure
    assert cuda_compute_capabilities(gpus) == ["8.0"]


def test_old_driver_without_compute_cap_is_queried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_tool(
        tmp_path,
        "nvidia-smi",
        "nvidia-smi-1gpu-old-driver.csv",
        reject="compute_cap",
        reject_output="nvidia-smi-old-driver-compute-cap-error.txt",
    )
    _path_with(monkeypatch, tmp_path)
    (t4,) = detect_gpus(nvml=None, platform="linux")
    assert (t4.name, t4.total_memory, t4.compute_capability, t4.driver) == (
        "Tesla T4",
        15360 * MIB,
        None,
        "470.182.03",
    )


def test_garbage_rows_are_skipped_not_raised() -> None:
    text = "0, GPU-x, Broken, [N/A], [N/A], 8.0, 1\nnot,a,row\n"
    assert gpu.parse_nvidia_smi_csv(text) == []
    assert gpu.parse_nvidia_smi_csv("") == []


def test_cuda_visible_devices_filters_and_renumbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_tool(tmp_path, "nvidia-smi", "nvidia-smi-8gpu-nounits.csv")
    _path_with(monkeypatch, tmp_path)
    env = {"CUDA_VISIBLE_DEVICES": "6,GPU-0a1b2c3d-0000-1111-2222-333344445551"}
    gpus = detect_gpus(nvml=None, platform="linux", environ=env)
    assert [(g.index, g.uuid[-1], g.free_memory // MIB) for g in gpus] == [
        (0, "6", 2150),
        (1, "1", 40217),
    ]
    # CUDA stops at the first entry naming no device; an empty list hides every GPU.
    assert (
        len(detect_gpus(nvml=None, platform="linux", environ={"CUDA_VISIBLE_DEVICES": "0,9,1"}))
        == 1
    )
    assert detect_gpus(nvml=None, platform="linux", environ={"CUDA_VISIBLE_DEVICES": ""}) == []
    mig = {"CUDA_VISIBLE_DEVICES": "MIG-4b2c0d9e-1f3a-5b6c-8d7e-9f0a1b2c3d4e"}
    assert len(detect_gpus(nvml=None, platform="linux", environ=mig)) == 8  # cannot resolve


# --------------------------------------------------------------------------- NVML


@pytest.mark.parametrize("as_bytes", [False, True])
def test_nvml_two_gpus(as_bytes: bool) -> None:
    nvml = FakeNVML("2gpu", as_bytes=as_bytes)
    gpus = detect_gpus(nvml=nvml, which=lambda _n: None, platform="linux", environ={})
    assert [(g.name, g.compute_capability, g.driver, g.source) for g in gpus] == [
        ("NVIDIA GeForce RTX 4090", "8.9", "535.183.01", "nvml"),
        ("NVIDIA GeForce RTX 3060", "8.6", "535.183.01", "nvml"),
    ]
    assert gpus[0].free_memory == 24132321280
    assert nvml.shutdowns == 1


def test_nvml_one_and_eight_gpus() -> None:
    (h100,) = detect_gpus(nvml=FakeNVML("1gpu"), which=lambda _n: None, environ={})
    assert h100.total_memory == 85520809984
    eight = detect_gpus(nvml=FakeNVML("8gpu"), which=lambda _n: None, environ={})
    assert len(eight) == 8
    assert sum(g.total_memory for g in eight) == 4 * 85899345920 + 4 * 42949672960


def test_nvml_failure_uses_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tool(tmp_path, "nvidia-smi", "nvidia-smi-2gpu-units.csv")
    _path_with(monkeypatch, tmp_path)
    gpus = detect_gpus(nvml=FakeNVML("1gpu", fail_init=True), platform="linux")
    assert [g.source for g in gpus] == ["nvidia-smi", "nvidia-smi"]


# --------------------------------------------------------------------------- ROCm and Metal


def test_rocm_smi_two_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tool(tmp_path, "rocm-smi", "rocm-smi-2gpu.json")
    _path_with(monkeypatch, tmp_path)
    gpus = detect_gpus(nvml=None, platform="linux")
    assert [(g.backend, g.name, g.compute_capability, g.driver) for g in gpus] == [
        ("rocm", "AMD Instinct MI210", "gfx90a", "6.3.6")
    ] * 2
    assert gpus[1].free_memory == 68702699520 - 34359738368
    assert cuda_compute_capabilities(gpus) == []


def test_rocm_smi_older_key_spelling() -> None:
    (card,) = gpu.parse_rocm_smi_json((DATA / "rocm-smi-1gpu-older.json").read_text())
    assert (card.name, card.total_memory, card.driver) == (
        "Radeon RX 7900 XTX",
        25753026560,
        "6.2.4",
    )
    assert gpu.parse_rocm_smi_json("ERROR: No AMD GPUs found") == []


def test_apple_silicon_is_one_metal_device() -> None:
    answers = {"hw.memsize": "68719476736\n", "machdep.cpu.brand_string": "Apple M2 Max\n"}

    def run(cmd: list[str]) -> str | None:
        return answers.get(cmd[-1])

    (metal,) = detect_gpus(
        nvml=None, which=lambda _n: None, run=run, platform="darwin", machine="arm64", environ={}
    )
    assert (metal.backend, metal.name, metal.total_memory) == ("metal", "Apple M2 Max", 64 * GIB)
    assert metal.free_memory == 48 * GIB  # 3/4 of a 64 GiB machine, Metal's working-set limit
    assert (
        detect_gpus(
            nvml=None,
            which=lambda _n: None,
            run=run,
            platform="darwin",
            machine="x86_64",
            environ={},
        )
        == []
    )


# --------------------------------------------------------------------------- plan_offload


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf", n_layer=6)


def _gpus(*free_mib: float) -> list[GPU]:
    return [
        GPU(i, f"GPU{i}", "cuda", int(max(f, 1) * 2 * MIB), int(f * MIB), "8.6", "550")
        for i, f in enumerate(free_mib)
    ]


def test_header_is_read_exactly(model: Path) -> None:
    import gguf

    shape = read_model_shape(model)
    reader = gguf.GGUFReader(model)
    assert shape.weights_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert (shape.architecture, shape.n_layer, shape.n_ctx_train) == ("llama", 6, 2048)
    # 2 KV heads x (16 + 16) dims per token and layer
    assert shape.kv_values_per_token == (64,) * 6
    assert shape.output_bytes == (300 * 64 + 64) * 4
    assert shape.input_bytes == 300 * 64 * 4


def test_kv_arithmetic(model: Path) -> None:
    plan = plan_offload(model, [], ctx_size=1000, parallel=3, cache_type="f16")
    assert plan.kv_bytes == 6 * 1000 * 3 * 64 * 2
    q8 = plan_offload(model, [], ctx_size=1000, parallel=3, cache_type="q8_0")
    assert q8.kv_bytes == 6 * int(1000 * 3 * 64 * 34 / 32)


def test_no_gpu_plan_is_cpu_only(model: Path) -> None:
    plan = plan_offload(model, [], ctx_size=512)
    assert (plan.n_gpu_layers, plan.tensor_split, plan.devices, plan.fits_fully) == (
        0,
        (),
        (),
        False,
    )
    assert "-ngl 0" in plan.explanation and "CPU" in plan.explanation
    assert plan.ctx_size == 512 and plan.server_args == ("-c", "512", "-np", "1")


def test_one_big_gpu_takes_everything(model: Path) -> None:
    h100 = gpu.parse_nvidia_smi_csv((DATA / "nvidia-smi-1gpu-nounits.csv").read_text())
    plan = plan_offload(model, h100, parallel=2, llama_fit=False)
    assert plan.fits_fully and plan.n_gpu_layers == 7  # 6 layers + the output layer
    assert plan.ctx_size == 2048  # the model's own context
    assert plan.explicit_args == ("-ngl", "7", "-c", "4096", "-np", "2")
    assert plan.server_args == plan.explicit_args  # no --fit: the plan is the answer
    assert plan.devices[0].holds_output


def _llama_cpp_layer_devices(split: tuple[int, ...], ngl: int, n_layer: int) -> list[int]:
    """llama.cpp's own rule (llama-model.cpp, load_tensors) for units 0..n_layer: -1 is CPU."""
    cum, total = [], 0.0
    for s in split:
        total += s
        cum.append(total)
    cum = [c / total for c in cum]
    start = max(n_layer + 1 - ngl, 0)
    act = min(ngl, n_layer + 1)
    out = []
    for unit in range(n_layer + 1):
        if unit < start or unit - start >= act:
            out.append(-1)
        else:
            out.append(bisect.bisect_right(cum, (unit - start) / act))
    return out


@pytest.mark.parametrize(
    "free_mib",
    [
        (8, 8),
        (10, 6.3),
        (6.3, 10),
        (7, 5.6, 5.6, 43, 6, 6, 5.2, 7),
        (5.5, 5.5),
        (4.0, 12),
        (4.2, 4.2),
        (4.6, 3.6),
        (1, 1),
    ],
)
def test_plans_never_exceed_free_memory(model: Path, free_mib: tuple[float, ...]) -> None:
    gpus = _gpus(*free_mib)
    reserve = MIB // 4
    plan = plan_offload(model, gpus, ctx_size=2048, reserve_bytes=reserve)
    for d, g in zip(plan.devices, gpus, strict=True):
        assert d.total_bytes <= g.free_memory - reserve, plan.explanation
        assert (d.layers == 0) == (d.total_bytes == 0)
    assert sum(d.layers for d in plan.devices) == plan.n_gpu_layers
    if plan.tensor_split:
        # llama.cpp, given -ngl and -ts, places exactly the planned layer counts on each GPU
        placed = _llama_cpp_layer_devices(plan.tensor_split, plan.n_gpu_layers, plan.n_layer)
        assert [placed.count(i) for i in range(len(gpus))] == [d.layers for d in plan.devices]


def test_split_follows_free_memory(model: Path) -> None:
    plan = plan_offload(model, _gpus(60, 20), ctx_size=512, reserve_bytes=0)
    assert plan.fits_fully
    first, second = (d.layers for d in plan.devices)
    assert first > second > 0
    assert plan.tensor_split == (first, second)


def test_partial_offload_and_nothing_fits(model: Path) -> None:
    partial = plan_offload(model, _gpus(4.5), ctx_size=2048, reserve_bytes=0)
    assert 0 < partial.n_gpu_layers < 7 and not partial.fits_fully
    assert partial.host_bytes > read_model_shape(model).input_bytes
    assert "in host memory" in partial.explanation
    none = plan_offload(model, _gpus(0.5), ctx_size=2048, reserve_bytes=0)
    assert none.n_gpu_layers == 0 and none.devices[0].total_bytes == 0


def test_eight_recorded_gpus(model: Path) -> None:
    gpus = gpu.parse_nvidia_smi_csv((DATA / "nvidia-smi-8gpu-nounits.csv").read_text())
    plan = plan_offload(model, gpus, ctx_size=4096, parallel=4)
    assert plan.fits_fully and len(plan.tensor_split) == 8
    assert plan.server_args == ("-c", "16384", "-np", "4")  # llama.cpp's --fit does the rest
    assert "--fit" in plan.explanation and "-ts" in plan.explanation
    assert json.loads(json.dumps(plan.to_dict()))["n_gpu_layers"] == 7


def test_tied_output_counts_the_copy(tmp_path: Path) -> None:
    tied = write_llama_gguf(tmp_path / "tied.gguf", tied=True)
    shape = read_model_shape(tied)
    assert shape.tied_output and shape.output_bytes == shape.input_bytes + 64 * 4


def test_bad_inputs(tmp_path: Path, model: Path) -> None:
    with pytest.raises(ModelNotFound, match="does not exist"):  # as from every entry point
        plan_offload(tmp_path / "missing.gguf", [])
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(InvalidModelFile, match="not a readable GGUF"):
        plan_offload(junk, [])
    with pytest.raises(ValueError, match="parallel"):
        plan_offload(model, [], parallel=0)
    with pytest.raises(ValueError, match="cache_type"):
        plan_offload(model, [], cache_type="q3")


# --------------------------------------------------------------------------- against llama.cpp


def _llama_server_buffers(server: Path, model: Path, args: list[str], log: Path) -> str:
    """Start llama-server on ``model``, wait until it has allocated everything, stop it; its log."""
    cmd = [str(server), "-m", str(model), "--port", str(free_port()), "-t", "1", "-lv", "4", *args]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            for _ in range(600):
                if "listening on" in log.read_text(errors="replace") or proc.poll() is not None:
                    break
                time.sleep(0.1)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return log.read_text(errors="replace")


def _mib_in(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in llama-server's log"
    return float(m.group(1))


@pytest.mark.slow
def test_estimate_matches_llama_cpp_allocations(tmp_path: Path, llama_build: LlamaBuild) -> None:
    """The counting model from lmserv.testing, loaded by the real llama-server on the CPU: its
    model and KV buffers equal the plan's figures; its compute buffer is below our estimate."""
    model = write_counting_model(tmp_path / "counting.gguf")
    plan = plan_offload(model, [], ctx_size=2048, parallel=2)
    log = _llama_server_buffers(
        llama_build.binary("llama-server"), model, list(plan.explicit_args), tmp_path / "srv.log"
    )
    assert "n_ctx                 = 4096" in log and "n_seq_max             = 2" in log
    kv = _mib_in(r"llama_kv_cache: size =\s*([\d.]+) MiB", log)
    weights = _mib_in(r"model buffer size =\s*([\d.]+) MiB", log)
    compute = _mib_in(r"compute buffer size =\s*([\d.]+) MiB", log)
    assert kv == pytest.approx(plan.kv_bytes / MIB, abs=0.006)
    assert weights == pytest.approx(plan.weights_bytes / MIB, abs=0.006)
    # conservative, but not wildly so
    assert compute * MIB <= plan.compute_bytes <= 2 * compute * MIB
    assert "offloaded 0/2 layers to GPU" in log or "CPU" in log


# --- outputs captured on real machines (see tests/data/gpu/README.md for where) -------------


def test_captured_four_a800_machine() -> None:
    gpus = gpu.parse_nvidia_smi_csv((DATA / "captured-nvidia-smi-4xA800.csv").read_text())
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert {g.name for g in gpus} == {"NVIDIA A800-SXM4-80GB"}
    assert all(g.total_memory == 81920 * 2**20 and g.free_memory == 81176 * 2**20 for g in gpus)


def test_captured_loaded_rtx4070_reports_what_is_really_free() -> None:
    (g,) = gpu.parse_nvidia_smi_csv((DATA / "captured-nvidia-smi-rtx4070-loaded.csv").read_text())
    assert (g.total_memory, g.free_memory) == (12282 * 2**20, 631 * 2**20)
    assert g.compute_capability is None  # not in that query: unknown, not guessed


def test_captured_extra_columns_are_ignored() -> None:
    (g,) = gpu.parse_nvidia_smi_csv((DATA / "captured-nvidia-smi-rtx5070ti.csv").read_text())
    assert g.name == "NVIDIA GeForce RTX 5070 Ti"
    assert g.free_memory == 14109 * 2**20


def test_captured_unified_memory_gpu_without_sizes_is_left_out_not_a_crash() -> None:
    text = (DATA / "captured-nvidia-smi-gb10-unified.csv").read_text()
    assert gpu.parse_nvidia_smi_csv(text) == []


def test_plan_over_captured_a800s_splits_evenly(tmp_path: Path) -> None:
    gpus = gpu.parse_nvidia_smi_csv((DATA / "captured-nvidia-smi-4xA800.csv").read_text())
    model = write_llama_gguf(tmp_path / "m.gguf")
    plan = plan_offload(model, gpus, ctx_size=2048, parallel=1)
    assert len(plan.tensor_split) == 4
    assert max(plan.tensor_split) - min(plan.tensor_split) <= 1
