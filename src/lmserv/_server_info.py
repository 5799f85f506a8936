"""What a started llama-server did: :class:`ServerInfo`, read from its log and its ``/props``.

Kept apart from :mod:`lmserv.server` (the process supervision) because it is parsing only.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, replace

from lmserv._server_facts import StartFacts

__all__ = ["ServerInfo"]

_BUILD = re.compile(r"build[: ]+(\d+) \(([0-9a-f]+)\)")
_DEVICE = re.compile(r"common_param:\s+- (\S+)\s+: (.+?) \(")
_BUFFER = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_SLOTS = re.compile(r"n_slots = (\d+), n_ctx_slot = (\d+)")


@dataclass(frozen=True)
class ServerInfo:
    """What a started llama-server reports about itself, read from its start-up log.

    ``n_ctx`` is the context of one slot (the most one request can use), ``slots`` how many
    requests run at once.
    ``devices`` are the backends llama.cpp found (``CPU``, ``CUDA0``, ...);
    ``weights_on`` the buffers the model weights went to (``CPU_Mapped``, ``CUDA0``, ...).
    ``gpu_unused`` is true when a GPU was found but no weights are on it, the classic
    "GPU detected but not used" (a CPU-only build, ``n_gpu_layers=0``, or too little memory).
    At llama-server's default log level these come from the build, the flags and the GPUs
    present (``gpu_layers`` is None when llama.cpp chose it: ``n_gpu_layers="auto"``); with
    ``extra_args=("-lv", "4")`` from libllama's own load report.
    ``chat_template_fallback`` is true when the model has no chat template, so chat requests
    are formatted with llama.cpp's ChatML fallback (a warning is logged at start).
    ``ui`` is true when ``GET /`` answers with the chat page (an HTML page): the build embeds
    it (``lmserv build --ui``) and the server was not started with ``ui=False``.
    """

    base_url: str
    pid: int
    model_path: str
    build: str
    n_ctx: int
    slots: int
    devices: tuple[str, ...]
    weights_on: tuple[str, ...]
    gpu_layers: int | None
    total_layers: int | None
    chat_template_fallback: bool = False
    ui: bool = False

    @property
    def gpu_unused(self) -> bool:
        has_gpu = any(not d.upper().startswith("CPU") for d in self.devices)
        on_gpu = any(not b.upper().startswith("CPU") for b in self.weights_on)
        return has_gpu and not on_gpu

    def summary(self) -> str:
        """One line for people, e.g. ``ctx 2048, 4 slots, weights on CPU_Mapped, build 0c1e570``."""
        text = (
            f"ctx {self.n_ctx}, {self.slots} slots, weights on {', '.join(self.weights_on) or '?'}"
        )
        if self.gpu_layers is not None and any(
            not b.upper().startswith("CPU") for b in self.weights_on
        ):
            text += f" ({self.gpu_layers}/{self.total_layers} layers on GPU)"
        if self.gpu_unused:
            text += f"; WARNING: GPU found ({', '.join(self.devices)}) but not used"
        return text + f", build {self.build or '?'}"


def _parse_info(lines: Sequence[str], base_url: str, pid: int, model_path: str) -> ServerInfo:
    """Read what llama-server did from its start-up log (no request needed)."""
    build, devices, buffers = "", [], []
    gpu_layers = total_layers = None
    n_ctx = slots = 0
    for line in lines:
        if (m := _BUILD.search(line)) and not build:
            build = m.group(2)
        elif m := _DEVICE.search(line):
            devices.append(m.group(1))
        elif m := _BUFFER.search(line):
            buffers.append(m.group(1))
        elif m := _OFFLOADED.search(line):
            gpu_layers, total_layers = int(m.group(1)), int(m.group(2))
        elif m := _SLOTS.search(line):
            slots, n_ctx = int(m.group(1)), int(m.group(2))
    return ServerInfo(
        base_url=base_url,
        pid=pid,
        model_path=model_path,
        build=build,
        n_ctx=n_ctx,
        slots=slots,
        devices=tuple(devices),
        weights_on=tuple(dict.fromkeys(buffers)),
        gpu_layers=gpu_layers,
        total_layers=total_layers,
    )


def _with_facts(info: ServerInfo, facts: StartFacts, n_gpu_layers: int | str) -> ServerInfo:
    """``info`` completed with what was read while the model loaded (see _server_facts)."""
    header = facts.header
    total = info.total_layers or (header.layers if header else None)
    fallback = header is not None and not header.chat_template
    if info.devices:  # the log had libllama's load report (-lv 4): it is the truth
        return replace(info, total_layers=total, chat_template_fallback=fallback)
    weights_on: tuple[str, ...] = ("CPU",)
    gpu_layers: int | None = 0 if total is not None else None
    if facts.gpus and facts.gpu_build is not False and n_gpu_layers not in (0, "0"):
        weights_on = facts.gpus
        if n_gpu_layers == "all":
            gpu_layers = total
        elif isinstance(n_gpu_layers, int) or str(n_gpu_layers).isdigit():
            wanted = int(n_gpu_layers)
            gpu_layers = min(wanted, total) if total is not None else wanted
        else:
            gpu_layers = None  # "auto": llama.cpp fits what memory allows; not logged
    return replace(
        info,
        devices=(*facts.gpus, "CPU"),
        weights_on=weights_on,
        gpu_layers=gpu_layers,
        total_layers=total,
        chat_template_fallback=fallback,
    )


def _http_get(base_url: str, path: str) -> int:
    """Status of ``GET path``; the stdlib client, because an ``httpx.Client`` costs tens of
    milliseconds to create (its TLS context) and start-up time is what we are measuring."""
    return _http_get_body(base_url, path)[0]


def _http_get_body(
    base_url: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _build_from_props(base_url: str, api_key: str | None) -> str:
    """The commit in ``/props``' ``build_info`` (``b1-0c1e570`` -> ``0c1e570``); "" if unknown.

    At the default log level llama-server does not log its build line (that is trace level).
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        status, body = _http_get_body(base_url, "/props", headers)
        build = str(json.loads(body).get("build_info", "")) if status == 200 else ""
    except (OSError, ValueError, AttributeError):
        return ""
    return build.rpartition("-")[2]


def _serves_page(base_url: str) -> bool:
    """Whether ``GET /`` answers 200 with HTML: llama-server's chat page is there.

    Asks for gzip because a build with compressed assets answers 415 to a client without it.
    """
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Accept-Encoding": "gzip"})
        response = conn.getresponse()
        response.read()
        kind = response.getheader("Content-Type", "")
        return response.status == 200 and kind.startswith("text/html")
    except OSError:
        return False
    finally:
        conn.close()
