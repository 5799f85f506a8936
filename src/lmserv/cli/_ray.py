"""``lmserv serve MODEL --ray [ADDRESS] --replicas N``: replicas on a Ray cluster (issue 15).

``ADDRESS`` ``auto`` (the default) joins the Ray cluster this machine belongs to (``RAY_ADDRESS``
or the one ``ray start`` made) and otherwise starts a local one that stops with the command.
Serve's HTTP proxy binds ``--host`` (default 127.0.0.1). Ctrl-C or SIGTERM deletes the
application; a cluster that was already there keeps running.
"""

from __future__ import annotations

import argparse
import signal
import time
from typing import Any

from lmserv.cli._common import positive_int
from lmserv.errors import InstallError, ServerStartError

__all__ = ["APP_NAME", "add_ray_options", "serve_on_ray"]

APP_NAME = "lmserv"
_DEFAULT_PORT = 8000  # Serve's own default; its proxy cannot take "a free port" (port 0)


def add_ray_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help="serve replicas on a Ray cluster (ADDRESS default: auto, the cluster this machine "
        "joined, else a local one); needs `pip install 'lmserv[ray]'`",
    )
    p.add_argument(
        "--replicas",
        type=positive_int,
        default=None,
        help="with --ray: how many replicas, each one llama-server (default: 1)",
    )


def _connect(address: str) -> bool:
    """Join the cluster at ``address``; return True when a local one was started here."""
    import ray

    if address != "auto":
        ray.init(address=address, log_to_driver=False)
        return False
    try:
        ray.init(address="auto", log_to_driver=False)
        return False
    except ConnectionError:
        # No cluster: a local one, without the dashboard (a web UI with job submission that
        # nobody asked for). Ray's own ports take the node's address, never loopback (Ray
        # resolves 127.0.0.1 to it); Ray 2.60 guards them with a token (~/.ray/auth_token).
        ray.init(include_dashboard=False, log_to_driver=False)
        return True


def serve_on_ray(
    args: argparse.Namespace,
    model: str,
    server_options: dict[str, Any],
    *,
    host: str,
    port: int | None,
) -> int:
    """Run ``model`` as ``args.replicas`` replicas until Ctrl-C; ``host``/``port`` are Serve's
    HTTP proxy. Prints for people; raises :class:`~lmserv.errors.LmservError` on failure."""
    try:
        from ray import serve

        from lmserv.ray import deployment, run
    except ImportError as exc:
        raise InstallError(f"--ray needs Ray Serve: {exc}") from exc
    import ray

    app = deployment(model, num_replicas=args.replicas or 1, **server_options)
    port = port or _DEFAULT_PORT
    print(f"connecting to Ray ({args.ray})...", flush=True)
    started_here = _connect(args.ray)
    # ray.init makes SIGTERM exit on the spot (sys.exit); stop as on Ctrl-C instead.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        serve.start(http_options={"host": host, "port": port})
        run(app, name=APP_NAME, route_prefix="/")  # a replica's error, raised here
        url = f"http://{host}:{port}"
        where = "a local Ray cluster" if started_here else f"the Ray cluster at {args.ray}"
        print(f"{args.replicas or 1} replica(s) of {model} on {where}", flush=True)
        print(f"ready at {url}  (OpenAI API: {url}/v1)   stop with Ctrl-C", flush=True)
        if not started_here:
            print("  (a Serve that was already running keeps its own address)", flush=True)
        while True:
            time.sleep(2.0)
            status = serve.status().applications.get(APP_NAME)
            if status is None or status.status == "DEPLOY_FAILED":
                state = "deleted" if status is None else f"{status.status}: {status.message}"
                raise ServerStartError(f"the Ray Serve application {APP_NAME!r} is {state}")
    except KeyboardInterrupt:
        print("lmserv: stopping the replicas", flush=True)
        return 0
    finally:
        try:
            serve.delete(APP_NAME)
            if started_here:
                serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()
