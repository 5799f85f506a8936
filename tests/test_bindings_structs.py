"""The ctypes structs agree with the C compiler on size and every field offset.

A small C program is generated from the Python declarations, compiled with ``gcc`` against the
very headers the library was built from (``LlamaBuild.source_dir``), and its output compared.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lmserv._bindings import _llama_h as h
from lmserv.install import LlamaBuild

pytestmark = pytest.mark.slow  # the headers come from the llama.cpp build


def _c_program() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "llama.h"', "int main(void) {"]
    for name, cls in h.STRUCTS.items():
        lines.append(f'    printf("{name} sizeof %zu\\n", sizeof(struct {name}));')
        for field, *_ in cls._fields_:
            lines.append(f'    printf("{name} {field} %zu\\n", offsetof(struct {name}, {field}));')
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


def _python_layout() -> dict[tuple[str, str], int]:
    layout: dict[tuple[str, str], int] = {}
    for name, cls in h.STRUCTS.items():
        layout[(name, "sizeof")] = __import__("ctypes").sizeof(cls)
        for field, *_ in cls._fields_:
            layout[(name, field)] = getattr(cls, field).offset
    return layout


def test_struct_layout_matches_c(llama_build: LlamaBuild, tmp_path: Path) -> None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to compare struct layouts with")
    assert llama_build.source_dir is not None
    include = llama_build.source_dir / "include"
    ggml_include = llama_build.source_dir / "ggml" / "include"
    assert (include / "llama.h").is_file()
    source = tmp_path / "layout.c"
    source.write_text(_c_program())
    exe = tmp_path / "layout"
    subprocess.run(
        [gcc, "-std=c11", f"-I{include}", f"-I{ggml_include}", str(source), "-o", str(exe)],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    c_layout = {}
    for line in out.splitlines():
        struct, field, value = line.split()
        c_layout[(struct, field)] = int(value)
    py_layout = _python_layout()
    assert set(c_layout) == set(py_layout)
    mismatches = {k: (py_layout[k], v) for k, v in c_layout.items() if py_layout[k] != v}
    assert mismatches == {}, f"(python, C) layout differs: {mismatches}"


def test_every_struct_field_named_as_in_header(llama_build: LlamaBuild) -> None:
    """Each declared struct and field name appears in llama.h (guards against typos)."""
    assert llama_build.source_dir is not None
    header = (llama_build.source_dir / "include" / "llama.h").read_text()
    for name, cls in h.STRUCTS.items():
        assert f"struct {name}" in header, name
        for field, *_ in cls._fields_:
            assert field in header, f"{name}.{field}"


def test_every_declared_function_matches_header_arity(llama_build: LlamaBuild) -> None:
    """Each declared function is in llama.h (``ggml_*``: ggml-backend.h), with as many
    parameters as its argtypes."""
    assert llama_build.source_dir is not None
    root = llama_build.source_dir
    headers = {
        "LLAMA_API": (root / "include" / "llama.h").read_text(),
        "GGML_API": (root / "ggml" / "include" / "ggml-backend.h").read_text(),
    }
    for name, (argtypes, _restype) in h.declared_functions().items():
        api = "GGML_API" if name.startswith("ggml_") else "LLAMA_API"
        header = re.sub(r"//[^\n]*", "", headers[api])  # comments hold commas and parentheses
        match = re.search(rf"{api}[^;]*?\b{name}\s*\(([^)]*)\)", header)
        assert match is not None, f"{name} is not declared with {api}"
        params = match.group(1).strip()
        n_params = 0 if params in ("", "void") else params.count(",") + 1
        assert n_params == len(argtypes), f"{name}: llama.h has {n_params} parameters"
