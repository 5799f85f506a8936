"""``lmserv build``: compile llama.cpp into lmserv's build folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmserv import config
from lmserv.install.llama_build import CudaChoice, build_llama_cpp

__all__ = ["register"]

_CUDA: dict[str, CudaChoice] = {"auto": "auto", "on": True, "off": False}


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "build",
        help="compile llama.cpp (llama-server, llama-cli, libllama, ...)",
        description="Compile llama.cpp with CMake into lmserv's build folder. Repeat calls with "
        "the same options return at once.",
    )
    p.add_argument(
        "--cuda",
        choices=sorted(_CUDA),
        default="auto",
        help="build with CUDA: auto (when nvcc and cuBLAS are present), on, off",
    )
    p.add_argument(
        "--source",
        default=None,
        help="git URL, local folder or tarball, or 'pypi' (default: upstream git, "
        "falling back to the llama-cpp-python sdist)",
    )
    p.add_argument("--ref", default=None, help="git ref to build (default: the pinned commit)")
    p.add_argument("--rpc", action="store_true", help="also build the RPC worker ggml-rpc-server")
    p.add_argument("--jobs", "-j", type=_positive, default=None, help="parallel compile jobs")
    p.add_argument(
        "--dir", type=Path, default=None, help=f"output folder (default: {config.builds_dir()})"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out = args.dir or config.builds_dir()
    result = build_llama_cpp(
        out, cuda=_CUDA[args.cuda], source=args.source, ref=args.ref, rpc=args.rpc, jobs=args.jobs
    )
    kind = "CUDA" if result.cuda else "CPU"
    print(f"llama.cpp {result.commit[:12]} ({kind} build)")
    print(f"binaries: {result.bin_dir}")
    for name, path in sorted(result.binaries.items()):
        print(f"  {name}: {path}")
    if result.cuda:
        print(f"NCCL: {'found' if result.nccl else 'not found (multi-GPU tensor split slower)'}")
    return 0
