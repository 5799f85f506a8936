"""The error contract: each failure has its class, and callers can tell them apart."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

import pytest

import lmserv
from _helpers import free_port
from lmserv import (
    APIError,
    APITimeoutError,
    AsyncClient,
    Client,
    ConfigError,
    LmservError,
    ServerUnavailable,
    errors,
)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A real socket that accepts connections and never answers (a server stuck on a request)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    listener.close()


def test_a_timeout_is_a_timeout_error_not_server_unavailable(silent_server: str) -> None:
    with Client(silent_server, timeout=0.3) as client, pytest.raises(APITimeoutError) as info:
        client.complete("one two", max_tokens=1)
    error = info.value
    assert isinstance(error, TimeoutError) and isinstance(error, LmservError)
    assert isinstance(error, APIError) and not isinstance(error, ServerUnavailable)
    assert "timed out" in str(error) and "timeout=" in str(error)


def test_a_timeout_on_a_get_is_not_retried_and_is_the_same_error(silent_server: str) -> None:
    with Client(silent_server, timeout=0.3) as client, pytest.raises(APITimeoutError):
        client.health()


async def _async_complete(url: str) -> None:
    async with AsyncClient(url, timeout=0.3) as client:
        await client.complete("one two", max_tokens=1)


def test_the_async_client_raises_the_same_timeout(silent_server: str) -> None:
    import asyncio

    with pytest.raises(APITimeoutError):
        asyncio.run(_async_complete(silent_server))


def test_nothing_listening_is_server_unavailable_not_a_timeout() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", timeout=2.0) as client:
        with pytest.raises(ServerUnavailable, match="is the server running") as info:
            client.health()
    assert not isinstance(info.value, TimeoutError)


_ALSO: dict[str, set[str]] = {}  # the other bases drawn in parentheses, e.g. "(KeyError)"


def _drawn_tree() -> dict[str, str | None]:
    """Each class in the tree drawn in errors.py's docstring -> the class drawn as its parent."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        found = re.match(r"^([\s│]*(?:[├└]── )?)(\w+)\b", line)
        if not found or ("──" not in found.group(1) and found.group(2) != "LmservError"):
            continue
        column = found.start(2)
        while stack and stack[-1][0] >= column:
            stack.pop()
        parents[found.group(2)] = stack[-1][1] if stack else None
        also = re.match(r"\s*\(([^)]*)\)", line[found.end(2) :])
        _ALSO[found.group(2)] = {n.strip() for n in also.group(1).split(",")} if also else set()
        stack.append((column, found.group(2)))
    return parents


def test_the_tree_drawn_in_errors_py_is_true() -> None:
    drawn = _drawn_tree()
    assert set(drawn) == set(errors.__all__), "the tree and __all__ list different classes"
    for name, parent in drawn.items():
        cls = getattr(errors, name)
        ours = [b.__name__ for b in cls.__bases__ if issubclass(b, LmservError)]
        # The first lmserv base is the drawn parent; a second one is drawn in parentheses.
        assert ours[:1] == ([parent] if parent else []), name
        assert set(ours[1:]) <= _ALSO[name], name
    exported = {n for n in lmserv.__all__ if isinstance(getattr(lmserv, n), type)}
    assert {n for n in exported if issubclass(getattr(lmserv, n), BaseException)} == set(drawn)


def test_bad_arguments_are_config_errors_not_bare_builtins(tmp_path: object) -> None:
    from lmserv import plan_offload
    from lmserv.config import load_settings
    from lmserv.install import download_file
    from lmserv.testing import write_counting_model, write_synthetic_model

    with pytest.raises(ConfigError, match=r"no setting 'server\.prot'"):
        load_settings().get("server.prot")
    with pytest.raises(ConfigError, match="connections must be at least 1"):
        download_file("http://127.0.0.1:9/x.gguf", f"{tmp_path}/x.gguf", connections=0)
    with pytest.raises(ConfigError, match="quant="):
        write_synthetic_model(f"{tmp_path}/s.gguf", quant="q3")
    model = write_counting_model(f"{tmp_path}/counting.gguf")
    with pytest.raises(ConfigError, match="parallel"):
        plan_offload(model, [], parallel=0)
