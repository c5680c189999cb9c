"""Base checkpoint + peft LoRA adapter -> merged Hugging Face checkpoint.

The merge happens in fp32 (W + scale * B @ A without rounding to bf16 twice), then the weights
are cast to the requested dtype. The output carries everything the converter needs: safetensors,
config, processor, tokenizer, chat template, and merge_info.json (base id, adapter, sha256)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from convert.errors import AdapterError, ConvertError, check_writable_dir, refuse_existing
from convert.families import family_of, read_config
from geolocsft.fsutil import build_folder, read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MERGE_INFO = "merge_info.json"
DTYPES = ("float32", "bfloat16", "float16")
PEFT_PREFIX = "base_model.model."


def read_adapter_config(adapter_dir: Path) -> dict:
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise AdapterError(f"{adapter_dir}: adapter folder not found")
    path = adapter_dir / ADAPTER_CONFIG
    config = read_json(path, AdapterError, missing="missing (not a peft LoRA adapter folder)",
                       unreadable="corrupt adapter config")
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{path}: not a LoRA adapter config (peft_type {config.get('peft_type')!r})")
    return config


def adapter_weights_path(adapter_dir: Path) -> Path:
    for name in ADAPTER_WEIGHTS:
        if (Path(adapter_dir) / name).is_file():
            return Path(adapter_dir) / name
    raise AdapterError(f"{Path(adapter_dir) / ADAPTER_WEIGHTS[0]}: missing adapter weights")


def read_adapter_shapes(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the adapter weights, reading only the file's header."""
    path = adapter_weights_path(adapter_dir)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise AdapterError(f"{path}: corrupt adapter weights ({exc})") from None
    if not shapes:
        raise AdapterError(f"{path}: adapter weights file holds no tensors")
    return shapes


def _name_key(name: str) -> str:
    """Comparable form of a base model id or path: HF cache folders and ids map to 'org/name'."""
    name = str(name).rstrip("/")
    if "models--" in name:  # ~/.cache/huggingface/hub/models--Org--Name/snapshots/<sha>
        part = name.split("models--", 1)[1].split("/", 1)[0]
        return part.replace("--", "/").lower()
    if os.path.isabs(name) or name.startswith("."):
        return str(Path(name).resolve()).lower()
    return name.lower()


def base_names(base_dir: Path, base_id: str | None) -> set[str]:
    names = {_name_key(str(base_dir))}
    if base_id:
        names.add(_name_key(base_id))
    recorded = read_config(base_dir).get("_name_or_path")
    if recorded:
        names.add(_name_key(recorded))
    return names


def same_base(recorded: str, base_dir: Path, base_id: str | None) -> bool:
    """Does the adapter's recorded base name this base? Ids, paths and Hugging Face cache
    folders are compared by their full form, then by the model's own name (the last part:
    /data/models/Qwen2.5-VL-3B-Instruct is Qwen/Qwen2.5-VL-3B-Instruct copied to a server)."""
    names = base_names(base_dir, base_id)
    key = _name_key(recorded)
    if key in names:
        return True
    return key.rsplit("/", 1)[-1] in {name.rsplit("/", 1)[-1] for name in names}


def check_adapter_matches(model, adapter_dir: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse an adapter whose target modules are absent from the base or of another shape."""
    modules = dict(model.named_modules())
    for key, shape in sorted(shapes.items()):
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        module_name = key.split(".lora_", 1)[0]
        if module_name.startswith(PEFT_PREFIX):
            module_name = module_name[len(PEFT_PREFIX):]
        module = modules.get(module_name)
        weight = getattr(module, "weight", None)
        if weight is None:
            raise AdapterError(
                f"{adapter_weights_path(adapter_dir)}: adapter targets {module_name!r}, which the "
                "base model does not have (adapter made for another base model?)"
            )
        out_features, in_features = weight.shape[0], weight.shape[-1]
        expected = in_features if ".lora_A." in key else out_features
        got = shape[1] if ".lora_A." in key else shape[0]
        if len(shape) != 2 or got != expected:
            raise AdapterError(
                f"{adapter_weights_path(adapter_dir)}: {key} has shape {list(shape)} but the base "
                f"layer {module_name} is {list(weight.shape)} (adapter made for another base model)"
            )


def sha256_adapter(adapter_dir: Path) -> str:
    from geolocsft.manifest import sha256_file

    return sha256_file(adapter_weights_path(adapter_dir))


def resolve_base(base: str | os.PathLike) -> tuple[Path, str]:
    """A base given as a folder or a Hugging Face id -> (local folder, id to record)."""
    path = Path(base)
    if path.is_dir():
        return path, str(base)
    if path.exists() or os.path.isabs(str(base)) or str(base).startswith("."):
        raise ConvertError(f"{base}: base model folder not found")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(base))), str(base)
    except Exception as exc:
        from geolocsft.netfail import describe

        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        what = describe(exc) or first
        raise ConvertError(f"{base}: not a folder and not downloadable from the hub ({what}); "
                           f"download it on a connected machine (hf download {base} --local-dir "
                           "DIR), copy DIR here and pass it instead; a partial download resumes "
                           "on the next run") from None


def merge_adapter(
    base: str | os.PathLike,
    adapter_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "bfloat16",
    merge_dtype: str = "float32",
    ignore_base_name: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the merged checkpoint to `out_dir` (via a temp folder renamed at the end).
    With `adapter_dir=None` the base is re-saved as is (the untrained model).

    `merge_dtype` is float32 by default (the paper's recipe: no double rounding). It needs 4
    bytes per parameter of RAM (~110 GB for Gemma 3 27B); "bfloat16" halves that at the cost of
    rounding W + scale*B@A once more."""
    import torch

    for value in (dtype, merge_dtype):
        if value not in DTYPES:
            raise ConvertError(f"dtype {value!r}: choose one of {', '.join(DTYPES)}")
    out_dir = Path(out_dir)
    base_dir, base_id = resolve_base(base)
    family = family_of(base_dir)  # unsupported architecture -> clear error before heavy work
    shapes: dict[str, tuple[int, ...]] = {}
    adapter_config: dict = {}
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        adapter_config = read_adapter_config(adapter_dir)
        shapes = read_adapter_shapes(adapter_dir)
        recorded = adapter_config.get("base_model_name_or_path")
        if recorded and not ignore_base_name and not same_base(recorded, base_dir, base_id):
            raise AdapterError(
                f"{adapter_dir / ADAPTER_CONFIG}: adapter was trained on {recorded!r}, not on "
                f"{base_id!r} (pass ignore_base_name / --ignore-base-name if that is the same model)"
            )
    refuse_existing(out_dir, overwrite)
    check_writable_dir(out_dir.parent)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        model = AutoModelForImageTextToText.from_pretrained(base_dir, dtype=getattr(torch, merge_dtype))
    except Exception as exc:
        raise ConvertError(f"{base_dir}: cannot load the base model ({exc})") from None
    if adapter_dir is not None:
        from peft import PeftModel

        check_adapter_matches(model, adapter_dir, shapes)
        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        except Exception as exc:
            raise AdapterError(f"{adapter_dir}: cannot load the adapter ({exc})") from None
        model = model.merge_and_unload(safe_merge=True)
    model = model.to(getattr(torch, dtype))
    processor = AutoProcessor.from_pretrained(processor_source(base_dir, adapter_dir))

    with build_folder(out_dir, replace=True) as temp:
        model.save_pretrained(temp, safe_serialization=True)
        processor.save_pretrained(temp)
        for name in ("tokenizer.model", "generation_config.json"):
            # transformers 5 drops Gemma's SentencePiece model; the converter needs it.
            if (base_dir / name).is_file() and not (temp / name).exists():
                shutil.copy2(base_dir / name, temp / name)
        info = {
            "family": family.name,
            "base_model": base_id,
            "adapter": str(Path(adapter_dir).resolve()) if adapter_dir is not None else None,
            "adapter_sha256": sha256_adapter(adapter_dir) if adapter_dir is not None else None,
            "adapter_base_model": adapter_config.get("base_model_name_or_path"),
            "dtype": dtype,
            "merge_dtype": merge_dtype,
        }
        (temp / MERGE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out_dir


def processor_source(base_dir: Path, adapter_dir: Path | None) -> Path:
    """The trainer saves its processor (image budget, chat template) beside the adapter: that is
    what the model was trained with, so it wins over the base's."""
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        has_images = any((adapter_dir / n).is_file()
                         for n in ("processor_config.json", "preprocessor_config.json"))
        if has_images and (adapter_dir / "tokenizer_config.json").is_file():
            return adapter_dir
    return Path(base_dir)


def read_merge_info(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / MERGE_INFO
    return read_json(path, ConvertError) if path.is_file() else {}
