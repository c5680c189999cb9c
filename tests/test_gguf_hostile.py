"""Hostile GGUF headers (issue 14): every malformed header is one GGUFFormatError naming the
file; nothing else escapes, nothing loops or recurses without end. Hand-made headers for each
known shape of attack, then hypothesis mutating real tiny GGUFs."""

import itertools
import os
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geolocsft.gguf_header import (GGML_MAX_DIMS, GGUFFormatError, GGUFInfo, GGUFValueType, Keys,
                                   read_gguf)

_names = itertools.count()


def gguf(*, kv: list[bytes] = (), tensors: list[bytes] = (), n_kv=None, n_tensors=None,
         tail: bytes = b"") -> bytes:
    head = b"GGUF" + struct.pack("<I", 3)
    head += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors,
                        len(kv) if n_kv is None else n_kv)
    return head + b"".join(kv) + b"".join(tensors) + tail


def s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def kv_u32(key: str, value: int) -> bytes:
    return s(key) + struct.pack("<II", GGUFValueType.UINT32, value)


def tensor(name: str, dims, type_id=0, offset=0, n_dims=None) -> bytes:
    return (s(name) + struct.pack("<I", len(dims) if n_dims is None else n_dims)
            + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", type_id, offset))


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"m{next(_names)}.gguf"
    path.write_bytes(data)
    return path


def rejects(tmp_path, data: bytes, match: str) -> str:
    path = write(tmp_path, data)
    began = time.monotonic()
    with pytest.raises(GGUFFormatError) as caught:
        read_gguf(path)
    assert time.monotonic() - began < 2
    assert str(caught.value).startswith(f"{path}: ")
    assert match in str(caught.value), str(caught.value)
    return str(caught.value)


def test_each_known_malformation_is_its_own_clear_error(tmp_path):
    arr = GGUFValueType.ARRAY
    # Absurd counts are refused before any loop.
    rejects(tmp_path, gguf(n_kv=2**63), "metadata entries cannot fit")
    rejects(tmp_path, gguf(n_tensors=2**64 - 1), "tensors cannot fit")
    huge_strings = s("tokenizer.ggml.tokens") + struct.pack("<IIQ", arr, GGUFValueType.STRING, 2**62)
    rejects(tmp_path, gguf(kv=[huge_strings]), "strings cannot fit")
    # Arrays of arrays (no recursion, whatever the depth).
    nested = s("x") + struct.pack("<I", arr) + struct.pack("<IQ", arr, 1) * 50_000
    rejects(tmp_path, gguf(kv=[nested]), "nested array")
    # Dimensions: capped as ggml caps them; element counts past int64.
    rejects(tmp_path, gguf(tensors=[tensor("t", [1], n_dims=2**32 - 1)]), f"(ggml allows {GGML_MAX_DIMS})")
    rejects(tmp_path, gguf(tensors=[tensor("t", [2**40, 2**40])]), "more elements than ggml")
    # Alignment: a string, zero, not a power of two.
    text_align = s(Keys.General.ALIGNMENT) + struct.pack("<I", GGUFValueType.STRING) + s("32")
    rejects(tmp_path, gguf(kv=[text_align]), "is not a positive power of two")
    rejects(tmp_path, gguf(kv=[kv_u32(Keys.General.ALIGNMENT, 0)]), "positive power of two")
    rejects(tmp_path, gguf(kv=[kv_u32(Keys.General.ALIGNMENT, 24)]), "positive power of two")
    rejects(tmp_path, gguf(tensors=[tensor("t", [4], offset=3)]), "not a multiple of 32")
    # Duplicates, unknown types, truncation.
    rejects(tmp_path, gguf(kv=[kv_u32("a", 1), kv_u32("a", 2)]), "duplicate key 'a'")
    rejects(tmp_path, gguf(tensors=[tensor("t", [4]), tensor("t", [4], offset=32)]), "duplicate tensor")
    rejects(tmp_path, gguf(kv=[s("a") + struct.pack("<I", 99)]), "unknown metadata value type 99")
    rejects(tmp_path, gguf(kv=[kv_u32("a", 1)])[:-2], "truncated GGUF file")
    rejects(tmp_path, gguf(tensors=[tensor("t", [1024])]), "tensor data needs")
    # A well-formed minimal file still reads.
    ok = write(tmp_path, gguf(kv=[kv_u32("a", 7)], tensors=[tensor("t", [4])], tail=b"\0" * 64))
    info = read_gguf(ok)
    assert info.get("a") == 7 and info.tensors[0].shape == (4,)


def test_a_fifo_named_like_a_model_is_refused_at_once(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(GGUFFormatError, match="model.gguf: a FIFO, not a regular file"):
        read_gguf(fifo)


def test_value_types_and_keys_read_like_gguf_py():
    pytest.importorskip("convert")
    from convert.llamacpp import import_bundled_gguf

    gguf_py = import_bundled_gguf()  # llama.cpp's own gguf-py, from the source package
    for member in GGUFValueType:
        assert gguf_py.GGUFValueType[member.name].value == member.value
    assert Keys.General.ARCHITECTURE == gguf_py.Keys.General.ARCHITECTURE
    assert Keys.General.ALIGNMENT == gguf_py.Keys.General.ALIGNMENT
    assert Keys.Tokenizer.CHAT_TEMPLATE == gguf_py.Keys.Tokenizer.CHAT_TEMPLATE


@pytest.fixture(scope="module")
def real_headers(tiny_qwen_folder):
    """(header bytes, full size) of the tiny model's two real GGUFs: mutations go into the
    header; the file is padded (sparse) back to its size so the data-size check still runs."""
    out = []
    for name in ("model-Q8_0.gguf", next(p.name for p in Path(tiny_qwen_folder).glob("mmproj-*.gguf"))):
        path = Path(tiny_qwen_folder) / name
        info = read_gguf(path, max_array=0)
        with open(path, "rb") as handle:
            data = handle.read(8 << 20)
        # The header (metadata + tensor table) ends a little after the last tensor's name.
        last_name = info.tensors[-1].name.encode()
        header_end = data.rindex(last_name) + len(last_name) + 64
        out.append((data[:header_end], path.stat().st_size))
    return out


_ABSURD = [0, 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63, 2**64 - 1]


@st.composite
def mutations(draw):
    which = draw(st.integers(0, 1))
    kind = draw(st.sampled_from(["flip", "absurd", "trim"]))
    return which, kind, draw(st.floats(0, 1)), draw(st.integers(0, 255)), draw(st.sampled_from(_ABSURD))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations())
def test_mutated_real_headers_never_escape_as_other_errors(real_headers, tmp_path, mutation):
    which, kind, where, byte, absurd = mutation
    header, size = real_headers[which]
    # Most structure (counts, lengths, types) sits early: bias positions towards the start.
    pos = int((where ** 3) * (len(header) - 1))
    data = bytearray(header)
    if kind == "flip":
        data[pos] ^= byte or 0xFF
    elif kind == "absurd":
        data[pos:pos + 8] = struct.pack("<Q", absurd)
    else:
        del data[pos:]
    path = tmp_path / f"fuzz{next(_names)}.gguf"
    with open(path, "wb") as handle:
        handle.write(data)
        if kind != "trim":
            handle.truncate(size)  # sparse padding: the real size, no real bytes
    began = time.monotonic()
    try:
        info = read_gguf(path)
    except GGUFFormatError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
    else:
        assert isinstance(info, GGUFInfo)
    assert time.monotonic() - began < 3
    path.unlink()
