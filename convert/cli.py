"""`geolocsft convert merge|gguf|quantize|verify|all`. Registration stays cheap; torch,
transformers and llama.cpp are imported inside the handlers."""

from __future__ import annotations

import json
from pathlib import Path

from geolocsft.cli import CliError

QUANT_CHOICES = ("Q4_K_M", "Q5_K_M", "Q8_0")


def register(subparsers) -> None:
    convert = subparsers.add_parser(
        "convert", help="merge a LoRA adapter and build a llama.cpp model folder",
        description="From a LoRA adapter to a model folder llama.cpp loads on a laptop.",
    )
    sub = convert.add_subparsers(dest="convert_command", metavar="STEP", required=True)

    p = sub.add_parser("all", help="adapter in, finished model folder out")
    p.add_argument("--adapter", type=Path, help="peft LoRA adapter folder (omit to convert the base as is)")
    p.add_argument("--base", help="base model folder or Hugging Face id (default: the adapter's)")
    p.add_argument("--out", type=Path, required=True, help="model folder to create")
    p.add_argument("--quant", default="Q4_K_M", choices=QUANT_CHOICES)
    p.add_argument("--mmproj-type", default="f16", choices=("f16", "q8_0"))
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                   help="dtype of the merged checkpoint (merge itself runs in fp32)")
    p.add_argument("--merge-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="precision of the merge itself (float32 = the paper's; bfloat16 halves RAM)")
    p.add_argument("--keep-f16", action="store_true", help="also keep model-F16.gguf in the folder")
    p.add_argument("--no-logit-check", action="store_true", help="skip the HF vs GGUF logit comparison")
    p.add_argument("--ignore-base-name", action="store_true",
                   help="accept an adapter whose recorded base name differs (shapes are still checked)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(handler=_all)

    p = sub.add_parser("merge", help="base + LoRA adapter -> merged Hugging Face checkpoint")
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--base", help="base model folder or Hugging Face id (default: the adapter's)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--merge-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--ignore-base-name", action="store_true")
    p.add_argument("--force", action="store_true")
    p.set_defaults(handler=_merge)

    p = sub.add_parser("gguf", help="checkpoint -> model-F16.gguf + mmproj-<type>.gguf")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for the two GGUF files")
    p.add_argument("--outtype", default="f16", choices=("f16", "bf16", "f32", "q8_0"))
    p.add_argument("--mmproj-type", default="f16", choices=("f16", "q8_0"))
    p.add_argument("--force", action="store_true")
    p.set_defaults(handler=_gguf)

    p = sub.add_parser("quantize", help="quantize a text GGUF")
    p.add_argument("gguf", type=Path)
    p.add_argument("--quant", default="Q4_K_M", choices=QUANT_CHOICES)
    p.add_argument("--out", type=Path, help="default: model-<QUANT>.gguf beside the input")
    p.add_argument("--force", action="store_true")
    p.set_defaults(handler=_quantize)

    p = sub.add_parser("verify", help="check a model folder: checksums, metadata, an image answer")
    p.add_argument("folder", type=Path)
    p.add_argument("--hf", type=Path, help="Hugging Face checkpoint to compare text logits with")
    p.add_argument("--gguf", type=Path, help="GGUF for the logit comparison (default: the folder's "
                   "model; an f16 file gives the meaningful comparison)")
    p.set_defaults(handler=_verify)


def _errors():
    from convert.errors import ConvertError
    from convert.families import UnsupportedModelError
    from convert.llamacpp import LlamaCppSourceError

    return (ConvertError, UnsupportedModelError, LlamaCppSourceError)


def _quiet_transformers() -> None:
    """Our numbered steps are the progress display; transformers' per-file bars are noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _guard(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except _errors() as exc:
        raise CliError(str(exc)) from None


def _all(args) -> int:
    from convert.build import build_model_folder

    _quiet_transformers()
    result = _guard(
        build_model_folder, args.out, adapter=args.adapter, base=args.base, quant=args.quant,
        mmproj_type=args.mmproj_type, dtype=args.dtype, merge_dtype=args.merge_dtype,
        check_logits=not args.no_logit_check,
        keep_f16=args.keep_f16, ignore_base_name=args.ignore_base_name, overwrite=args.force,
    )
    for note in result.notes:
        print(note)
    for name in result.manifest.files:
        print(f"{result.folder / name}: {(result.folder / name).stat().st_size / 1e6:.1f} MB")
    return 0


def _merge(args) -> int:
    from convert.merge import merge_adapter, read_adapter_config

    _quiet_transformers()
    base = args.base or _guard(read_adapter_config, args.adapter).get("base_model_name_or_path")
    if not base:
        raise CliError(f"{args.adapter}: the adapter config names no base model; pass --base")
    out = _guard(merge_adapter, base, args.adapter, args.out, dtype=args.dtype,
                 merge_dtype=args.merge_dtype,
                 ignore_base_name=args.ignore_base_name, overwrite=args.force)
    print(out)
    return 0


def _gguf(args) -> int:
    from convert.gguf import convert_checkpoint

    pair = _guard(convert_checkpoint, args.checkpoint, args.out, outtype=args.outtype,
                  mmproj_type=args.mmproj_type, overwrite=args.force)
    print(pair.model)
    print(pair.mmproj)
    return 0


def _quantize(args) -> int:
    from convert.gguf import model_file_name
    from convert.quantize import quantize

    out = args.out or args.gguf.with_name(model_file_name(args.quant))
    report = _guard(quantize, args.gguf, out, args.quant, overwrite=args.force)
    print(report.summary())
    return 0


def _verify(args) -> int:
    from geolocsft.manifest import ManifestError, read_manifest, verify_files

    from convert.verify import answer_image, compare_logits, read_metadata

    try:
        manifest = read_manifest(args.folder)
        problems = verify_files(args.folder)
    except ManifestError as exc:
        raise CliError(str(exc)) from None
    if problems:
        raise CliError("; ".join(problems))
    print(f"checksums: {len(manifest.files)} file(s) match {args.folder / 'manifest.json'}")
    model, mmproj = args.folder / manifest.model_file, args.folder / manifest.mmproj_file
    meta = _guard(read_metadata, model)
    print(f"{model.name}: {meta.get('general.architecture')}, {meta['tensors']} tensors, "
          f"tokenizer {meta.get('tokenizer.ggml.pre')}")
    meta = _guard(read_metadata, mmproj)
    print(f"{mmproj.name}: projector {meta.get('clip.projector_type')}")
    answer = _guard(answer_image, model, mmproj, manifest.family)
    print(f"image answer ({answer['prompt_tokens']} prompt tokens): {json.dumps(answer['text'])}")
    if args.hf:
        report = _guard(compare_logits, args.hf, args.gguf or model)
        print(report.summary())
    return 0
