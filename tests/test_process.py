"""The shared process plumbing: log tails, log pruning, free ports, spawn and terminate.

Real files in a temporary folder, real sockets on 127.0.0.1 and real Python child processes.
What the binaries do with these settings (dying with their parent, surviving SIGPIPE) is
covered through LlamaServer and RpcWorker in test_server.py and test_rpc.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lmserv._process import (
    LOG_KEEP,
    free_port,
    new_log_path,
    prune_logs,
    read_tail,
    spawn,
    terminate,
)


def _log(path: Path, count: int) -> Path:
    path.write_text("".join(f"line {i}\n" for i in range(count)))
    return path


def test_read_tail_returns_the_last_lines(tmp_path: Path) -> None:
    path = _log(tmp_path / "a.log", 100)
    assert read_tail(path, 3, max_bytes=64 * 1024) == "line 97\nline 98\nline 99"
    assert read_tail(path, 500, max_bytes=64 * 1024).splitlines()[0] == "line 0"


def test_read_tail_reads_only_the_last_bytes(tmp_path: Path) -> None:
    path = _log(tmp_path / "a.log", 100)  # "line 99\n" is 8 bytes
    assert read_tail(path, 50, max_bytes=16) == "line 98\nline 99"


def test_read_tail_replaces_bad_bytes_and_keeps_a_last_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"ok\n\xff\xfe broken\nno newline yet")
    assert read_tail(path, 2, max_bytes=1024) == "\ufffd\ufffd broken\nno newline yet"


def test_read_tail_of_missing_file_or_no_lines_is_empty(tmp_path: Path) -> None:
    assert read_tail(tmp_path / "missing.log", 10, max_bytes=1024) == ""
    path = _log(tmp_path / "a.log", 5)
    assert read_tail(path, 0, max_bytes=1024) == ""
    assert read_tail(path, -1, max_bytes=1024) == ""


def test_prune_logs_keeps_the_newest_and_leaves_other_files(tmp_path: Path) -> None:
    for i in range(6):
        path = _log(tmp_path / f"kind-{i}.log", 1)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))  # kind-5 newest
    other = _log(tmp_path / "other-0.log", 1)
    os.utime(other, (1, 1))  # oldest of all, but not of this kind
    prune_logs(tmp_path, "kind-*.log", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kind-4.log", "kind-5.log", "other-0.log"]
    prune_logs(tmp_path, "kind-*.log", 2)  # nothing more to do
    assert len(list(tmp_path.glob("kind-*.log"))) == 2


def test_new_log_path_prunes_to_keep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMSERV_PATHS_CACHE", str(tmp_path))
    folder = tmp_path / "logs"
    folder.mkdir()
    for i in range(LOG_KEEP + 3):
        path = _log(folder / f"worker-2020-{i:02d}.log", 1)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    path = new_log_path("worker", "123-7")
    assert path.parent == folder and path.name.startswith("worker-")
    assert path.name.endswith("-123-7.log") and not path.exists()
    left = sorted(p.name for p in folder.iterdir())
    assert len(left) == LOG_KEEP
    assert left[0] == "worker-2020-03.log"  # the three oldest went


def test_free_port_can_be_bound(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    assert 1 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


_PDEATHSIG = (
    "import ctypes\n"
    "sig = ctypes.c_int()\n"
    "ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG\n"
    "print(sig.value)\n"
)


def _child_output(tmp_path: Path, argv: list[str], **options: Any) -> str:
    log_path = tmp_path / "child.log"
    with log_path.open("wb") as log:
        proc = spawn(argv, log, **options)
    assert proc.wait(30) == 0, log_path.read_text()
    return log_path.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
@pytest.mark.parametrize(
    ("death_signal", "ignore_sigpipe"), [(signal.SIGKILL, False), (signal.SIGTERM, True)]
)
def test_spawn_sets_death_signal_sigpipe_and_session(
    tmp_path: Path, death_signal: signal.Signals, ignore_sigpipe: bool
) -> None:
    # What the child itself sees, for LlamaServer's settings (SIGKILL, SIGPIPE at its
    # default) and RpcWorker's (SIGTERM, SIGPIPE ignored). Python ignores SIGPIPE itself at
    # start-up, so `cat` reports the signal mask; prctl's setting survives exec.
    options = {"death_signal": death_signal, "ignore_sigpipe": ignore_sigpipe}
    assert _child_output(tmp_path, [sys.executable, "-c", _PDEATHSIG], **options).split() == [
        str(int(death_signal))
    ]
    status = dict(
        line.split(":", 1)
        for line in _child_output(tmp_path, ["cat", "/proc/self/status"], **options).splitlines()
    )
    ignored = int(status["SigIgn"], 16)
    assert bool(ignored & (1 << (signal.SIGPIPE - 1))) is ignore_sigpipe
    pid, sid = int(status["Pid"]), status["NSsid"].split()[-1]
    assert int(sid) == pid  # a session of its own: Ctrl-C in a terminal does not reach it


def test_terminate_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    warned: list[int] = []
    code = terminate(proc, 0.5, resend_after=0.2, before_kill=lambda: warned.append(proc.pid))
    proc.stdout.close()
    assert code == -signal.SIGKILL
    assert warned == [proc.pid]
    assert terminate(proc, 0.5) == -signal.SIGKILL  # an exited process is left alone


def test_prune_survives_a_file_vanishing_under_it(tmp_path: Path) -> None:
    # A dangling link fails stat() exactly like a log another process just pruned.
    for i in range(3):
        (tmp_path / f"srv-{i}.log").write_text("x")
    (tmp_path / "srv-gone.log").symlink_to(tmp_path / "already-deleted.log")
    prune_logs(tmp_path, "srv-*.log", keep=1)
    assert len([p for p in tmp_path.glob("srv-*.log") if p.exists()]) == 1


def _state(pid: int) -> str:
    """The process state letter of ``pid`` ("Z" for a zombie), or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except (OSError, IndexError):
        return ""


def _wait_dead(pid: int, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _state(pid) in ("", "Z"):  # a zombie is dead, only not yet reaped
            return True
        time.sleep(0.05)
    return False


# Python that starts a child from a short-lived thread, waits until that thread is gone from
# the kernel's task list too (the death signal follows the *thread* that forked), then prints
# the child's pid and sleeps until it is killed.
_SPAWN_FROM_A_THREAD = """
import os, signal, sys, threading, time
from lmserv._process import spawn

pids = []
def start():
    with open(sys.argv[1], "wb") as log:
        argv = [sys.executable, "-c", "import time; time.sleep(600)"]
        pids.append(spawn(argv, log, death_signal=signal.SIGKILL).pid)
thread = threading.Thread(target=start)
thread.start()
thread.join()
while str(thread.native_id) in os.listdir("/proc/self/task"):
    time.sleep(0.01)
print(pids[0], flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_child_started_from_a_thread_lives_with_python_not_with_the_thread(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    argv = [sys.executable, "-c", _SPAWN_FROM_A_THREAD, str(tmp_path / "child.log")]
    parent = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        # The thread that asked for it has ended; the child must not have gone with it.
        assert _state(child) not in ("", "Z"), "the child died with the thread that started it"
        parent.kill()  # SIGKILL: no atexit, no cleanup; only the kernel can stop the child now
        parent.wait(30)
        assert _wait_dead(child), f"child {child} outlived its SIGKILLed Python parent"
    finally:
        parent.kill()
        parent.wait(30)
        if parent.stdout is not None:
            parent.stdout.close()
        if child and _state(child) not in ("", "Z"):
            os.kill(child, signal.SIGKILL)  # the test failed: leave no sleeper behind
