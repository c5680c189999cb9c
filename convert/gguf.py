"""Merged Hugging Face checkpoint -> text GGUF + vision projector (mmproj) GGUF, with
llama.cpp's own converter (run as a subprocess with its bundled gguf-py).

The checkpoint is first staged through the family's `prepare_for_converter` (a linked copy with
the fix-ups the converter needs), so the user's folder is never modified. Outputs are written
under temp names and renamed when complete."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from convert.errors import ConvertError, check_writable_dir, refuse_existing
from convert.families import module_for_checkpoint
from convert.llamacpp import LlamaCppSource, llama_cpp_source

# The converter's --outtype values we offer; the projector is f16 (default) or q8_0.
TEXT_OUTTYPES = ("f16", "bf16", "f32", "q8_0")
MMPROJ_TYPES = ("f16", "q8_0")


@dataclass(frozen=True)
class GgufPair:
    model: Path  # model-F16.gguf (text)
    mmproj: Path  # mmproj-f16.gguf (vision projector)


def model_file_name(quant: str) -> str:
    return f"model-{quant.upper()}.gguf"


def mmproj_file_name(mmproj_type: str) -> str:
    return f"mmproj-{mmproj_type.lower()}.gguf"


def run_converter(
    source: LlamaCppSource, ckpt_dir: Path, outfile: Path, outtype: str, mmproj: bool,
    extra_args: tuple[str, ...] = (),
) -> None:
    """One converter run; raises ConvertError with the converter's last lines on failure and
    stops the subprocess if we are interrupted."""
    cmd = [sys.executable, str(source.converter), str(ckpt_dir), "--outtype", outtype,
           "--outfile", str(outfile), *extra_args]
    if mmproj:
        cmd.append("--mmproj")
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env=source.converter_env(), cwd=str(source.converter.parent))
        try:
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            log.seek(0)
            tail = [line.rstrip() for line in log.read().splitlines() if line.strip()][-6:]
            what = "vision projector" if mmproj else "text model"
            raise ConvertError(
                f"{ckpt_dir}: llama.cpp's converter failed on the {what} (exit {code}):\n  "
                + "\n  ".join(tail)
            )


def convert_checkpoint(
    ckpt_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    outtype: str = "f16",
    mmproj_type: str = "f16",
    overwrite: bool = False,
    source: LlamaCppSource | None = None,
) -> GgufPair:
    """Write `out_dir/model-<OUTTYPE>.gguf` and `out_dir/mmproj-<type>.gguf`."""
    if outtype not in TEXT_OUTTYPES:
        raise ConvertError(f"outtype {outtype!r}: choose one of {', '.join(TEXT_OUTTYPES)}")
    if mmproj_type not in MMPROJ_TYPES:
        raise ConvertError(f"mmproj type {mmproj_type!r}: choose one of {', '.join(MMPROJ_TYPES)}")
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    family = module_for_checkpoint(ckpt_dir)
    check_writable_dir(out_dir)
    final = GgufPair(out_dir / model_file_name(outtype), out_dir / mmproj_file_name(mmproj_type))
    for path in (final.model, final.mmproj):
        refuse_existing(path, overwrite)
    source = source or llama_cpp_source()

    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    temps = [out_dir / f".{p.name}.tmp-{os.getpid()}" for p in (final.model, final.mmproj)]
    try:
        # The staged folder keeps the checkpoint's name: the converter derives general.name from it.
        staged = staging / ckpt_dir.resolve().name
        family.prepare_for_converter(ckpt_dir, staged)
        # A family module may ask for converter flags on the text run (TEXT_CONVERTER_ARGS).
        run_converter(source, staged, temps[0], outtype, mmproj=False,
                      extra_args=tuple(getattr(family, "TEXT_CONVERTER_ARGS", ())))
        run_converter(source, staged, temps[1], mmproj_type, mmproj=True)
        os.replace(temps[0], final.model)
        os.replace(temps[1], final.mmproj)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for temp in temps:
            temp.unlink(missing_ok=True)
    return final
