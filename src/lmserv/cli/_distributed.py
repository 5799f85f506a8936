"""Command-line options for RPC workers and multi-GPU splits, shared by serve/run/chat."""

from __future__ import annotations

import argparse
from typing import Any

from lmserv.cli._common import int_arg
from lmserv.gpu._split import SPLIT_MODES

__all__ = ["add_distributed_options", "distributed_kwargs"]


def add_distributed_options(p: argparse.ArgumentParser) -> None:
    """Add ``--rpc``, ``--split-mode``, ``--tensor-split``, ``--main-gpu`` and ``--device``."""
    p.add_argument(
        "--rpc",
        action="append",
        metavar="HOST:PORT",
        default=None,
        help="an RPC worker (`lmserv worker` on that host); repeat, or comma-separate, for more",
    )
    p.add_argument(
        "--split-mode",
        "-sm",
        choices=SPLIT_MODES,
        default=None,
        help="how to spread the model over several GPUs (default: llama.cpp's, layer)",
    )
    p.add_argument(
        "--tensor-split",
        "-ts",
        metavar="N0,N1,...",
        default=None,
        help="share of the model per device, e.g. 3,1 (RPC workers first, then local GPUs)",
    )
    p.add_argument(
        "--main-gpu",
        "-mg",
        type=int_arg(0),
        default=None,
        help="run on this one GPU only (implies --split-mode none)",
    )
    p.add_argument(
        "--device",
        "-dev",
        metavar="DEV[,DEV...]",
        default=None,
        help="devices to use, e.g. CUDA0,CUDA1 (see `llama-server --list-devices`), or none",
    )


def distributed_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``LlamaServer`` keyword arguments from the parsed options above."""
    rpc = [e for value in (args.rpc or []) for e in value.split(",") if e.strip()]
    return {
        "rpc": rpc or None,
        "split_mode": args.split_mode,
        "tensor_split": args.tensor_split,
        "main_gpu": args.main_gpu,
        "devices": args.device,
    }
