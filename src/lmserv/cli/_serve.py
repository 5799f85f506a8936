"""``lmserv serve``, ``lmserv run`` and ``lmserv chat``: a model served and talked to.

``MODEL`` is a GGUF path, a catalog name, a hub name (``hf.co/OWNER/REPO:QUANT``) or URL
(fetched if needed), or ``counting``: the tiny
built-in test model (the default), written on the spot, that counts ``one two`` on to ``ten``.
"""

from __future__ import annotations

import argparse
import io
import shlex
import sys
from collections.abc import Iterator
from typing import Any

from lmserv import config
from lmserv._inputs import check_base_url, check_text
from lmserv.cli._common import (
    COUNTING,
    int_arg,
    positive_int,
    resolve_model,
    run_in_foreground,
    sigterm_as_interrupt,
)
from lmserv.cli._distributed import add_distributed_options, distributed_kwargs
from lmserv.cli._page import add_page_options, announce_page
from lmserv.cli._ray import add_ray_options, serve_on_ray
from lmserv.cli._service import add_service_options, serve_models, service_client
from lmserv.client import ChatCompletion, Client, TextStream
from lmserv.errors import ConfigError
from lmserv.install._hub_store import mmproj_for
from lmserv.server import LlamaServer

__all__ = ["register"]


def _gpu_layers(text: str) -> int | str:
    """``--n-gpu-layers``: ``auto``, ``all`` or a whole number of at least 0 (else exit 2)."""
    if text in ("auto", "all"):
        return text
    return int_arg(0)(text)


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ctx-size", "-c", type=positive_int, default=None, help="context size (default: model's)"
    )
    p.add_argument(
        "--n-gpu-layers",
        "-ngl",
        type=_gpu_layers,
        default="auto",
        help="layers on the GPU: auto (default: as many as fit), all, or a number",
    )
    p.add_argument(
        "--parallel", "-np", type=positive_int, default=None, help="server slots (default: 4)"
    )
    add_distributed_options(p)  # --rpc and the multi-GPU options (issue 7)
    p.add_argument(
        "--server-args",
        default="",
        help='extra llama-server flags in one string, e.g. "--embeddings --pooling mean"',
    )


def _server_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """LlamaServer's keyword arguments from the shared server options (also a Ray replica's)."""
    return {
        "n_ctx": args.ctx_size,
        "n_gpu_layers": args.n_gpu_layers,
        "parallel": args.parallel,
        "extra_args": shlex.split(args.server_args),
        **distributed_kwargs(args),
    }


def _make_server(args: argparse.Namespace, **kwargs: Any) -> LlamaServer:
    model = resolve_model(args.model, pull=True)
    # A vision model pulled from the hub came with its projector: llama-server needs both.
    mmproj = mmproj_for(model, config.models_dir())
    return LlamaServer(model, **_server_kwargs(args), mmproj=mmproj, **kwargs)


def _replica_model(spec: str | None) -> str:
    """``counting`` and local files are resolved here (so on one machine, or on a shared
    filesystem); catalog names and URLs are passed on, for each replica to fetch on its node."""
    spec = spec or config.load_settings().models.default or COUNTING
    if spec == COUNTING or config.expand_path(spec, what="model").is_file():
        return str(resolve_model(spec, pull=False))
    return spec


def _server_url(text: str) -> str:
    """argparse ``type=`` for ``--url``: a bad URL is a usage error (exit 2), not a traceback."""
    try:
        return check_base_url(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _prompt(text: str) -> str:
    """argparse ``type=`` for the prompt: bytes that are not UTF-8 are a usage error (exit 2)."""
    try:
        return check_text(text, "the prompt")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve``, ``run`` and ``chat``."""
    p = sub.add_parser(
        "serve",
        help="run llama-server for a model, or the model service for all, in the foreground",
        description="Start llama-server for MODEL, print its URL, and stop it cleanly on Ctrl-C. "
        "Without MODEL, start the model service: every model of the models folder by name, "
        "loaded on first request, unloaded when idle.",
    )
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="GGUF path, catalog name, hf.co/OWNER/REPO[:QUANT], or 'counting'; none: the model service",
    )
    p.add_argument("--host", default=None, help="address to bind (default: 127.0.0.1)")
    p.add_argument(
        "--port", type=int_arg(0, 65535), default=None, help="port (default: a free one)"
    )
    p.add_argument(
        "--api-key", default=None, help="require this key (Authorization: Bearer); see [server]"
    )
    add_page_options(p)
    _server_options(p)
    add_ray_options(p)
    add_service_options(p)
    p.set_defaults(func=_serve)

    for name, helptext in (
        ("run", "answer one prompt, streamed"),
        ("chat", "interactive streaming chat"),
    ):
        q = sub.add_parser(
            name, help=helptext, description=helptext[0].upper() + helptext[1:] + "."
        )
        q.add_argument(
            "model",
            nargs="?",
            default=None,
            help="GGUF path, catalog name, hf.co/OWNER/REPO[:QUANT], or 'counting'",
        )
        if name == "run":
            q.add_argument(
                "prompt",
                nargs="?",
                default="one two",
                type=_prompt,
                help="the prompt (default: 'one two')",
            )
            q.add_argument(
                "--raw",
                action="store_true",
                help="complete the text as is (native /completion) instead of as a chat turn",
            )
        q.add_argument(
            "--max-tokens", "-n", type=positive_int, default=None, help="stop after N tokens"
        )
        q.add_argument("--temperature", type=float, default=None, help="sampling temperature")
        q.add_argument("--seed", type=int_arg(0), default=None, help="sampling seed")
        q.add_argument(
            "--url",
            default=None,
            type=_server_url,
            help="use a running server instead of starting one",
        )
        q.add_argument("--api-key", default=None, help="the running server's key (with --url)")
        _server_options(q)
        q.set_defaults(func=_run if name == "run" else _chat)


def _serve(args: argparse.Namespace) -> int:
    # Flags over LMSERV_SERVER_* over the config file's [server] table.
    settings = config.load_settings(
        overrides={
            "server.host": args.host,
            "server.port": args.port,
            "server.api_key": args.api_key,
        }
    ).server
    if args.model is None:
        return serve_models(args, settings)
    port = settings.port or None  # 0 and None both mean a free port
    if args.ray is not None:  # replicas on Ray Serve (issue 15)
        return serve_on_ray(
            args,
            _replica_model(args.model),
            {**_server_kwargs(args), "api_key": settings.api_key},
            host=settings.host,
            port=port,
        )
    if args.replicas is not None:
        print(f"lmserv: error: --replicas {args.replicas} needs --ray", file=sys.stderr)
        return 2  # a usage error
    server = _make_server(args, host=settings.host, port=port, api_key=settings.api_key, ui=args.ui)

    def announce() -> None:
        print(
            f"llama-server ready at {server.base_url}  (OpenAI API: {server.base_url}/v1)",
            flush=True,
        )
        print(f"  {server.info.summary()}", flush=True)
        announce_page(
            server.base_url,
            has_page=server.info.ui,
            wanted=args.ui,
            open_browser=args.open,
            api_key=bool(settings.api_key),
        )
        print(f"  log: {server.log_path}   stop with Ctrl-C", flush=True)

    return run_in_foreground(server, "llama-server", announce)


class _Session:
    """A client for ``--url``, or a server started for this command (stopped on exit)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.server: LlamaServer | None = None
        if args.url:
            key = config.load_settings(overrides={"server.api_key": args.api_key}).server.api_key
            self.client = Client(args.url, api_key=key)
        elif args.model and (found := service_client(args.model, args.api_key)) is not None:
            self.client = found  # the running model service: no load per call
        else:
            self.server = _make_server(args).start()
            self.client = self.server.client()

    def close(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.stop()


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed}


def _print_stream(chunks: Iterator[str]) -> str:
    parts = []
    for chunk in chunks:
        parts.append(chunk)
        sys.stdout.write(chunk)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(parts)


def _speed(stream: TextStream[Any]) -> None:
    result = stream.result
    if result is not None and result.timings is not None:
        t = result.timings
        print(
            f"[{t.predicted_tokens} tokens, {t.predicted_per_second:.1f} tokens/s; "
            f"prompt {t.prompt_tokens} tokens, {t.prompt_per_second:.1f} tokens/s]",
            file=sys.stderr,
        )


def _run(args: argparse.Namespace) -> int:
    sigterm_as_interrupt()
    session = _Session(args)
    try:
        if args.raw:
            stream: TextStream[Any] = session.client.stream(args.prompt, **_sampling(args))
        else:
            stream = session.client.chat_stream(args.prompt, **_sampling(args))
        with stream:
            _print_stream(iter(stream))
        _speed(stream)
        return 0
    finally:
        session.close()


def _chat(args: argparse.Namespace) -> int:
    sigterm_as_interrupt()
    session = _Session(args)
    messages: list[dict[str, str]] = []
    interactive = sys.stdin.isatty()
    if isinstance(sys.stdin, io.TextIOWrapper):
        # Bytes that are not UTF-8 reach check_text below as surrogate escapes, for a message
        # naming the line and the byte, instead of a UnicodeDecodeError out of input().
        sys.stdin.reconfigure(errors="surrogateescape")
    number = 0
    if interactive:
        print("chat: type a message; /bye or Ctrl-D to leave", file=sys.stderr)
    try:
        while True:
            try:
                line = input(">>> " if interactive else "")
            except EOFError:
                break
            if line.strip() in ("/bye", "/exit", "/quit"):
                break
            number += 1
            if not line.strip():
                continue
            try:
                check_text(line, "that line" if interactive else f"input line {number}")
            except ConfigError as exc:
                if not interactive:
                    raise
                print(f"lmserv: {exc}", file=sys.stderr)
                continue
            messages.append({"role": "user", "content": line})
            stream: TextStream[ChatCompletion] = session.client.chat_stream(
                messages, **_sampling(args)
            )
            with stream:
                answer = _print_stream(iter(stream))
            messages.append({"role": "assistant", "content": answer})
            if interactive:
                _speed(stream)
        return 0
    finally:
        session.close()
