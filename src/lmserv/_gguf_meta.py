"""The scalar metadata of a GGUF file, read quickly: keys and values before the tensor data.

``gguf.GGUFReader`` builds a numpy view for every element of every array, which takes tens of
seconds on a model with a 262k-token vocabulary; :class:`~lmserv.LlamaServer` only needs a few
scalars (the layer count, whether a chat template is there) at start-up. This reader walks the
key/value section once, decoding scalars and strings and stepping over arrays (a string array
is stepped over one length at a time, with no object made per element).

Format (GGUF v2/v3, little-endian): magic ``GGUF``, u32 version, u64 tensor count, u64 key count,
then per key: a string (u64 length + UTF-8), a u32 type, the value. Arrays are u32 element type,
u64 count, then the elements.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from lmserv.errors import InvalidModelFile

__all__ = ["read_gguf_scalars"]

# GGUF value types -> struct format of one element (8: string, 9: array are special).
_SCALAR = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


class _Cursor:
    def __init__(self, data: mmap.mmap, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def take(self, fmt: str) -> object:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise InvalidModelFile(
                f"{self.path} ends inside its GGUF header (at byte {self.pos}): the file is "
                "truncated; download it again (`lmserv pull` verifies it)"
            )
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        length = int(self.take("<Q"))  # type: ignore[call-overload]
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        data, pos, unpack = self.data, self.pos, _U64.unpack_from
        for _ in range(count):
            pos += 8 + unpack(data, pos)[0]
        self.pos = pos


def read_gguf_scalars(path: str | os.PathLike[str]) -> dict[str, object]:
    """Every scalar and string key of the GGUF file at ``path``; arrays map to their length.

    Raises :class:`~lmserv.errors.InvalidModelFile` for a file that is not GGUF or is cut short.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _read(_Cursor(data, path))
    except (OSError, ValueError) as exc:
        raise InvalidModelFile(f"cannot read the GGUF header of {path}: {exc}") from exc


def _read(cur: _Cursor) -> dict[str, object]:
    if cur.data[:4] != b"GGUF":
        raise InvalidModelFile(f"{cur.path} is not a GGUF file (it does not start with 'GGUF')")
    cur.pos = 4
    version = cur.take("<I")
    if version not in (2, 3):
        raise InvalidModelFile(f"{cur.path} is GGUF version {version}; only 2 and 3 are known")
    cur.take("<Q")  # tensor count
    n_keys = int(cur.take("<Q"))  # type: ignore[call-overload]
    values: dict[str, object] = {}
    for _ in range(n_keys):
        key = cur.string()
        kind = int(cur.take("<I"))  # type: ignore[call-overload]
        if kind == _STRING:
            values[key] = cur.string()
        elif kind == _ARRAY:
            item = int(cur.take("<I"))  # type: ignore[call-overload]
            count = int(cur.take("<Q"))  # type: ignore[call-overload]
            if item == _STRING:
                cur.skip_strings(count)
            elif item in _SCALAR:
                cur.pos += count * struct.calcsize(_SCALAR[item])
            else:
                raise InvalidModelFile(f"{cur.path}: key {key!r} is an array of type {item}")
            values[key] = count
        elif kind in _SCALAR:
            values[key] = cur.take(_SCALAR[kind])
        else:
            raise InvalidModelFile(f"{cur.path}: key {key!r} has unknown GGUF type {kind}")
    return values
