"""The model service on the command line: ``lmserv serve`` without a model, ``ps``, ``stop``.

``lmserv serve`` (no MODEL) runs :class:`~lmserv.service.ModelService` over the models folder
in the foreground, llama-server's log on stderr. ``ps`` and ``stop`` find it through its state
file; ``run``/``chat NAME`` use it too (:func:`service_client`), so nothing reloads per call.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from lmserv import config
from lmserv.cli._common import (
    add_json_flag,
    human_bytes,
    int_arg,
    print_json,
    run_in_foreground,
)
from lmserv.cli._page import announce_page
from lmserv.client import Client
from lmserv.config import ServerSettings
from lmserv.errors import BadRequestError, ConfigError, ModelNotServed, ServerUnavailable
from lmserv.service import ModelService, ServiceState, find_service, served_models

__all__ = ["add_service_options", "register", "serve_models", "service_client"]


def add_service_options(p: argparse.ArgumentParser) -> None:
    """The options of ``lmserv serve`` that only the no-model form (the service) reads."""
    p.add_argument(
        "--max-models",
        type=int_arg(0),
        default=None,
        help="service: most models loaded at once, least recently used evicted (default 4; 0: "
        "no limit)",
    )
    p.add_argument(
        "--keep-alive",
        default="5m",
        metavar="DURATION",
        help="service: unload a model after this idle time: 5m (default), 30s, 1h, 0 (after each "
        "request), -1 (never)",
    )


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def serve_models(args: argparse.Namespace, settings: ServerSettings) -> int:
    """``lmserv serve`` without a model: the service over the models folder, until Ctrl-C.
    ``settings``: the ``[server]`` settings with the command's flags applied."""
    if getattr(args, "rpc", None):
        raise ConfigError(
            "--rpc needs a model: `lmserv serve MODEL --rpc HOST:PORT`; the model service "
            "(serve without a model) runs each model on this machine"
        )
    # Flags for every instance; the router passes its own flags on, and they win over the
    # per-model [models.NAME] options.
    extra: list[str] = []
    if args.ctx_size is not None:
        extra += ["--ctx-size", str(args.ctx_size)]
    if str(args.n_gpu_layers) != "auto":
        extra += ["--n-gpu-layers", str(args.n_gpu_layers)]
    if args.parallel is not None:
        extra += ["--parallel", str(args.parallel)]
    extra += shlex.split(args.server_args)
    service = ModelService(
        host=settings.host,
        port=settings.port or None,
        api_key=settings.api_key,
        max_models=args.max_models,
        keep_alive=args.keep_alive,
        extra_args=tuple(extra),
        ui=args.ui,
        echo=_echo,
    )

    def announce() -> None:
        names = [m.name for m in service.models()]
        print(
            f"model service ready at {service.base_url}  (OpenAI API: {service.base_url}/v1)",
            flush=True,
        )
        print(f"  models in {service.models_dir}: {', '.join(names) or '(none yet)'}", flush=True)
        announce_page(
            service.base_url,
            has_page=service.has_page,
            wanted=args.ui,
            open_browser=args.open,
            api_key=bool(settings.api_key),
        )
        keep = "never" if service.keep_alive < 0 else f"{service.keep_alive}s"
        print(f"  idle unload after {keep}; log: {service.log_path}; stop with Ctrl-C", flush=True)

    return run_in_foreground(service, "the model service", announce)


def _running(args: argparse.Namespace) -> tuple[ServiceState, Client]:
    state = find_service()
    if state is None:
        raise ServerUnavailable(
            f"no model service is running for {config.models_dir()}; start one with "
            "`lmserv serve` (no model)"
        )
    key = getattr(args, "api_key", None) or state.api_key
    return state, Client(state.url, api_key=key, timeout=30.0)


def service_client(name: str, api_key: str | None = None) -> Client | None:
    """A client for model ``name`` on the running service, or ``None`` (no service, or it has
    no such model: the caller then starts a transient server as before)."""
    state = find_service()
    if state is None:
        return None
    client = Client(state.url, api_key=api_key or state.api_key, model=name)
    try:
        models = client.models()
    except ServerUnavailable:
        client.close()
        return None
    if not any(name == m.get("id") or name in (m.get("aliases") or ()) for m in models):
        client.close()
        return None
    return client


def _until(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _ps(args: argparse.Namespace) -> int:
    state, client = _running(args)
    with client:
        models = served_models(client, keep_alive=state.keep_alive, last_used=state.last_used)
    loaded = [m for m in models if m.holds_memory]
    if args.json:
        print_json([m.to_dict() for m in loaded])
        return 0
    if not loaded:
        print(f"no model loaded (service at {state.url}, {len(models)} models available)")
        return 0
    print(f"{'NAME':<28} {'STATE':<9} {'SIZE':>10} {'CONTEXT':>8}  UNLOAD IN")
    for m in loaded:
        size = human_bytes(m.size) if m.size is not None else "-"
        ctx = str(m.n_ctx) if m.n_ctx is not None else "-"
        print(f"{m.name:<28} {m.state:<9} {size:>10} {ctx:>8}  {_until(m.unload_in)}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    state, client = _running(args)
    with client:
        names = {str(m.get("id")): m for m in client.models()}
        aliases = {str(a): n for n, m in names.items() for a in m.get("aliases") or ()}
        name = aliases.get(args.name, args.name)
        if name not in names:
            raise ModelNotServed(
                f"the model service at {state.url} has no model {args.name!r}; it serves: "
                f"{', '.join(sorted(names))}",
                model=args.name,
                available=tuple(sorted(names)),
            )
        try:
            client.unload(name)
        except BadRequestError:
            print(f"{name} is not loaded")
            return 0
    print(f"unloaded {name}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ps`` and ``stop`` (``serve``'s no-model form is wired in ``_serve``)."""
    p = sub.add_parser(
        "ps",
        help="models loaded in the running model service",
        description="List the models that hold memory in the running model service (`lmserv "
        "serve` without a model): name, state, size, context, time until idle unload.",
    )
    add_json_flag(p)
    p.add_argument("--api-key", default=None, help="the service's key (default: from its state)")
    p.set_defaults(func=_ps)
    q = sub.add_parser(
        "stop",
        help="unload a model from the running model service now",
        description="Unload model NAME from the running model service now.",
    )
    q.add_argument("name", help="model name or alias, as `lmserv ps` shows it")
    q.add_argument("--api-key", default=None, help="the service's key (default: from its state)")
    q.set_defaults(func=_stop)
