"""The typed HTTP API for llama-server: :class:`Client`, :class:`AsyncClient` and their results.

Implementation lives in ``_client.py`` (I/O) and ``_types.py`` (result dataclasses); this module
is the public face::

    from lmserv.client import Client

    with Client("http://127.0.0.1:8080") as client:
        print(client.complete("one two", temperature=0).text)

The OpenAI SDK works against the same server at ``base_url + "/v1"``.
"""

from __future__ import annotations

from lmserv._types import ChatCompletion, Completion, SamplingOptions, Timings
from lmserv.client._client import (
    DEFAULT_TIMEOUT,
    AsyncClient,
    AsyncTextStream,
    Client,
    TextStream,
    error_from_response,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "AsyncTextStream",
    "ChatCompletion",
    "Client",
    "Completion",
    "SamplingOptions",
    "TextStream",
    "Timings",
    "error_from_response",
]
