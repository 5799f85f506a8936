"""Locating llama.cpp's binaries and libraries; see :mod:`lmserv._bootstrap.finder`."""
