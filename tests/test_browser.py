"""The chat page in a real browser: Debian's chromium, headless, driven by Playwright.

The page is llama.cpp's own (``tools/ui``), built from the pinned source by ``lmserv build
--ui`` into the shared build (``build_shared``: the page is in it wherever npm is), and
served by a real llama-server with the counting model, and by the model service (llama-server's
router: the page has a model selector there) with the counting model and Gemma 3 270M. Screenshots go to
``LMSERV_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the checkout). Run with
``pytest -m browser``; ``scripts/test.sh`` installs chromium and Playwright.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmserv.install import LlamaBuild
from lmserv.server import LlamaServer
from lmserv.service import ModelService
from lmserv.testing import write_counting_model

pytestmark = [pytest.mark.browser, pytest.mark.slow]

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

ARTIFACTS = Path(
    os.environ.get("LMSERV_TEST_ARTIFACTS", str(Path(__file__).parent.parent / "test-artifacts"))
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
COUNTED = "three four five six seven eight nine ten"
KEY = "sk-lmserv-page-test-4f1c9e"
# The page's files that a browser loads before any API call (llama-server serves them
# without the API key; tools/server/server-http.cpp, "public endpoints").
PAGE_FILES = ("/", "/index.html", "/sw.js", "/manifest.webmanifest", "/build.json")


@pytest.fixture(scope="module")
def ui_build(llama_build: LlamaBuild) -> LlamaBuild:
    """The shared build, which has the chat page wherever npm is (``build_shared``)."""
    if not llama_build.ui:
        if shutil.which("npm"):
            pytest.fail(f"npm is here but the shared build {llama_build.bin_dir} has no page")
        pytest.skip("no npm: the shared build was made without the chat page")
    return llama_build


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.skip("no system chromium: apt-get install -y chromium")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _server(build: LlamaBuild, model: Path, **kwargs: Any) -> LlamaServer:
    # Greedy sampling by default: the page sends no temperature unless the user sets one.
    return LlamaServer(
        model, binary=build.binary("llama-server"), extra_args=["--temp", "0"], **kwargs
    )


def _send(page: Any, text: str) -> None:
    # The message box is a contenteditable (the "rich" input) or a textarea (the basic one).
    box = page.locator('[contenteditable="true"][aria-multiline="true"], textarea').first
    box.click(timeout=60_000)
    box.press_sequentially(text)
    page.get_by_role("button", name="Send").click()


def _answer(page: Any) -> Any:
    return page.get_by_text(re.compile(re.escape(COUNTED)))


def _selector(page: Any, current: str) -> Any:
    """The model selector's button (router mode), which shows the ``current`` model."""
    return page.locator('button[aria-haspopup="menu"]').filter(has_text=current).first


def _pick_model(page: Any, current: str, shown: str) -> None:
    """Open the model selector and pick the model ``shown`` in its list."""
    _selector(page, current).click(timeout=60_000)
    page.get_by_role("option").filter(has_text=shown).first.click()
    # The button then names it in short ("gemma3 270M"): wait for the list to close instead.
    sync_api.expect(page.get_by_role("option")).to_have_count(0)


def test_page_loads_and_counts(ui_build: LlamaBuild, model: Path, browser: Any) -> None:
    with _server(ui_build, model) as server:
        assert server.info.ui is True
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(server.base_url + "/")
        _send(page, "one two")
        sync_api.expect(_answer(page).first).to_be_visible(timeout=120_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chat-page.png"))
        page.close()


def test_page_with_an_api_key_asks_for_it_and_never_serves_it(
    ui_build: LlamaBuild, model: Path, browser: Any
) -> None:
    with _server(ui_build, model, api_key=KEY) as server:
        assert server.info.ui is True
        page = browser.new_page()
        loaded: list[str] = []
        page.on("request", lambda r: loaded.append(r.url) if r.method == "GET" else None)
        page.goto(server.base_url + "/")
        page.get_by_role("button", name="Enter API Key").click(timeout=60_000)
        page.locator("#api-key-input").fill(KEY)
        page.locator("#api-key-input").press("Enter")
        _send(page, "one two")
        sync_api.expect(_answer(page).first).to_be_visible(timeout=120_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chat-page-api-key.png"))
        page.close()

        same_origin = {u.removeprefix(server.base_url) for u in loaded}
        same_origin = {u for u in same_origin if u.startswith("/")}
        assert len(same_origin) > 5, same_origin
        # Every file the page loaded, and the page's known files, fetched with the key and
        # without: none contains it.
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            for path in sorted(same_origin | set(PAGE_FILES)):
                for headers in ({}, {"Authorization": f"Bearer {KEY}"}):
                    body = http.get(path, headers=headers).content
                    assert KEY.encode() not in body, path
            assert http.get("/v1/models").status_code == 401, "the API itself needs the key"


def test_no_ui_turns_the_page_off(ui_build: LlamaBuild, model: Path) -> None:
    with _server(ui_build, model, ui=False) as server:
        assert server.info.ui is False
        answer = httpx.get(server.base_url + "/", headers={"Accept-Encoding": "gzip"})
        assert not answer.headers.get("content-type", "").startswith("text/html")


def test_service_no_ui_turns_the_page_off(ui_build: LlamaBuild, tmp_path: Path) -> None:
    with ModelService(tmp_path / "models", ui=False, state_file=False) as service:
        assert "--no-ui" in service.command()
        assert service.has_page is False
        answer = httpx.get(service.base_url + "/", headers={"Accept-Encoding": "gzip"})
        assert not answer.headers.get("content-type", "").startswith("text/html")


@pytest.mark.parametrize("model", [["counting"], []], ids=["one-model", "service"])
def test_serve_prints_the_page_url_and_open_starts_the_browser(
    ui_build: LlamaBuild, tmp_path: Path, model: list[str]
) -> None:
    opened = tmp_path / "opened"
    fake_browser = tmp_path / "browser.sh"
    fake_browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    fake_browser.chmod(0o755)
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
        "LMSERV_PATHS_DATA": str(tmp_path / "data"),
        "LMSERV_PATHS_CACHE": str(tmp_path / "cache"),
        "XDG_STATE_HOME": str(tmp_path / "state"),  # the service's state file
        "LLAMA_BIN_DIR": str(ui_build.bin_dir),
        "BROWSER": str(fake_browser),  # what Python's webbrowser module runs
    }
    # The service copies llama-server's log to stderr: a file, not a pipe nobody reads.
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmserv", "serve", *model, "--open"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        url = re.search(r"ready at (http://127\.0\.0\.1:\d+)", lines[0])
        assert url, lines
        assert f"  chat page: {url.group(1)}/\n" in lines, lines
        for _ in range(100):
            if opened.exists():
                break
            time.sleep(0.1)
        assert opened.read_text() == url.group(1) + "/"
        assert "<html" in httpx.get(url.group(1) + "/").text.lower()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_model_service_page_picks_each_model(
    ui_build: LlamaBuild, gemma_model: Path, browser: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    write_counting_model(folder / "counting.gguf")
    (folder / gemma_model.name).symlink_to(gemma_model)
    # The router passes its own flags on to every instance: greedy sampling for both models,
    # and answers of at most 32 tokens (Gemma 270M is a base model: it would go on to -c).
    flags = ("--temp", "0", "-n", "32", "-t", "2", "-np", "1", "-c", "512")
    with ModelService(folder, extra_args=flags, state_file=False) as service:
        assert service.has_page is True
        served = {m.name: m for m in service.models()}
        assert set(served) == {"counting", "gemma3-270m"}
        # The selector shows a model by its first alias when it has one (the catalog's).
        gemma_shown = (served["gemma3-270m"].aliases or ("gemma3-270m",))[0]

        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(service.base_url + "/")
        _selector(page, "counting").click(timeout=60_000)
        options = page.get_by_role("option")
        sync_api.expect(options).to_have_count(2)
        firsts = sorted(text.splitlines()[0].strip() for text in options.all_inner_texts())
        assert firsts == sorted(["counting", gemma_shown]), firsts
        page.keyboard.press("Escape")

        _pick_model(page, "counting", "counting")
        _send(page, "one two")
        sync_api.expect(_answer(page).first).to_be_visible(timeout=120_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chat-page-service-counting.png"))

        page.get_by_role("button", name="New chat").first.click()
        _pick_model(page, "counting", gemma_shown)
        _send(page, "What is the capital of France?")
        said = page.get_by_role("group", name="Assistant message with actions")
        said = said.locator(".markdown-content").first
        sync_api.expect(said).to_have_text(re.compile(r"\w"), timeout=180_000)
        # Wait for the answer to end (the Send button is back), then keep the picture.
        sync_api.expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=180_000)
        page.screenshot(path=str(ARTIFACTS / "chat-page-service.png"))
        page.close()
        loaded = {m.name for m in service.models() if m.holds_memory}
        assert "gemma3-270m" in loaded, loaded
