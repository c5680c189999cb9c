"""A small reader for GGUF headers: the key/value metadata and the tensor table (name, ggml
type, shape), no tensor data. Pure Python, no dependencies, so the engine can check a model and
its projector before llama.cpp touches them (a truncated or foreign file gives a clear message
naming the file instead of a crash), and the converter can read back what it wrote.

gguf-py's GGUFReader builds a numpy view for every element of every array, which takes 10-20 s
on a file carrying Qwen's 150k-token vocabulary; here arrays longer than `max_array` are
skipped and stand as `ArrayInfo(element_type, length)`.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import functools
import mmap
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from geolocsft.fsutil import not_a_regular_file

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
DEFAULT_MAX_ARRAY = 64  # longer arrays (vocabulary, merges) are skipped unless asked



class GGUFValueType(IntEnum):
    """Metadata value types, numbered and named as in gguf-py (`gguf.GGUFValueType`)."""
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


class Keys:
    """Metadata keys this project reads, named as in gguf-py (`gguf.Keys`)."""

    class General:
        ARCHITECTURE = "general.architecture"
        NAME = "general.name"
        ALIGNMENT = "general.alignment"
        FILE_TYPE = "general.file_type"

    class Tokenizer:
        CHAT_TEMPLATE = "tokenizer.chat_template"

    class Clip:
        HAS_VISION_ENCODER = "clip.has_vision_encoder"
        PROJECTOR_TYPE = "clip.projector_type"
        VISION_PROJECTOR_TYPE = "clip.vision.projector_type"
        VISION_PROJECTION_DIM = "clip.vision.projection_dim"


_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_STRING, _ARRAY = GGUFValueType.STRING, GGUFValueType.ARRAY
_U64 = struct.Struct("<Q")

# Limits as ggml's own reader (ggml/src/gguf.cpp) applies them, so a header we accept is one
# llama.cpp can load, and a crafted one cannot make us loop, recurse or allocate without end.
GGML_MAX_DIMS = 4  # dimensions per tensor
MAX_ELEMENTS = 2**63 - 1  # elements per tensor (INT64_MAX)
MAX_ARRAY_DEPTH = 1  # arrays of arrays are not a thing gguf.cpp reads

# ggml tensor types as in ggml.h's `enum ggml_type` (gguf-py: GGMLQuantizationType and
# GGML_QUANT_SIZES): id -> (name, elements per block, bytes per block). Ids 4, 5 (Q4_2, Q4_3)
# and 31-33, 36-38 were removed from ggml and are not used by any current file.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18), 42: ("Q2_0", 64, 18),
}


def ggml_type_name(type_id: int) -> str:
    """"Q4_K", "F16", ...; `type<N>` for an id this table does not know."""
    entry = GGML_TYPES.get(type_id)
    return entry[0] if entry else f"type{type_id}"


class GGUFFormatError(ValueError):
    """The file is not a complete GGUF file; `str()` names the file and the problem."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class ArrayInfo:
    """Stands in for an array longer than `max_array`: its element type and length."""
    element_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_id: int  # ggml type id (GGML_TYPES)
    shape: tuple[int, ...]  # ggml order: row length first
    offset: int  # from the start of the data section

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.type_id)

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass
class GGUFInfo:
    path: Path
    version: int
    metadata: dict = field(repr=False)
    tensors: list[TensorInfo] = field(default_factory=list, repr=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get(Keys.General.ARCHITECTURE, ""))

    @property
    def n_tensors(self) -> int:
        return len(self.tensors)

    @property
    def tensor_names(self) -> list[str]:
        return [t.name for t in self.tensors]

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

    def count(self, count: int, min_size: int, what: str) -> int:
        """`count` items of at least `min_size` bytes each must fit in the rest of the file:
        checked before looping, so an absurd count is an error at once, not hours of work."""
        if count * min_size > len(self.buf) - self.pos:
            raise GGUFFormatError(
                self.path, f"malformed GGUF header: {count:,} {what} cannot fit in the "
                f"{len(self.buf) - self.pos:,} bytes left (at byte {self.pos})")
        return count

    def value(self, vtype: int, max_array: int, depth: int = 0):
        if vtype in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise GGUFFormatError(self.path, f"unknown metadata value type {vtype}")
        if depth >= MAX_ARRAY_DEPTH:
            raise GGUFFormatError(self.path, f"malformed GGUF header: nested array at byte {self.pos}")
        etype, count = self.unpack("<I"), self.unpack("<Q")
        if etype in _SCALAR_FORMATS:  # fixed size: one unpack, or one jump
            fmt = _SCALAR_FORMATS[etype]
            size = struct.calcsize(fmt) * count
            self.need(size)
            values = (list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, self.pos))
                      if count <= max_array else ArrayInfo(etype, count))
            self.pos += size
            return values
        if etype != _STRING:
            raise GGUFFormatError(self.path, f"unknown array element type {etype}"
                                  if etype != _ARRAY else
                                  f"malformed GGUF header: nested array at byte {self.pos}")
        self.count(count, _U64.size, "strings")
        if count <= max_array:  # the vocabulary, when asked for: the common case, kept direct
            return [self.string() for _ in range(count)]
        # The vocabulary: hop from length to length, check once at the end.
        pos, buf, length_at = self.pos, self.buf, _U64.unpack_from
        try:
            for _ in range(count):
                pos += 8 + length_at(buf, pos)[0]
                if pos > len(buf):
                    break
        except struct.error:
            pos = len(buf) + 1
        self.need(pos - self.pos)
        self.pos = pos
        return ArrayInfo(etype, count)


def read_gguf(path, *, max_array: int = DEFAULT_MAX_ARRAY) -> GGUFInfo:
    """Read a GGUF file's metadata and tensor table and check that the tensor data it declares
    is all present.

    Arrays longer than `max_array` stand as ArrayInfo (pass a large number to keep the
    vocabulary). Raises GGUFFormatError (missing, empty, not GGUF, truncated) naming the file.
    The result is cached per (path, size, modification time): loading a model reads it more
    than once, so treat it as read-only."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise GGUFFormatError(path, "file not found") from None
    except OSError as exc:
        raise GGUFFormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    if path.is_dir():
        raise GGUFFormatError(path, "is a folder, not a GGUF file")
    why = not_a_regular_file(path)
    if why:  # a FIFO or device would block or stream without end
        raise GGUFFormatError(path, why)
    if stat.st_size == 0:
        raise GGUFFormatError(path, "empty file (0 bytes), not a GGUF model")
    return _read_cached(path, stat.st_size, stat.st_mtime_ns, max_array)


@functools.lru_cache(maxsize=16)
def _read_cached(path: Path, size: int, _mtime_ns: int, max_array: int) -> GGUFInfo:
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, path, len(buf), max_array)
    except GGUFFormatError:
        raise
    except OSError as exc:
        raise GGUFFormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    except (ValueError, OverflowError, RecursionError, MemoryError, struct.error) as exc:
        # A shape of malformed header the checks in _parse did not foresee: still one error.
        raise GGUFFormatError(path, f"malformed GGUF header ({type(exc).__name__}: {exc})") from None


def _parse(buf, path: Path, size: int, max_array: int) -> GGUFInfo:
    cur = _Cursor(buf, path)
    cur.need(4)
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise GGUFFormatError(path, "not a GGUF file (wrong magic bytes)")
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise GGUFFormatError(path, f"unsupported GGUF version {version}")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    # Smallest entries: a key/value is an empty key (8) + type (4) + a u8 (1); a tensor an empty
    # name (8) + n_dims (4) + type (4) + offset (8).
    cur.count(n_kv, 13, "metadata entries")
    cur.count(n_tensors, 24, "tensors")
    metadata: dict = {}
    for _ in range(n_kv):
        at = cur.pos
        key = cur.string()
        if key in metadata:
            raise GGUFFormatError(path, f"malformed GGUF header: duplicate key {key!r} at byte {at}")
        metadata[key] = cur.value(cur.unpack("<I"), max_array)

    alignment = metadata.get(Keys.General.ALIGNMENT, DEFAULT_ALIGNMENT)
    if (isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0
            or alignment & (alignment - 1)):
        raise GGUFFormatError(path, f"malformed GGUF header: {Keys.General.ALIGNMENT} "
                                    f"{alignment!r} is not a positive power of two")
    tensors, data_end, names = [], 0, set()
    for _ in range(n_tensors):
        at = cur.pos
        name = cur.string()
        n_dims = cur.unpack("<I")
        if n_dims > GGML_MAX_DIMS:
            raise GGUFFormatError(path, f"malformed GGUF header: tensor {name!r} has {n_dims:,} "
                                        f"dimensions (ggml allows {GGML_MAX_DIMS})")
        shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
        tensor = TensorInfo(name, cur.unpack("<I"), shape, cur.unpack("<Q"))
        if name in names:
            raise GGUFFormatError(path, f"malformed GGUF header: duplicate tensor {name!r} at byte {at}")
        names.add(name)
        if tensor.n_elements > MAX_ELEMENTS:
            raise GGUFFormatError(path, f"malformed GGUF header: tensor {name!r} shape {shape} "
                                        "has more elements than ggml can hold")
        if tensor.offset % alignment:
            raise GGUFFormatError(path, f"malformed GGUF header: tensor {name!r} offset "
                                        f"{tensor.offset} is not a multiple of {alignment}")
        tensors.append(tensor)
        if tensor.type_id in GGML_TYPES:  # an unknown type skips the size check
            _, block_elems, block_bytes = GGML_TYPES[tensor.type_id]
            data_end = max(data_end, tensor.offset + tensor.n_elements // block_elems * block_bytes)

    data_start = -(-cur.pos // alignment) * alignment
    if n_tensors and data_start + data_end > size:
        raise GGUFFormatError(
            path,
            f"truncated GGUF file: tensor data needs {data_start + data_end:,} bytes, "
            f"file has {size:,} (incomplete download or copy?)",
        )
    return GGUFInfo(path=path, version=version, metadata=metadata, tensors=tensors)
