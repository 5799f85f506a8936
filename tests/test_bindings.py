"""Loading libllama: lazily, from the finder's places, with clear errors instead of OSError.

The library is loaded once per process, so each loading scenario runs in a fresh interpreter
with its own environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmserv._bindings._log import LogRouter
from lmserv._bindings._text import PieceAssembler
from lmserv.install import LlamaBuild
from lmserv.testing import COUNTING_CONTINUATION, write_counting_model

SRC = Path(__file__).resolve().parents[1] / "src"

_PROBE = """
import sys
from lmserv import Llama
try:
    llm = Llama(sys.argv[1], n_ctx=256)
except Exception as exc:
    print(type(exc).__name__)
    print(isinstance(exc, OSError) and type(exc).__name__ == "OSError")
    print(exc)
else:
    print("loaded")
    print(llm.generate("one two", temperature=0))
"""


def _run_probe(model: Path, tmp_path: Path, **env_extra: str) -> list[str]:
    """Run ``_PROBE`` with no llama.cpp anywhere except where ``env_extra`` points."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLAMA_", "LMSERV_")) and k not in ("LD_LIBRARY_PATH", "HOME")
    }
    env.update(
        PYTHONPATH=str(SRC),
        HOME=str(home),
        LMSERV_PATHS_DATA=str(tmp_path / "data"),
        LMSERV_PATHS_BUILDS=str(tmp_path / "builds"),
        **env_extra,
    )
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(model)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr  # never a crash, never an uncaught error
    return proc.stdout.splitlines()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_counting_model(tmp_path_factory.mktemp("m") / "counting.gguf")


def test_import_lmserv_loads_nothing() -> None:
    script = (
        "import lmserv, lmserv._bindings.llama\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('libllama' in maps or 'libggml' in maps)\n"
    )
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc")
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        check=True,
    ).stdout
    assert out.strip() == "False"


@pytest.mark.slow
def test_loads_from_llama_lib_dir(model: Path, tmp_path: Path, llama_build: LlamaBuild) -> None:
    out = _run_probe(model, tmp_path, LLAMA_LIB_DIR=str(llama_build.lib_dir))
    assert out == ["loaded", COUNTING_CONTINUATION]


@pytest.mark.slow
def test_loads_from_a_moved_build_folder(
    model: Path, tmp_path: Path, llama_build: LlamaBuild
) -> None:
    """A copy of the build folder loads (libggml* are preloaded from beside libllama)."""
    copy = tmp_path / "copied"
    copy.mkdir()
    for lib in llama_build.lib_dir.glob("lib*.so*"):
        if lib.name.startswith(("libllama.so", "libggml")):
            shutil.copy2(lib, copy / lib.name, follow_symlinks=True)
    out = _run_probe(model, tmp_path, LLAMA_LIB_DIR=str(copy))
    assert out == ["loaded", COUNTING_CONTINUATION]


def test_missing_library_is_binary_not_found(model: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _run_probe(model, tmp_path, LLAMA_LIB_DIR=str(empty))
    assert out[0] == "BinaryNotFound"
    text = "\n".join(out[2:])
    assert f"$LLAMA_LIB_DIR: {empty / 'libllama.so'}" in text
    assert "lmserv build" in text


def test_unloadable_library_is_library_mismatch(model: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "libllama.so").write_text("this is not a shared library\n")
    out = _run_probe(model, tmp_path, LLAMA_LIB_DIR=str(fake))
    assert out[:2] == ["LibraryMismatch", "False"]
    assert str(fake / "libllama.so") in out[2]


@pytest.mark.slow
def test_library_without_llama_symbols_is_library_mismatch(
    model: Path, tmp_path: Path, llama_build: LlamaBuild
) -> None:
    fake = tmp_path / "wrong"
    fake.mkdir()
    shutil.copy2(llama_build.lib_dir / "libggml-base.so", fake / "libllama.so")
    out = _run_probe(model, tmp_path, LLAMA_LIB_DIR=str(fake))
    assert out[0] == "LibraryMismatch"
    assert "llama_backend_init" in "\n".join(out[2:])
    assert "lmserv build" in "\n".join(out[2:])


# -- pure-Python helpers -------------------------------------------------------------------------


def _feed_all(chunks: list[bytes], stop: tuple[str, ...] = ()) -> list[str]:
    assembler = PieceAssembler(stop)
    out = [assembler.feed(c) for c in chunks]
    out.append(assembler.finish())
    return [piece for piece in out if piece]


def test_assembler_joins_characters_split_across_pieces() -> None:
    data = "añ😀日".encode()
    chunks = [data[i : i + 1] for i in range(len(data))]
    pieces = _feed_all(chunks)
    assert "".join(pieces) == "añ😀日"
    assert pieces == ["a", "ñ", "😀", "日"]


def test_assembler_replaces_a_truncated_character_at_the_end() -> None:
    assert _feed_all([b"ok", "😀".encode()[:2]]) == ["ok", "\ufffd"]


def test_assembler_stop_strings_are_held_back_and_cut() -> None:
    assert _feed_all([b"one tw", b"o thr", b"ee"], stop=("two",)) == ["one "]
    # A false start of a stop string is released once it cannot match any more.
    assert "".join(_feed_all([b"a</", b"b>c"], stop=("</s>",))) == "a</b>c"
    assert _feed_all([b"xyz"], stop=("yz", "x")) == []


def test_log_router_joins_fragments_and_remembers_problems() -> None:
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("test.router")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Keep())
    router = LogRouter(logger)
    mark = router.mark()
    router(2, b"loading ", None)
    router(5, b"model\n", None)  # GGML_LOG_LEVEL_CONT
    router(4, b"bad magic\n", None)
    router(3, None, None)
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.INFO, "loading model"),
        (logging.ERROR, "bad magic"),
    ]
    assert router.problems_since(mark) == ["bad magic"]
    assert router.problems_since(router.mark()) == []
