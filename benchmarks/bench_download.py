"""Download benchmarks: each case prints a ratio against a baseline measured in the same run.

1. One connection on loopback: lmserv ``download_file`` (hashing in the same pass) vs
   ``curl -o`` followed by ``sha256sum``. Target: ratio >= 1 (lmserv at least as fast).
2. A server capped per connection: lmserv with parallel ranges vs lmserv with one connection.
   Target: >= 3.5x.
3. Peak RSS of a process downloading a 2 GiB file (streamed from a generator by the server, not
   stored) vs a process that only imports lmserv. Target: < 100 MB.

The test server (``tests/_http_server.py``) runs in its own process so it does not share a GIL
with the client under test. Files go to ``benchmarks/.work`` and are deleted afterwards.

    python benchmarks/bench_download.py [--single-mib 256] [--capped-mib 48] [--cap-mbs 8]
                                        [--rss-size 2147483648] [--only 1,2,3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"
sys.path.insert(0, str(ROOT / "src"))

from lmserv.install import download_file  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))


@contextmanager
def serve(*args: str) -> Iterator[str]:
    """Run tests/_http_server.py in a child process; yield its base URL."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "_http_server.py"), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _clean(path: Path) -> None:
    for p in path.parent.glob(path.name + "*"):
        p.unlink()
    for p in path.parent.glob(f".{path.name}*"):
        p.unlink()


def _timed_lmserv(url: str, dest: Path, sha: str | None, connections: int) -> float:
    _clean(dest)
    start = time.perf_counter()
    download_file(url, dest, sha256=sha, connections=connections, progress=False)
    elapsed = time.perf_counter() - start
    _clean(dest)
    return elapsed


def _timed_curl(url: str, dest: Path, sha: str) -> tuple[float, float]:
    """(curl seconds, sha256sum seconds)."""
    _clean(dest)
    start = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(dest), url], check=True)
    fetched = time.perf_counter()
    out = subprocess.run(["sha256sum", str(dest)], check=True, capture_output=True, text=True)
    hashed = time.perf_counter()
    assert out.stdout.split()[0] == sha, "curl fetched different bytes"
    _clean(dest)
    return fetched - start, hashed - fetched


def bench_single(mib: int, repeats: int) -> None:
    src = WORK / "single-src.bin"
    data = os.urandom(mib << 20)
    src.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    del data
    dest = WORK / "single.gguf"
    with serve("--file", f"/f.gguf={src}") as base:
        url = f"{base}/f.gguf"
        ours = [_timed_lmserv(url, dest, sha, 1) for _ in range(repeats)]
        curl = [_timed_curl(url, dest, sha) for _ in range(repeats)]
    src.unlink()
    a = statistics.median(ours)
    b = statistics.median(c + h for c, h in curl)
    c_only = statistics.median(c for c, _h in curl)
    h_only = statistics.median(h for _c, h in curl)
    print(f"[1] single connection, {mib} MiB on loopback, median of {repeats}:")
    print(f"    lmserv download_file (hash in the same pass): {a:.3f} s ({mib / a:.0f} MiB/s)")
    print(f"    curl -o + sha256sum:                         {b:.3f} s ({mib / b:.0f} MiB/s)")
    print(f"      of which curl -o {c_only:.3f} s, sha256sum {h_only:.3f} s")
    print(f"    ratio (curl+sha256sum time / lmserv time): {b / a:.2f}x  (target >= 1.0)")


def bench_capped(mib: int, cap_mbs: float) -> None:
    src = WORK / "capped-src.bin"
    data = os.urandom(mib << 20)
    src.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    del data
    dest = WORK / "capped.gguf"
    cap = int(cap_mbs * 1_000_000)
    with serve("--file", f"/f.gguf={src}", "--throttle", str(cap)) as base:
        url = f"{base}/f.gguf"
        one = _timed_lmserv(url, dest, sha, 1)
        many = _timed_lmserv(url, dest, sha, 8)
    src.unlink()
    print(f"[2] server capped at {cap_mbs:g} MB/s per connection, {mib} MiB:")
    print(f"    one connection:     {one:.2f} s ({mib / one:.1f} MiB/s)")
    print(f"    8 connections:      {many:.2f} s ({mib / many:.1f} MiB/s)")
    print(f"    ratio (one / parallel): {one / many:.2f}x  (target >= 3.5)")


# VmHWM, not ru_maxrss: the latter carries the parent's peak across fork + exec on Linux.
_CHILD = """
import sys, time
from lmserv.install import download_file
if sys.argv[1] != "baseline":
    t = time.perf_counter()
    p = download_file(sys.argv[1], sys.argv[2], progress=False)
    print(f"{p.stat().st_size} bytes in {time.perf_counter() - t:.1f} s", file=sys.stderr)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]))
"""


def _peak_rss_mb(*args: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], check=True, capture_output=True, text=True, env=ENV
    )
    sys.stderr.write(out.stderr)
    return int(out.stdout.strip()) / 1024  # VmHWM is in KiB


def bench_rss(size: int) -> None:
    dest = WORK / "big.gguf"
    _clean(dest)
    need = size + (256 << 20)
    free = shutil.disk_usage(WORK).free
    if free < need:
        print(f"[3] skipped: {free >> 20} MiB free, {need >> 20} MiB needed")
        return
    baseline = _peak_rss_mb("baseline")
    with serve("--virtual", str(size)) as base:
        start = time.perf_counter()
        peak = _peak_rss_mb(f"{base}/virtual", str(dest))
        elapsed = time.perf_counter() - start
    _clean(dest)
    print(
        f"[3] peak RSS downloading {size / 2**30:.2f} GiB (default connections), {elapsed:.1f} s:"
    )
    print(f"    baseline (python + import lmserv): {baseline:.1f} MB")
    print(f"    download:                          {peak:.1f} MB  (target < 100 MB)")
    print(f"    ratio (download / baseline): {peak / baseline:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--capped-mib", type=int, default=48)
    parser.add_argument("--cap-mbs", type=float, default=8.0)
    parser.add_argument("--rss-size", type=int, default=2 << 30)
    parser.add_argument("--only", default="1,2,3")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    cases = set(args.only.split(","))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    try:
        if "1" in cases:
            bench_single(args.single_mib, args.repeats)
        if "2" in cases:
            bench_capped(args.capped_mib, args.cap_mbs)
        if "3" in cases:
            bench_rss(args.rss_size)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
