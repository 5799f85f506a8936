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

# The real CPU llama.cpp build the tests use (same options as tests/conftest.py).
.venv/bin/lmserv -v build --source pypi --cuda off --rpc --no-ui --dir "${LMSERV_TEST_BUILD_DIR:-$HOME/.cache/lmserv/llama.cpp}"

.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest --doctest-modules src/lmserv tests "$@"
