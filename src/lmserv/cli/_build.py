"""``lmserv build``: compile llama.cpp into lmserv's build folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmserv import config
from lmserv.cli._common import positive_int
from lmserv.install.llama_build import CudaChoice, build_llama_cpp

__all__ = ["register"]

_CUDA: dict[str, CudaChoice] = {"auto": "auto", "on": True, "off": False}


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
        default=None,
        help="build with CUDA: auto (when nvcc and cuBLAS are present), on, off "
        "(default: setting build.cuda, else auto)",
    )
    p.add_argument(
        "--source",
        default=None,
        help="git URL, local folder or tarball, or 'pypi' (default: setting build.source, else "
        "upstream git, falling back to the llama-cpp-python sdist)",
    )
    p.add_argument("--ref", default=None, help="git ref to build (default: the pinned commit)")
    p.add_argument(
        "--rpc",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also build the RPC worker ggml-rpc-server (default: setting build.rpc, else no)",
    )
    p.add_argument(
        "--ui",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="embed llama-server's chat page, built with npm and cached (default: when npm is "
        "found)",
    )
    p.add_argument(
        "--jobs",
        "-j",
        type=positive_int,
        default=None,
        help="parallel compile jobs (default: setting build.jobs, else all cores)",
    )
    # No config lookup here: building the parser must not fail on a broken config file.
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="output folder (default: setting paths.builds, else <data folder>/llama.cpp)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = config.load_settings(
        {
            "paths.builds": args.dir,
            "build.cuda": args.cuda,
            "build.source": args.source,
            "build.rpc": args.rpc,
            "build.jobs": args.jobs,
        }
    )
    opts = settings.build
    result = build_llama_cpp(
        settings.paths.builds,
        cuda=_CUDA[opts.cuda],
        source=opts.source,
        ref=args.ref,
        rpc=opts.rpc,
        jobs=opts.jobs,
        ui="auto" if args.ui is None else args.ui,
    )
    kind = "CUDA" if result.cuda else "CPU"
    print(f"llama.cpp {result.commit[:12]} ({kind} build)")
    print(f"binaries: {result.bin_dir}")
    for name, path in sorted(result.binaries.items()):
        print(f"  {name}: {path}")
    print(f"chat page: {'included' if result.ui else 'not included (needs npm; see --ui)'}")
    if result.cuda:
        print(f"NCCL: {'found' if result.nccl else 'not found (multi-GPU tensor split slower)'}")
    return 0
