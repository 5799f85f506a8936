"""Which GPUs this machine has.

:func:`detect_gpus` asks, in order, NVML (the ``nvidia-ml-py`` package, when its library loads),
``nvidia-smi``, ``rocm-smi`` and, on Apple Silicon, ``sysctl`` for the unified memory Metal uses.
A machine without a GPU, a missing tool or a tool that fails all give fewer GPUs (logged at
DEBUG), never an exception: callers treat an empty list as "run on the CPU".

CUDA GPUs are listed in the order CUDA numbers them when ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (NVML
and nvidia-smi use the PCI order), filtered and renumbered by ``CUDA_VISIBLE_DEVICES`` like
llama.cpp will see them. :func:`plan_offload` (in :mod:`lmserv.gpu._plan`) turns a GGUF file and
this list into ``-ngl`` / ``--tensor-split`` values with the arithmetic shown.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform as _platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = [
    "GPU",
    "Backend",
    "cuda_compute_capabilities",
    "detect_gpus",
    "gpus_from_nvml",
    "parse_nvidia_smi_csv",
    "parse_rocm_smi_json",
]

log = logging.getLogger(__name__)

Backend = Literal["cuda", "rocm", "metal"]
Which = Callable[[str], "str | None"]
Runner = Callable[[list[str]], "str | None"]

MIB = 1024 * 1024
_TIMEOUT_S = 20.0

# The query lmserv sends to nvidia-smi; parse_nvidia_smi_csv also reads the header/units form.
NVIDIA_SMI_FIELDS = (
    "index",
    "uuid",
    "name",
    "memory.total",
    "memory.free",
    "compute_cap",
    "driver_version",
)


@dataclass(frozen=True)
class GPU:
    """One GPU as llama.cpp will number it.

    ``total_memory``/``free_memory`` are bytes (for Metal, an estimate of what the GPU may use of
    the unified memory). ``compute_capability`` is ``"8.6"`` for CUDA, the ``gfx`` target (e.g.
    ``"gfx90a"``) for ROCm and ``None`` for Metal. ``source`` names the tool that reported it.
    """

    index: int
    name: str
    backend: Backend
    total_memory: int
    free_memory: int
    compute_capability: str | None
    driver: str
    uuid: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``lmserv gpu --json`` prints per GPU)."""
        return asdict(self)


# --------------------------------------------------------------------------- NVIDIA: NVML


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def gpus_from_nvml(nvml: Any) -> list[GPU]:
    """Query every NVIDIA GPU through ``nvml`` (the ``pynvml`` module, or one shaped like it).

    Raises whatever ``nvml`` raises (``pynvml.NVMLError`` when the driver is missing); the caller
    falls back to nvidia-smi.
    """
    nvml.nvmlInit()
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus: list[GPU] = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                cap: str | None = f"{int(major)}.{int(minor)}"
            except nvml.NVMLError:
                cap = None
            try:
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            except nvml.NVMLError:
                uuid = ""
            gpus.append(
                GPU(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    backend="cuda",
                    total_memory=int(memory.total),
                    free_memory=int(memory.free),
                    compute_capability=cap,
                    driver=driver,
                    uuid=uuid,
                    source="nvml",
                )
            )
        return gpus
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # shutting down must not hide the answer or the first error
            log.debug("nvmlShutdown failed", exc_info=True)


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


# --------------------------------------------------------------------------- NVIDIA: nvidia-smi


def _mib(field: str) -> int | None:
    """``"81559 MiB"`` or ``"81559"`` (nounits) to bytes; ``[N/A]`` and the like to ``None``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(MiB|GiB|KiB)?\s*", field)
    if not m:
        return None
    scale = {"KiB": 1024, "GiB": 1024 * MIB}.get(m.group(2) or "MiB", MIB)
    return int(float(m.group(1)) * scale)


def parse_nvidia_smi_csv(text: str) -> list[GPU]:
    """Parse the output of ``nvidia-smi --query-gpu=<NVIDIA_SMI_FIELDS> --format=csv[,...]``.

    Accepts the header line or not (``noheader``), units or not (``nounits``), and the field
    subset without ``compute_cap`` that drivers older than 510 need. Rows that do not parse
    are skipped.

    >>> [g.name for g in parse_nvidia_smi_csv(
    ...     "0, GPU-1, NVIDIA L4, 23034, 22711, 8.9, 550.54.15\\n")]
    ['NVIDIA L4']
    """
    rows = [r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if r]
    if not rows:
        return []
    fields = list(NVIDIA_SMI_FIELDS)
    header = [col.split(" [")[0].strip() for col in rows[0]]
    if "memory.total" in header:  # a header line ("memory.total [MiB]", ...), in any order
        fields = header
        rows = rows[1:]
    elif rows and len(rows[0]) == len(fields) - 1:
        fields.remove("compute_cap")
    gpus: list[GPU] = []
    for position, row in enumerate(rows):
        if len(row) != len(fields):
            log.debug("skipping nvidia-smi row %r (expected %d fields)", row, len(fields))
            continue
        rec = {key: value.strip() for key, value in zip(fields, row, strict=True)}
        rec.setdefault("index", str(position))  # nvidia-smi lists GPUs in index order
        total = _mib(rec.get("memory.total", ""))
        free = _mib(rec.get("memory.free", ""))
        if not rec["index"].isdigit() or total is None:
            # e.g. DGX Spark (GB10, unified memory) prints "[N/A]" for memory.total.
            log.info("nvidia-smi reports no memory size for %r; leaving it out", rec.get("name"))
            continue
        cap = rec.get("compute_cap", "")
        gpus.append(
            GPU(
                index=int(rec["index"]),
                name=rec.get("name", "NVIDIA GPU"),
                backend="cuda",
                total_memory=total,
                free_memory=free if free is not None else total,
                compute_capability=cap if re.fullmatch(r"\d+\.\d+", cap) else None,
                driver=rec.get("driver_version", ""),
                uuid=rec.get("uuid", ""),
                source="nvidia-smi",
            )
        )
    return gpus


def _run(cmd: list[str]) -> str | None:
    """Run a query tool; its stdout, or ``None`` when it cannot run or fails."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False, errors="replace"
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("%s could not run: %s", cmd[0], exc)
        return None
    if proc.returncode != 0:
        log.debug("%s exited %d: %s", cmd[0], proc.returncode, (proc.stderr or proc.stdout)[-300:])
        return None
    return proc.stdout


def _from_nvidia_smi(smi: str, run: Runner) -> list[GPU]:
    out = run([smi, f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}", "--format=csv,noheader,nounits"])
    if out is None:  # drivers before 510 reject the compute_cap field
        older = [f for f in NVIDIA_SMI_FIELDS if f != "compute_cap"]
        out = run([smi, f"--query-gpu={','.join(older)}", "--format=csv,noheader,nounits"])
    return parse_nvidia_smi_csv(out) if out else []


# --------------------------------------------------------------------------- AMD: rocm-smi


def _get(record: dict[str, Any], *names: str) -> str:
    lowered = {k.lower(): v for k, v in record.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value not in (None, "", "N/A"):
            return str(value)
    return ""


def parse_rocm_smi_json(text: str) -> list[GPU]:
    """Parse ``rocm-smi --showproductname --showmeminfo vram --showdriverversion --json``.

    Key spelling varies across ROCm releases (``Card series`` / ``Card Series``), so keys are
    matched without case. Unparseable output gives an empty list.
    """
    try:
        data = json.loads(text)
    except ValueError:
        log.debug("rocm-smi printed no JSON: %r", text[:200])
        return []
    if not isinstance(data, dict):
        return []
    system = data.get("system", {})
    driver = _get(system, "Driver version") if isinstance(system, dict) else ""
    gpus: list[GPU] = []
    cards = [(k, v) for k, v in data.items() if re.fullmatch(r"card\d+", k) and isinstance(v, dict)]
    for key, card in sorted(cards, key=lambda kv: int(kv[0][4:])):
        total = _get(card, "VRAM Total Memory (B)")
        if not total.isdigit():
            continue
        used = _get(card, "VRAM Total Used Memory (B)")
        name = _get(card, "Card Series", "Card series", "Card Model", "Card model") or "AMD GPU"
        gfx = _get(card, "GFX Version", "gfx_version") or None
        gpus.append(
            GPU(
                index=int(key[4:]),
                name=name,
                backend="rocm",
                total_memory=int(total),
                free_memory=int(total) - (int(used) if used.isdigit() else 0),
                compute_capability=gfx,
                driver=driver or _get(card, "Driver version"),
                uuid=_get(card, "Unique ID", "GUID"),
                source="rocm-smi",
            )
        )
    return gpus


# --------------------------------------------------------------------------- Apple: Metal


def _from_metal(run: Runner) -> list[GPU]:
    """Apple Silicon: one Metal device sharing the machine's unified memory.

    Metal lets a process keep about ``recommendedMaxWorkingSetSize`` resident, roughly 2/3 of
    the RAM on small machines and 3/4 on larger ones; that is reported as free memory.
    """
    memsize = run(["sysctl", "-n", "hw.memsize"])
    if not memsize or not memsize.strip().isdigit():
        return []
    total = int(memsize.strip())
    usable = total * 3 // 4 if total > 36 * 1024 * MIB else total * 2 // 3
    name = (run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "Apple Silicon").strip()
    return [
        GPU(
            index=0,
            name=name,
            backend="metal",
            total_memory=total,
            free_memory=usable,
            compute_capability=None,
            driver=f"macOS {_platform.mac_ver()[0]}".strip(),
            source="sysctl",
        )
    ]


# --------------------------------------------------------------------------- all together


def _visible(gpus: list[GPU], spec: str | None) -> list[GPU]:
    """Apply a ``CUDA_VISIBLE_DEVICES``-style list: keep, reorder and renumber from 0.

    Like CUDA, the list stops at the first index or ``GPU-`` UUID that names no device. Forms
    this cannot resolve (``MIG-...`` instances) leave the list as reported, unfiltered.
    """
    if spec is None:
        return gpus
    entries = [e.strip() for e in spec.split(",")]
    if any(e and not (e.isdigit() or e.startswith("GPU-")) for e in entries):
        log.debug("cannot resolve visible-devices list %r; listing every GPU", spec)
        return gpus
    chosen: list[GPU] = []
    for entry in entries:
        match = [
            g
            for g in gpus
            if (entry.isdigit() and g.index == int(entry))
            or (entry.startswith("GPU-") and g.uuid.startswith(entry))
        ]
        if not match or match[0] in chosen:
            break
        chosen.append(match[0])
    return [_renumber(g, i) for i, g in enumerate(chosen)]


def _renumber(gpu: GPU, index: int) -> GPU:
    return GPU(**{**asdict(gpu), "index": index})


_AUTO: Any = object()


def detect_gpus(
    *,
    nvml: Any = _AUTO,
    which: Which = shutil.which,
    run: Runner = _run,
    platform: str | None = None,
    machine: str | None = None,
    environ: dict[str, str] | None = None,
) -> list[GPU]:
    """Every GPU llama.cpp could use here, CUDA first, then ROCm, then Metal.

    Never raises: a missing driver, tool or library gives fewer (or no) GPUs. The keyword
    arguments exist for tests and unusual setups: ``nvml`` is the ``pynvml`` module (``None`` to
    skip NVML), ``which``/``run`` find and run ``nvidia-smi``/``rocm-smi``/``sysctl``.
    """
    platform = platform or sys.platform
    machine = machine or _platform.machine()
    env = os.environ if environ is None else environ
    if nvml is _AUTO:
        nvml = _import_pynvml()
    cuda: list[GPU] = []
    if nvml is not None:
        try:
            cuda = gpus_from_nvml(nvml)
        except Exception as exc:  # NVMLError subclasses, or a driver/library mismatch
            log.debug("NVML unavailable (%s); trying nvidia-smi", exc)
    if not cuda:
        smi = which("nvidia-smi")
        if smi:
            cuda = _from_nvidia_smi(smi, run)
    gpus = _visible(cuda, env.get("CUDA_VISIBLE_DEVICES"))

    rocm_smi = which("rocm-smi")
    if rocm_smi:
        out = run(
            [
                rocm_smi,
                "--showproductname",
                "--showmeminfo",
                "vram",
                "--showdriverversion",
                "--json",
            ]
        )
        rocm = parse_rocm_smi_json(out) if out else []
        gpus += _visible(rocm, env.get("HIP_VISIBLE_DEVICES") or env.get("ROCR_VISIBLE_DEVICES"))

    if platform == "darwin" and machine == "arm64":
        gpus += _from_metal(run)
    return gpus


def cuda_compute_capabilities(gpus: Sequence[GPU] | None = None) -> list[str]:
    """Distinct compute capabilities (``"8.6"``) of the CUDA GPUs, sorted; for the build's
    ``CMAKE_CUDA_ARCHITECTURES``. Detects the GPUs when ``gpus`` is ``None``.

    >>> cuda_compute_capabilities([GPU(0, "a", "cuda", 1, 1, "9.0", ""),
    ...                            GPU(1, "b", "cuda", 1, 1, "8.6", "")])
    ['8.6', '9.0']
    """
    found = detect_gpus() if gpus is None else gpus
    caps = {g.compute_capability for g in found if g.backend == "cuda" and g.compute_capability}
    return sorted(caps, key=lambda c: tuple(int(p) for p in c.split(".")))
