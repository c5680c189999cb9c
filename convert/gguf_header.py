"""Fast read of a GGUF header: key/value metadata and the tensor table (name, type, shape).

gguf-py's GGUFReader builds a numpy view for every element of every array, which takes 10-20 s
on a file carrying Qwen's 150k-token vocabulary; the converter only needs the scalars and the
tensor types, so arrays longer than `max_array` are skipped and replaced by their length.
Type names come from llama.cpp's bundled gguf-py so they read like the format."""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


class GGUFHeaderError(ValueError):
    """Not a readable GGUF file; the message names the file."""


@dataclass(frozen=True)
class ArrayInfo:
    """Stands in for a long array: its element type and length."""
    element_type: int
    length: int


@dataclass
class TensorInfo:
    name: str
    type_name: str  # e.g. "Q4_K", "F16", "F32"
    shape: tuple[int, ...]  # ggml order: row length first


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict = field(repr=False)
    tensors: list[TensorInfo] = field(repr=False)


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise GGUFHeaderError(f"{self.path}: truncated GGUF header")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", errors="replace")

    def value(self, vtype: int, max_array: int):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if count <= max_array:
                return [self.value(etype, max_array) for _ in range(count)]
            if etype in _SCALARS:  # fixed size: jump over
                self.take(count * struct.calcsize(_SCALARS[etype]))
            elif etype == _STRING:  # the vocabulary: hop from length to length
                pos, buf = self.pos, self.buf
                for _ in range(count):
                    pos += 8 + _U64.unpack_from(buf, pos)[0]
                if pos > len(buf):
                    raise GGUFHeaderError(f"{self.path}: truncated GGUF header")
                self.pos = pos
            else:
                for _ in range(count):
                    self.value(etype, 0)
            return ArrayInfo(etype, count)
        raise GGUFHeaderError(f"{self.path}: unknown metadata value type {vtype}")


def read_header(path: str | Path, *, max_array: int = 64) -> GGUFHeader:
    from convert.llamacpp import import_bundled_gguf

    quant_types = import_bundled_gguf().GGMLQuantizationType
    path = Path(path)
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf, path)
            if cur.take(4) != b"GGUF":
                raise GGUFHeaderError(f"{path}: not a GGUF file (wrong magic bytes)")
            version = cur.unpack("<I")
            n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
            metadata = {}
            for _ in range(n_kv):
                key = cur.string()
                metadata[key] = cur.value(cur.unpack("<I"), max_array)
            tensors = []
            for _ in range(n_tensors):
                name = cur.string()
                shape = tuple(cur.unpack("<Q") for _ in range(cur.unpack("<I")))
                ttype = cur.unpack("<I")
                cur.unpack("<Q")  # data offset
                try:
                    type_name = quant_types(ttype).name
                except ValueError:
                    type_name = f"type{ttype}"
                tensors.append(TensorInfo(name, type_name, shape))
    except FileNotFoundError:
        raise GGUFHeaderError(f"{path}: file not found") from None
    except (OSError, ValueError) as exc:
        if isinstance(exc, GGUFHeaderError):
            raise
        raise GGUFHeaderError(f"{path}: cannot read as GGUF ({exc})") from None
    return GGUFHeader(path, version, metadata, tensors)
