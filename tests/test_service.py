"""The model service: its preset, state file and options (fast), then the real router (slow).

The slow half runs llama-server's router over one models folder holding the counting model
(served by its file stem, ``counting``) and a synthetic embedding model that a user catalog
entry in the config file names ``tiny-embed`` (alias ``embedder``), with its pooling from a
``[models.tiny-embed]`` table. Every request names its model; answers are checked exactly.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from _helpers import llama_server_pids
from lmserv import (
    AuthenticationError,
    Client,
    ModelNotFound,
    ModelNotServed,
    ModelService,
    ServerStartError,
    config,
)
from lmserv._service_preset import (
    PresetModel,
    args_to_options,
    parse_keep_alive,
    preset_models,
    render_preset,
)
from lmserv._service_state import ServiceLock, ServiceState, read_state, state_path, write_state
from lmserv.config import ModelOptions, load_settings
from lmserv.errors import ConfigError
from lmserv.install import LlamaBuild, load_catalog
from lmserv.testing import (
    COUNTING_CONTINUATION,
    COUNTING_PROMPT,
    write_counting_model,
    write_synthetic_model,
)

KEY = "service-test-key"
SHA = "0" * 64
CONFIG = f"""
[catalog.tiny-embed]
url = "https://example.invalid/embedder.gguf"
sha256 = "{SHA}"
aliases = ["embedder"]
kind = "embedding"

[models.tiny-embed]
ctx_size = 512
extra_args = ["--pooling", "mean"]

[models.counting]
parallel = 4
"""


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


# --------------------------------------------------------------------------- fast: no build


def test_keep_alive_durations() -> None:
    assert [parse_keep_alive(v) for v in ("5m", "30s", "1h", "90", "1.5s", None)] == [
        300,
        30,
        3600,
        90,
        2,
        300,
    ]
    assert parse_keep_alive(0) == 1  # the engine's idle timer starts at one second
    assert parse_keep_alive("-1") == -1
    for bad in ("soon", "-5m", "5 minutes", ""):
        with pytest.raises(ConfigError, match="keep-alive"):
            parse_keep_alive(bad)


def test_extra_args_become_preset_keys() -> None:
    assert args_to_options(["--embeddings", "--pooling", "mean", "-c", "128"]) == [
        ("embeddings", "true"),
        ("pooling", "mean"),
        ("c", "128"),
    ]
    with pytest.raises(ConfigError, match="follows no flag"):
        args_to_options(["mean"])


def test_preset_names_models_by_catalog_name_and_stem(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    write_counting_model(folder / "counting.gguf")
    shutil.copy(folder / "counting.gguf", folder / "embedder.gguf")
    (folder / "half.gguf.part").write_bytes(b"partial download")
    (folder / "bad;name.gguf").write_bytes(b"GGUF")  # a name the INI format cannot hold
    (folder / "notes.txt").write_text("not a model")
    shards = folder / "big-model"
    shards.mkdir()
    for i in (1, 2):
        (shards / f"big-model-0000{i}-of-00002.gguf").write_bytes(b"GGUF")
    (shards / "mmproj-f16.gguf").write_bytes(b"GGUF")
    catalog = load_catalog(
        {
            "tiny-embed": {
                "url": "https://example.invalid/embedder.gguf",
                "sha256": SHA,
                "aliases": ["embedder", "embed"],
                "kind": "embedding",
            }
        },
        user=False,
    )
    tables = {
        "embed": ModelOptions(ctx_size=512, extra_args=("--pooling", "mean")),  # by alias
        "counting": ModelOptions(n_gpu_layers="all", parallel=2),
    }
    models = preset_models(folder, catalog, tables)
    assert models == [
        PresetModel(
            "big-model",
            shards / "big-model-00001-of-00002.gguf",
            mmproj=shards / "mmproj-f16.gguf",
        ),
        PresetModel(
            "counting",
            folder / "counting.gguf",
            options=(("n-gpu-layers", "all"), ("parallel", "2")),
        ),
        PresetModel(
            "tiny-embed",
            folder / "embedder.gguf",
            aliases=("embedder", "embed"),
            options=(("embeddings", "true"), ("ctx-size", "512"), ("pooling", "mean")),
        ),
    ]
    text = render_preset(models)
    assert f"[tiny-embed]\nmodel = {folder / 'embedder.gguf'}\nalias = embedder,embed\n" in text
    assert "embeddings = true\nctx-size = 512\npooling = mean\n" in text
    assert "bad;name" not in text and "half" not in text


def test_config_file_model_tables(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    settings = load_settings(file=path, env={})
    assert settings.model_options["tiny-embed"] == ModelOptions(
        ctx_size=512, extra_args=("--pooling", "mean")
    )
    assert settings.model_options["counting"].parallel == 4
    assert settings.models.default is None  # the [models] table's own key is unaffected
    path.write_text("[models.counting]\nctx = 512\n")
    with pytest.raises(ConfigError, match=r"unknown key 'ctx' in \[models.counting\].*ctx_size"):
        load_settings(file=path, env={})
    path.write_text('[models.counting]\nextra_args = "--embeddings"\n')
    with pytest.raises(ConfigError, match="list of strings"):
        load_settings(file=path, env={})


def test_state_file_is_private_and_found_by_folder(tmp_path: Path, state_home: Path) -> None:
    folder = tmp_path / "models"
    state = ServiceState("http://127.0.0.1:9", os.getpid(), str(folder), 300, api_key=KEY)
    path = write_state(folder, state)
    assert path.parent == config.state_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_state(folder) == state
    assert read_state(tmp_path / "other") is None
    # a dead process's state is ignored
    write_state(folder, ServiceState("http://127.0.0.1:9", 2**22 + 1, str(folder), 300))
    assert read_state(folder) is None


def test_state_writer_replaces_a_planted_symlink(tmp_path: Path, state_home: Path) -> None:
    folder = tmp_path / "models"
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    state_home.joinpath("lmserv").mkdir(parents=True)
    state_path(folder).symlink_to(target)
    write_state(folder, ServiceState("http://127.0.0.1:9", os.getpid(), str(folder), 300))
    assert target.read_text() == "keep me"
    assert not state_path(folder).is_symlink()


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs chown (root)")
def test_state_file_of_another_user_is_ignored(tmp_path: Path, state_home: Path) -> None:
    folder = tmp_path / "models"
    path = write_state(folder, ServiceState("http://evil:1", os.getpid(), str(folder), 300))
    os.chown(path, 65534, 65534)
    assert read_state(folder) is None


def test_one_service_lock_per_folder(tmp_path: Path, state_home: Path) -> None:
    first, second = ServiceLock(tmp_path / "a"), ServiceLock(tmp_path / "a")
    assert first.acquire()
    assert not second.acquire()
    assert ServiceLock(tmp_path / "b").acquire()
    first.release()
    assert second.acquire()
    second.release()


# --------------------------------------------------------------------------- slow: the router


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The models folder (counting + embedder) and a config file naming the embedder; the
    state folder isolated. Afterwards no llama-server from the folder may be left."""
    root = tmp_path_factory.mktemp("service")
    models = root / "models"
    write_counting_model(models / "counting.gguf")
    write_synthetic_model(models / "embedder.gguf", params=20_000_000, quant="q8_0")
    (root / "config.toml").write_text(CONFIG)
    saved = {k: os.environ.get(k) for k in ("LMSERV_CONFIG", "XDG_STATE_HOME")}
    os.environ["LMSERV_CONFIG"] = str(root / "config.toml")
    os.environ["XDG_STATE_HOME"] = str(root / "state")
    yield models
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    assert llama_server_pids(str(root)) == [], "a llama-server outlived the test module"


@pytest.fixture(scope="module")
def service(llama_build: LlamaBuild, folder: Path) -> Iterator[ModelService]:
    with ModelService(folder, api_key=KEY, extra_args=("-t", "1")) as running:
        yield running


def _states(service: ModelService) -> dict[str, str]:
    return {m.name: m.state for m in service.models()}


def test_lists_every_model_unloaded_and_loads_on_demand(service: ModelService) -> None:
    models = {m.name: m for m in service.models()}
    assert set(models) == {"counting", "tiny-embed"}
    assert models["tiny-embed"].aliases == ("embedder",)
    with service.client(model="counting") as client:
        answer = client.complete(COUNTING_PROMPT, max_tokens=32, temperature=0)
    assert answer.text == COUNTING_CONTINUATION
    loaded = {m.name: m for m in service.models()}["counting"]
    assert loaded.state == "loaded" and loaded.n_ctx and loaded.size
    # llama-server writes its log from a thread of its own: the line that dates the last request
    # can land a moment after the answer.
    for _ in range(100):
        if loaded.unload_in is not None:
            break
        time.sleep(0.1)
        loaded = {m.name: m for m in service.models()}["counting"]
    assert loaded.unload_in is not None and 0 < loaded.unload_in <= 300


def test_two_models_answer_concurrent_requests_exactly(service: ModelService) -> None:
    with service.client() as client:
        reference = client.embed("one two three", model="embedder")

        def chat(i: int) -> str:
            return client.chat(COUNTING_PROMPT, model="counting", temperature=0, seed=i).text

        def embed(i: int) -> list[float]:
            return client.embed("one two three", model="tiny-embed")

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            chats = [pool.submit(chat, i) for i in range(4)]
            embeds = [pool.submit(embed, i) for i in range(4)]
            assert [f.result() for f in chats] == [COUNTING_CONTINUATION] * 4
            for f in embeds:
                assert f.result() == pytest.approx(reference, abs=1e-5)
    assert len(reference) == 256
    assert _states(service) == {"counting": "loaded", "tiny-embed": "loaded"}


def test_back_to_back_requests_on_one_client(
    llama_build: LlamaBuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The router closes the connection after each answer (it streams what it proxies, and
    # llama-server ends every streamed response by closing) without a "Connection: close"
    # header; a client that sent its next request on the kept-alive connection failed within
    # 5-35 requests here ("Server disconnected without sending a response"), when the instance
    # used both cores (its default threads; with -t 1 the router closes in time). The client
    # now sends such a request again on a new connection (lmserv._net.RequestTrace).
    import asyncio

    from lmserv import AsyncClient

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    write_counting_model(tmp_path / "models" / "counting.gguf")
    with (
        ModelService(tmp_path / "models", keep_alive=-1) as own,
        own.client(model="counting") as client,
    ):
        for _ in range(150):
            assert client.complete("one two", max_tokens=1, temperature=0).text == " three"
        for _ in range(20):
            assert "".join(client.stream("one two", max_tokens=2, temperature=0)) == " three four"

        async def async_side() -> None:
            async with AsyncClient(own.base_url, model="counting") as aclient:
                for _ in range(100):
                    answer = await aclient.complete("one two", max_tokens=1, temperature=0)
                    assert answer.text == " three"

        asyncio.run(async_side())


def test_unknown_model_names_the_available_ones(service: ModelService) -> None:
    with service.client(model="nope") as client, pytest.raises(ModelNotServed) as err:
        client.complete("one", max_tokens=1)
    assert err.value.available == ("counting", "embedder", "tiny-embed")
    assert "'nope'" in str(err.value) and "counting" in str(err.value)
    assert isinstance(err.value, ModelNotFound)
    with pytest.raises(ModelNotServed):
        service.load("nope")


def test_the_key_guards_the_router_and_its_instances(service: ModelService) -> None:
    with Client(service.base_url) as anonymous, pytest.raises(AuthenticationError):
        anonymous.models()
    service.load("counting")
    rows = httpx.get(
        f"{service.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}
    ).json()["data"]
    args = next(r for r in rows if r["id"] == "counting")["status"]["args"]
    port = args[args.index("--port") + 1]
    instance = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{instance}/v1/models").status_code == 401
    assert httpx.get(f"{instance}/v1/models", headers={"X-Api-Key": KEY}).status_code == 200


def test_openai_sdk_by_model_name(service: ModelService) -> None:
    sdk = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=KEY)
    answer = sdk.chat.completions.create(
        model="counting",
        messages=[{"role": "user", "content": COUNTING_PROMPT}],
        temperature=0,
    )
    assert answer.choices[0].message.content == COUNTING_CONTINUATION
    vectors = sdk.embeddings.create(model="embedder", input=["one", "two"])
    assert [len(v.embedding) for v in vectors.data] == [256, 256]
    assert {m.id for m in sdk.models.list()} == {"counting", "tiny-embed"}


def test_stop_unloads_now_and_load_brings_it_back(service: ModelService) -> None:
    service.load("counting")
    assert service.unload("counting")
    assert _states(service)["counting"] == "unloaded"
    assert not service.unload("counting")
    assert service.load("counting").state == "loaded"


def test_a_model_copied_in_appears_and_a_removed_one_goes(
    service: ModelService, folder: Path
) -> None:
    shutil.copy(folder / "counting.gguf", folder / "copied.gguf.part")
    os.replace(folder / "copied.gguf.part", folder / "copied.gguf")  # as `lmserv pull` does
    deadline = time.monotonic() + 10
    while "copied" not in _states(service):
        assert time.monotonic() < deadline, "the copied model did not appear"
        time.sleep(0.1)
    with service.client(model="copied") as client:
        assert client.complete("five", max_tokens=2, temperature=0).text == " six seven"
    (folder / "copied.gguf").unlink()
    while "copied" in _states(service):
        assert time.monotonic() < deadline + 10, "the removed model did not disappear"
        time.sleep(0.1)
    assert llama_server_pids("copied.gguf") == []


def test_a_second_service_for_the_folder_refuses(service: ModelService, folder: Path) -> None:
    with pytest.raises(ServerStartError, match=f"already running at {service.base_url}"):
        ModelService(folder).start()


def test_max_models_one_evicts_the_least_recently_used(
    llama_build: LlamaBuild, folder: Path
) -> None:
    with ModelService(folder, max_models=1, state_file=False, extra_args=("-t", "1")) as one:
        with one.client() as client:
            assert client.complete("one", model="counting", max_tokens=1, temperature=0).text
            assert _states(one)["counting"] == "loaded"
            assert len(client.embed("one", model="embedder")) == 256
        assert _states(one) == {"counting": "unloaded", "tiny-embed": "loaded"}


def test_idle_models_unload_after_keep_alive(llama_build: LlamaBuild, folder: Path) -> None:
    with ModelService(folder, keep_alive="1s", state_file=False, extra_args=("-t", "1")) as svc:
        with svc.client(model="counting") as client:
            assert client.complete("eight", max_tokens=1, temperature=0).text == " nine"
            deadline = time.monotonic() + 20
            while _states(svc)["counting"] != "sleeping":
                assert time.monotonic() < deadline, _states(svc)
                time.sleep(0.1)
            assert not {m.name for m in svc.models() if m.holds_memory}
            # the next request wakes it
            assert client.complete("eight", max_tokens=1, temperature=0).text == " nine"
