"""Quantize a text GGUF with llama.cpp's quantizer through llama-cpp-python (no separate
binary). Q4_K_M is the default, as in the paper's laptop builds; Q5_K_M and Q8_0 trade size for
fidelity. The projector is not quantized here: it stays f16 or is converted as q8_0.

K-quants need rows whose length is a multiple of 256; llama.cpp silently uses another type for
tensors that do not fit. `quantize` reports those fallbacks instead of hiding them."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from convert.errors import ConvertError, check_writable_dir, refuse_existing

# Name -> llama.cpp ftype constant name in llama_cpp.
QUANTS = {
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
}
DEFAULT_QUANT = "Q4_K_M"


@dataclass
class QuantReport:
    quant: str
    path: Path
    tensor_types: Counter = field(default_factory=Counter)  # ggml type name -> tensor count
    fallbacks: list[str] = field(default_factory=list)  # "name: type" for K-quant fallbacks

    @property
    def fell_back(self) -> bool:
        return bool(self.fallbacks)

    def summary(self) -> str:
        types = ", ".join(f"{n}x{t}" for t, n in sorted(self.tensor_types.items()))
        text = f"{self.path.name}: {self.quant} ({types})"
        if self.fallbacks:
            text += f"; {len(self.fallbacks)} tensor(s) not K-quantized: " + ", ".join(self.fallbacks[:5])
        return text


def tensor_types(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (ggml type name, shape), from the file's header."""
    from geolocsft.gguf_header import read_gguf

    return {t.name: (t.type_name, t.shape) for t in read_gguf(path).tensors}


def _k_fallbacks(types: dict[str, tuple[str, tuple[int, ...]]]) -> list[str]:
    """Matrices left in a non-K type by a K-quant request (1-D norms stay F32 by design)."""
    out = []
    for name, (kind, shape) in types.items():
        if len([d for d in shape if d > 1]) < 2:
            continue
        if not kind.endswith("_K"):
            out.append(f"{name}: {kind}")
    return out


def quantize(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    quant: str = DEFAULT_QUANT,
    *,
    nthread: int = 0,
    overwrite: bool = False,
) -> QuantReport:
    """Quantize `src` (an f16/bf16/f32 text GGUF) into `dst` (temp name, renamed when done)."""
    quant = quant.upper()
    if quant not in QUANTS:
        raise ConvertError(f"quant {quant!r}: choose one of {', '.join(QUANTS)}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConvertError(f"{src}: GGUF to quantize not found")
    refuse_existing(dst, overwrite)
    check_writable_dir(dst.parent)
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = nthread
    temp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        with suppress_stdout_stderr(disable=False):  # llama.cpp logs every tensor
            code = llama_cpp.llama_model_quantize(str(src).encode(), str(temp).encode(), params)
        if code != 0 or not temp.is_file():
            raise ConvertError(f"{src}: llama.cpp could not quantize it to {quant} (code {code})")
        os.replace(temp, dst)
    finally:
        temp.unlink(missing_ok=True)
    types = tensor_types(dst)
    report = QuantReport(quant, dst, Counter(kind for kind, _ in types.values()))
    if quant.endswith("_K_M"):
        report.fallbacks = _k_fallbacks(types)
    return report
