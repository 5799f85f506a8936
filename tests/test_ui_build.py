"""The chat page's build (lmserv.install._ui) and its place in the builder, with real npm.

A miniature ``tools/ui`` (no dependencies, a ``build`` script in plain node) stands in for
llama.cpp's page, so npm, the cache and the builder's stamp run for real in seconds. The real
page is built and tested in a browser in ``test_browser.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from _fake_llama import cmake_wrapper, make_fake_llama
from lmserv.errors import BuildError, ToolchainMissing
from lmserv.install import LlamaBuild, _ui, build_llama_cpp
from lmserv.install import llama_build as lb
from lmserv.install._runner import Runner
from lmserv.server import LlamaServer

NPM = _ui.find_npm()
needs_npm = pytest.mark.skipif(NPM is None, reason="npm is not installed")

PACKAGE = {"name": "fake-ui", "version": "1.0.0", "scripts": {"build": "node build.js"}}
LOCK = {
    "name": "fake-ui",
    "version": "1.0.0",
    "lockfileVersion": 3,
    "requires": True,
    "packages": {"": {"name": "fake-ui", "version": "1.0.0"}},
}
BUILD_JS = """\
const fs = require('fs'), path = require('path');
const out = process.env.LLAMA_UI_OUT_DIR;
fs.mkdirSync(out, {recursive: true});
const text = fs.readFileSync(path.join(__dirname, 'src', 'page.txt'), 'utf8');
fs.writeFileSync(path.join(out, 'index.html'), '<html><body>' + text + '</body></html>');
if (text.includes('FAIL')) { console.error('the page does not build'); process.exit(3); }
"""


def write_fake_ui(tree: Path, text: str = "hello") -> Path:
    ui = tree / "tools" / "ui"
    (ui / "src").mkdir(parents=True, exist_ok=True)
    (ui / "package.json").write_text(json.dumps(PACKAGE))
    (ui / "package-lock.json").write_text(json.dumps(LOCK))
    (ui / "build.js").write_text(BUILD_JS)
    (ui / "src" / "page.txt").write_text(text)
    return ui


def _runner(tmp_path: Path) -> Runner:
    log_path = tmp_path / "build.log"
    log_path.touch()
    return Runner(log_path, None)


@needs_npm
def test_page_is_built_once_then_reused_without_npm(tmp_path: Path) -> None:
    assert NPM is not None
    tree, cache = tmp_path / "llama.cpp", tmp_path / "cache"
    ui = write_fake_ui(tree)
    dist = _ui.assets_for(tree, cache, npm=NPM, run=_runner(tmp_path).run)
    assert dist == cache / "ui" / _ui.ui_key(ui) / "dist"
    assert (dist / "index.html").read_text() == "<html><body>hello</body></html>"
    assert not (dist.parent / "work").exists(), "the scratch copy (node_modules) is removed"
    assert (cache / "ui" / "npm").is_dir(), "npm's package cache lives in lmserv's cache"
    assert not (ui / "node_modules").exists(), "the source tree is never written"

    # Same source: the cached page, and npm is not run (this one does not exist).
    missing_npm = str(tmp_path / "no" / "npm")
    assert _ui.assets_for(tree, cache, npm=missing_npm, run=_runner(tmp_path).run) == dist

    # Files npm or a build leave in tools/ui are not source: same key.
    (ui / "node_modules").mkdir()
    (ui / "node_modules" / "x.js").write_text("x")
    (ui / "dist").mkdir()
    assert _ui.assets_for(tree, cache, npm=missing_npm, run=_runner(tmp_path).run) == dist

    # A changed source is built again.
    (ui / "src" / "page.txt").write_text("changed")
    with pytest.raises(FileNotFoundError):
        _ui.assets_for(tree, cache, npm=missing_npm, run=_runner(tmp_path).run)
    again = _ui.assets_for(tree, cache, npm=NPM, run=_runner(tmp_path).run)
    assert again != dist
    assert "changed" in (again / "index.html").read_text()


@needs_npm
def test_failed_page_build_raises_with_the_log_and_leaves_nothing(tmp_path: Path) -> None:
    assert NPM is not None
    tree, cache = tmp_path / "llama.cpp", tmp_path / "cache"
    ui = write_fake_ui(tree, "FAIL")
    runner = _runner(tmp_path)
    with pytest.raises(BuildError) as info:
        _ui.assets_for(tree, cache, npm=NPM, run=runner.run)
    assert "npm run build (chat page) failed" in str(info.value)
    assert "the page does not build" in info.value.log_tail
    key_dir = cache / "ui" / _ui.ui_key(ui)
    assert sorted(p.name for p in key_dir.iterdir()) == [], "no dist, no half-built page"


def test_no_page_source(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(BuildError, match=r"tools/ui/package\.json is missing.*--no-ui"):
        _ui.assets_for(tmp_path, tmp_path / "cache", npm="npm", run=_runner(tmp_path).run)
    with caplog.at_level(logging.INFO, logger="lmserv.install._ui"):
        assert _ui.has_page_source(tmp_path, required=False) is False
    assert "no chat page to build" in caplog.text


def test_resolve_ui(caplog: pytest.LogCaptureFixture) -> None:
    assert _ui.resolve_ui(True, "/usr/bin/npm") is True
    assert _ui.resolve_ui("auto", "/usr/bin/npm") is True
    assert _ui.resolve_ui(False, "/usr/bin/npm") is False
    assert _ui.resolve_ui(False, None) is False
    with pytest.raises(ToolchainMissing, match=r"npm was not found.*--no-ui"):
        _ui.resolve_ui(True, None)
    with caplog.at_level(logging.WARNING):
        assert _ui.resolve_ui("auto", None) is False
    assert "npm not found: building llama-server without its chat page" in caplog.text
    with pytest.raises(ValueError, match="'yes'"):
        _ui.resolve_ui("yes", None)  # type: ignore[arg-type]


def test_place_assets_copies_and_clears(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("page")
    build = tmp_path / "build"
    _ui.place_assets(dist, build)
    assert (build / "tools" / "ui" / "dist" / "index.html").read_text() == "page"
    _ui.place_assets(None, build)
    assert not (build / "tools" / "ui" / "dist").exists()


def test_stamps_written_before_the_page_mean_no_page() -> None:
    old = lb._stamp_key("c" * 40, {"GGML_RPC": "OFF"}, ["llama-server"], ui=False)
    del old["ui"]
    for ui, matches in ((False, True), (True, False)):
        key = lb._stamp_key("c" * 40, {"GGML_RPC": "OFF"}, ["llama-server"], ui=ui)
        assert all(old.get(k, lb._STAMP_DEFAULTS.get(k)) == v for k, v in key.items()) is matches


@pytest.fixture()
def counting_cmake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    real = shutil.which("cmake")
    assert real is not None
    record = tmp_path / "cmake-calls"
    wrapper = cmake_wrapper(tmp_path / "wrapbin", real, record)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    return record


def _configures(record: Path) -> int:
    text = record.read_text() if record.exists() else ""
    return sum(1 for line in text.splitlines() if line.startswith("-S "))


@needs_npm
def test_builder_embeds_the_page_and_stamps_the_choice(
    tmp_path: Path, counting_cmake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = make_fake_llama(tmp_path / "fake")
    write_fake_ui(src)
    subprocess.run(["git", "add", "-A"], cwd=src, check=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "commit", "-qm", "ui"], cwd=src, check=True)
    monkeypatch.setenv("LMSERV_PATHS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    placed = out / "build-cpu" / "tools" / "ui" / "dist" / "index.html"

    first = build_llama_cpp(out, source=src, cuda=False, ui=True, progress=False)
    assert first.ui is True
    assert placed.read_text() == "<html><body>hello</body></html>"
    stamp = json.loads((out / "build-cpu" / "lmserv-build.json").read_text())
    assert stamp["ui"] is True
    assert stamp["options"]["LLAMA_USE_PREBUILT_UI"] == "OFF", "no download when npm builds it"
    assert "npm run build" in (out / "build-cpu.log").read_text()

    assert build_llama_cpp(out, source=src, cuda=False, ui="auto", progress=False).ui is True
    assert _configures(counting_cmake) == 1, "the same choice must not rebuild"

    off = build_llama_cpp(out, source=src, cuda=False, ui=False, progress=False)
    assert off.ui is False
    assert _configures(counting_cmake) == 2, "turning the page off rebuilds"
    assert not placed.exists(), "a build without the page must not embed an earlier one"

    # Back on: the page comes from lmserv's cache, npm is not run again.
    monkeypatch.setattr(_ui, "find_npm", lambda: str(tmp_path / "no" / "npm"))
    assert build_llama_cpp(out, source=src, cuda=False, ui=True, progress=False).ui is True
    assert placed.exists()

    monkeypatch.setattr(_ui, "find_npm", lambda: None)
    with pytest.raises(ToolchainMissing, match="npm was not found"):
        build_llama_cpp(out, source=src, cuda=False, ui=True, progress=False)


@needs_npm
def test_a_page_that_fails_while_the_compile_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # npm runs in a thread while the C++ compiles. ui="auto": the build completes without the
    # page and says why; ui=True: the build fails with npm's words and leaves no stamp.
    src, _ = make_fake_llama(tmp_path / "fake")
    write_fake_ui(src, "FAIL")
    subprocess.run(["git", "add", "-A"], cwd=src, check=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "commit", "-qm", "ui"], cwd=src, check=True)
    monkeypatch.setenv("LMSERV_PATHS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    built = build_llama_cpp(out, source=src, cuda=False, ui="auto", progress=False)
    assert built.ui is False
    assert json.loads((out / "build-cpu" / "lmserv-build.json").read_text())["ui"] is False
    log_text = (out / "build-cpu.log").read_text()
    assert "the page does not build" in log_text, "npm's output is in the build log"
    assert not (out / "build-cpu.ui.log").exists()
    assert not (out / "build-cpu" / "tools" / "ui" / "dist").exists()

    with pytest.raises(BuildError, match="npm run build"):
        build_llama_cpp(out / "strict", source=src, cuda=False, ui=True, progress=False)
    assert not (out / "strict" / "build-cpu" / "lmserv-build.json").exists()


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups: POSIX")
def test_a_page_build_stopped_midway_leaves_no_process(tmp_path: Path) -> None:
    # The compile failed or Ctrl-C: the page job is cancelled while "npm" (here a script that
    # starts a child, as npm starts node) still runs; neither may be left running.
    tree = tmp_path / "llama.cpp"
    write_fake_ui(tree)
    pids = tmp_path / "pids"
    npm = tmp_path / "npm"
    npm.write_text(f"#!/bin/sh\nsleep 300 &\necho $$ $! > {pids}\nwait\n")
    npm.chmod(0o755)
    log_path = tmp_path / "build.log"
    runner = Runner(tmp_path / "build.ui.log", None, own_group=True)
    job = _ui.PageJob(tree, tmp_path / "cache", str(npm), runner, log_path)
    for _ in range(200):
        if pids.exists() and len(pids.read_text().split()) == 2:
            break
        time.sleep(0.05)
    started = [int(p) for p in pids.read_text().split()]
    job.cancel()
    for pid in started:
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            if (
                Path(f"/proc/{pid}/stat").is_file()
                and ") Z " in Path(f"/proc/{pid}/stat").read_text()
            ):
                break  # a zombie waiting for init: not running
            time.sleep(0.05)
        else:
            raise AssertionError(f"process {pid} of the page build is still running")
    assert f"$ {npm} ci" in log_path.read_text(), "the page's log is appended to the build log"


def test_server_reports_the_page_as_it_is(llama_build: LlamaBuild, model: Path) -> None:
    # The shared build has the page wherever npm is (build_shared); ui=False turns it off.
    with LlamaServer(model) as server:
        assert server.info.ui is llama_build.ui
        assert "--no-ui" not in server.command()
    with LlamaServer(model, ui=False) as server:
        assert server.info.ui is False and "--no-ui" in server.command()
