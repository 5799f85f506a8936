"""In-process inference through ``libllama`` (ctypes).

``_llama_h`` declares the C API, ``_lib`` finds and loads the library lazily, ``llama`` is the
Pythonic layer and ``params`` its option dataclasses. Importing this package loads nothing.
"""

from lmserv._bindings._stream import LlamaStream
from lmserv._bindings.llama import Llama
from lmserv._bindings.params import LlamaParams

__all__ = ["Llama", "LlamaParams", "LlamaStream"]
