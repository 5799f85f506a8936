"""``Llama`` and threads: one object used from several threads takes turns, never crashes.

libllama's context is not thread-safe: two threads decoding on one context at once crash the
interpreter, hang in ``llama_decode`` or mix their outputs. ``Llama`` serializes every call on
one object; two objects share nothing and run side by side. Real libllama, the counting model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lmserv import Llama, LlamaError
from lmserv.install import LlamaBuild
from lmserv.testing import COUNTING_CONTINUATION, COUNTING_PROMPT, write_counting_model

pytestmark = pytest.mark.slow

ROUNDS = 25
JOIN = 300  # seconds: a thread still alive after this is a hang, reported as a failure


@pytest.fixture(scope="module")
def counting_model(tmp_path_factory: pytest.TempPathFactory, llama_build: LlamaBuild) -> Path:
    return write_counting_model(tmp_path_factory.mktemp("models") / "counting.gguf")


@pytest.fixture
def llm(counting_model: Path) -> Iterator[Llama]:
    with Llama(counting_model, n_ctx=256, n_threads=1, embedding=True) as model:
        yield model


def _run_all(*jobs: Callable[[], None]) -> None:
    """Run each job in its own thread, all released at once; re-raise the first failure."""
    start = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            start.wait()
            job()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN)
    assert not any(t.is_alive() for t in threads), "a thread hung on a shared Llama"
    if errors:
        raise errors[0]


# Without the turn-taking this crashes the interpreter (or hangs, or mixes texts), so it runs
# in a Python of its own: a crash fails this test instead of ending the test session.
_HAMMER = """
import sys, threading
from lmserv import Llama
from lmserv.testing import COUNTING_CONTINUATION, COUNTING_PROMPT

ROUNDS = int(sys.argv[2])
llm = Llama(sys.argv[1], n_ctx=256, n_threads=1, embedding=True)
vector, ids, meta = llm.embed("one two three"), llm.tokenize(COUNTING_PROMPT), llm.metadata
start = threading.Barrier(4)
wrong = []

def check(got, expected):
    if got != expected:
        wrong.append(repr(got)[:80])

def generate():
    start.wait()
    for _ in range(ROUNDS):
        check(llm.generate(COUNTING_PROMPT, temperature=0), COUNTING_CONTINUATION)

def complete():
    start.wait()
    for _ in range(ROUNDS):
        check(llm.complete("one two three", temperature=0).text, COUNTING_CONTINUATION[6:])

def embed():
    start.wait()
    for _ in range(ROUNDS):
        check(llm.embed("one two three"), vector)

def tokens():
    start.wait()
    for _ in range(ROUNDS * 4):
        check(llm.tokenize(COUNTING_PROMPT), ids)
        check(llm.detokenize(ids), COUNTING_PROMPT)
        check(llm.metadata, meta)

def run(job):
    try:
        job()
    except Exception as exc:  # e.g. one generation interrupting another: a failure too
        wrong.append(repr(exc)[:200])

jobs = (generate, complete, embed, tokens)
threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
llm.close()
print("wrong:", wrong)
"""


def _python(script: str, *args: str) -> str:
    """Run ``script`` in a Python of its own; its output, or a failure if it crashed."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    argv = [sys.executable, "-c", script, *args]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=JOIN)
    assert out.returncode == 0, (
        f"the shared Llama crashed (code {out.returncode}):\n{out.stderr[-3000:]}"
    )
    return out.stdout.strip()


def test_calls_on_one_llama_from_several_threads_take_turns(counting_model: Path) -> None:
    assert _python(_HAMMER, str(counting_model), str(ROUNDS)) == "wrong: []"


def test_a_stream_in_one_thread_is_interrupted_by_a_generation_in_another(llm: Llama) -> None:
    stream = llm.stream(COUNTING_PROMPT, temperature=0)
    first_piece = threading.Event()
    other_done = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        seen.append(next(stream))
        first_piece.set()
        assert other_done.wait(JOIN)
        with pytest.raises(LlamaError, match="interrupted"):
            next(stream)

    def other() -> None:
        assert first_piece.wait(JOIN)
        # The open stream holds no lock between pieces: this neither waits for it nor
        # corrupts it, and it gets the right text.
        seen.append(llm.generate(COUNTING_PROMPT, temperature=0))
        other_done.set()

    _run_all(reader, other)
    assert seen == [" three", COUNTING_CONTINUATION]


_CLOSE_WHILE_GENERATING = """
import sys, threading
from lmserv import Llama, LlamaError
from lmserv.testing import COUNTING_CONTINUATION, COUNTING_PROMPT

llm = Llama(sys.argv[1], n_ctx=256, n_threads=1)
started = threading.Event()
outcome = []

def generate():
    for _ in range(10_000):  # until the close gets its turn
        started.set()
        try:
            text = llm.generate(COUNTING_PROMPT, max_tokens=200, temperature=0)
        except LlamaError as exc:  # closed before this call began
            outcome.append("closed" if "closed" in str(exc) else str(exc))
            return
        outcome.append("ok" if text == COUNTING_CONTINUATION else repr(text))

thread = threading.Thread(target=generate)
thread.start()
started.wait()
llm.close()  # waits for the generation under way, never frees the context under it
thread.join()
print(outcome[-1], sorted(set(outcome[:-1])))
"""


def test_close_from_another_thread_waits_for_the_running_call(counting_model: Path) -> None:
    out = _python(_CLOSE_WHILE_GENERATING, str(counting_model))
    assert out in ("closed ['ok']", "closed []")


def test_two_llamas_run_at_the_same_time(counting_model: Path) -> None:
    with (
        Llama(counting_model, n_ctx=256, n_threads=1) as first,
        Llama(counting_model, n_ctx=256, n_threads=1) as second,
    ):
        # While one Llama is busy (its lock held, as during a long decode), the other still
        # generates: the turn-taking is per object, not one lock for the whole library.
        with first._lock:
            texts: list[str] = []
            _run_all(lambda: texts.append(second.generate(COUNTING_PROMPT, temperature=0)))
            assert texts == [COUNTING_CONTINUATION]
        # And both make progress together, piece by piece, each with its own right text.
        both = threading.Barrier(2)
        pieces: dict[int, list[str]] = {0: [], 1: []}

        def lockstep(index: int, model: Llama) -> Callable[[], None]:
            def job() -> None:
                for piece in model.stream(COUNTING_PROMPT, temperature=0, max_tokens=8):
                    pieces[index].append(piece)
                    both.wait(JOIN)  # neither gets ahead of the other by a whole piece

            return job

        _run_all(lockstep(0, first), lockstep(1, second))
        assert "".join(pieces[0]) == "".join(pieces[1]) == COUNTING_CONTINUATION
