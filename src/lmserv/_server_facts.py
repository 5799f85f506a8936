"""What :class:`~lmserv.LlamaServer` can know about a start without llama-server's debug log.

At its default verbosity llama-server logs the slots and the context but not the devices, the
weight buffers or the offloaded layers: libllama's load report is at llama.cpp's trace level
(``-lv 4``), which also logs on every request and costs a few percent of throughput. So
LlamaServer runs at the default level and reads the rest elsewhere, while the model loads (on a
thread, so it adds nothing to the time to ready):

- the model's own header (:mod:`lmserv._gguf_meta`): its layer count and whether it carries a
  chat template (without one, llama-server and ``Llama`` both fall back to ChatML: worth saying);
- the build's backend libraries beside the binary: a build without a GPU backend puts every
  weight on the CPU; with one, :func:`lmserv.gpu.detect_gpus` names the GPUs present.

Where the log does carry the load report (``extra_args=("-lv", "4")``), it wins: it is what
llama.cpp actually did, not what the flags imply.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from lmserv._gguf_meta import read_gguf_scalars
from lmserv.errors import LmservError

__all__ = ["LaunchFacts", "StartFacts", "gpu_backend", "model_header"]

log = logging.getLogger(__name__)

_GPU_LIBS = re.compile(r"(?:lib)?ggml-(cuda|hip|musa|vulkan|metal|sycl|opencl|cann)\b", re.I)
_ANY_GGML = re.compile(r"(?:lib)?ggml-(cpu|base)\b", re.I)


@dataclass(frozen=True)
class ModelHeader:
    """What the GGUF header says that the start-up report needs."""

    layers: int | None  # llama.cpp's count: the blocks plus the output layer
    chat_template: bool


@functools.lru_cache(maxsize=32)
def _header(path: str, size: int, mtime_ns: int) -> ModelHeader:
    del size, mtime_ns  # the cache key: a replaced file is read again
    values = read_gguf_scalars(path)
    arch = values.get("general.architecture")
    blocks = values.get(f"{arch}.block_count") if isinstance(arch, str) else None
    layers = int(blocks) + 1 if isinstance(blocks, int) else None
    return ModelHeader(layers=layers, chat_template="tokenizer.chat_template" in values)


def model_header(path: Path) -> ModelHeader | None:
    """The header facts of the model at ``path``; None when it cannot be read (not GGUF, a
    split or remote model): llama-server will say what is wrong with it."""
    try:
        st = path.stat()
        return _header(str(path), st.st_size, st.st_mtime_ns)
    except (OSError, LmservError) as exc:
        log.debug("cannot read the GGUF header of %s: %s", path, exc)
        return None


def gpu_backend(binary: Path) -> bool | None:
    """Whether the llama.cpp build of ``binary`` has a GPU backend.

    Read from the shared libraries beside it (or in ``LLAMA_LIB_DIR``): True with a
    ``ggml-cuda``/``-hip``/``-vulkan``/... library, False with only ``ggml-cpu``/``-base``,
    None when there are none to see (a static build: unknown).
    """
    folders = [binary.parent]
    if os.environ.get("LLAMA_LIB_DIR"):
        folders.append(Path(os.environ["LLAMA_LIB_DIR"]))
    seen_ggml = False
    for folder in folders:
        try:
            names = [p.name for p in folder.iterdir()]
        except OSError:
            continue
        if any(_GPU_LIBS.match(n) for n in names):
            return True
        seen_ggml = seen_ggml or any(_ANY_GGML.match(n) for n in names)
    return False if seen_ggml else None


@functools.lru_cache(maxsize=1)
def _gpu_names() -> tuple[str, ...]:
    from lmserv.gpu import detect_gpus  # late: NVML and friends cost time, wanted rarely

    prefix = {"cuda": "CUDA", "rocm": "ROCm", "metal": "Metal"}
    return tuple(f"{prefix.get(g.backend, g.backend)}{g.index}" for g in detect_gpus())


@dataclass(frozen=True)
class StartFacts:
    """Facts gathered while llama-server loads: the header, and the GPUs the build can use."""

    header: ModelHeader | None
    gpus: tuple[str, ...]
    gpu_build: bool | None


class LaunchFacts:
    """Gathers :class:`StartFacts` on a thread started with llama-server; :meth:`result` joins."""

    def __init__(self, model: Path, binary: Path) -> None:
        self._model = model
        self._binary = binary
        self._facts: StartFacts | None = None
        self._thread = threading.Thread(target=self._run, name="lmserv-facts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        header = model_header(self._model)
        gpu_build = gpu_backend(self._binary)
        gpus: tuple[str, ...] = ()
        if gpu_build is not False:
            try:
                gpus = _gpu_names()
            except Exception as exc:  # detection never matters enough to fail a start
                log.debug("GPU detection failed: %s", exc)
        self._facts = StartFacts(header=header, gpus=gpus, gpu_build=gpu_build)

    def result(self, timeout: float = 30.0) -> StartFacts:
        self._thread.join(timeout)
        return self._facts or StartFacts(header=None, gpus=(), gpu_build=None)
