"""Models by hub name (``hf.co/OWNER/REPO:QUANT``), against a stand-in of the hub.

The stand-in (``tests/_hub_server.py``) answers on 127.0.0.1 in the hub's shapes and redirects
file downloads to a storage host on 127.0.0.2, another origin as the hub's CDN is; every
request either host gets is recorded, so the tests see which host received the token.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from _helpers import run_lmserv
from _hub_server import HubServer, Repo
from lmserv import ChecksumMismatch, GatedModel, LlamaServer, ModelNotFound
from lmserv.cli import main
from lmserv.errors import ConfigError, DownloadError
from lmserv.install import download_models, ensure_model, list_models, remove_model
from lmserv.install._download import read_sidecar
from lmserv.install._hub import is_hub_name, parse_hub_name, quant_of
from lmserv.install._hub_store import mmproj_for
from lmserv.testing import write_counting_model

REPO = "lmserv-test/tiny-GGUF"
COMMIT = "c0ffee" + "0" * 34
TOKEN = "hf_test_token_123"


def blob(tag: str, size: int = 3000) -> bytes:
    return (tag.encode() * (size // len(tag) + 1))[:size]


QUANTS = {f"tiny-{q}.gguf": blob(q) for q in ("Q2_K", "Q4_K_M", "Q8_0")}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token file of the user's
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.add(REPO, Repo(dict(QUANTS), commit=COMMIT))
        yield server


def storage_requests(hub: HubServer) -> list[str]:
    return [r.path for r in hub.storage.requests]


def test_the_storage_host_is_another_loopback_address(hub: HubServer) -> None:
    assert hub.url.startswith("http://127.0.0.1:")
    assert hub.storage.url("/x").startswith("http://127.0.0.2:")


@pytest.mark.parametrize(
    ("text", "repo", "rev", "quant", "file"),
    [
        ("hf.co/o/r:q4_k_m", "o/r", "main", "Q4_K_M", None),
        ("huggingface.co/o/r", "o/r", "main", None, None),
        ("o/r@v1.0:Q8_0", "o/r", "v1.0", "Q8_0", None),
        ("hf://o/r@abc/sub/f-Q2_K.gguf", "o/r", "abc", None, "sub/f-Q2_K.gguf"),
    ],
)
def test_names_are_read(
    text: str, repo: str, rev: str, quant: str | None, file: str | None
) -> None:
    name = parse_hub_name(text)
    assert (name.repo, name.revision, name.quant, name.file) == (repo, rev, quant, file)


@pytest.mark.parametrize(
    ("text", "forms"),
    [
        ("hf.co/o", "hf.co/OWNER/REPO[:QUANT]"),
        ("hf.co/o/r:", "hf.co/OWNER/REPO[:QUANT]"),
        ("hf.co/../r:Q4_K_M", "hf.co/OWNER/REPO[:QUANT]"),
        ("hf://o/r/../x.gguf", "hf://owner/repo/file.gguf"),
        ("hf://only-owner/x.gguf", "hf://owner/repo/file.gguf"),
    ],
)
def test_malformed_names_are_config_errors(text: str, forms: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(forms)):
        parse_hub_name(text)


def test_a_bare_owner_repo_needs_a_quantization_so_paths_stay_paths() -> None:
    assert is_hub_name("owner/repo:Q4_K_M") and is_hub_name("hf.co/owner/repo")
    assert not is_hub_name("models/missing") and not is_hub_name("models/x-Q4_K_M.gguf")


def test_quantization_is_read_from_file_names() -> None:
    assert quant_of("Q4_K_M/big-Q4_K_M-00002-of-00003.gguf") == "Q4_K_M"
    assert quant_of("model-IQ4_XS.gguf") == "IQ4_XS"
    assert quant_of("model-bf16.gguf") == "BF16"


def test_default_is_q4_k_m_verified_and_pinned(hub: HubServer, tmp_path: Path) -> None:
    [path] = download_models([f"hf.co/{REPO}"], tmp_path)
    assert path == tmp_path / "hf.co" / REPO / "tiny-Q4_K_M.gguf"
    assert path.read_bytes() == QUANTS["tiny-Q4_K_M.gguf"]
    assert read_sidecar(path)["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # Everything after the model info is asked at the commit the revision pointed at.
    paths = [r.path for r in hub.requests]
    assert paths[0] == f"/api/models/{REPO}/revision/main"
    assert all(COMMIT in p for p in paths[1:]), paths
    assert storage_requests(hub) and all(p.startswith("/lfs/") for p in storage_requests(hub))
    [model] = list_models(tmp_path)
    assert (model.name, model.repo, model.revision, model.quantization, model.verified) == (
        f"hf.co/{REPO}:Q4_K_M", REPO, COMMIT, "Q4_K_M", True
    )  # fmt: skip


def test_without_q4_k_m_the_documented_order_decides(hub: HubServer, tmp_path: Path) -> None:
    hub.add("o/other", Repo({f"m-{q}.gguf": blob(q) for q in ("F16", "Q8_0", "Q5_K_M")}))
    [path] = download_models(["hf.co/o/other"], tmp_path)
    assert path.name == "m-Q5_K_M.gguf"


def test_an_unknown_quantization_lists_what_the_repository_has(
    hub: HubServer, tmp_path: Path
) -> None:
    with pytest.raises(ModelNotFound, match=r"no quantization Q5_K_M; it has Q2_K, Q4_K_M, Q8_0"):
        download_models([f"hf.co/{REPO}:Q5_K_M"], tmp_path)
    assert storage_requests(hub) == []
    assert not (tmp_path / "hf.co" / REPO).exists() or not any(
        (tmp_path / "hf.co" / REPO).iterdir()
    )


def test_a_hub_that_publishes_a_wrong_digest_loses_the_bytes(
    hub: HubServer, tmp_path: Path
) -> None:
    lie = hashlib.sha256(b"something else").hexdigest()
    hub.add("o/liar", Repo({"m-Q4_K_M.gguf": blob("x")}, digests={"m-Q4_K_M.gguf": lie}))
    with pytest.raises(ChecksumMismatch, match="the bytes were deleted") as caught:
        download_models(["hf.co/o/liar:Q4_K_M"], tmp_path)
    assert caught.value.expected == lie
    folder = tmp_path / "hf.co" / "o" / "liar"
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == []


def test_a_hub_that_contradicts_itself_gets_no_download(hub: HubServer, tmp_path: Path) -> None:
    other = hashlib.sha256(b"other").hexdigest()
    hub.add("o/two", Repo({"m-Q4_K_M.gguf": blob("t")}, head_digests={"m-Q4_K_M.gguf": other}))
    with pytest.raises(DownloadError, match=f"SHA-256 {other} instead of the listed"):
        download_models(["hf.co/o/two"], tmp_path)
    assert storage_requests(hub) == []


def test_a_dropped_download_resumes_through_the_redirect(hub: HubServer, tmp_path: Path) -> None:
    data = blob("r", 400_000)
    hub.add("o/resume", Repo({"m-Q4_K_M.gguf": data}))
    hub.storage.set_faults(drop_after=100_000, drop_times=1)
    [path] = download_models(["hf.co/o/resume"], tmp_path, connections=1, backoff=0.01)
    assert path.read_bytes() == data
    ranges = [r.range for r in hub.storage.requests]
    assert ranges[-1] is not None and ranges[-1].startswith("bytes=") and ranges[-1] != "bytes=0-"
    resolves = [r for r in hub.requests if "/resolve/" in r.path and r.method == "GET"]
    assert len(resolves) >= 2  # each try starts at the hub's resolve URL again


def test_a_small_git_file_is_verified_by_its_blob_id(hub: HubServer, tmp_path: Path) -> None:
    hub.add("o/small", Repo({"s-Q8_0.gguf": blob("s", 500)}, lfs=False))
    [path] = download_models(["o/small:Q8_0"], tmp_path)
    assert path.read_bytes() == blob("s", 500)
    assert storage_requests(hub) == []  # served by the hub itself, no redirect


def test_a_split_set_comes_whole_and_is_served_from_its_first_part(
    hub: HubServer, tmp_path: Path
) -> None:
    parts = {f"Q4_K_M/big-Q4_K_M-0000{i}-of-00003.gguf": blob(f"part{i}") for i in (1, 2, 3)}
    hub.add("o/big", Repo({**parts, "big-Q8_0.gguf": blob("q8")}))
    hub.page_size = 2  # the tree listing comes in pages
    [path] = download_models(["hf.co/o/big"], tmp_path)
    assert path.name == "big-Q4_K_M-00001-of-00003.gguf"
    folder = tmp_path / "hf.co" / "o" / "big" / "Q4_K_M"
    assert sorted(p.name for p in folder.glob("*.gguf")) == sorted(
        p.rsplit("/", 1)[1] for p in parts
    )
    assert not (tmp_path / "hf.co" / "o" / "big" / "big-Q8_0.gguf").exists()
    [model] = list_models(tmp_path)
    assert len(model.files) == 3 and model.size == sum(len(b) for b in parts.values())
    # One part asked for by file brings the set too.
    assert ensure_model("hf://o/big/Q4_K_M/big-Q4_K_M-00002-of-00003.gguf", tmp_path) == path


@pytest.mark.parametrize("where", ["HF_TOKEN", "token file"])
def test_the_token_goes_to_the_hub_and_never_to_storage(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    hub.add("o/gated", Repo({"g-Q4_K_M.gguf": blob("g")}, gated=True))
    hub.readers["o/gated"] = {TOKEN}
    if where == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", TOKEN)
    else:  # huggingface_hub's stored token: $HF_HOME/token
        (tmp_path / "hf-home").mkdir()
        (tmp_path / "hf-home" / "token").write_text(TOKEN + "\n")
    [path] = download_models(["hf.co/o/gated"], tmp_path / "models")
    assert path.read_bytes() == blob("g")
    assert hub.requests and {r.authorization for r in hub.requests} == {f"Bearer {TOKEN}"}
    assert hub.storage.requests
    assert {r.authorization for r in hub.storage.requests} == {None}
    assert all(TOKEN not in json.dumps(r.headers) for r in hub.storage.requests)


def test_a_gated_repository_without_a_token_says_what_to_do(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add("o/gated", Repo({"g-Q4_K_M.gguf": blob("g")}, gated=True))
    with pytest.raises(
        GatedModel, match=r"gated repository; accept its licence at .*o/gated.*HF_TOKEN"
    ):
        download_models(["hf.co/o/gated"], tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_not_allowed")
    with pytest.raises(PermissionError, match=r"HTTP 403.*no access yet"):
        download_models(["hf.co/o/gated"], tmp_path)
    assert storage_requests(hub) == []
    assert not list(tmp_path.rglob("*.gguf*"))


def test_a_private_repository_without_a_token_is_not_found(hub: HubServer, tmp_path: Path) -> None:
    hub.add("o/private", Repo({"p-Q4_K_M.gguf": blob("p")}, private=True))
    with pytest.raises(ModelNotFound, match="private repository needs HF_TOKEN"):
        download_models(["hf.co/o/private"], tmp_path)


def test_offline_uses_what_is_local_and_asks_nothing(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [path] = download_models([f"hf.co/{REPO}:Q8_0"], tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.requests.clear()
    hub.storage.reset_log()
    assert ensure_model(f"hf.co/{REPO}:Q8_0", tmp_path) == path
    assert download_models([f"{REPO}:Q8_0"], tmp_path) == [path]
    assert ensure_model(f"hf.co/{REPO}", tmp_path) == path  # the pulled one stands for the repo
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE is set"):
        ensure_model(f"hf.co/{REPO}:Q2_K", tmp_path)
    assert hub.requests == [] and hub.storage.requests == []


def test_offline_never_asks_for_a_catalog_model_either(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE is set"):
        download_models(["smollm2-135m-instruct"], tmp_path)
    assert hub.requests == []


def test_a_listing_with_a_path_out_of_the_folder_is_refused(hub: HubServer, tmp_path: Path) -> None:
    hub.add("o/evil", Repo({"../../escape-Q4_K_M.gguf": blob("e")}))
    with pytest.raises(DownloadError, match="not a plain relative path"):
        download_models(["hf.co/o/evil"], tmp_path / "models")
    assert not list(tmp_path.rglob("escape*"))


def test_run_and_serve_find_a_pulled_model_without_the_hub(hub: HubServer, tmp_path: Path) -> None:
    [path] = download_models([f"hf.co/{REPO}:Q2_K"], tmp_path)
    hub.requests.clear()
    assert ensure_model(f"{REPO}:Q2_K", tmp_path) == path
    assert hub.requests == []


def test_a_vision_repository_brings_its_projector_to_llama_server(
    hub: HubServer, tmp_path: Path
) -> None:
    hub.add(
        "o/vision",
        Repo(
            {
                "v-Q4_K_M.gguf": blob("v"),
                "mmproj-v-F16.gguf": blob("p"),
                "mmproj-v-Q8_0.gguf": blob("8"),
            }
        ),
    )
    [path] = download_models(["hf.co/o/vision"], tmp_path)
    proj = mmproj_for(path, tmp_path)
    assert proj is not None and proj.name == "mmproj-v-F16.gguf" and proj.read_bytes() == blob("p")
    binary = tmp_path / "llama-server"
    binary.write_text("")
    argv = LlamaServer(path, mmproj=proj, binary=binary).command()
    assert argv[argv.index("--mmproj") + 1] == str(proj)


def test_cli_pull_list_rm_and_partial_downloads(
    hub: HubServer, tmp_path: Path, cli_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    assert main(["pull", f"hf.co/{REPO}:Q8_0", "--dir", str(models), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(models / "hf.co" / REPO / "tiny-Q8_0.gguf")
    part = models / "hf.co" / "o" / "r" / "x-Q4_K_M.gguf.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"half")
    assert main(["list", "--dir", str(models)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if f"hf.co/{REPO}:Q8_0" in x)
    assert REPO in line and COMMIT[:12] in line and "Q8_0" in line and "verified" in line
    assert "total on disk:" in out
    assert main(["list", "--partial", "--dir", str(models)]) == 0
    assert str(part) in capsys.readouterr().out
    assert main(["rm", "--partial", "--dir", str(models)]) == 0
    assert not part.exists() and (models / "hf.co" / REPO / "tiny-Q8_0.gguf").exists()
    assert main(["rm", f"hf.co/{REPO}:Q8_0", "--dir", str(models)]) == 0
    assert not (models / "hf.co" / REPO).exists()
    assert main(["rm", "--dir", str(models)]) == 2
    capsys.readouterr()
    assert main(["pull", f"hf.co/{REPO}:Q5_K_M", "--dir", str(models)]) == 1
    assert "it has Q2_K, Q4_K_M, Q8_0" in capsys.readouterr().err


def test_rm_keeps_files_another_pull_uses(hub: HubServer, tmp_path: Path) -> None:
    download_models([f"hf.co/{REPO}:Q2_K", f"hf.co/{REPO}:Q8_0"], tmp_path)
    removed = remove_model(f"{REPO}:Q2_K", tmp_path)
    assert any(p.name == "tiny-Q2_K.gguf" for p in removed)
    assert ensure_model(f"{REPO}:Q8_0", tmp_path).is_file()
    with pytest.raises(ModelNotFound):
        remove_model(f"{REPO}:Q2_K", tmp_path)


def test_the_pulled_model_runs_by_its_repository_name(
    hub: HubServer, tmp_path: Path, llama_build: object
) -> None:
    gguf = write_counting_model(tmp_path / "counting.gguf").read_bytes()
    hub.add("lmserv-test/counting-GGUF", Repo({"counting-Q8_0.gguf": gguf}))
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "LMSERV_PATHS_MODELS": str(tmp_path / "models"),
        "LLAMA_BIN_DIR": os.environ["LLAMA_BIN_DIR"],
        "LLAMA_LIB_DIR": os.environ["LLAMA_LIB_DIR"],
    }
    home = tmp_path / "home"
    name = "hf.co/lmserv-test/counting-GGUF:Q8_0"
    pulled = run_lmserv("pull", name, "--quiet", home=home, env=env)
    assert pulled.returncode == 0, pulled.stderr
    hub.requests.clear()
    ran = run_lmserv("run", name, "one two", "--max-tokens", "3", home=home, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert "three four five" in ran.stdout
    assert hub.requests == []  # found locally by its name
    # The model service serves it by the same name, from the same files, with no hub request.
    from lmserv import ModelService

    with ModelService(tmp_path / "models", state_file=False, extra_args=("-t", "1")) as service:
        assert name in {m.name for m in service.models()}
        with service.client(model=name) as client:
            assert client.complete("one two", max_tokens=3, temperature=0).text == (
                " three four five"
            )
    assert hub.requests == []
