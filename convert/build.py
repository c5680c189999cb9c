"""`convert all`: LoRA adapter in, finished model folder out.

    merge (fp32, cast) -> GGUF f16 + mmproj -> quantize -> verify -> manifest

Everything is built in a hidden work folder beside the destination and renamed into place only
when complete, so an interrupted run never leaves a half-written folder under the final name."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from convert.errors import ConvertError, check_writable_dir, refuse_existing, remove_path
from convert.families import family_module, family_of
from convert.gguf import convert_checkpoint, model_file_name
from convert.merge import read_adapter_config, resolve_base, merge_adapter, sha256_adapter
from convert.quantize import DEFAULT_QUANT, QuantReport, quantize
from geolocsft.fsutil import read_json

TRAINING_RECORD = "training_record.json"  # written by the trainer beside the adapter
# Below this top-token agreement between the f16 GGUF and the HF model, conversion is suspect.
AGREEMENT_WARNING = 0.99

Progress = Callable[[str], None]


def print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Steps:
    """Numbered step lines with timings: "[2/5] GGUF + projector ... done in 9.6 s"."""

    def __init__(self, total: int, progress: Progress | None):
        self.total, self.index, self.progress = total, 0, progress or (lambda _m: None)

    def run(self, title: str, fn, *args, **kwargs):
        self.index += 1
        self.progress(f"[{self.index}/{self.total}] {title} ...")
        started = time.monotonic()
        result = fn(*args, **kwargs)
        self.progress(f"[{self.index}/{self.total}] {title}: done in {time.monotonic() - started:.1f} s")
        return result


@dataclass
class BuildResult:
    folder: Path
    manifest: object  # geolocsft.manifest.Manifest
    quant_report: QuantReport | None
    logit_report: object | None = None  # convert.verify.LogitReport
    answer: dict | None = None
    notes: list[str] = field(default_factory=list)


def _training_record(adapter_dir: Path | None) -> dict:
    if adapter_dir is None or not (Path(adapter_dir) / TRAINING_RECORD).is_file():
        return {}
    return read_json(Path(adapter_dir) / TRAINING_RECORD, ConvertError)


def build_model_folder(
    out_folder: str | os.PathLike,
    *,
    adapter: str | os.PathLike | None = None,
    base: str | os.PathLike | None = None,
    quant: str = DEFAULT_QUANT,
    mmproj_type: str = "f16",
    dtype: str = "bfloat16",
    merge_dtype: str = "float32",
    check_logits: bool = True,
    answer: bool = True,
    keep_f16: bool = False,
    ignore_base_name: bool = False,
    overwrite: bool = False,
    name: str | None = None,
    progress: Progress | None = print_progress,
) -> BuildResult:
    """Build `out_folder` (model-<QUANT>.gguf, mmproj-<type>.gguf, manifest.json). Without an
    adapter the base model is converted as is. The base defaults to the one the adapter's
    adapter_config.json names. `name` (default: the folder's name) goes into the manifest."""
    from geolocsft import protocol
    from geolocsft.images import ImageBudget
    from geolocsft.manifest import Manifest, checksum_files, now_utc, write_manifest

    from convert.gguf import MMPROJ_TYPES
    from convert.quantize import QUANTS

    out_folder = Path(out_folder)
    quant = quant.upper()
    if quant not in QUANTS:  # checked before any heavy step
        raise ConvertError(f"quant {quant!r}: choose one of {', '.join(QUANTS)}")
    if mmproj_type not in MMPROJ_TYPES:
        raise ConvertError(f"mmproj type {mmproj_type!r}: choose one of {', '.join(MMPROJ_TYPES)}")
    adapter_dir = Path(adapter) if adapter is not None else None
    if adapter_dir is not None:
        recorded = read_adapter_config(adapter_dir).get("base_model_name_or_path")
        base = base or recorded
    if base is None:
        raise ConvertError("no base model: pass --base (the adapter config does not name one)")
    refuse_existing(out_folder, overwrite)
    check_writable_dir(out_folder.parent)
    base_dir, base_id = resolve_base(base)
    family = family_of(base_dir)
    record = _training_record(adapter_dir)

    total = (2 if adapter_dir is not None else 1) + 1 + (1 if answer or check_logits else 0)
    steps = Steps(total, progress)
    work = Path(tempfile.mkdtemp(prefix=f".{out_folder.name}.tmp-", dir=out_folder.parent))
    try:
        ckpt = base_dir
        if adapter_dir is not None:
            ckpt = steps.run(f"merge adapter into base ({merge_dtype})", merge_adapter,
                             base_dir, adapter_dir, work / "merged", dtype=dtype,
                             merge_dtype=merge_dtype, ignore_base_name=ignore_base_name)
        pair = steps.run("convert to GGUF f16 + projector", convert_checkpoint, ckpt, work / "f16",
                         mmproj_type=mmproj_type)
        folder = work / "folder"
        folder.mkdir()
        report = steps.run(f"quantize to {quant}", quantize, pair.model,
                           folder / model_file_name(quant), quant)
        notes = []
        if report.fallbacks:
            notes.append(f"{len(report.fallbacks)} tensor(s) not K-quantized (rows not a multiple "
                         f"of 256): " + ", ".join(report.fallbacks))
            if progress:
                progress(f"warning: {notes[-1]}")
        os.replace(pair.mmproj, folder / pair.mmproj.name)
        if keep_f16:
            os.replace(pair.model, folder / pair.model.name)

        logit_report = answer_out = None
        if answer or check_logits:
            def _verify():
                from convert.verify import answer_image, compare_logits

                got_logits = compare_logits(ckpt, pair.model if pair.model.exists()
                                            else folder / pair.model.name) if check_logits else None
                got_answer = answer_image(folder / model_file_name(quant), folder / pair.mmproj.name,
                                          family.name) if answer else None
                return got_logits, got_answer

            logit_report, answer_out = steps.run("verify with llama-cpp-python", _verify)
            if logit_report is not None:
                notes.append(f"f16 GGUF vs Hugging Face: {logit_report.summary()}")
                if logit_report.agreement < AGREEMENT_WARNING and progress:
                    progress(f"warning: the GGUF disagrees with the Hugging Face model: "
                             f"{logit_report.summary()}")
            if answer_out is not None:
                notes.append(f"{quant} answered an image prompt ({answer_out['prompt_tokens']} "
                             f"prompt tokens, {answer_out['completion_tokens']} generated)")

        from convert.llamacpp import llama_cpp_source

        source = llama_cpp_source()
        budget = record.get("image_budget") or family_module(family).image_budget(ckpt).to_dict()
        budget = ImageBudget.from_dict(budget).to_dict()  # validated
        names = sorted(p.name for p in folder.iterdir())
        manifest = Manifest(
            name=name or out_folder.name,
            family=family.name,
            base_model=base_id,
            quant=report.quant,
            model_file=model_file_name(quant),
            mmproj_file=pair.mmproj.name,
            prompt_version=record.get("prompt_version") or protocol.PROMPT_VERSION,
            image_budget=budget,
            files=checksum_files(folder, names),
            adapter=str(adapter_dir.resolve()) if adapter_dir is not None else None,
            adapter_sha256=sha256_adapter(adapter_dir) if adapter_dir is not None else None,
            llama_cpp_version=source.version,
            llama_cpp_commit=source.llama_cpp_commit,
            created=now_utc(),
            notes=notes,
        )
        write_manifest(folder, manifest)
        _install(folder, out_folder, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if progress:
        progress(f"model folder ready: {out_folder}")
    return BuildResult(out_folder, manifest, report, logit_report, answer_out, notes)


def _install(folder: Path, final: Path, work: Path) -> None:
    """Rename the finished folder into place; an existing one (overwrite) is moved aside first
    and deleted only after the new one is in."""
    old = None
    if final.exists():
        old = work / "previous"
        os.replace(final, old)
    try:
        os.replace(folder, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        remove_path(old)
