"""``lmserv gpu``, ``lmserv plan``, ``lmserv config`` and ``lmserv doctor``: the machine and settings."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from lmserv import config
from lmserv.cli import _doctor
from lmserv.cli._common import (
    add_json_flag,
    colour,
    human_bytes,
    int_arg,
    positive_int,
    print_json,
    resolve_model,
    status_label,
)
from lmserv.errors import BinaryNotFound, ConfigError
from lmserv.gpu import GPU, cuda_compute_capabilities, detect_gpus, plan_offload
from lmserv.gpu._plan import KV_TYPE_BYTES
from lmserv.install import finder

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gpu``, ``plan``, ``config`` and ``doctor`` to ``sub``."""
    p = sub.add_parser(
        "gpu",
        help="list the GPUs llama.cpp can use",
        description="List the GPUs llama.cpp can use here (NVML or nvidia-smi, rocm-smi, Metal), "
        "with free memory, compute capability and driver. No GPU is not an error.",
    )
    add_json_flag(p)
    p.set_defaults(func=_gpu)

    p = sub.add_parser(
        "plan",
        help="estimate how a model fits on the GPUs",
        description="Read a GGUF file's header and show how many layers fit on each GPU "
        "(weights + KV cache + compute buffer), with the arithmetic and the llama-server "
        "arguments. llama-server's own --fit measures the real buffers; this explains them.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a .gguf file, a file name in the models folder, or a pulled catalog name or URL",
    )
    p.add_argument(
        "--ctx-size",
        "-c",
        type=positive_int,
        default=None,
        help="context tokens per slot (default: the model's training context)",
    )
    p.add_argument("--parallel", "-np", type=positive_int, default=1, help="slots (default: 1)")
    p.add_argument(
        "--cache-type",
        choices=tuple(KV_TYPE_BYTES),
        default="f16",
        help="KV cache type (default: f16)",
    )
    p.add_argument(
        "--no-flash-attn", action="store_true", help="count the attention-score buffer too"
    )
    p.add_argument(
        "--reserve",
        type=int_arg(0),
        default=1024,
        metavar="MIB",
        help="memory left free per GPU in MiB (default: 1024, like --fit-target)",
    )
    add_json_flag(p)
    p.set_defaults(func=_plan)

    p = sub.add_parser(
        "config",
        help="show the effective settings and where each came from",
        description="Settings come from defaults < the config file (or $LMSERV_CONFIG) < "
        "LMSERV_<TABLE>_<KEY> environment variables < command-line arguments.",
    )
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser(
        "show",
        help="print every setting, its value and its source",
        description="Print every setting with its value and its source (default, file:line, "
        "environment variable or argument). API keys are masked.",
    )
    show.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="apply an explicit argument (e.g. server.port=9000), as a command's flag would",
    )
    add_json_flag(show)
    show.set_defaults(func=_config_show)
    path = csub.add_parser(
        "path", help="print the config file's path", description="Print the config file's path."
    )
    path.set_defaults(func=_config_path)
    p.set_defaults(func=_config_usage(p))

    p = sub.add_parser(
        "doctor",
        help="check the toolchain, GPUs, binaries, models and config",
        description="Check everything lmserv needs and say what to fix. Exit 0 when llama.cpp "
        "can be built or is already built and the config is valid, 1 otherwise.",
    )
    add_json_flag(p)
    p.set_defaults(func=_doctor_cmd)


# --------------------------------------------------------------------------- gpu


def _gpu_line(g: GPU) -> str:
    cap = f", compute {g.compute_capability}" if g.compute_capability else ""
    return (
        f"  [{g.index}] {colour(g.name, 'bold')}  {g.backend}{cap}  "
        f"{human_bytes(g.free_memory)} free of {human_bytes(g.total_memory)}  "
        f"driver {g.driver or '?'}  ({g.source})"
    )


def _gpu(args: argparse.Namespace) -> int:
    gpus = detect_gpus()
    if args.json:
        print_json(
            {
                "gpus": [g.to_dict() for g in gpus],
                "cuda_compute_capabilities": cuda_compute_capabilities(gpus),
            }
        )
        return 0
    if not gpus:
        print("no GPU found: llama.cpp will run on the CPU.")
        return 0
    print(f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}:")
    for g in gpus:
        print(_gpu_line(g))
    return 0


# --------------------------------------------------------------------------- plan


def _server_has_fit() -> bool:
    """Whether the llama-server lmserv would run accepts ``--fit`` (the pinned commit does)."""
    try:
        binary = finder.find_binary("llama-server")
    except BinaryNotFound:
        return True  # `lmserv build` would build the pinned commit, which has it
    try:
        out = subprocess.run(
            [str(binary), "--help"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "--fit" in out.stdout + out.stderr


def _plan(args: argparse.Namespace) -> int:
    model = resolve_model(args.model, pull=False)  # a plan never downloads gigabytes
    gpus = detect_gpus()
    plan = plan_offload(
        model,
        gpus,
        ctx_size=args.ctx_size,
        parallel=args.parallel,
        cache_type=args.cache_type,
        flash_attn=not args.no_flash_attn,
        reserve_bytes=args.reserve * 1024 * 1024,
        llama_fit=_server_has_fit(),
    )
    if args.json:
        print_json({**plan.to_dict(), "gpus": [g.to_dict() for g in gpus]})
        return 0
    sys.stdout.write(plan.explanation)
    print(colour("llama-server arguments: ", "bold") + " ".join(plan.server_args))
    return 0


# --------------------------------------------------------------------------- config


def _config_usage(parser: argparse.ArgumentParser) -> Any:
    def usage(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return usage


def _shown(name: str, value: object) -> object:
    if name in config.SECRET_KEYS and value:
        return "***"
    if isinstance(value, bool):
        return value  # JSON true/false; printed below as TOML spells it
    return str(value) if isinstance(value, Path) else value


def _config_show(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            print(
                f"lmserv config show: error: --set expects KEY=VALUE, got {item!r}", file=sys.stderr
            )
            return 2
        overrides[key.strip()] = value
    settings = config.load_settings()  # a bad file or variable: ConfigError, exit 1
    if overrides:
        try:
            settings = config.load_settings(overrides)
        except ConfigError as exc:  # a bad --set is a usage error
            print(f"lmserv config show: error: {exc}", file=sys.stderr)
            return 2
    rows = [(name, _shown(name, value), origin) for name, value, origin in settings.items()]
    if args.json:
        print_json(
            {
                "config_file": str(settings.config_file),
                "config_file_exists": settings.config_file_exists,
                "settings": {
                    name: {
                        "value": value,
                        "source": origin.kind,
                        "where": origin.where,
                        "env": config.Settings.env_name(name),
                    }
                    for name, value, origin in rows
                },
                "catalog": {k: dict(v) for k, v in settings.catalog.items()},
            }
        )
        return 0
    state = "" if settings.config_file_exists else " (not present)"
    print(f"config file: {settings.config_file}{state}")
    width = max(len(name) for name, _, _ in rows)
    for name, value, origin in rows:
        shown = (
            "(unset)" if value is None else str(value).lower() if isinstance(value, bool) else value
        )
        print(f"  {name.ljust(width)}  {shown!s:<40}  {colour(str(origin), 'dim')}")
    if settings.catalog:
        print(f"catalog entries from the config file: {', '.join(sorted(settings.catalog))}")
    return 0


def _config_path(_args: argparse.Namespace) -> int:
    print(config.config_file())
    return 0


# --------------------------------------------------------------------------- doctor


def _doctor_cmd(args: argparse.Namespace) -> int:
    report = _doctor.run_checks()
    if args.json:
        print_json(report.to_dict())
        return 0 if report.ok else 1
    width = max(len(c.name) for c in report.checks)
    for check in report.checks:
        print(f"{status_label(check.status)} {check.name.ljust(width)}  {check.summary}")
        if check.fix and check.status in ("warn", "fail"):
            for line in check.fix.splitlines():
                print(f"{' ' * (width + 8)}{colour('fix: ', 'yellow')}{line}")
    if report.ok:
        print(colour("ready: lmserv can build or run llama.cpp here.", "green"))
    else:
        print(colour("not ready: fix the 'fail' lines above.", "red"))
    return 0 if report.ok else 1
