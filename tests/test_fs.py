"""The one atomic writer (``lmserv._fs``) and the one model-file check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmserv._fs import atomic_path, atomic_write, require_model_file
from lmserv.errors import InvalidModelFile, ModelNotFound


def test_atomic_write_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    atomic_write(target, '{"new": true}')
    assert target.read_text() == '{"new": true}'
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "stamp"
    target.write_text("complete")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stamp"]


def test_a_planted_symlink_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    folder = tmp_path / "models"
    folder.mkdir()
    target = folder / "model.gguf.lmserv.json"
    # Where the old writers put their temporary file, and names like the new one's.
    for name in (f"{target.name}.tmp", f".{target.name}.tmp", f".{target.name}.x.tmp"):
        (folder / name).symlink_to(victim)
    atomic_write(target, "record")
    assert victim.read_text() == "precious"
    assert target.read_text() == "record" and not target.is_symlink()
    # A link at the destination itself is replaced, not written through.
    target.unlink()
    target.symlink_to(victim)
    atomic_write(target, "again")
    assert victim.read_text() == "precious" and not target.is_symlink()
    assert target.read_text() == "again"


def test_the_temporary_file_is_private_to_its_writer(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "f") as first, atomic_path(tmp_path / "f") as second:
        assert first != second and first.parent == tmp_path
        assert os.stat(first).st_mode & 0o077 == 0  # mkstemp: only the owner may read it


def test_require_model_file(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert require_model_file(str(model)) == model
    with pytest.raises(ModelNotFound, match=r"'.*nope\.gguf' does not exist") as info:
        require_model_file(tmp_path / "nope.gguf")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, KeyError)
    with pytest.raises(InvalidModelFile, match="is not a file"):
        require_model_file(tmp_path)
