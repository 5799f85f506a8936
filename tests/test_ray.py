"""Replicas on Ray Serve (lmserv.ray) with a real local Ray cluster and real llama-servers.

One small cluster serves the whole module (Ray takes tens of seconds to start on two busy
cores): 2 CPUs, no dashboard, Serve's proxy on 127.0.0.1 (Ray's own ports take the node's
address: Ray turns 127.0.0.1 into it, and guards them with a token), its session files under a folder of its own so
that the last test can tell its processes from anyone else's. The tests run in file order;
the last one shuts the cluster down and checks that nothing of it is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray  # in the test extra, so these tests run everywhere the suite does
from ray import serve

from _helpers import llama_server_pids
from lmserv import Client, ConfigError, ModelNotFound
from lmserv._process import free_port
from lmserv.install import LlamaBuild
from lmserv.ray import REPLICA_HEADER, deployment, run
from lmserv.testing import COUNTING_CONTINUATION, COUNTING_PROMPT

THREADS = ("-t", "1")  # two replicas share two cores
# Every wait below is generous: the machine is shared, and Ray's start-up and health checks
# take seconds each. None of them is a speed assertion.
WAIT = 300.0


@dataclass(frozen=True)
class Cluster:
    url: str  # Serve's HTTP proxy
    temp_dir: str  # Ray's session files: every process of this cluster names it
    address: str  # the GCS address, for a second driver (the CLI test)
    actor_options: dict[str, Any]


def cluster_pids(temp_dir: str) -> list[int]:
    """Live processes whose command line or environment mentions ``temp_dir``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(") ", 1)[1][:1]
        except OSError:
            continue
        if temp_dir.encode() in cmd and state != "Z":
            pids.append(int(entry.name))
    return pids


def wait_for(what: str, check: Callable[[], bool], seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:.0f}s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(llama_build: LlamaBuild) -> Iterator[Cluster]:
    # A short folder: Ray puts unix sockets under it, and their paths are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="lmray", dir="/tmp")
    env = {"LLAMA_BIN_DIR": str(llama_build.bin_dir), "LLAMA_LIB_DIR": str(llama_build.lib_dir)}
    context = ray.init(
        address="local",  # never a cluster someone else started on this machine
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp_dir,
        log_to_driver=False,
    )
    port = free_port("127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield Cluster(
            url=f"http://127.0.0.1:{port}",
            temp_dir=temp_dir,
            address=context.address_info["gcs_address"],
            # The workers would inherit the variables from this process anyway; saying so
            # shows what a real cluster needs, where they come from each node's environment.
            actor_options={"num_cpus": 0.5, "runtime_env": {"env_vars": env}},
        )
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def counting_app(cluster: Cluster, model: Path) -> str:
    """Two replicas of the counting model at ``/``; returns the proxy's URL."""
    app = deployment(
        model, num_replicas=2, ray_actor_options=cluster.actor_options, extra_args=THREADS
    )
    run(app, name="counting", route_prefix="/")
    return cluster.url


def complete(url: str) -> tuple[str, str]:
    """One OpenAI completion through Serve: (text, the replica that answered)."""
    answer = httpx.post(
        f"{url}/v1/completions",
        json={"prompt": COUNTING_PROMPT, "max_tokens": 16, "temperature": 0},
        timeout=WAIT,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["choices"][0]["text"], answer.headers[REPLICA_HEADER]


# -- no cluster needed ------------------------------------------------------------------------
def test_bad_options_fail_before_anything_starts(model: Path) -> None:
    with pytest.raises(ConfigError, match="port=8080"):
        deployment(model, port=8080)
    with pytest.raises(ConfigError, match="num_replicas=0"):
        deployment(model, num_replicas=0)
    with pytest.raises(TypeError, match="ctx_sise"):
        deployment(model, ctx_sise=512)


def test_replicas_without_ray_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from lmserv.cli import main

    assert main(["serve", "counting", "--replicas", "2"]) == 2
    assert "--replicas 2 needs --ray" in capsys.readouterr().err


# -- a real cluster ---------------------------------------------------------------------------
@pytest.mark.ray
def test_two_replicas_answer_32_concurrent_requests(counting_app: str, model_dir: Path) -> None:
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: complete(counting_app), range(32)))
    assert [text for text, _ in answers] == [COUNTING_CONTINUATION] * 32
    replicas = {replica for _, replica in answers}
    assert len(replicas) == 2, replicas  # Serve spread them over both
    assert len(llama_server_pids(str(model_dir))) == 2


@pytest.mark.ray
def test_openai_routes_pass_through(counting_app: str) -> None:
    from openai import OpenAI

    openai = OpenAI(base_url=f"{counting_app}/v1", api_key="unused", timeout=WAIT)
    stream = openai.chat.completions.create(
        model="counting",
        messages=[{"role": "user", "content": COUNTING_PROMPT}],
        temperature=0,
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(pieces) > 3  # streamed piece by piece, not buffered into one
    assert "".join(pieces) == COUNTING_CONTINUATION
    assert [m.id for m in openai.models.list()] != []
    # lmserv's own client (native /completion, streamed) works against Serve unchanged.
    with Client(counting_app) as client:
        assert client.complete(COUNTING_PROMPT, temperature=0).text == COUNTING_CONTINUATION
        assert "".join(client.stream(COUNTING_PROMPT, temperature=0)) == COUNTING_CONTINUATION
    # Routes outside the API, and llama-server's admin routes, are not passed on.
    missing = httpx.get(f"{counting_app}/slots", timeout=WAIT)
    assert missing.status_code == 404 and "/v1/chat/completions" in missing.text
    assert httpx.get(f"{counting_app}/v1/completions", timeout=WAIT).status_code == 405


@pytest.mark.ray
def test_embeddings(cluster: Cluster, model: Path) -> None:
    app = deployment(
        model,
        ray_actor_options=cluster.actor_options,
        extra_args=(*THREADS, "--embeddings", "--pooling", "mean"),
    )
    run(app, name="embed", route_prefix="/embed")
    try:
        answer = httpx.post(
            f"{cluster.url}/embed/v1/embeddings", json={"input": ["one two", "three"]}, timeout=WAIT
        )
        assert answer.status_code == 200, answer.text
        vectors = [item["embedding"] for item in answer.json()["data"]]
        assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0
        assert vectors[0] != vectors[1]
    finally:
        serve.delete("embed")


@pytest.mark.ray
def test_killed_llama_server_is_replaced(counting_app: str, model_dir: Path) -> None:
    before = llama_server_pids(str(model_dir))
    assert len(before) == 2
    victim = before[0]
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = llama_server_pids(str(model_dir))
        return victim not in now and len(now) == 2

    wait_for("a new replica with a new llama-server", replaced)
    # Requests sent while Serve switches over may get a 503; once settled, all succeed.
    wait_for("the application to be RUNNING", lambda: _app_running("counting"))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: complete(counting_app), range(8)))
    assert [text for text, _ in answers] == [COUNTING_CONTINUATION] * 8
    assert all(not replica.endswith(f"/{victim}") for _, replica in answers)


def _app_running(name: str) -> bool:
    status = serve.status().applications.get(name)
    return status is not None and status.status == "RUNNING"


@pytest.mark.ray
def test_missing_model_fails_with_a_clear_error(cluster: Cluster) -> None:
    app = deployment("no-such-model-anywhere", ray_actor_options=cluster.actor_options)
    with pytest.raises(ModelNotFound) as failed:  # raised in the replica, again here
        run(app, name="missing", route_prefix="/missing")
    message = str(failed.value)
    assert message.startswith("Ray Serve application 'missing': replica on node ")
    assert "model 'no-such-model-anywhere' is not in the catalog; run `lmserv list`" in message
    assert "Traceback" not in message
    serve.delete("missing")


@pytest.mark.ray
def test_cli_serves_replicas_on_an_existing_cluster(
    cluster: Cluster, model: Path, tmp_path: Path
) -> None:
    """``lmserv serve --ray ADDRESS`` joins this cluster, serves, and on SIGTERM deletes its
    application and leaves the cluster running."""
    # Serve's proxy was started by the fixture with its own port; a running Serve keeps its
    # HTTP options, so the application is reached through the fixture's URL. The CLI's app
    # takes route "/", which one application at a time may have.
    serve.delete("counting")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmserv", "serve", str(model), "--ray", cluster.address,
         "--replicas", "1", "--server-args", " ".join(THREADS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("ready at"):
                break
        assert any("ready at" in line for line in seen), "".join(seen)
        wait_for("the CLI's application", lambda: _app_running("lmserv"))
        assert complete(cluster.url)[0] == COUNTING_CONTINUATION
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, out
    assert "lmserv" not in serve.status().applications
    assert ray.is_initialized() and cluster_pids(cluster.temp_dir) != []


@pytest.mark.ray
def test_shutdown_leaves_no_process(cluster: Cluster, model_dir: Path) -> None:
    assert cluster_pids(cluster.temp_dir) != []  # the check below can see the cluster
    serve.shutdown()
    ray.shutdown()
    wait_for("no llama-server left", lambda: llama_server_pids(str(model_dir)) == [], 60)
    wait_for("no Ray process left", lambda: cluster_pids(cluster.temp_dir) == [], 60)
