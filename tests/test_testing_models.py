"""The test models load in the real llama-server and behave as documented."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import gguf
import httpx
import pytest

from lmserv.install import LlamaBuild
from lmserv.testing import (
    COUNTING_CONTINUATION,
    COUNTING_PROMPT,
    write_counting_model,
    write_synthetic_model,
)


def _raw_server(build: LlamaBuild, model: Path, log: Path) -> Iterator[str]:
    """llama-server launched by hand (no lmserv code), yielding its base URL."""
    binary = build.bin_dir / "llama-server"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "-m", str(model), "--port", "0", "-t", "1"], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))
            if found:
                yield found.group(1)
                return
            assert proc.poll() is None, log.read_text(errors="replace")
            time.sleep(0.05)
        pytest.fail("llama-server did not start:\n" + log.read_text(errors="replace"))
    finally:
        proc.terminate()
        proc.wait(10)


def test_counting_model_counts_in_real_llama_server(
    llama_build: LlamaBuild, tmp_path: Path
) -> None:
    model = write_counting_model(tmp_path / "counting.gguf")
    for url in _raw_server(llama_build, model, tmp_path / "server.log"):
        body = {"prompt": COUNTING_PROMPT, "n_predict": 32, "temperature": 0}
        answer = httpx.post(url + "/completion", json=body, timeout=30).json()
        assert answer["content"] == COUNTING_CONTINUATION
        assert answer["stop_type"] == "eos"
        assert answer["tokens_predicted"] == 9  # eight words, then </s>
        # The tokenizer merges letters into whole words: "one two" is <s> ▁one ▁two.
        tokens = httpx.post(url + "/tokenize", json={"content": "one two"}, timeout=30).json()
        assert len(tokens["tokens"]) == 2
        later = {"prompt": "six", "n_predict": 32, "temperature": 0}
        assert httpx.post(url + "/completion", json=later, timeout=30).json()["content"] == (
            " seven eight nine ten"
        )


def test_counting_model_file_is_replaced_not_appended(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.gguf"
    first = write_counting_model(path).read_bytes()
    assert write_counting_model(path).read_bytes() == first  # deterministic for a seed
    assert not list(path.parent.glob("*.tmp"))
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "llama"


def test_synthetic_model_shape_and_quant(tmp_path: Path) -> None:
    path = write_synthetic_model(tmp_path / "s.gguf", params=30_000_000, quant="q8_0")
    reader = gguf.GGUFReader(path)
    total = sum(int(t.n_elements) for t in reader.tensors)
    assert 24_000_000 < total < 36_000_000
    types = {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2}
    assert types == {"Q8_0"}
    with pytest.raises(ValueError, match="quant='q3'"):
        write_synthetic_model(tmp_path / "x.gguf", quant="q3")
