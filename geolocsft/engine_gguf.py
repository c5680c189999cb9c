"""A small reader for GGUF headers, so the engine can check a model file and its projector
before llama.cpp touches them: a truncated or foreign file, or a projector made for another
model, then gives a clear message naming the file instead of a crash or a C-level log line.

Only the key/value metadata and the tensor table are read (no tensor data); pure Python, no
dependencies. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import functools
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types.
_SCALAR_FORMATS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9

# ggml tensor types: (bytes per block, elements per block). Unknown types skip the size check.
_GGML_TYPE_SIZES = {
    0: (4, 1), 1: (2, 1), 2: (18, 32), 3: (20, 32), 6: (22, 32), 7: (24, 32), 8: (34, 32),
    9: (36, 32), 10: (84, 256), 11: (110, 256), 12: (144, 256), 13: (176, 256),
    14: (210, 256), 15: (292, 256), 24: (1, 1), 25: (2, 1), 26: (4, 1), 27: (8, 1),
    28: (8, 1), 30: (2, 1),
}


class GGUFFormatError(ValueError):
    """The file is not a complete GGUF file; `str()` names the file and the problem."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass
class GGUFInfo:
    path: Path
    version: int
    metadata: dict = field(repr=False)
    n_tensors: int = 0
    tensor_names: list[str] = field(default_factory=list, repr=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def need(self, n: int):
        if self.pos + n > len(self.buf):
            raise GGUFFormatError(
                self.path,
                f"truncated GGUF file: header needs {self.pos + n} bytes, file has {len(self.buf)}",
            )

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        self.need(size)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        self.need(length)
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def skip_string(self):
        length = self.unpack("<Q")
        self.need(length)
        self.pos += length

    def value(self, vtype: int, keep_arrays: bool):
        if vtype in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALAR_FORMATS:
                size = struct.calcsize(_SCALAR_FORMATS[etype])
                self.need(size * count)
                if keep_arrays:
                    values = list(struct.unpack_from(f"<{count}{_SCALAR_FORMATS[etype][1]}", self.buf, self.pos))
                else:
                    values = count
                self.pos += size * count
                return values
            if etype == _STRING:
                if keep_arrays:
                    return [self.string() for _ in range(count)]
                for _ in range(count):
                    self.skip_string()
                return count
            if etype == _ARRAY:
                raise GGUFFormatError(self.path, "nested arrays are not supported")
            raise GGUFFormatError(self.path, f"unknown array element type {etype}")
        raise GGUFFormatError(self.path, f"unknown metadata value type {vtype}")


def read_gguf(path, *, keep_arrays: bool = False) -> GGUFInfo:
    """Read a GGUF file's metadata and check that the tensor data it declares is all present.

    Large arrays (the vocabulary) are replaced by their length unless keep_arrays is true.
    Raises GGUFFormatError (missing, empty, not GGUF, truncated) naming the file. The result
    is cached per (path, size, modification time): loading a model reads it more than once."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise GGUFFormatError(path, "file not found") from None
    except OSError as exc:
        raise GGUFFormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    if path.is_dir():
        raise GGUFFormatError(path, "is a folder, not a GGUF file")
    if stat.st_size == 0:
        raise GGUFFormatError(path, "empty file (0 bytes), not a GGUF model")
    return _read_cached(path, stat.st_size, stat.st_mtime_ns, keep_arrays)


@functools.lru_cache(maxsize=16)
def _read_cached(path: Path, size: int, _mtime_ns: int, keep_arrays: bool) -> GGUFInfo:
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, path, size, keep_arrays)
    except OSError as exc:
        raise GGUFFormatError(path, f"cannot read file: {exc.strerror or exc}") from None


def _parse(buf, path: Path, size: int, keep_arrays: bool) -> GGUFInfo:
    cur = _Cursor(buf, path)
    cur.need(4)
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise GGUFFormatError(path, "not a GGUF file (wrong magic bytes)")
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise GGUFFormatError(path, f"unsupported GGUF version {version}")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    metadata: dict = {}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.unpack("<I")
        metadata[key] = cur.value(vtype, keep_arrays)

    names, data_end = [], 0
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        dims = [cur.unpack("<Q") for _ in range(n_dims)]
        ttype, offset = cur.unpack("<I"), cur.unpack("<Q")
        names.append(name)
        n_elements = 1
        for dim in dims:
            n_elements *= dim
        block_bytes, block_elems = _GGML_TYPE_SIZES.get(ttype, (0, 1))
        data_end = max(data_end, offset + n_elements // block_elems * block_bytes)

    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT) or DEFAULT_ALIGNMENT)
    data_start = -(-cur.pos // alignment) * alignment
    if n_tensors and data_start + data_end > size:
        raise GGUFFormatError(
            path,
            f"truncated GGUF file: tensor data needs {data_start + data_end:,} bytes, "
            f"file has {size:,} (incomplete download or copy?)",
        )
    return GGUFInfo(path=path, version=version, metadata=metadata, n_tensors=n_tensors,
                    tensor_names=names)
