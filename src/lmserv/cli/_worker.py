"""``lmserv worker``: run one llama.cpp RPC worker (``ggml-rpc-server``) in the foreground.

Exit codes: 0 after Ctrl-C or SIGTERM (a clean stop), 1 if the worker fails to start or dies, 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from lmserv.cli._common import colour, port_int, positive_int, sigterm_as_interrupt
from lmserv.rpc import DEFAULT_RPC_PORT, SECURITY_WARNING, RpcWorker, is_loopback

__all__ = ["register"]


def _ipv4(text: str) -> str:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IPv4 address (ggml-rpc-server binds IPv4 literals only); "
            "use 127.0.0.1, this machine's LAN address, or 0.0.0.0"
        ) from None
    return text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``lmserv worker`` to ``sub``."""
    parser = sub.add_parser(
        "worker",
        help="run a llama.cpp RPC worker (ggml-rpc-server) in the foreground",
        description=(
            "Expose this machine's devices (GPUs, or the CPU) to a llama-server on another "
            "machine, which uses them with `lmserv serve MODEL --rpc HOST:PORT`. The RPC protocol "
            "has NO authentication: bind a non-loopback address only on a trusted network. "
            "Stop with Ctrl-C."
        ),
    )
    parser.add_argument(
        "--host",
        type=_ipv4,
        default="127.0.0.1",
        help="IPv4 address to bind (default: 127.0.0.1, this machine only)",
    )
    parser.add_argument(
        "--port",
        type=port_int,
        default=DEFAULT_RPC_PORT,
        help=f"TCP port (default: {DEFAULT_RPC_PORT})",
    )
    parser.add_argument(
        "--cache",
        action="store_true",
        help="keep a local tensor cache (faster reloads of the same model)",
    )
    parser.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads")
    parser.add_argument(
        "--device",
        metavar="DEV[,DEV...]",
        help="expose only these devices, e.g. CUDA0,CUDA1 (default: all GPUs, else the CPU)",
    )
    parser.set_defaults(func=_run)


def _warn_exposed(host: str, port: int) -> None:
    bar = "!" * 78
    text = SECURITY_WARNING.format(endpoint=f"{host}:{port}")
    lines = ["", bar, f"WARNING: this RPC worker listens on {host}:{port}, not on loopback.", text]
    lines += [bar, ""]
    print(colour("\n".join(lines), "red", sys.stderr), file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    sigterm_as_interrupt()
    devices = [d for d in (args.device or "").split(",") if d] or None
    worker = RpcWorker(args.host, args.port, cache=args.cache, threads=args.threads, device=devices)
    if not is_loopback(args.host):
        _warn_exposed(args.host, args.port)
    worker.start()
    try:
        print(f"RPC worker listening on {args.host}:{args.port} (pid {worker.pid})", flush=True)
        for line in worker.exposed_devices():
            print(f"  device {line}", flush=True)
        where = "THIS_MACHINE_IP" if args.host == "0.0.0.0" else args.host
        print(f"use it with: lmserv serve MODEL --rpc {where}:{args.port}", flush=True)
        print(f"log: {worker.log_path}   (Ctrl-C to stop)", flush=True)
        code = worker.wait()
    except KeyboardInterrupt:
        print("RPC worker stopped", file=sys.stderr)
        return 0
    finally:
        worker.stop()
    tail = worker.log_tail()
    print(
        f"lmserv: error: the RPC worker exited unexpectedly with code {code}. Last log lines:\n"
        f"{tail}\nFull log: {worker.log_path}",
        file=sys.stderr,
    )
    return 1
