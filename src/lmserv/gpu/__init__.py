"""GPUs: which ones this machine has, how a model would spread over them, and split options.

Three modules, imported one way (``_detect`` <- ``_plan`` <- ``_split``):

- ``_detect``: :func:`detect_gpus` (NVML, nvidia-smi, rocm-smi, Metal) and the :class:`GPU` record;
- ``_plan``: :func:`plan_offload`, a GGUF file and a GPU list -> ``-ngl`` / ``--tensor-split``;
- ``_split``: :class:`SplitOptions`, the multi-GPU / RPC options shared by ``LlamaServer`` and
  ``Llama``.
"""

from __future__ import annotations

from lmserv.gpu._detect import (
    GPU,
    Backend,
    cuda_compute_capabilities,
    detect_gpus,
    gpus_from_nvml,
    parse_nvidia_smi_csv,
    parse_rocm_smi_json,
)
from lmserv.gpu._plan import DevicePlan, OffloadPlan, plan_offload
from lmserv.gpu._split import SplitOptions, split_options

__all__ = [
    "GPU",
    "Backend",
    "DevicePlan",
    "OffloadPlan",
    "SplitOptions",
    "cuda_compute_capabilities",
    "detect_gpus",
    "gpus_from_nvml",
    "parse_nvidia_smi_csv",
    "parse_rocm_smi_json",
    "plan_offload",
    "split_options",
]
