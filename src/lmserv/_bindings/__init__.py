"""In-process inference through ``libllama`` (ctypes): :class:`~lmserv._bindings.llama.Llama`.

``_llama_h`` declares the C API, ``_lib`` finds and loads the library lazily, ``llama`` is the
Pythonic layer. Importing this package loads nothing.
"""
